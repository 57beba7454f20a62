"""Separate stage: copy (and shrink) just the filtered images into <work>/dataset/.

The input is read-only and often remote-mounted; training then reads a small local
dataset. Every image is written under a temporary name and renamed, so a killed run leaves
only complete files and a rerun skips them. A missing or unreadable source never stops the
stage: the manifest records it and the split leaves it out.
"""
import multiprocessing
import shutil
import sys
import time
from functools import partial
from pathlib import Path

import cv2
import pandas as pd

from kit import images, layout, stamps
from kit.errors import KitError
from kit.io import write_csv, write_json
from kit.progress import progress

STATUSES = ("written", "skipped", "missing", "unreadable")


def stored_names(image_ids: pd.Series, resize: int) -> pd.Series:
    """Per id, a relative file name under images/ that mirrors it and cannot escape the folder:
    backslashes read as /, the parts "", "." and ".." dropped, and when resizing the suffix (as
    pathlib reads it: the last dot of the name, not its first character) replaced by .jpg.
    String operations on the column, where a path object per id costs seconds at 200k ids."""
    names = (image_ids.astype(str).str.replace("\\", "/", regex=False)
             .str.replace(r"(?:^|/)\.\.?(?=/|\Z)", "", regex=True)
             .str.replace(r"/+", "/", regex=True).str.strip("/"))
    empty = names == ""
    if empty.any():
        raise KitError(f"image id {image_ids[empty].iloc[0]!r} names no file once its '.', '..' and '/' "
                       f"parts are dropped; give each image a file name in the CSV")
    if resize:
        names = names.str.replace(r"(?<=[^/])\.[^./]+\Z", "", regex=True) + ".jpg"
    return names


def store_all(jobs, resize: int, workers: int, desc: "str | None" = "[separate]"):
    """Results of images.store_one for every job, in job order, using `workers` processes;
    progress shown under `desc` (None: none, the caller shows its own).

    On Linux the workers are forked: they start in milliseconds with everything imported,
    where a forkserver or spawned pool takes 0.4-0.7 s to import OpenCV again. A forked child
    inherits OpenCV's thread pool without its threads and hangs if it touches the pool, even to
    resize it: the parent turns OpenCV's threading off for the fork, so the children run
    OpenCV sequentially and never call into the pool."""
    work = partial(images.store_one, resize=resize)
    shown = partial(progress, total=len(jobs), desc=desc) if desc else iter
    if workers <= 1:
        return list(shown(map(work, jobs)))
    chunk = max(1, min(64, len(jobs) // (workers * 8)))
    fork = sys.platform.startswith("linux")
    threads = cv2.getNumThreads()
    if fork:
        cv2.setNumThreads(0)
    try:
        with multiprocessing.get_context("fork" if fork else None).Pool(
                workers, initializer=None if fork else images.single_threaded) as pool:
            return list(shown(pool.imap(work, jobs, chunksize=chunk)))
    finally:
        cv2.setNumThreads(threads)


def _reset_if_resized(work: Path, resize: int):
    """Images stored at another size must not be mistaken for done ones."""
    folder, marker = layout.dataset_dir(work), layout.dataset_settings(work)
    if marker.exists() and layout.stored_resize(work, None) != resize:
        print(f"[separate] --resize changed: removing the images stored before in {folder / 'images'}")
        shutil.rmtree(folder / "images", ignore_errors=True)
    write_json({"resize": resize}, marker)


def run(cfg):
    folder = layout.chosen_dataset_dir(cfg.work, cfg.dataset_dir)
    filtered_csv, manifest_csv = layout.filtered_csv(cfg.work), layout.manifest_csv(cfg.work)
    # the folder is a setting: images elsewhere, or a scratch folder emptied (no manifest), redo it
    settings = {"resize": cfg.resize, "folder": str(folder.resolve())}
    if stamps.up_to_date(cfg, "separate", settings, [filtered_csv], [manifest_csv]):
        return
    df = layout.read_table(filtered_csv, "metadata")
    layout.place_dataset(cfg.work, folder)
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
    stamps.record(cfg, "separate", settings, [filtered_csv])
