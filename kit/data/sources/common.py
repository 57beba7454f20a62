"""Helpers every dataset adapter shares."""
import os
import re
from pathlib import Path

import pandas as pd

from kit.errors import KitError

NO_FINDING = "no finding"
STUDY_CLASSES = ("Pneumothorax", "Cardiomegaly", "Lung Opacity", "Pleural Effusion", "Support Devices")


def normalize_name(name: str) -> str:
    """Class names compare case-insensitively with `_`, `-` and spaces folded."""
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


def paths_under(root, names: pd.Series) -> pd.Series:
    """Each name's path under `root`, as a string; an absolute name stays as it is. One string
    operation for the column, where a Path per row costs seconds at 200k rows."""
    names = names.astype(str)
    return names.where(names.map(os.path.isabs), os.path.join(str(root), "") + names)


def finding_columns(table) -> list:
    fixed = {"image_id", "path", "patient_id", "view", "official_split", "study_id"}
    return [c for c in table.columns if c not in fixed]


def read_csv_checked(path: Path, required, what="the dataset's metadata CSV", **kwargs) -> pd.DataFrame:
    """Read a CSV (by default a metadata CSV), naming any missing required column and the columns found."""
    try:
        df = pd.read_csv(path, **kwargs)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise KitError(f"cannot read {path}: {e}; check the file is {what}") from e
    missing = [c for c in required if c not in df.columns]
    if missing:  # required: column names, or a dict of them to the flags that name them
        named = [f"{c!r}" + (f" ({required[c]})" if isinstance(required, dict) else "") for c in missing]
        raise KitError(f"{path.name} lacks column(s) {', '.join(named)}; "
                       f"columns found: {', '.join(map(str, df.columns))}")
    return df


def resolve_classes(requested: str, findings, defaults) -> list:
    """Target classes in the dataset's own spelling, in the order asked for."""
    by_norm = {normalize_name(f): f for f in findings}
    if requested.strip().lower() == "all":
        chosen = [f for f in findings if normalize_name(f) != NO_FINDING]
    else:
        names = [c for c in (requested.split(",") if requested else defaults) if c.strip()]
        unknown = [n.strip() for n in names if normalize_name(n) not in by_norm]
        if unknown:
            raise KitError(f"class(es) {', '.join(map(repr, unknown))} not in this dataset; "
                           f"available: {', '.join(findings)}")
        chosen = list(dict.fromkeys(by_norm[normalize_name(n)] for n in names))
    if len(chosen) < 2:
        raise KitError(f"need at least 2 target classes, got {chosen}; pass --classes A,B[,...]")
    return chosen
