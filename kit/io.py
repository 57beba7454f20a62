"""Atomic file writes: a file under its final name is always complete."""
import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()  # what open() would give; mkstemp's files are private (0600)
LOW_DISK = 1 << 30  # bytes free below which a failed checkpoint write is put down to a full disk
STARTED = time.time()  # temporary files older than this were left by a killed earlier process


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the same folder; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            yield Path(tmp)
        except OSError as e:
            if e.filename is None:  # a failed write (a full disk) names no file: name the one written
                raise OSError(e.errno, e.strerror, str(path)) from e
            raise
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
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            # torch's zip writer reports a failed write as "unexpected pos" (seen on a full disk)
            if "unexpected pos" not in str(e):
                raise
            code = errno.ENOSPC if shutil.disk_usage(tmp.parent).free < LOW_DISK else errno.EIO
            raise OSError(code, os.strerror(code)) from e


def remove_partial_writes(folder) -> int:
    """Delete, anywhere under `folder`, the temporary files that writes of a killed earlier
    process left (last changed before this process started); how many there were."""
    removed = 0
    for root, _, names in os.walk(folder):
        for name in names:
            tmp = os.path.join(root, name)
            if name.startswith(".") and name.endswith(".tmp") and os.path.getmtime(tmp) < STARTED:
                os.unlink(tmp)
                removed += 1
    return removed
