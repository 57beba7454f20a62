"""Generated images mixed into the training split only, capped per class.

A synthetic set is a folder of class subfolders (DIR/Cardiomegaly/*.png) or a CSV listing
`path,label` (labels split by '|') or `path` plus 0/1 class columns; CSV paths are relative to
the CSV's folder. Chosen images are stored like real ones (<work>/dataset/synthetic/..., shrunk
to --resize), so training reads them with no special case. Each gets an id that no real image
or patient id can equal, and is its own patient.
"""
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from kit import layout
from kit.data.images import IMAGE_SUFFIXES, store_all, stored_names
from kit.data.sources.common import normalize_name, read_csv_checked
from kit.errors import KitError, examples

FOLDER = "synthetic"
SHOWN = 5
STORED = ("written", "skipped")
SETTINGS = ("synthetic_dir", "synthetic_max_ratio", "synthetic_classes")  # what the mix depends on


def real_rows(split):
    """A split's real films: the rows a --synthetic-dir mixed in say `source: synthetic`."""
    return split[split["source"] != FOLDER] if "source" in split.columns else split


def _images(folder: Path) -> list:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _source(synthetic_dir) -> Path:
    source = Path(synthetic_dir)
    if not source.exists():
        raise KitError(f"--synthetic-dir {source} not found; pass a folder of class subfolders or a CSV")
    return source


def _read_csv(path: Path) -> pd.DataFrame:
    return read_csv_checked(path, ["path"], dtype=str, keep_default_na=False)


def source_files(synthetic_dir) -> list:
    """Every file the synthetic set of --synthetic-dir is made of (for the up-to-date checks)."""
    if not synthetic_dir:
        return []
    source = _source(synthetic_dir)
    if source.is_dir():
        return _images(source)
    return [source, *(source.parent / p for p in _read_csv(source)["path"])]


def _class_of(name: str, classes, where: str) -> str:
    by_norm = {normalize_name(c): c for c in classes}
    if normalize_name(name) not in by_norm:
        raise KitError(f"synthetic images {where} are of class {name!r}, not a target class "
                       f"({', '.join(classes)}); remove them, or make it a target with --classes")
    return by_norm[normalize_name(name)]


def _from_folder(root: Path, classes) -> pd.DataFrame:
    rows = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        images = _images(sub)
        if images:
            c = _class_of(sub.name, classes, f"in {sub}")
            rows += [{"path": str(p), "name": p.relative_to(root).as_posix(), c: 1} for p in images]
    loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        print(f"warning: {len(loose)} image(s) directly in {root} ignored: a synthetic image's class "
              f"is the name of its subfolder ({root}/<class>/)")
    if not rows:
        raise KitError(f"no synthetic images in {root}: put them in class subfolders ({root}/<class>/*.png) "
                       f"or pass a CSV with path,label columns")
    return pd.DataFrame(rows)


def _from_csv(path: Path, classes) -> pd.DataFrame:
    df = _read_csv(path)
    if "label" in df.columns:
        names = df["label"].str.get_dummies(sep="|")
        # "Pneumothorax | cardiomegaly": spellings of one class fold into its column
        owner = [_class_of(n.strip(), classes, f"listed in {path}") for n in names.columns]
        targets = names.T.groupby(owner).max().T
    else:
        targets = pd.DataFrame(index=df.index)
        known = {normalize_name(c) for c in classes}
        for column in df.columns.drop("path"):
            values = df[column].str.strip()
            # other 0/1 columns with positives are classes too (and errors); the rest is metadata
            if values.isin(["0", "1"]).all() and (normalize_name(column) in known or (values == "1").any()):
                targets[_class_of(column, classes, f"in column {column!r} of {path}")] = values.astype(int)
        if targets.empty:
            raise KitError(f"{path} needs a label column (class names, '|'-separated) or 0/1 columns "
                           f"named after the target classes ({', '.join(classes)})")
    if df["path"].duplicated().any():
        twice = df.loc[df["path"].duplicated(), "path"].iloc[0]
        raise KitError(f"{path} lists {twice!r} twice; list each image once")
    table = pd.DataFrame({"path": [str(path.parent / p) for p in df["path"]],
                          "name": [PurePosixPath(p.replace("\\", "/")).as_posix() for p in df["path"]]})
    return pd.concat([table, targets], axis=1)


def listing(synthetic_dir, classes) -> pd.DataFrame:
    """Every synthetic image of --synthetic-dir: path, name (relative), one 0/1 column per class."""
    source = _source(synthetic_dir)
    table = _from_folder(source, classes) if source.is_dir() else _from_csv(source, classes)
    table = table.reindex(columns=["path", "name", *classes]).fillna(0)
    table[classes] = table[classes].astype(int)
    empty = table[classes].sum(axis=1) == 0
    if empty.any():
        raise KitError(f"synthetic image {table.loc[empty, 'path'].iloc[0]} has no class; give each "
                       f"image at least one target class")
    return table


def taking_classes(spec: str, classes) -> list:
    """The classes --synthetic-classes lets take synthetic images (default: all)."""
    if not spec.strip():
        return list(classes)
    by_norm = {normalize_name(c): c for c in classes}
    asked = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in asked if normalize_name(n) not in by_norm]
    if unknown:
        raise KitError(f"--synthetic-classes names {', '.join(map(repr, unknown))}, not a target class "
                       f"({', '.join(classes)})")
    return list(dict.fromkeys(by_norm[normalize_name(n)] for n in asked))


def within_cap(targets, room, candidates) -> list:
    """Candidates, in order, taken while every class of each still has room."""
    room, taken = np.array(room, dtype=float), []
    for i in candidates:
        positive = targets[i] == 1
        if (room[positive] >= 1).all():
            taken.append(i)
            room -= targets[i]
    return taken


def found_per_class(synthetic_dir, synthetic_classes, classes) -> list:
    """Synthetic images available per class, before the cap (the metadata stage's summary)."""
    table = listing(synthetic_dir, classes)
    allowed = taking_classes(synthetic_classes, classes)
    return [int(table[c].sum()) if c in allowed else 0 for c in classes]


def id_prefix(used: pd.Series) -> str:
    """A prefix that none of the `used` ids starts with."""
    prefix = FOLDER + "/"
    while used.str.startswith(prefix).any():
        prefix = "_" + prefix
    return prefix


def mix(train: pd.DataFrame, classes, used_ids: pd.Series, work, resize, workers, seed, *,
        synthetic_dir, synthetic_max_ratio, synthetic_classes) -> pd.DataFrame:
    """`train` with capped synthetic rows appended (source "synthetic"), stored under `work` at
    `resize`; `used_ids`: the image and patient ids of every real image, which no synthetic id may
    equal. The keywords: the settings of those names (SETTINGS)."""
    found = listing(synthetic_dir, classes)
    allowed = taking_classes(synthetic_classes, classes)
    outside = found[[c for c in classes if c not in allowed]].sum(axis=1) > 0
    table = found[~outside].reset_index(drop=True)
    prefix = id_prefix(used_ids)
    table["image_id"] = prefix + table["name"]
    table["file"] = f"{FOLDER}/" + stored_names(table["name"], resize)
    if table["file"].duplicated().any():
        clash = table.loc[table["file"].duplicated(), "file"].iloc[0]
        raise KitError(f"two synthetic images would be stored as {clash!r}; rename one (names must "
                       f"differ apart from their suffix)")

    dataset = layout.dataset_dir(work)
    shutil.rmtree(dataset / FOLDER, ignore_errors=True)  # the set or the cap may have changed: no stale image
    targets = table[classes].to_numpy()
    room = np.floor(synthetic_max_ratio * train[classes].to_numpy().sum(axis=0))
    queue = list(np.random.default_rng(seed).permutation(len(table)))
    kept, failed = [], []
    # an unreadable image frees its place for the next candidate of its class
    while chosen := within_cap(targets, room, queue):
        jobs = [(table.at[i, "path"], str(dataset / table.at[i, "file"])) for i in chosen]
        status = [s for s, _, _ in store_all(jobs, resize, workers, "[split] synthetic")]
        ok = [i for i, s in zip(chosen, status) if s in STORED]
        failed += [(table.at[i, "path"], s) for i, s in zip(chosen, status) if s not in STORED]
        room -= targets[ok].sum(axis=0)
        kept += ok
        done = set(chosen)
        queue = [i for i in queue if i not in done]

    added = table.loc[sorted(kept)].reset_index(drop=True)
    rows = pd.DataFrame({"image_id": added["image_id"], "patient_id": added["image_id"], "view": "",
                         "path": added["path"],
                         "label": ["|".join(np.array(classes)[t == 1]) for t in added[classes].to_numpy()],
                         "file": added["file"], "status": "ok", "source": FOLDER, **added[classes]})
    _report(len(found), int(outside.sum()), len(rows), failed, synthetic_max_ratio)
    return pd.concat([train, rows], ignore_index=True)


def _report(found, outside, added, failed, ratio):
    left_out = f", {outside} of classes outside --synthetic-classes left out" if outside else ""
    print(f"[split] synthetic: {found} found, {added} added to train (at most {ratio:g}x a class's "
          f"real train images){left_out}")
    if failed:
        shown = examples([f"{p} ({s})" for p, s in failed], SHOWN, sort=False)
        print(f"[split] warning: {len(failed)} synthetic file(s) could not be read and were skipped: {shown}")
