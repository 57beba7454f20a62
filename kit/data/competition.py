"""A competition's test set: its sample submission, the image folder beside it, and the classes
it scores. The metadata stage reads the classes (competition task), the train stage the number
of test images (to keep time for predicting them), the predict stage all of it.

A sample submission's first column names the images; every other column is a class the
competition scores, in the order the submission must keep. Grand X-Ray Slam's
sample_submission_N.csv with its testN/ folder is found without flags under the data folder
(on Kaggle: /kaggle/input).
"""
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from kit import env
from kit.data.images import IMAGE_SUFFIXES
from kit.data.sources import normalize_name
from kit.data.sources.common import paths_under, read_csv_checked
from kit.errors import KitError

SAMPLE_NAMES = ("sample_submission_1.csv", "sample_submission_2.csv")
SEARCH_DEPTH = 4
SUFFIX = r"(?s)(?<=.)(\.[^.]+)\Z"  # a file name's suffix as pathlib reads it


def find_sample(data_dir) -> "Path | None":
    """The first sample submission under `data_dir` (--data-dir; empty: this platform's data folders)."""
    roots = [Path(data_dir)] if data_dir else env.data_roots(env.platform())
    for root in roots:
        for depth in range(SEARCH_DEPTH + 1):
            for name in SAMPLE_NAMES:
                hits = sorted(root.glob("*/" * depth + name)) if root.is_dir() else []
                if hits:
                    return hits[0]
    return None


def folder_beside(csv: Path) -> Path:
    """testN/ beside sample_submission_N.csv (the competition's layout), else test/, else its folder."""
    suffix = re.sub(r"^sample_submission_?", "", csv.stem)
    for name in (f"test{suffix}", "test", "test_images"):
        if (csv.parent / name).is_dir():
            return csv.parent / name
    return csv.parent


def find_inputs(predict_csv, predict_dir, data_dir):
    """(sample submission or None, image folder or None) from --predict-csv, --predict-dir, else
    searched under --data-dir; both None when there is nothing to predict."""
    csv = Path(predict_csv) if predict_csv else None
    folder = Path(predict_dir) if predict_dir else None
    if csv and not csv.is_file():
        raise KitError(f"--predict-csv {csv} not found; pass the competition's sample submission")
    if folder and not folder.is_dir():
        raise KitError(f"--predict-dir {folder} is not a folder; pass the folder of test images")
    if not csv and not folder:
        csv = find_sample(data_dir)
    if csv and not folder:
        folder = folder_beside(csv)
    return csv, folder


def skip_reason(trained, task, predict_csv, predict_dir, data_dir) -> "str | None":
    """Why a run of --task `task` training `trained` classes makes no submission (None: it makes
    one). The study does not stop over a competition's sample that scores other classes than it
    trains: it says which task makes that submission."""
    csv, folder = find_inputs(predict_csv, predict_dir, data_dir)
    if folder is None:
        return "no sample submission found and no --predict-dir: nothing to predict"
    if csv and not predict_csv and task == "study":
        asked = sample_classes(csv)
        if unknown_classes(asked, trained):
            return (f"{csv.name} scores {len(asked)} classes and the study trains {len(trained)} "
                    f"({', '.join(trained)}); --task competition trains on what it scores and writes "
                    f"submission.csv")
    return None


def read_sample(csv, **kwargs) -> pd.DataFrame:
    return read_csv_checked(csv, (), "a sample submission (image ids, then one column per class)",
                            dtype=str, keep_default_na=False, **kwargs)


def sample_classes(csv) -> list:
    """The classes a sample submission scores, in its order; an error when it names none."""
    columns = list(read_sample(csv, nrows=0).columns)
    if len(columns) < 2:
        raise KitError(f"{csv} has no class columns (its header: {','.join(columns) or 'empty'}); a sample "
                       f"submission holds the image ids, then one column per scored class")
    return columns[1:]


def sample_rows(csv) -> int:
    with open(csv, "rb") as f:
        return max(sum(1 for line in f if line.strip()) - 1, 0)


def unknown_classes(asked, known) -> list:
    """The names of `asked` that none of `known` matches (case, `_` and spaces aside)."""
    names = set(map(normalize_name, known))
    return [c for c in asked if normalize_name(c) not in names]


def match_classes(asked, known) -> list:
    """Model class index of each submission column, matched by normalized name."""
    by_name = {normalize_name(c): k for k, c in enumerate(known)}
    unknown = unknown_classes(asked, known)
    if unknown or not asked:
        raise KitError(f"the submission asks for classes {list(asked)} but the model knows {list(known)} "
                       f"({'unknown: ' + ', '.join(unknown) if unknown else 'no class column'}); train on "
                       f"what the competition scores with --task competition")
    return [by_name[normalize_name(c)] for c in asked]


def same_classes(asked, known) -> bool:
    return sorted(map(normalize_name, asked)) == sorted(map(normalize_name, known))


def has_images(folder: Path) -> bool:
    for _, _, files in os.walk(folder):
        if any(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in files):
            return True
    return False


def index_images(folder) -> dict:
    """Every image below `folder` by relative posix path, file name and stem (first one wins, in
    sorted order of folders and files, the same on every file system), to its path as a string. Built with column string
    operations and one dict, where a Path per file costs seconds at 46k test films."""
    dirs, rel_dirs, names = [], [], []
    for dirpath, subdirs, files in os.walk(folder):
        subdirs.sort()
        rel = os.path.relpath(dirpath, folder)
        dirs += [os.path.join(dirpath, "")] * len(files)
        rel_dirs += ["" if rel == "." else rel.replace(os.sep, "/") + "/"] * len(files)
        names += sorted(files)
    names = pd.Series(names, dtype=object)
    suffix = names.str.extract(SUFFIX, expand=False).fillna("")  # pathlib's: not a leading dot
    image = suffix.str.lower().isin(IMAGE_SUFFIXES).to_numpy()
    names = names[image]
    stems = names.str.replace(SUFFIX, "", regex=True)
    keys = np.column_stack([(pd.Series(rel_dirs, dtype=object)[image] + names).to_numpy(),
                            names.to_numpy(), stems.to_numpy()]).ravel()
    paths = np.repeat((pd.Series(dirs, dtype=object)[image] + names).to_numpy(), 3)
    return dict(zip(keys[::-1].tolist(), paths[::-1].tolist()))  # reversed: the first one is written last


def relative_ids(index: dict, folder) -> list:
    """The sorted relative posix paths of the images of `index` (index_images of `folder`)."""
    paths = pd.Series(sorted(set(index.values())), dtype=object)
    return sorted(paths.str.slice(len(os.path.join(str(folder), ""))).str.replace(os.sep, "/", regex=False))


def locate(index: dict, ids, folder) -> "tuple[list, int]":
    """(the path of each id: its image in `index`, else the id under `folder`; how many are in it)."""
    ids = pd.Series(ids, dtype=object)
    found = ids.map(index).astype(object)  # all NaN (float) when none is there
    return found.fillna(paths_under(folder, ids)).tolist(), int(found.notna().sum())
