"""Any CSV: the user names the image, patient, view and label columns.

Labels come either as 0/1 columns (--label-cols A,B,C) or as one column of separated names
(--labels-col Findings --labels-sep '|'). Image paths are relative to --image-root
(default: the CSV's folder) unless absolute.
"""
import re
from pathlib import Path

import pandas as pd

from kit.data.sources.common import normalize_name, paths_under, read_csv_checked
from kit.errors import KitError

NAME = "csv"
MARKERS = ()
SIGNATURE = None
DEFAULT_CLASSES = ()
# the settings `load` takes
OPTIONS = ("image_col", "patient_col", "view_col", "label_cols", "labels_col", "labels_sep", "image_root")
COMPANIONS = ()  # files read beside the CSV


def _labels(df: pd.DataFrame, label_cols, labels_col, labels_sep) -> pd.DataFrame:
    if label_cols:
        cols = [c.strip() for c in label_cols.split(",") if c.strip()]
        return df[cols].apply(lambda col: col.str.strip().mask(col.str.strip() == ""))  # sources.read checks 0/1
    if labels_col:
        names = df[labels_col].fillna("").astype(str).str.strip()
        names = names.str.replace(rf"\s*{re.escape(labels_sep)}\s*", labels_sep, regex=True)  # "A | B": A, B
        onehot = names.str.get_dummies(sep=labels_sep)
        # one finding however it is written ("Pneumonia", "pneumonia"), under its first spelling
        first = {}
        for c in onehot.columns:
            first.setdefault(normalize_name(c), c)
        return onehot.T.groupby(onehot.columns.map(lambda c: first[normalize_name(c)])).max().T
    raise KitError("--dataset csv needs --label-cols A,B,... (0/1 columns) or --labels-col NAME")


def load(csv_path: Path, image_col, patient_col, view_col, label_cols, labels_col, labels_sep, image_root):
    flags = {image_col: "--image-col", patient_col: "--patient-col", view_col: "--view-col",
             labels_col: "--labels-col", **{c.strip(): "--label-cols" for c in label_cols.split(",")}}
    required = {c: flag for c, flag in flags.items() if c}
    df = read_csv_checked(csv_path, required, dtype=str, keep_default_na=False)
    root = Path(image_root) if image_root else csv_path.parent
    labels = _labels(df, label_cols, labels_col, labels_sep)
    table = labels.reset_index(drop=True)
    table.insert(0, "image_id", df[image_col])
    table.insert(1, "path", paths_under(root, df[image_col]))
    table.insert(2, "patient_id", df[patient_col] if patient_col else "")
    table.insert(3, "view", df[view_col] if view_col else "")
    return table
