"""The soup's val report, for a run without a test split (the competition's default): each
finding's val AUC with a patient-bootstrap interval, weakest first, ROC curves, the training
curves and the study-pool decision, so a competitor sees which findings hold the score down."""
import numpy as np
import pandas as pd

from kit import layout
from kit.io import write_json
from kit.reports import metrics, plots
from kit.reports.metrics import json_number

# an interval from fewer draws than this share of the resamples is not printed: a macro AUC needs
# every finding in a draw, and a small val split with findings on one patient seldom has them all
FEW_DRAWS = 0.5


def outputs(work, history=True) -> list:
    reports = layout.reports_dir(work)
    return [reports / "val_metrics.json", reports / "val_roc_curves.png"] + \
        [reports / "training_curves.png"] * history


def write(work, val, classes, probs, decision, resamples, seed) -> dict:
    """val_metrics.json and the pictures from the soup's val answers `probs` (NaN rows: unread)."""
    ok = np.isfinite(probs).all(axis=1)
    y, p = val.loc[ok, classes].to_numpy(), probs[ok]
    aucs = metrics.auc_per_class(y, p)
    patients = layout.patient_keys(val[ok])
    ci, macro_ci, draws = metrics.bootstrap_auc(y, p, resamples, seed, metrics.LEVEL, patients)
    result = dict(
        val_images=int(ok.sum()), patients=int(len(set(patients))), macro_auc=json_number(metrics.macro_auc(y, p)),
        macro_auc_ci=[json_number(v) for v in macro_ci], macro_auc_ci_draws=int(draws[-1]),
        classes={c: dict(positives=int(y[:, k].sum()), auc=json_number(aucs[k]), auc_ci=[json_number(v) for v in ci[k]],
                         auc_ci_draws=int(draws[k]))
                 for k, c in enumerate(classes)},
        bootstrap=dict(resamples=resamples, seed=seed, level=metrics.LEVEL,
                       method="percentile; val patients resampled with all their films; a finding's interval "
                              "from the draws holding both its labels, the macro's from the draws holding "
                              "both labels of every finding"),
        study_pool=decision)
    metrics_json, roc_png, *curves = outputs(work, layout.history_csv(work).exists())
    plots.roc_curves(y, p, classes, aucs, roc_png, split="val")
    if curves:
        plots.training_curves(pd.read_csv(layout.history_csv(work)), curves[0])
    write_json(result, metrics_json)
    return result


def _f(x):
    return "-" if x is None else f"{x:.3f}"


def _interval(ci, draws, resamples) -> str:
    if draws < FEW_DRAWS * resamples:
        return f"[too few draws for an interval: {draws} of {resamples}]"
    return f"[{_f(ci[0])}, {_f(ci[1])}]"


def describe(result) -> list:
    """Lines: the macro AUC, then every finding from the weakest."""
    resamples = result["bootstrap"]["resamples"]
    interval = _interval(result["macro_auc_ci"], result["macro_auc_ci_draws"], resamples)
    lines = [f"val report ({result['val_images']} films of {result['patients']} patients): macro AUC "
             f"{_f(result['macro_auc'])} {interval} ({metrics.LEVEL:.0%}, patients resampled); weakest first:"]
    scored = sorted(((m["auc"], c, m) for c, m in result["classes"].items() if m["auc"] is not None),
                    key=lambda t: t[0])
    for auc, c, m in scored:
        lines.append(f"  {c:<28} {auc:.3f} {_interval(m['auc_ci'], m['auc_ci_draws'], resamples)}  "
                     f"{m['positives']} positives")
    return lines
