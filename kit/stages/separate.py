"""Separate stage: copy (and shrink) just the filtered images into <work>/dataset/.

The input is read-only and often remote-mounted; training then reads a small local
dataset. Every image is written under a temporary name and renamed, so a killed run leaves
only complete files and a rerun skips them. A missing or unreadable source never stops the
stage: the manifest records it and the split leaves it out.
"""
import shutil
import time
from functools import partial
import multiprocessing
from pathlib import Path, PurePosixPath

from kit import images, layout, stamps
from kit.errors import KitError
from kit.io import write_csv, write_json
from kit.progress import progress

STATUSES = ("written", "skipped", "missing", "unreadable")


def stored_name(image_id: str, resize: int) -> str:
    """A relative file name under images/ that mirrors the id and cannot escape the folder."""
    parts = [p for p in PurePosixPath(image_id.replace("\\", "/")).parts if p not in ("/", "..", ".")]
    name = PurePosixPath(*parts)
    return str(name.with_suffix(".jpg") if resize else name)


def store_all(jobs, resize: int, workers: int, desc: str = "[separate]"):
    """Results of images.store_one for every job, in job order, using `workers` processes.

    The workers import only kit.images (no pandas): a forkserver child starts in a fifth of
    the time."""
    work = partial(images.store_one, resize=resize)
    if workers <= 1:
        return list(progress(map(work, jobs), len(jobs), desc))
    chunk = max(1, min(64, len(jobs) // (workers * 8)))
    # forkserver: a child forked from a process whose OpenCV thread pool is busy can deadlock
    with multiprocessing.get_context("forkserver").Pool(workers, initializer=images.single_threaded) as pool:
        return list(progress(pool.imap(work, jobs, chunksize=chunk), len(jobs), desc))


def _reset_if_resized(work: Path, resize: int):
    """Images stored at another size must not be mistaken for done ones."""
    folder, marker = layout.dataset_dir(work), layout.dataset_settings(work)
    if marker.exists() and layout.stored_resize(work, None) != resize:
        print(f"[separate] --resize changed: removing the images stored before in {folder / 'images'}")
        shutil.rmtree(folder / "images", ignore_errors=True)
    write_json({"resize": resize}, marker)


def run(cfg):
    if cfg.resize < 0:
        raise KitError(f"--resize {cfg.resize} is negative; give a shorter side in pixels, or 0 to copy")
    filtered_csv, manifest_csv = layout.filtered_csv(cfg.work), layout.manifest_csv(cfg.work)
    settings = {"resize": cfg.resize}
    if stamps.up_to_date(cfg, "separate", settings, [filtered_csv], [manifest_csv]):
        return
    df = layout.read_table(filtered_csv, "metadata")
    folder = layout.dataset_dir(cfg.work)
    _reset_if_resized(cfg.work, cfg.resize)
    df["file"] = ["images/" + stored_name(i, cfg.resize) for i in df["image_id"]]
    if df["file"].duplicated().any():
        dup = df.loc[df["file"].duplicated(), "image_id"].iloc[0]
        raise KitError(f"two images would be stored as {dup!r}; make the image ids unique in the CSV")
    jobs = [(p, str(folder / f)) for p, f in zip(df["path"], df["file"])]
    start = time.perf_counter()
    results = store_all(jobs, cfg.resize, cfg.workers)
    seconds = time.perf_counter() - start
    status, bytes_in, bytes_out = zip(*results) if results else ((), (), ())
    df["status"] = ["ok" if s in ("written", "skipped") else s for s in status]
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
