"""Compare stage: a baseline run (A, e.g. real images only) against another (B, e.g. with
synthetic images) on the same test images -> reports/compare.csv and compare.png.

Both runs' evaluate stage saved reports/test_predictions.csv. The difference of AUC per class
and of the macro AUC gets a paired bootstrap: each draw resamples test patients once and scores
both runs on it, so the interval reflects how the runs differ on the same images, not how
noisy each is alone. A verdict says "better" or "worse" only when the 95% interval excludes 0.
"""
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from kit import layout
from kit.errors import KitError, examples
from kit.io import write_csv
from kit.pipeline import Stamp, stamped
from kit.reports import metrics, plots

PREDICTIONS = "test_predictions.csv"
TIE = 1e-12


def predictions_csv(work) -> Path:
    return layout.reports_dir(work) / PREDICTIONS


def read_predictions(work):
    """(table, classes) of a run's test predictions."""
    path = predictions_csv(work)
    if not path.is_file():
        raise KitError(f"{path} not found: run --stage evaluate with --work-dir {work} first")
    df = pd.read_csv(path, dtype={"image_id": str, "patient_id": str}, keep_default_na=False)
    classes = layout.prob_classes(df)
    if not classes or {"image_id", "patient_id"} - set(df.columns) or any(c not in df.columns for c in classes):
        raise KitError(f"{path} is not a test predictions table (image_id, patient_id, one column per class and "
                       f"one {layout.PROB}<class> column per class); rerun --stage evaluate --force there")
    return df, classes


def paired(a, classes_a, b, classes_b):
    """(targets, probabilities of A, probabilities of B, patient keys) on the same images in the
    same order; a clear error when the two runs were not tested on the same test set."""
    if classes_a != classes_b:
        raise KitError(f"the runs predict different classes ({', '.join(classes_a)} vs "
                       f"{', '.join(classes_b)}); compare runs trained on the same classes")
    only_a, only_b = set(a["image_id"]) - set(b["image_id"]), set(b["image_id"]) - set(a["image_id"])
    if only_a or only_b or len(a) != len(b):
        raise KitError(f"the test sets differ ({len(only_a)} images only in A: {examples(only_a)}; "
                       f"{len(only_b)} only in B: {examples(only_b)}): make both runs from the same "
                       f"data with the same --seed, --val-frac, --test-frac and --split")
    classes, b = classes_a, b.set_index("image_id").loc[a["image_id"]].reset_index()
    y = a[classes].to_numpy()
    relabelled = (y != b[classes].to_numpy()).any(axis=1)
    if relabelled.any():
        raise KitError(f"{int(relabelled.sum())} test images have other labels in B (e.g. "
                       f"{examples(a.loc[relabelled, 'image_id'])}); make both runs with the same "
                       f"--label-mode and --classes")
    probs = layout.prob_columns(classes)
    return y, a[probs].to_numpy(float), b[probs].to_numpy(float), layout.patient_keys(a)


def paired_bootstrap(y, p_a, p_b, groups=None, resamples=1000, seed=0, level=metrics.LEVEL):
    """AUC difference B - A per class and of the macro AUC (last entry): (interval [C+1, 2],
    two-sided p-value [C+1]). Draws resample `groups` (patients) as evaluate does; the macro
    difference uses the draws that score every class the test set scores."""
    draws = metrics.bootstrap_auc_draws(y, [p_a, p_b], resamples, seed, groups)
    scored = np.isfinite(metrics.auc_per_class(y, p_a))
    macro = [metrics.macro_of_draws(d, scored) for d in draws]
    diffs = np.column_stack([draws[1] - draws[0], macro[1] - macro[0]])
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    interval = np.full((diffs.shape[1], 2), np.nan)
    p_value = np.full(diffs.shape[1], np.nan)
    for j, d in enumerate(diffs.T):
        d = d[np.isfinite(d)]
        if len(d):
            interval[j] = np.percentile(d, tails)
            p_value[j] = two_sided_p(d)
    return interval, p_value


def two_sided_p(diffs) -> float:
    """Bootstrap p-value of a difference of 0: twice the share of draws on the far side of 0,
    a draw without a difference counting half to each side, with the (count + 1) / (draws + 1)
    correction that keeps it above 0."""
    same = np.abs(diffs) < TIE  # equal AUCs, up to the rounding of their division
    far_side = min((diffs[~same] < 0).sum(), (diffs[~same] > 0).sum()) + same.sum() / 2
    return min(1.0, 2 * (far_side + 1) / (len(diffs) + 1))


def sensitivity_at_specificity(y, p, specificity) -> np.ndarray:
    """Per class, the highest sensitivity of any threshold whose specificity is at least
    `specificity` (a point of the ROC curve); NaN for a class with one label value."""
    out = np.full(y.shape[1], np.nan)
    for k in range(y.shape[1]):
        if 0 < y[:, k].sum() < len(y):
            fpr, tpr, _ = roc_curve(y[:, k], p[:, k])
            out[k] = tpr[fpr <= 1 - specificity + 1e-12].max()
    return out


def verdict(low, high) -> str:
    if not np.isfinite(low):
        return "not measurable"
    return "better" if low > 0 else "worse" if high < 0 else "no clear difference"


def comparison(y, p_a, p_b, groups, classes, resamples, seed, specificity) -> pd.DataFrame:
    """One row per class and one for the macro AUC."""
    auc_a = np.append(metrics.auc_per_class(y, p_a), metrics.macro_auc(y, p_a))
    auc_b = np.append(metrics.auc_per_class(y, p_b), metrics.macro_auc(y, p_b))
    interval, p_value = paired_bootstrap(y, p_a, p_b, groups, resamples, seed)
    sens_a = np.append(sensitivity_at_specificity(y, p_a, specificity), np.nan)
    sens_b = np.append(sensitivity_at_specificity(y, p_b, specificity), np.nan)
    return pd.DataFrame({
        "class": [*classes, "macro"], "positives": pd.array([*y.sum(axis=0), pd.NA], dtype="Int64"),
        "auc_a": auc_a, "auc_b": auc_b, "auc_diff": auc_b - auc_a,
        "ci_low": interval[:, 0], "ci_high": interval[:, 1], "p_value": p_value,
        "specificity": specificity, "sens_a": sens_a, "sens_b": sens_b, "sens_diff": sens_b - sens_a,
        "verdict": [verdict(lo, hi) for lo, hi in interval],
    })


def runs(cfg) -> tuple:
    if len(cfg.runs) != 2:
        raise KitError("--stage compare needs --runs WORK_A WORK_B: the work dirs of the baseline run "
                       "and of the run to compare with it")
    run_a, run_b = map(Path, cfg.runs)
    if run_a.resolve() == run_b.resolve():
        raise KitError(f"--runs names {run_a} twice; give the baseline run's and the other run's work dirs")
    if not 0 < cfg.specificity < 1:
        raise KitError(f"--specificity {cfg.specificity} must be between 0 and 1, such as 0.9")
    return run_a, run_b


def outputs(work) -> list:
    return [layout.reports_dir(work) / "compare.csv", layout.reports_dir(work) / "compare.png"]


def stamp(cfg) -> Stamp:
    run_a, run_b = runs(cfg)
    return Stamp(dict(runs=[str(run_a), str(run_b)], bootstrap=cfg.bootstrap, seed=cfg.seed,
                      specificity=cfg.specificity),
                 [predictions_csv(run_a), predictions_csv(run_b)], outputs(cfg.work))


@stamped("compare", stamp)
def run(cfg):
    run_a, run_b = runs(cfg)
    table_csv, picture = outputs(cfg.work)
    (a, classes_a), (b, classes_b) = read_predictions(run_a), read_predictions(run_b)
    y, p_a, p_b, groups = paired(a, classes_a, b, classes_b)
    table = comparison(y, p_a, p_b, groups, classes_a, cfg.bootstrap, cfg.seed, cfg.specificity)
    table.insert(0, "run_b", str(run_b))
    table.insert(0, "run_a", str(run_a))
    write_csv(table, table_csv)
    plots.compare_runs(table, (run_a.name, run_b.name), cfg.specificity, picture)
    _print(table, len(y), cfg, run_a, run_b, layout.reports_dir(cfg.work))


def _print(table, n, cfg, run_a, run_b, reports):
    print(f"[compare] A = {run_a}, B = {run_b}: {n} shared test images, paired bootstrap of "
          f"{cfg.bootstrap} draws (seed {cfg.seed})")
    for row in table.to_dict("records"):
        change = {"better": "B better than A", "worse": "B worse than A"}.get(row["verdict"], row["verdict"])
        line = (f"  {row['class']}: {change}: AUC {row['auc_a']:.3f} -> {row['auc_b']:.3f} "
                f"({row['auc_diff']:+.3f}, {metrics.LEVEL:.0%} CI [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], "
                f"p={row['p_value']:.3f})")
        if np.isfinite(row["sens_a"]):
            line += (f"; sensitivity at {cfg.specificity:.0%} specificity "
                     f"{row['sens_a']:.2f} -> {row['sens_b']:.2f}")
        print(line)
    print(f"  table and picture in {reports}")
