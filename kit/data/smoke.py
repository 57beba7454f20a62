"""--smoke: the real path in minutes. Every stage runs on a small slice of the real data (a few
hundred images of whole patients, every class in each split where the data allows, one short
epoch, a few dozen test films) with the real model, so a wrong data path, missing weights or a
bad sample submission shows before a 12-hour session is spent.

It works in <work>/smoke: its checkpoints, its soup and its submission (<work>/smoke/
submission.csv) never meet a real run's, and a real run in the same work dir starts from scratch.
"""
from pathlib import Path

import numpy as np
import pandas as pd

from kit import layout

FOLDER = "smoke"
IMAGES = 400  # about 5 updates of 64 images, and a few dozen val and test images
PATIENTS_PER_CLASS = 4  # enough for a positive in train, val and test
TEST_FILMS = 48


def folders(work_dir, dataset_dir) -> tuple:
    """(--work-dir, --dataset-dir) of the smoke: its own folders inside the real run's."""
    if Path(work_dir).name != FOLDER:
        work_dir = str(Path(work_dir) / FOLDER)
    if dataset_dir != "auto" and Path(dataset_dir).name != FOLDER:  # not the real run's images
        dataset_dir = str(Path(dataset_dir) / FOLDER)
    return work_dir, dataset_dir


def defaults(task) -> dict:
    """What a smoke run changes where the user did not choose (the demo's defaults included)."""
    return dict(epochs=1, bootstrap=100, val_frac=0.1, test_frac=0.1 if task == "study" else 0.0)


def take(df: pd.DataFrame, classes, seed: int) -> pd.DataFrame:
    """About IMAGES rows of whole patients: a few patients of every class first, then others at
    random."""
    rng = np.random.default_rng(seed)
    keys = layout.patient_keys(df)
    first = []
    for c in classes:
        have = np.setdiff1d(np.unique(keys[df[c].to_numpy() == 1]), first)
        first.extend(rng.permutation(have)[:PATIENTS_PER_CLASS])
    rest = rng.permutation(np.setdiff1d(np.unique(keys), first))
    sizes = pd.Series(keys).value_counts()
    filled = sizes.loc[rest].cumsum() + sizes.loc[first].sum()
    kept = set(first) | set(filled.index[filled <= IMAGES])
    return df[np.isin(keys, list(kept))].reset_index(drop=True)
