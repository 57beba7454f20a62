"""Blend stage: several finished runs -> one submission.csv weighted on their shared val films.

Each run (a work directory, or a Kaggle kernel's output attached as an input) kept its soup's val
answers (reports/val_predictions.csv) and its submission.csv. Runs that differ in model, loss,
image size or training seed answer the same val films when they share --split-seed. The weights
are Caruana et al.'s ensemble selection or equal weights, whichever scores the better val macro
AUC (reports/blend.csv: every run's, both blends', the weights).
"""
from pathlib import Path

import numpy as np
import pandas as pd

from kit import layout
from kit.errors import KitError, examples
from kit.io import write_csv
from kit.models import ensemble
from kit.pipeline import Stamp, stamped
from kit.reports.metrics import auc_per_class


def runs(cfg) -> list:
    if len(cfg.runs) < 2:
        raise KitError("--stage blend needs --runs W1 W2 [W3 ...]: the work dirs (or attached kernel outputs) "
                       "of two or more finished runs")
    paths = [Path(r) for r in cfg.runs]
    if len({p.resolve() for p in paths}) < len(paths):
        raise KitError(f"--runs names a run twice ({' '.join(cfg.runs)}); name each run once")
    if cfg.work.resolve() in {p.resolve() for p in paths}:
        raise KitError(f"--work-dir {cfg.work} is one of --runs: its submission.csv would be overwritten; "
                       f"blend into another --work-dir")
    return paths


def outputs(cfg) -> list:
    return [layout.submission_csv(cfg.work), layout.reports_dir(cfg.work) / "blend.csv"]


def _inputs(run) -> list:
    return [layout.val_predictions_csv(run), layout.submission_csv(run)]


def stamp(cfg) -> Stamp:
    paths = runs(cfg)
    return Stamp(dict(runs=[str(p) for p in paths]), [f for p in paths for f in _inputs(p)], outputs(cfg))


def read_run(run):
    """(val answers, classes, submission) of one finished run."""
    val_csv, sub_csv = _inputs(run)
    for path, stage in ((val_csv, "soup"), (sub_csv, "predict")):
        if not path.is_file():
            raise KitError(f"{path} not found: finish that run (its --stage {stage} writes it), or leave it "
                           f"out of --runs")
    val = pd.read_csv(val_csv, dtype={"image_id": str, "patient_id": str}, keep_default_na=False)
    classes = layout.prob_classes(val)
    probs = layout.prob_columns(classes)
    val[probs] = val[probs].apply(pd.to_numeric)  # a film the soup could not read has empty ones: NaN
    sub = pd.read_csv(sub_csv, dtype={0: str}, keep_default_na=False)  # ids verbatim: 0001 stays 0001
    return val, classes, sub


def _same(what, first, other, run0, run, fix):
    only_first, only_other = set(first) - set(other), set(other) - set(first)
    if only_first or only_other or len(first) != len(other):
        raise KitError(f"{run} and {run0} answer different {what} ({len(only_first)} only in {run0.name}: "
                       f"{examples(only_first)}; {len(only_other)} only in {run.name}: {examples(only_other)}"
                       f"{'; one repeats' if not (only_first or only_other) else ''}): {fix}")


def aligned(paths):
    """(val labels, [val probs], [test probs], classes, test id column, test ids, test columns),
    every run in the first run's order; a mismatch of films, classes or labels is one line."""
    answers = [read_run(path) for path in paths]
    first_val, classes, first_sub = answers[0]
    id_col, columns = first_sub.columns[0], list(first_sub.columns[1:])
    val_probs, test_probs = [], []
    for path, (val, run_classes, sub) in zip(paths, answers):
        if run_classes != classes:
            raise KitError(f"{path} answers classes {', '.join(run_classes)} but {paths[0]} answers "
                           f"{', '.join(classes)}; blend runs of one task and class list")
        if list(sub.columns) != list(first_sub.columns):
            raise KitError(f"{path}'s submission.csv has columns {', '.join(sub.columns)} but {paths[0]}'s has "
                           f"{', '.join(first_sub.columns)}; blend runs that predicted the same sample submission")
        _same("val films", first_val["image_id"], val["image_id"], paths[0], path,
              "make the runs from the same data with the same --split-seed (default: --seed), --val-frac and "
              "--test-frac")
        _same("test films", first_sub[id_col], sub[id_col], paths[0], path,
              "blend runs that predicted the same sample submission")
        val = val.set_index("image_id").loc[first_val["image_id"]]
        if (val[classes].to_numpy() != first_val[classes].to_numpy()).any():
            raise KitError(f"{path} has other val labels than {paths[0]}; blend runs made with the same "
                           f"--label-mode, --classes and --uncertain")
        val_probs.append(val[layout.prob_columns(classes)].to_numpy(float))
        test_probs.append(sub.set_index(id_col).loc[first_sub[id_col], columns].to_numpy(float))
    return first_val[classes].to_numpy(), val_probs, test_probs, classes, id_col, first_sub[id_col], columns


@stamped("blend", stamp)
def run(cfg):
    paths = runs(cfg)
    y, val_probs, test_probs, classes, id_col, ids, columns = aligned(paths)
    known = np.all([np.isfinite(p).all(axis=1) for p in val_probs], axis=0)  # films every run could read
    y, val_probs = y[known], [p[known] for p in val_probs]

    equal = np.full(len(paths), 1 / len(paths))
    greedy, _ = ensemble.forward_selection(y, val_probs)
    scored = {"equal weights": equal, "forward selection": greedy}
    aucs = {name: auc_per_class(y, ensemble.blend(val_probs, w)) for name, w in scored.items()}
    chosen = max(scored, key=lambda name: (np.nanmean(aucs[name]), name == "equal weights"))
    weights = scored[chosen]

    def row(name, kind, w, a):
        return dict(run=name, kind=kind, weight=w, val_macro_auc=float(np.nanmean(a)),
                    **{f"val_auc_{c}": v for c, v in zip(classes, a)})

    rows = [row(str(p), "run", w, auc_per_class(y, v)) for p, w, v in zip(paths, weights, val_probs)]
    rows += [row(name, "blend" if name == chosen else "not chosen", np.nan, aucs[name]) for name in scored]
    table = pd.DataFrame(rows)
    submission = pd.DataFrame({id_col: ids.to_numpy()})
    submission[columns] = ensemble.blend(test_probs, weights)
    write_csv(table, outputs(cfg)[1])
    write_csv(submission, outputs(cfg)[0])
    _print(table, chosen, int(known.sum()), outputs(cfg))


def _print(table, chosen, films, out):
    print(f"[blend] {films} shared val films; val macro AUC:")
    for r in table.to_dict("records"):
        weight = f"  weight {r['weight']:.2f}" if r["kind"] == "run" else ("  <- used" if r["kind"] == "blend" else "")
        print(f"  {r['run']:<40} {r['val_macro_auc']:.4f}{weight}")
    print(f"[blend] {chosen}: submission {out[0]}, table {out[1]}")
