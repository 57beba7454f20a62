"""Skip a stage whose outputs exist and whose inputs and settings did not change.

Inputs are compared by content (SHA-256), not by modification time: a dataset extracted again, or
restored on a new machine, has new times and the same bytes. A file whose size and time match
those recorded with its hash is not read again, so a skip costs a stat per input.
"""
import hashlib
import json
from pathlib import Path

from kit.io import write_json

_known = {}  # (path, size, mtime_ns) -> hash, of the files this process has read


def _digest(path: Path, recorded: dict) -> "dict | None":
    """{size, mtime_ns, sha256} of `path` (None if absent); the hash is taken from `recorded` (the
    stamp's entry for it) when size and time match, else read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if recorded and (recorded.get("size"), recorded.get("mtime_ns")) == key[1:]:
        _known[key] = recorded["sha256"]
    if key not in _known:
        with open(path, "rb") as f:
            _known[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _known[key]}


def _files(inputs, recorded: dict) -> dict:
    return {str(p): _digest(Path(p), recorded.get(str(p))) for p in inputs}


def _fingerprint(settings: dict, files: dict) -> str:
    content = [[p, d and d["sha256"]] for p, d in files.items()]
    blob = json.dumps({"settings": settings, "inputs": content}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _stamp_path(work: Path, stage: str) -> Path:
    return Path(work) / ".stamps" / f"{stage}.json"


def _recorded(work, stage) -> dict:
    stamp = _stamp_path(work, stage)
    return json.loads(stamp.read_text()) if stamp.exists() else {}


def up_to_date(work, stage: str, settings: dict, inputs, outputs, force=False) -> bool:
    """True (and says so) when `stage` may be skipped; `force` (--force) always redoes it."""
    if force or not all(Path(o).exists() for o in outputs):
        return False
    recorded = _recorded(work, stage)
    if recorded.get("fingerprint") != _fingerprint(settings, _files(inputs, recorded.get("files", {}))):
        return False
    print(f"[{stage}] up to date, skipped (--force redoes it)")
    return True


def record(work, stage: str, settings: dict, inputs):
    files = _files(inputs, _recorded(work, stage).get("files", {}))
    write_json({"fingerprint": _fingerprint(settings, files), "files": files}, _stamp_path(work, stage))
