"""A folder of many small files kept in the work dir as a few large tar files, and restored from them.

On Colab the work dir is on Drive, which outlives the session, and the stored images live on the
session's local disk, which does not. Drive's mount copes with a few files of a GB and badly with
100,000 small ones, so the stored images (and the rest of a --download: its CSVs and test films)
are kept as shards; a new session unpacks them in minutes instead of streaming the archive again.
"""
import json
import os
import tarfile
from pathlib import Path

from kit import env
from kit.io import atomic_path, remove_partial_writes, write_json

SHARD_BYTES = 1 << 30  # a shard's size: few files on Drive, each copied in well under a minute
FOLDER = "shards"
KEPT = ("download", "stored")  # --download's files but the stored films; the separate stage's folder


def wanted(keep_shards) -> bool:
    """--keep-shards: on, off, or auto (on Colab, where the work dir outlives the local disk)."""
    return keep_shards == "on" or (keep_shards == "auto" and env.platform() == "colab")


def _index(work, name) -> Path:
    return Path(work) / FOLDER / f"{name}.json"


def _listing(folder: Path, files) -> list:
    return sorted([f, os.path.getsize(folder / f)] for f in files)


def keep(work, name: str, folder, last: str, files=None):
    """Pack `files` of `folder` (relative paths; default: all of it) into <work>/shards/<name>-NNN.tar,
    `last` (the file whose presence means the folder is complete) at the very end. Nothing is packed
    again when the listing is the one already kept."""
    folder = Path(folder)
    if files is None:
        files = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    files = [f for f in files if f != last] + [last]
    listing = _listing(folder, files)
    index = _index(work, name)
    if index.exists() and json.loads(index.read_text()).get("listing") == listing:
        return
    index.unlink(missing_ok=True)  # a cut-off packing is never taken for a kept one
    index.parent.mkdir(parents=True, exist_ok=True)
    groups, size = [], SHARD_BYTES
    sizes = dict(listing)
    for f in files:
        if size >= SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(f)
        size += sizes[f]
    shards = [f"{name}-{k:03d}.tar" for k in range(len(groups))]
    for shard, group in zip(shards, groups):
        with atomic_path(index.parent / shard) as tmp, tarfile.open(tmp, "w") as tar:
            for f in group:
                tar.add(folder / f, arcname=f, recursive=False)
    for old in index.parent.glob(f"{name}-*.tar"):
        if old.name not in shards:
            old.unlink()
    write_json({"folder": str(folder.resolve()), "last": last, "shards": shards, "listing": listing}, index)
    print(f"[shards] {len(files)} files of {folder} kept in {len(shards)} shard(s) in {index.parent}")


def restore(work, name: str) -> "Path | None":
    """Unpack <work>/shards/<name>-*.tar into the folder they were kept from, when that folder lacks
    its `last` file (a new machine); the folder, or None when nothing was kept."""
    index = _index(work, name)
    if not index.exists():
        return None
    kept = json.loads(index.read_text())
    folder = Path(kept["folder"])
    if (folder / kept["last"]).exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(folder)  # a killed restore's
    for shard in kept["shards"]:
        with tarfile.open(index.parent / shard) as tar:
            for m in tar:  # each under a temporary name, renamed whole: `last`, at the end, is never partial
                with atomic_path(folder / m.name) as tmp:
                    tar.extract(m.replace(name=(Path(m.name).parent / tmp.name).as_posix()), folder, filter="data")
    print(f"[shards] {len(kept['listing'])} files restored into {folder} from {len(kept['shards'])} shard(s)")
    return folder


def restore_all(work):
    for name in KEPT:
        restore(work, name)
