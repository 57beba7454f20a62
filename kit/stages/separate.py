"""Separate stage: copy (and shrink) just the filtered images into <work>/dataset/.

The input is read-only and often remote-mounted; training then reads a small local
dataset. Every image is written under a temporary name and renamed, so a killed run leaves
only complete files and a rerun skips them. A missing or unreadable source never stops the
stage: the manifest records it and the split leaves it out.
"""
import shutil
import time
from pathlib import Path

import pandas as pd

from kit import layout
from kit.config import download_kwargs
from kit.data import shards
from kit.data.images import store_all, stored_names
from kit.errors import KitError
from kit.io import write_csv, write_json
from kit.kaggle import download
from kit.pipeline import Stamp, stamped

STATUSES = ("written", "skipped", "missing", "unreadable")


def _reset_if_resized(work: Path, resize: int):
    """Images stored at another size must not be mistaken for done ones."""
    folder, marker = layout.dataset_dir(work), layout.dataset_settings(work)
    if marker.exists() and layout.stored_resize(work, None) != resize:
        print(f"[separate] --resize changed: removing the images stored before in {folder / 'images'}")
        shutil.rmtree(folder / "images", ignore_errors=True)
    write_json({"resize": resize}, marker)


def stamp(cfg) -> Stamp:
    # the folder is a setting: images elsewhere, or a scratch folder emptied (no manifest), redo it
    folder = layout.chosen_dataset_dir(cfg.work, cfg.dataset_dir)
    return Stamp({"resize": cfg.resize, "folder": str(folder.resolve())}, [layout.filtered_csv(cfg.work)],
                 [layout.manifest_csv(cfg.work)], folder)


@stamped("separate", stamp)
def run(cfg, found):
    folder = found  # where the images are stored
    df = layout.read_table(layout.filtered_csv(cfg.work), "metadata")
    layout.place_dataset(cfg.work, folder)
    if cfg.download:  # films left out of a restored download: fetch them again
        download.refill(df["path"], **download_kwargs(cfg))
    manifest_csv = layout.manifest_csv(cfg.work)
    _reset_if_resized(cfg.work, cfg.resize)
    df["file"] = "images/" + stored_names(df["image_id"], cfg.resize)
    if df["file"].duplicated().any():
        dup = df.loc[df["file"].duplicated(), "image_id"].iloc[0]
        raise KitError(f"two images would be stored as {dup!r}; make the image ids unique in the CSV")
    jobs = list(zip(df["path"], layout.image_paths(cfg.work, df["file"])))
    start = time.perf_counter()
    results = store_all(jobs, cfg.resize, cfg.workers)
    seconds = time.perf_counter() - start
    status, bytes_in, bytes_out = zip(*results) if results else ((), (), ())
    df["status"] = pd.Series(status, index=df.index, dtype=object).replace({"written": "ok", "skipped": "ok"})
    write_csv(df, manifest_csv)
    counts = {s: status.count(s) for s in STATUSES}
    done = counts["written"] + counts["skipped"]
    print(f"[separate] {counts['written']} written, {counts['skipped']} skipped (already there), "
          f"{counts['missing']} missing, {counts['unreadable']} unreadable | "
          f"{sum(bytes_in) / 2**20:.1f} MiB in, {sum(bytes_out) / 2**20:.1f} MiB stored | "
          f"{len(jobs) / max(seconds, 1e-9):.1f} images/s with {cfg.workers} workers")
    if not done:
        raise KitError(f"none of the {len(jobs)} images could be read (first: {jobs[0][0]}); "
                       f"check --data-dir (or --image-root for a csv dataset)")
    if shards.wanted(cfg.keep_shards) and not folder.resolve().is_relative_to(cfg.work.resolve()):
        shards.keep(cfg.work, "stored", folder, last=manifest_csv.name)
        if cfg.download:  # the rest of the download: its CSVs, test films and the marker
            data, films = Path(cfg.data_dir), set(df["path"].astype(str))
            rest = [str(p.relative_to(data)) for p in data.rglob("*") if p.is_file() and str(p) not in films]
            shards.keep(cfg.work, "download", data, last=download.MARKER, files=rest)
