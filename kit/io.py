"""Atomic file writes: a file under its final name is always complete."""
import contextlib
import json
import os
import tempfile
from pathlib import Path


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()  # what open() would give; mkstemp's files are private (0600)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the same folder; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_csv(df, path, **kwargs):
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def write_json(obj, path):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def write_text(text, path):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_figure(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")


def save_torch(obj, path):
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def remove_partial_writes(folder):
    """Delete the temporary files of writes that a killed process left unfinished."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
