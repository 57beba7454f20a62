"""CheXpert (train.csv / valid.csv of CheXpert-v1.0 or -small).

`Path` is like CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg, relative to
the folder above the dataset's own; the patient id and the study live only in that path. Labels are 1, 0,
-1 (uncertain) or empty; --uncertain zero|one|drop decides what -1 means.
"""
import re
from pathlib import Path

import pandas as pd

from kit.data.sources.common import STUDY_CLASSES, paths_under, read_csv_checked, resolve_classes
from kit.errors import KitError

NAME = "chexpert"
MARKERS = ("train.csv",)
SIGNATURE = "Frontal/Lateral"
FINDINGS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
            "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
            "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")
REQUIRED = ("Path", "Frontal/Lateral", "AP/PA") + FINDINGS
DEFAULT_CLASSES = STUDY_CLASSES
OPTIONS = ("classes", "uncertain")  # the settings `load` takes
COMPANIONS = ("valid.csv",)  # read beside the CSV when there: the validation set's labels
PATIENT = re.compile(r"(patient\d+)")
STUDY = re.compile(r"/(study\d+)/")


def _image_root(csv_path: Path, first: str) -> Path:
    """The folder `Path` entries are relative to: above the dataset folder, or the CSV's own."""
    for root in (csv_path.parent.parent, csv_path.parent):
        if (root / first).exists():
            return root
    return csv_path.parent.parent


def _read(csv_path: Path) -> pd.DataFrame:
    frames = [read_csv_checked(csv_path, REQUIRED)]
    valid = csv_path.with_name("valid.csv")
    if valid.exists():
        frames.append(read_csv_checked(valid, REQUIRED))
    return pd.concat(frames, ignore_index=True)


def _apply_uncertain(labels: pd.DataFrame, policy: str, targets) -> tuple:
    """(labels as 0/1, mask of rows to keep) under the --uncertain policy."""
    uncertain = labels == -1
    keep = ~uncertain[targets].any(axis=1) if policy == "drop" else pd.Series(True, index=labels.index)
    fill = 1 if policy == "one" else 0
    return labels.mask(uncertain, fill), keep


def load(csv_path: Path, classes, uncertain):
    df = _read(csv_path)
    labels = df[list(FINDINGS)].apply(pd.to_numeric, errors="coerce").fillna(0)
    bad = sorted(set(labels.to_numpy().ravel()) - {-1, 0, 1})
    if bad:
        raise KitError(f"{csv_path.name} has label values {bad}; CheXpert labels are 1, 0, -1 or empty")
    targets = resolve_classes(classes, FINDINGS, DEFAULT_CLASSES)
    labels, keep = _apply_uncertain(labels, uncertain, targets)
    if not keep.all():
        print(f"[metadata] --uncertain drop: {int((~keep).sum())} images with an uncertain target left out")
    root = _image_root(csv_path, df["Path"].iloc[0]) if len(df) else csv_path.parent
    frontal = df["Frontal/Lateral"].astype(str).str.strip().str.lower() == "frontal"
    view = df["AP/PA"].where(frontal, "LATERAL")
    table = labels.astype(int)
    table.insert(0, "image_id", df["Path"])
    table.insert(1, "path", paths_under(root, df["Path"]))
    table.insert(2, "patient_id", df["Path"].str.extract(PATIENT, expand=False))
    table.insert(3, "view", view)
    table.insert(4, "study_id", df["Path"].str.extract(STUDY, expand=False).fillna(""))
    return table[keep.to_numpy()].reset_index(drop=True)
