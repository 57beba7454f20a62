"""Predict stage: probabilities for a competition's test images -> submission.csv.

The images come from a sample submission (--predict-csv: its first column names the images,
the other columns are the classes asked for, in the order the submission must keep) or from
a folder (--predict-dir). Grand X-Ray Slam's sample_submission_N.csv with its testN/ folder is
found without flags under the data folder (on Kaggle: /kaggle/input).
"""
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from kit import env, layout, stamps
from kit.errors import KitError
from kit.io import write_csv
from kit.model import read_weights
from kit.scoring import Scorer
from kit.sources import normalize_name
from kit.sources.common import read_csv_checked
from kit.stages.evaluate import weights_path

SAMPLE_NAMES = ("sample_submission_1.csv", "sample_submission_2.csv")
SEARCH_DEPTH = 4
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
FOLDER_ID_COLUMN = "image"
SHOWN = 5


def _find_sample(cfg):
    roots = [Path(cfg.data_dir)] if cfg.data_dir else env.data_roots(env.platform())
    for root in roots:
        for depth in range(SEARCH_DEPTH + 1):
            for name in SAMPLE_NAMES:
                hits = sorted(root.glob("*/" * depth + name)) if root.is_dir() else []
                if hits:
                    return hits[0]
    return None


def _folder_beside(csv: Path) -> Path:
    """testN/ beside sample_submission_N.csv (the competition's layout), else test/, else its folder."""
    suffix = re.sub(r"^sample_submission_?", "", csv.stem)
    for name in (f"test{suffix}", "test", "test_images"):
        if (csv.parent / name).is_dir():
            return csv.parent / name
    return csv.parent


def find_inputs(cfg):
    """(sample submission or None, image folder or None); both None when there is nothing to predict."""
    csv = Path(cfg.predict_csv) if cfg.predict_csv else None
    folder = Path(cfg.predict_dir) if cfg.predict_dir else None
    if csv and not csv.is_file():
        raise KitError(f"--predict-csv {csv} not found; pass the competition's sample submission")
    if folder and not folder.is_dir():
        raise KitError(f"--predict-dir {folder} is not a folder; pass the folder of test images")
    if not csv and not folder:
        csv = _find_sample(cfg)
    if csv and not folder:
        folder = _folder_beside(csv)
    return csv, folder


def wanted(cfg) -> bool:
    return bool(cfg.predict_csv or cfg.predict_dir) or _find_sample(cfg) is not None


def index_images(folder: Path) -> dict:
    """Every image below `folder` by relative path, file name and stem (first one wins)."""
    index = {}
    for dirpath, _, files in os.walk(folder):
        for name in sorted(files):
            path = Path(dirpath) / name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                for key in (path.relative_to(folder).as_posix(), name, path.stem):
                    index.setdefault(key, path)
    return index


def match_classes(asked, known) -> list:
    """Model class index of each submission column, matched by normalized name."""
    by_name = {normalize_name(c): k for k, c in enumerate(known)}
    unknown = [c for c in asked if normalize_name(c) not in by_name]
    if unknown or not asked:
        raise KitError(f"the submission asks for classes {list(asked)} but the model knows {list(known)} "
                       f"({'unknown: ' + ', '.join(unknown) if unknown else 'no class column'}); train on "
                       f"the classes the competition scores: --classes \"{','.join(asked)}\"")
    return [by_name[normalize_name(c)] for c in asked]


def _read_sample(csv, **kwargs) -> pd.DataFrame:
    return read_csv_checked(csv, (), "a sample submission (image ids, then one column per class)",
                            dtype=str, keep_default_na=False, **kwargs)


def check_ahead(cfg):
    """For --stage all once the metadata stage has chosen the targets: a sample submission that
    asks for other classes stops the run now, not after training."""
    csv, _ = find_inputs(cfg)
    if csv:
        targets = layout.class_columns(pd.read_csv(layout.filtered_csv(cfg.work), nrows=0))
        match_classes(list(_read_sample(csv, nrows=0).columns[1:]), targets)


def _fill_values(cfg, classes, probs, ok):
    """(values, how): the prevalence of each class among the real training images, or the mean
    prediction without them."""
    train_csv = layout.split_csv(cfg.work, "train")
    if train_csv.exists():
        train, train_classes = layout.read_split(cfg.work, "train")
        if "source" in train:  # synthetic images inflate the scarce classes on purpose
            train = train[train["source"] != "synthetic"]
        if list(train_classes) == list(classes) and len(train):
            return train[classes].to_numpy().mean(0), "the training prevalence"
    return probs[ok].mean(0), "the mean prediction over the readable images (no splits/train.csv)"


def run(cfg):
    csv, folder = find_inputs(cfg)
    if folder is None:
        raise KitError("nothing to predict: pass --predict-csv SAMPLE_SUBMISSION and/or --predict-dir FOLDER")
    weights, out = weights_path(cfg), layout.submission_csv(cfg.work)
    stored = layout.stored_resize(cfg.work, cfg.resize)
    settings = dict(weights=str(weights), csv=str(csv), folder=str(folder), tta=cfg.tta, amp=cfg.amp,
                    on_missing=cfg.on_missing, shorter_side=stored)
    index = index_images(folder)
    # every image, not the folder: a file copied over another leaves the folder's time as it was
    inputs = [weights, *([csv] if csv else []), *sorted(set(index.values()))]
    if stamps.up_to_date(cfg, "predict", settings, inputs, [out]):
        return

    ckpt = read_weights(weights)
    classes = list(ckpt["classes"])
    if csv:
        sample = _read_sample(csv)
        id_col, asked = sample.columns[0], list(sample.columns[1:])
        columns = match_classes(asked, classes)
        ids = sample[id_col].tolist()
        repeated = sample[id_col][sample[id_col].duplicated()].unique()
        if len(repeated):
            print(f"warning: {len(repeated)} ids appear more than once in {csv} (first: {repeated[0]}); "
                  f"each row gets the image's prediction, as the sample asks")
    else:
        id_col, asked, columns = FOLDER_ID_COLUMN, classes, list(range(len(classes)))
        ids = sorted({p.relative_to(folder).as_posix() for p in index.values()})
    if not ids:
        raise KitError(f"no images to predict in {csv or folder}")
    paths = [index.get(i, folder / i) for i in ids]
    found = sum(i in index for i in ids)
    if not found:
        raise KitError(f"none of the {len(ids)} images the submission names (first: {ids[0]}) is in "
                       f"{folder}; pass the folder holding them with --predict-dir")
    print(f"[predict] {len(ids)} images ({found} found in {folder}) with {weights}")

    # read as the separate stage stored the training images: faster than a full decode, and closer
    # to what the model saw; never below the model's input size (weights from a run stored larger)
    shorter_side = max(stored, ckpt["img_size"]) if stored else 0
    scorer = Scorer({"test": paths}, ckpt["img_size"], cfg, shorter_side=shorter_side)
    probs, ok = scorer(ckpt, "test", "[predict]")
    print(f"[predict] {len(ids)} images at {scorer.images_per_s:.1f} images/s ({scorer.describe()})")
    submission = pd.DataFrame({id_col: ids})
    submission[asked] = probs[:, columns]

    partial, listed = cfg.work / "submission_partial.csv", cfg.work / "predict_unreadable.csv"
    if not ok.all():
        bad = pd.DataFrame({id_col: np.array(ids)[~ok], "path": np.array(paths, dtype=str)[~ok]})
        bad["problem"] = ["missing" if not Path(p).exists() else "unreadable" for p in bad["path"]]
        write_csv(bad, listed)
        shown = ", ".join(bad[id_col][:SHOWN]) + (" ..." if len(bad) > SHOWN else "")
        if not ok.any():
            raise KitError(f"none of the {len(ids)} images could be read ({shown}; all in {listed}); "
                           f"check that --predict-dir points at the test images")
        if cfg.on_missing == "fail":
            write_csv(submission[ok], partial)
            moved = ""
            if out.exists():  # an earlier run's file must not pass for this run's (Kaggle submits it)
                out.replace(out.with_name("submission_previous.csv"))
                moved = " (the earlier one is now submission_previous.csv)"
            raise KitError(f"{len(bad)} of {len(ids)} images could not be predicted ({shown}; all in "
                           f"{listed}); the {ok.sum()} others are in {partial}, submission.csv is not "
                           f"written{moved}: fix the images, or pass --on-missing fill to fill their rows")
        values, how = _fill_values(cfg, classes, probs, ok)
        submission.loc[~ok, asked] = values[columns]
        print(f"warning: {len(bad)} of {len(ids)} images could not be predicted ({shown}; all in {listed}); "
              f"their rows are filled with {how} (--on-missing fill)")
    write_csv(submission, out)
    partial.unlink(missing_ok=True)  # an earlier failed run's: this run wrote the whole file
    if ok.all():
        listed.unlink(missing_ok=True)
    stamps.record(cfg, "predict", settings, inputs)
    print(f"[predict] {out}: {len(submission)} rows, columns {id_col}, {', '.join(asked)}")
