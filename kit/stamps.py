"""Skip a stage whose outputs exist and whose inputs and settings did not change."""
import hashlib
import json
from pathlib import Path

from kit.io import write_json


def _fingerprint(settings: dict, inputs) -> str:
    files = []
    for p in map(Path, inputs):
        st = p.stat() if p.exists() else None
        files.append([str(p), st.st_size if st else None, st.st_mtime_ns if st else None])
    blob = json.dumps({"settings": settings, "inputs": files}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _stamp_path(work: Path, stage: str) -> Path:
    return Path(work) / ".stamps" / f"{stage}.json"


def up_to_date(cfg, stage: str, settings: dict, inputs, outputs) -> bool:
    """True (and says so) when `stage` may be skipped; --force always redoes it."""
    if cfg.force or not all(Path(o).exists() for o in outputs):
        return False
    stamp = _stamp_path(cfg.work, stage)
    if not stamp.exists() or json.loads(stamp.read_text()).get("fingerprint") != _fingerprint(settings, inputs):
        return False
    print(f"[{stage}] up to date, skipped (--force redoes it)")
    return True


def record(cfg, stage: str, settings: dict, inputs):
    write_json({"fingerprint": _fingerprint(settings, inputs)}, _stamp_path(cfg.work, stage))
