"""The work directory's contract: where each artifact lives and how its tables are shaped.

Tables from filtered.csv onwards hold a few bookkeeping columns followed by one 0/1 column
per target class, in class order; everything that is not bookkeeping is a class.
"""
import functools
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kit import env
from kit.errors import KitError
from kit.io import write_json

META_COLUMNS = ("image_id", "patient_id", "view", "path", "label", "official_split",
                "source", "file", "status", "study_id")
SPLITS = ("train", "val", "test")


PROB = "prob_"  # a predictions table's probability columns: prob_<class>

def run_config(work) -> Path:
    """Every setting of the last run, defaults written out."""
    return Path(work) / "run_config.json"


def filtered_csv(work) -> Path:
    return Path(work) / "filtered.csv"


def class_distribution(work, suffix=".csv") -> Path:
    """Images and patients per class (.csv), and its bar chart (.png)."""
    return Path(work) / f"class_distribution{suffix}"


def dataset_dir(work) -> Path:
    """Where the separate stage stored the images: <work>/dataset, or the folder that
    <work>/dataset_location.json names (--dataset-dir; on Kaggle a scratch folder)."""
    pointer = _dataset_pointer(work)
    try:
        stamp = pointer.stat().st_mtime_ns
    except FileNotFoundError:
        return Path(work) / "dataset"
    return _pointed(pointer, stamp)


@functools.lru_cache(maxsize=8)
def _pointed(pointer: Path, stamp: int) -> Path:  # dataset_dir is asked once per image
    return Path(json.loads(pointer.read_text())["folder"])


def _dataset_pointer(work) -> Path:
    return Path(work) / "dataset_location.json"


def chosen_dataset_dir(work, setting: str) -> Path:
    """Where the separate stage is to store the images: --dataset-dir, or for auto a scratch
    folder on Kaggle, so that the kernel's output keeps results only (one per work dir, named
    after it), and <work>/dataset elsewhere."""
    if setting != "auto":
        return Path(setting)
    scratch = env.scratch_dir(env.platform())
    if scratch is None:
        return Path(work) / "dataset"
    work = Path(work).resolve()
    return scratch / work.relative_to(work.anchor) / "dataset"


def place_dataset(work, folder):
    """Record where the images are stored (a pointer only when outside <work>/dataset)."""
    pointer, folder = _dataset_pointer(work), Path(folder)
    if folder.resolve() == (Path(work) / "dataset").resolve():
        pointer.unlink(missing_ok=True)
    else:
        write_json({"folder": str(folder.resolve())}, pointer)


def check_dataset(work):
    """Images stored outside the work dir can vanish on their own (a new Kaggle session empties
    its scratch folder): say so, rather than train on missing files."""
    if _dataset_pointer(work).exists() and not manifest_csv(work).exists():
        raise KitError(f"the stored images in {dataset_dir(work)} are gone (a new session empties the "
                       f"scratch folder); run --stage separate, or --stage all, to store them again")


def manifest_csv(work) -> Path:
    return dataset_dir(work) / "manifest.csv"


def dataset_settings(work) -> Path:
    return dataset_dir(work) / "settings.json"


def stored_resize(work, default: int) -> int:
    """The shorter side the separate stage stored the training images at (`default` before it ran)."""
    path = dataset_settings(work)
    return json.loads(path.read_text()).get("resize", default) if path.exists() else default


def split_csv(work, name) -> Path:
    return Path(work) / "splits" / f"{name}.csv"


def class_columns(df) -> list:
    return [c for c in df.columns if c not in META_COLUMNS]


def prob_columns(classes) -> list:
    """A predictions table's (reports/*_predictions.csv) probability column of each class."""
    return [PROB + c for c in classes]


def prob_classes(df) -> list:
    """The classes a predictions table answers, in its column order."""
    return [c[len(PROB):] for c in df.columns if c.startswith(PROB)]


def image_path(work, file) -> Path:
    """Absolute path of a stored image from its `file` entry (relative to dataset/)."""
    return dataset_dir(work) / file


def image_paths(work, files) -> list:
    """image_path of each `file` entry, as strings: one string operation for the column, where a
    Path per image costs seconds at 200k images."""
    return (os.path.join(str(dataset_dir(work)), "") + pd.Series(files, dtype=object).astype(str)).tolist()


def read_table(path, stage_to_run) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise KitError(f"{path} not found: run --stage {stage_to_run} first (or --stage all)")
    return pd.read_csv(path, dtype={"image_id": str, "patient_id": str, "study_id": str}, keep_default_na=False)


def patient_keys(df) -> np.ndarray:
    """One key per image that is equal for the images of one patient; an image without a
    patient id is a patient of its own."""
    missing = df["patient_id"] == ""
    return np.where(missing, "image:" + df["image_id"], "patient:" + df["patient_id"])


def patient_hashes(df) -> np.ndarray:
    """Sorted 64-bit hashes of the patients of `df` (`patient_keys`): what a checkpoint keeps
    of the patients it was trained and selected on, a few bytes each."""
    return np.unique(pd.util.hash_array(patient_keys(df).astype(object)).view(np.int64))


def read_split(work, name):
    """(table, classes) of one split."""
    df = read_table(split_csv(work, name), "split")
    check_dataset(work)
    return df, class_columns(df)


def checkpoint_dir(work) -> Path:
    return Path(work) / "checkpoints"


def epoch_checkpoint(work, epoch: int) -> Path:
    return checkpoint_dir(work) / f"epoch_{epoch:02d}.pth"


def epoch_checkpoints(work) -> dict:
    """{epoch: path} of the epoch checkpoints on disk, in epoch order."""
    found = {}
    for path in checkpoint_dir(work).glob("epoch_*.pth"):
        number = path.stem.removeprefix("epoch_")
        if number.isdigit():
            found[int(number)] = path
    return dict(sorted(found.items()))


def last_state(work) -> Path:
    """The whole training state a rerun resumes from."""
    return checkpoint_dir(work) / "last.pth"


def interim_weights(work) -> Path:
    """The EMA weights at the moment the time limit stopped training (timm-loadable)."""
    return checkpoint_dir(work) / "interim.pth"


def batch_back_off(work) -> Path:
    """The smaller per-GPU batch data-parallel processes restart with after running out of memory."""
    return checkpoint_dir(work) / "batch_back_off.json"


def history_csv(work) -> Path:
    return Path(work) / "history.csv"


def best_epoch(history: list) -> int:
    """The epoch of the best val macro AUC among history rows (the last where none was scored)."""
    scores = [(row["val_macro_auc"], row["epoch"]) for row in history if not np.isnan(row["val_macro_auc"])]
    return int(max(scores)[1] if scores else history[-1]["epoch"])


def best_epoch_weights(work) -> "Path | None":
    """The epoch file of the val-best epoch on disk (the newest where history.csv scores none of them)."""
    files = epoch_checkpoints(work)
    if not files:
        return None
    history = pd.read_csv(history_csv(work)) if history_csv(work).is_file() else pd.DataFrame()
    rows = history[history["epoch"].isin(list(files))].to_dict("records") if "epoch" in history else []
    return files[best_epoch(rows)] if rows else files[max(files)]


def soup_weights(work) -> Path:
    return Path(work) / "eva_x_final_soup.pth"


def weights_path(work, weights="") -> Path:
    """The weights to evaluate and predict with: `weights` (--weights), else the soup; a clear
    error when neither exists."""
    if weights:
        path = Path(weights)
        if not path.is_file():
            found = "is a folder" if path.is_dir() else "not found"
            raise KitError(f"--weights {path} {found}; pass a weights file (the soup, or "
                           f"checkpoints/epoch_NN.pth)")
        return path
    path = soup_weights(work)
    if not path.is_file():
        raise KitError(f"{path} not found: run --stage soup first, or pass --weights PATH")
    return path


def soup_report(work) -> Path:
    """The soup and each of its ingredients scored on val."""
    return reports_dir(work) / "soup.csv"


def val_predictions_csv(work) -> Path:
    """The soup's answers for each val film (pooled by study where the run pools): what a blend reads."""
    return reports_dir(work) / "val_predictions.csv"


def study_pool_json(work) -> Path:
    """The study-pool decision made on val, which predict follows under --study-pool auto."""
    return reports_dir(work) / "study_pool.json"


def generated_dir(work) -> Path:
    """The generate stage's images, <class>/*.png, with its tables and model: a --synthetic-dir."""
    return Path(work) / "generated"


def generated_manifest(work) -> Path:
    return generated_dir(work) / "manifest.csv"


def generated_trained_on(work) -> Path:
    """The real train images the generator learned from."""
    return generated_dir(work) / "trained_on.csv"


def generator_weights(work) -> Path:
    return generated_dir(work) / "generator.pth"


def generator_state(work) -> Path:
    """The generator's whole training state, for a rerun to resume."""
    return generated_dir(work) / "last.pth"


def generated_grid(work) -> Path:
    return reports_dir(work) / "generated_grid.png"


def reports_dir(work) -> Path:
    return Path(work) / "reports"


def submission_csv(work, part="") -> Path:
    """submission.csv; with `part`: submission_<part>.csv (partial: the rows a failed predict
    made; previous: an earlier run's, moved aside so that it cannot pass for this run's)."""
    return Path(work) / (f"submission_{part}.csv" if part else "submission.csv")


def unreadable_csv(work) -> Path:
    """The test images predict could not read, and why."""
    return reports_dir(work) / "predict_unreadable.csv"


def submission_report(work) -> Path:
    """Which weights made submission.csv, and whether it is interim."""
    return reports_dir(work) / "submission.json"


def kernel_output(work, kernel) -> Path:
    """Where --stage submit --from-kernel OWNER/SLUG[/VERSION] puts what it fetches."""
    return Path(work) / "kernel_output" / kernel.split("/")[1]


def run_log(work, stage, started) -> Path:
    """The log of a run of `stage` (or all) started at `started` (a time.struct_time)."""
    return Path(work) / "logs" / f"{stage}-{time.strftime('%Y%m%d-%H%M%S', started)}.log"


# what the stage table (kit/pipeline.py) names as a stage's reads and writes: the file or
# folder that shows the artifact is there
ARTIFACTS = {
    "filtered": filtered_csv,
    "dataset": manifest_csv,
    "splits": lambda work: split_csv(work, "train"),
    "checkpoints": checkpoint_dir,
    "history": history_csv,
    "soup": soup_weights,
    "reports": reports_dir,
    "submission": submission_csv,
    "generated": generated_dir,
}
