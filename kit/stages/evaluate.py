"""Evaluate stage: the final model's honest report on the held-out test split (reports/).

Thresholds are chosen on val (Youden's J) and only applied to test; confidence intervals
come from a seeded bootstrap over test patients (all films of a drawn patient, since films of
one patient are not independent); every epoch checkpoint still on disk is scored on test too,
so the soup's gain is measured where it was not selected.
"""
import pandas as pd

from kit import layout
from kit.config import scorer_kwargs
from kit.data import studies
from kit.errors import KitError, examples
from kit.io import write_csv, write_json
from kit.models.inference import Scorer, check_classes, check_unseen, tta_name
from kit.models.model import read_weights
from kit.pipeline import Stamp, stamped
from kit.reports import metrics, plots
from kit.reports.metrics import json_number

DECISION_RULE = ("the class furthest above its val threshold: argmax of logit(p) - logit(threshold), "
                 "thresholds from val (Youden's J)")
SHOWN = 5


def skipped(cfg) -> "str | None":
    """Under --stage all: no test report without a test split (the competition's default)."""
    if layout.split_csv(cfg.work, "test").exists() and layout.read_split(cfg.work, "test")[0].empty:
        return ("no test split (--test-frac 0, the competition task's default): val monitors training "
                "and chooses the soup; pass --test-frac 0.1 for a held-out test report")
    return None


def _outputs(reports, single, history):
    names = ["test_metrics.json", "test_predictions.csv", "roc_curves.png", "pr_curves.png"]
    names += ["confusion_matrix.png"] * single + ["training_curves.png"] * history
    return [reports / n for n in names]


def _test_split(cfg):
    """(test table, classes, single-label report or not)."""
    test, classes = layout.read_split(cfg.work, "test")
    if test.empty:
        raise KitError(f"{layout.split_csv(cfg.work, 'test')} is empty: the split was made with --test-frac 0; "
                       f"rerun --stage split --test-frac 0.1 (and train again) for a test report")
    return test, classes, cfg.label_mode == "single" and bool((test[classes].sum(axis=1) == 1).all())


def stamp(cfg) -> Stamp:
    work, weights = cfg.work, layout.weights_path(cfg.work, cfg.weights)
    test, classes, single = _test_split(cfg)
    history = layout.history_csv(work)
    return Stamp(dict(weights=str(weights), bootstrap=cfg.bootstrap, seed=cfg.seed, tta=tta_name(cfg.tta, cfg.hflip),
                      amp=cfg.amp, single=single),
                 [weights, layout.split_csv(work, "val"), layout.split_csv(work, "test"), history,
                  *layout.epoch_checkpoints(work).values()],
                 _outputs(layout.reports_dir(work), single, history.exists()), (test, classes, single))


@stamped("evaluate", stamp)
def run(cfg, found):
    work, reports = cfg.work, layout.reports_dir(cfg.work)
    weights = layout.weights_path(work, cfg.weights)
    test, classes, single = found  # the test split, its classes, whether its report is single-label
    val, _ = layout.read_split(work, "val")
    y_test, y_val = test[classes].to_numpy(), val[classes].to_numpy()
    history = layout.history_csv(work)

    ckpt = read_weights(weights)
    check_classes(ckpt, classes, "test")
    check_unseen(ckpt, weights, test)
    scorer = Scorer({split: layout.image_paths(work, df["file"]) for split, df in
                     (("val", val), ("test", test))}, ckpt["img_size"], **scorer_kwargs(cfg))
    p_val, ok_val = scorer(ckpt, "val", "[evaluate] val")
    thresholds = metrics.youden_thresholds(y_val[ok_val], p_val[ok_val])
    probs, ok = scorer(ckpt, "test", "[evaluate] test")
    unreadable = test.loc[~ok, "file"].tolist()
    if not ok.any():
        raise KitError(f"none of the {len(test)} test images could be read (first: "
                       f"{layout.image_path(work, unreadable[0])}); rerun --stage separate --force")
    y, p = y_test[ok], probs[ok]

    aucs, macro = metrics.auc_per_class(y, p), metrics.macro_auc(y, p)
    patients = layout.patient_keys(test[ok])
    ci, macro_ci, draws_used = metrics.bootstrap_auc(y, p, cfg.bootstrap, cfg.seed, metrics.LEVEL, patients)
    aps = metrics.average_precision_per_class(y, p)
    sens, spec = metrics.sensitivity_specificity(y, p, thresholds)
    per_epoch = _epoch_aucs(scorer, work, weights, ckpt, probs, ok, y_test)

    result = dict(
        weights=str(weights), soup=ckpt.get("soup"), test_images=int(ok.sum()),
        unreadable_images=unreadable, tta=tta_name(cfg.tta, cfg.hflip), label_mode="single" if single else "multi",
        macro_auc=json_number(macro), macro_auc_ci=[json_number(v) for v in macro_ci],
        micro_auc=json_number(metrics.micro_auc(y, p)),
        classes={c: dict(positives=int(y[:, k].sum()), auc=json_number(aucs[k]), auc_ci=[json_number(v) for v in ci[k]],
                         auc_ci_draws=int(draws_used[k]),
                         average_precision=json_number(aps[k]), threshold=json_number(thresholds[k]),
                         sensitivity=json_number(sens[k]), specificity=json_number(spec[k]))
                 for k, c in enumerate(classes)},
        threshold_rule="Youden's J (sensitivity + specificity - 1) maximized on val, applied to test",
        bootstrap=dict(resamples=cfg.bootstrap, seed=cfg.seed, level=metrics.LEVEL, patients=int(len(set(patients))),
                       macro_draws=int(draws_used[-1]),
                       method="percentile; test patients resampled with all their images; a class's "
                              "interval from the draws holding both its labels, the macro's from the "
                              "draws holding both labels of every class"),
        epoch_checkpoints_macro_auc=per_epoch,
        study_pool=_study_pool(work, test[ok], y, p, macro),
    )
    if single:
        result["single_label"] = dict(metrics.single_label_report(y, p, thresholds), decision_rule=DECISION_RULE)

    _write(reports, result, test[ok], y, p, classes, aucs, aps, history)
    _print(result, unreadable, reports)


def _epoch_aucs(scorer, work, weights, ckpt, probs, ok, y_test) -> dict:
    """{'epoch N': test macro AUC} of every epoch file on disk (the weights just scored, not again)."""
    per_epoch = {}
    own_soup = weights.resolve() == layout.soup_weights(work).resolve()
    soup_epochs = (ckpt.get("soup") or {}).get("epochs") if own_soup else None
    for epoch, path in layout.epoch_checkpoints(work).items():
        if soup_epochs == [epoch] or path.resolve() == weights.resolve():
            e_probs, e_ok = probs, ok
        else:
            e_probs, e_ok = scorer(read_weights(path), "test", f"[evaluate] test, epoch {epoch}")
        per_epoch[f"epoch {epoch}"] = json_number(metrics.macro_auc(y_test[e_ok & ok], e_probs[e_ok & ok]))
    return per_epoch


def _write(reports, result, scored, y, p, classes, aucs, aps, history):
    """test_metrics.json, test_predictions.csv and the pictures."""
    table = scored[["image_id", "patient_id", *classes]].reset_index(drop=True)
    table = pd.concat([table, pd.DataFrame(p, columns=layout.prob_columns(classes))], axis=1)
    write_csv(table, reports / "test_predictions.csv")
    plots.roc_curves(y, p, classes, aucs, reports / "roc_curves.png")
    plots.pr_curves(y, p, classes, aps, reports / "pr_curves.png")
    if "single_label" in result:
        plots.confusion_matrix(result["single_label"]["confusion_matrix"], classes,
                               reports / "confusion_matrix.png")
    if history.exists():
        plots.training_curves(pd.read_csv(history), reports / "training_curves.png")
    write_json(result, reports / "test_metrics.json")


def _study_pool(work, test, y, p, per_film) -> dict:
    """Test macro AUC per film (`per_film`) and with each study's films pooled, beside the val decision."""
    keys = studies.table_keys(test)
    decision = studies.read_decision(work)
    return dict(val_decision=decision and decision["method"], macro_auc_per_film=json_number(per_film),
                **{f"macro_auc_study_{how}": json_number(metrics.macro_auc(y, studies.pool(p, keys, how)))
                   for how in studies.METHODS})


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def _print(result, unreadable, reports):
    tta = "" if result["tta"] == "off" else f" (with {result['tta']} TTA)"
    print(f"[evaluate] {result['weights']} on {result['test_images']} test images of "
          f"{result['bootstrap']['patients']} patients{tta}; "
          f"intervals resample patients:")
    rows = [(c, str(m["positives"]), f"{_fmt(m['auc'])} [{_fmt(m['auc_ci'][0])}, {_fmt(m['auc_ci'][1])}]",
             _fmt(m["sensitivity"]), _fmt(m["specificity"])) for c, m in result["classes"].items()]
    rows.append(("macro", str(result["test_images"]),
                 f"{_fmt(result['macro_auc'])} [{_fmt(result['macro_auc_ci'][0])}, "
                 f"{_fmt(result['macro_auc_ci'][1])}]", "", ""))
    header = ("class", "images", f"AUC [{metrics.LEVEL:.0%} CI]", "sensitivity", "specificity")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header, *rows]:
        cells = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))]
        print("  " + "  ".join(cells))
    print(f"  micro AUC {_fmt(result['micro_auc'])}; sensitivity and specificity at thresholds chosen on val")
    if "single_label" in result:
        s = result["single_label"]
        print(f"  single label: accuracy {s['accuracy']:.3f}, balanced accuracy "
              f"{s['balanced_accuracy']:.3f}, macro F1 {s['macro_f1']:.3f}; each image called the class "
              f"furthest above its val threshold (in log-odds)")
    if result["epoch_checkpoints_macro_auc"]:
        epochs = ", ".join(f"{k} {_fmt(v)}" for k, v in result["epoch_checkpoints_macro_auc"].items())
        print(f"  test macro AUC of the epoch checkpoints: {epochs}")
    pool = result["study_pool"]
    print(f"  test macro AUC per film {_fmt(pool['macro_auc_per_film'])}, study mean "
          f"{_fmt(pool['macro_auc_study_mean'])}, study max {_fmt(pool['macro_auc_study_max'])} "
          f"(val chose: {pool['val_decision'] or 'no decision'})")
    if unreadable:
        shown = examples(unreadable, SHOWN, sort=False)
        print(f"warning: {len(unreadable)} test images could not be read and are left out: {shown} "
              f"(all listed in test_metrics.json)")
    print(f"  reports in {reports}")
