"""Answers per study: the films of one study (one patient's visit) share their labels where the
labels come from the study's report, so their probabilities can be pooled into one answer.

A film's study comes from the split's `study_id` column (with its patient) for train and val,
and from the competition's file names, `<patient>_<study>_<view>.jpg`, for the test films. The
`auto` decision is made on val: per-film against pooled macro AUC, and pooling only where the
training labels are constant within studies.
"""
import json
import re
from pathlib import PurePath

import numpy as np
import pandas as pd

from kit import layout
from kit.reports.metrics import macro_auc

METHODS = ("mean", "max")
# pooling needs the labels of nearly every study to be one answer: a study whose films disagree
# (labels read per film) is pulled towards its other films' answer
MIN_CONSTANT_SHARE = 0.9
TEST_NAME = re.compile(r"^(?P<patient>[^_]+)_(?P<study>[^_]+)_[^_]+$")


def table_keys(df) -> np.ndarray:
    """One key per row, equal for the films of one study; a row without a study is its own."""
    if "study_id" not in df.columns:
        return ("film:" + df["image_id"].astype(str)).to_numpy()
    study = df["study_id"].fillna("").astype(str)  # a split read back has NaN where it wrote ""
    return np.where(study == "", "film:" + df["image_id"].astype(str),
                    "study:" + df["patient_id"].astype(str) + "/" + study)


def name_keys(names) -> "np.ndarray | None":
    """Study keys from test file names `<patient>_<study>_<view>.<ext>`; None when no name has
    that form (each film then answers alone)."""
    stems = [PurePath(str(n)).stem for n in names]
    found = [TEST_NAME.match(s) for s in stems]
    if not any(found):
        return None
    return np.array([f"study:{m['patient']}/{m['study']}" if m else f"film:{s}" for m, s in zip(found, stems)])


def pool(probs, keys, how) -> np.ndarray:
    """Each row replaced by its study's `how` (mean or max) over the rows of that study; NaN rows
    (unreadable films) take no part and stay NaN."""
    if how == "none":
        return probs
    frame = pd.DataFrame(probs)
    pooled = frame.groupby(np.asarray(keys), sort=False).transform(how).to_numpy()
    return np.where(np.isnan(probs), np.nan, pooled)


def constant_share(df, classes) -> "tuple[float, int]":
    """(share of the studies of several films whose films all carry the same labels, how many
    such studies); NaN share when there are none."""
    keys = table_keys(df)
    labels = df[classes].reset_index(drop=True)
    sizes = pd.Series(keys).value_counts()
    multi = sizes[sizes > 1].index
    if not len(multi):
        return float("nan"), 0
    rows = pd.Series(keys).isin(multi).to_numpy()
    distinct = labels[rows].groupby(keys[rows]).nunique().max(axis=1)
    return float((distinct == 1).mean()), int(len(multi))


def decide(setting, y, probs, keys, share) -> dict:
    """The study-pool decision on val: each way's macro AUC (films whose probabilities are known)
    and the method used. `auto` takes the best, pooling only when `share` of the training
    studies have constant labels (MIN_CONSTANT_SHARE)."""
    ok = ~np.isnan(probs).any(axis=1)
    aucs = {how: macro_auc(y[ok], pool(probs, keys, how)[ok]) for how in ("none", *METHODS)}
    multi = int((pd.Series(keys).value_counts() > 1).sum())
    if setting != "auto":
        method, why = setting, "--study-pool " + setting
    elif not multi:
        method, why = "none", "no val study has more than one film"
    elif not share >= MIN_CONSTANT_SHARE:
        method, why = "none", f"labels differ within studies ({share:.1%} of training studies constant)"
    else:
        method = max(("none", *METHODS), key=lambda how: (aucs[how], how == "none"))
        why = "the best val macro AUC"
    return dict(method=method, reason=why, val_macro_auc={k: float(v) for k, v in aucs.items()},
                constant_share=share, val_studies_with_several_films=multi)


def describe(decision) -> str:
    a = decision["val_macro_auc"]
    share = decision["constant_share"]
    shown = "no study of several films" if share != share else f"{share:.1%}"
    return (f"study pool: {decision['method']} ({decision['reason']}); val macro AUC per film {a['none']:.4f}, "
            f"study mean {a['mean']:.4f}, study max {a['max']:.4f}; training studies with constant labels: "
            f"{shown}")


def read_decision(work) -> "dict | None":
    path = layout.study_pool_json(work)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def for_test(study_pool, work, names, probs):
    """The test films' probabilities as the run answers them: pooled by study where --study-pool
    `study_pool` (or under auto the val decision in `work`) pools and the names carry studies."""
    method = study_pool
    if method == "auto":
        decision = read_decision(work)
        if decision is None:
            print("[predict] study pool: per film (no val decision in reports/; run --stage soup)")
            return probs
        method = decision["method"]
    if method == "none":
        return probs
    keys = name_keys(names)
    if keys is None:
        print(f"[predict] study pool: per film, the test names carry no study (<patient>_<study>_<view>.jpg; "
              f"first: {names[0]})")
        return probs
    studies = len(set(keys))
    print(f"[predict] study pool: {method} over {studies} studies of {len(keys)} films")
    return pool(probs, keys, method)
