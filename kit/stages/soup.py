"""Soup stage: average epoch checkpoints into the final model (eva_x_final_soup.pth), and show
on the validation set whether averaging helped (reports/soup.csv). The soup's val answers are kept
(reports/val_predictions.csv, what a blend reads), with the study-pool decision made on them
(reports/study_pool.json, what predict follows); without a test split, the val report too
(reports/val_metrics.json and pictures: kit/reports/val_report.py)."""
import numpy as np
import pandas as pd

from kit import layout
from kit.config import scorer_kwargs, settings
from kit.data import studies, synthetic
from kit.errors import KitError
from kit.io import write_csv, write_json
from kit.models import averaging
from kit.models.inference import Scorer, check_classes, tta_name
from kit.models.model import checkpoint_dict, read_weights, save_weights
from kit.pipeline import Stamp, stamped
from kit.reports import val_report
from kit.reports.metrics import auc_per_class
from kit.training import resume


def chosen_checkpoints(cfg) -> dict:
    """{epoch: path} of the ingredients: --soup-epochs (uniform) or every epoch on disk (greedy)."""
    found = layout.epoch_checkpoints(cfg.work)
    if not found:
        raise KitError(f"no epoch checkpoints in {layout.checkpoint_dir(cfg.work)}: run --stage train first")
    if cfg.soup == "greedy":
        return found
    # --epochs auto in a process that did not train: the length the train stage fitted
    total = resume.fitted_epochs(cfg.work) if cfg.epochs == "auto" else cfg.epochs
    wanted = settings.parse_epochs(cfg.soup_epochs, total)
    missing = [e for e in wanted if e not in found]
    if missing:
        raise KitError(f"the soup needs epochs {', '.join(map(str, wanted))} but there is no checkpoint "
                       f"of epoch {', '.join(map(str, missing))} (on disk: epochs "
                       f"{', '.join(map(str, found))}); finish training (--stage train resumes) or pick "
                       f"existing ones with --soup-epochs")
    return {e: found[e] for e in wanted}


def recorded_val_aucs(work, epochs, classes) -> dict:
    """{(epoch,): val AUC per class} as training recorded them in history.csv for these epochs'
    EMA weights, on this val split with the same inference; empty when any is missing."""
    path, columns = layout.history_csv(work), [f"val_auc_{c}" for c in classes]
    if not path.exists():
        return {}
    history = pd.read_csv(path).drop_duplicates("epoch", keep="last").set_index("epoch")
    if not set(columns) <= set(history.columns) or not set(epochs) <= set(history.index):
        return {}
    return {(e,): history.loc[e, columns].to_numpy(float) for e in epochs}


def stamp(cfg) -> Stamp:
    paths = chosen_checkpoints(cfg)
    return Stamp(dict(soup=cfg.soup, epochs=list(paths), tta=tta_name(cfg.tta, cfg.hflip), amp=cfg.amp,
                      study_pool=cfg.study_pool),
                 [*paths.values(), layout.split_csv(cfg.work, "val"), layout.history_csv(cfg.work)],
                 [layout.soup_weights(cfg.work), layout.soup_report(cfg.work), layout.val_predictions_csv(cfg.work),
                  layout.study_pool_json(cfg.work),
                  *(val_report.outputs(cfg.work, layout.history_csv(cfg.work).exists()) if _no_test(cfg) else [])],
                 paths)


def _no_test(cfg) -> bool:
    """No held-out test split (the competition's default): the val report stands in for evaluate's."""
    return layout.read_split(cfg.work, "test")[0].empty


@stamped("soup", stamp)
def run(cfg, found):
    work, paths = cfg.work, found  # {epoch: checkpoint} of the ingredients
    out, report = layout.soup_weights(work), layout.soup_report(work)

    ckpts = {e: read_weights(p) for e, p in paths.items()}
    averaging.check_compatible({paths[e].name: c for e, c in ckpts.items()})
    last = ckpts[max(ckpts)]
    val, classes = layout.read_split(work, "val")
    check_classes(last, classes, "val")
    y = val[classes].to_numpy()
    scorer = Scorer({"val": layout.image_paths(work, val["file"])}, last["img_size"], **scorer_kwargs(cfg))
    ingredients = {e: c["state_dict"] for e, c in ckpts.items()}
    # sorted epochs of a soup -> its val AUC per class; training scored each epoch already (without TTA)
    val_aucs = {} if cfg.tta else recorded_val_aucs(work, paths, classes)
    recorded = bool(val_aucs)
    val_probs = {}  # sorted epochs of a soup -> the val probabilities it was scored with

    def score_mix(epochs):
        key = tuple(sorted(epochs))
        if key not in val_aucs:
            state_dict = averaging.uniform_average([ingredients[e] for e in key])
            probs, ok = val_probs[key] = scorer({**last, "state_dict": state_dict}, "val", "[soup] val")
            val_aucs[key] = auc_per_class(y[ok], probs[ok])
        return float(np.nanmean(val_aucs[key]))

    scores = {e: score_mix([e]) for e in ingredients}
    if cfg.soup == "greedy":
        kept, best, steps = averaging.greedy(scores, score_mix)
        kept, tried = sorted(kept), {e: value for e, value, _ in steps}
    else:
        kept, tried = list(ingredients), {}
        best = score_mix(kept)

    final = checkpoint_dict(averaging.uniform_average([ingredients[e] for e in kept]), arch=last["arch"],
                            classes=classes, img_size=last["img_size"], mean=last["mean"], std=last["std"],
                            epoch=max(kept), metric=best, seen_patients=last.get("seen_patients"),
                            model_kwargs=last.get("model_kwargs"))
    final["soup"] = {"method": cfg.soup, "epochs": kept}
    save_weights(final, out)

    def row(model, epochs):
        aucs = val_aucs[tuple(epochs)]
        return dict(model=model, epochs=" ".join(map(str, epochs)), val_macro_auc=float(np.nanmean(aucs)),
                    **{f"val_auc_{c}": a for c, a in zip(classes, aucs)})

    rows = [row(f"epoch {e}", [e]) for e in ingredients] + [row(f"{cfg.soup} soup", kept)]
    write_csv(pd.DataFrame(rows), report)
    _print(cfg.soup, scores, kept, best, tried, out, recorded)
    # the soup's val answers: scored while choosing it, unless history.csv held its only epoch's AUCs
    probs, _ = val_probs.get(tuple(kept)) or scorer(final, "val", "[soup] val, the soup")
    decision, answers = keep_val_answers(cfg, val, classes, probs)
    if _no_test(cfg):
        result = val_report.write(cfg.work, val, classes, answers, decision, cfg.bootstrap, cfg.seed)
        print("\n".join(f"[soup] {line}" if i == 0 else line for i, line in enumerate(val_report.describe(result))))


def keep_val_answers(cfg, val, classes, probs):
    """Decide the study pool on the soup's val probabilities and keep the answers it gives."""
    train = synthetic.real_rows(layout.read_split(cfg.work, "train")[0])  # synthetic images have no study
    share, _ = studies.constant_share(train, classes)
    keys = studies.table_keys(val)
    decision = studies.decide(cfg.study_pool, val[classes].to_numpy(), probs, keys, share)
    answers = studies.pool(probs, keys, decision["method"])
    table = val[["image_id", "patient_id", *classes]].reset_index(drop=True)
    table.insert(2, "study", keys)
    table = pd.concat([table, pd.DataFrame(answers, columns=layout.prob_columns(classes))], axis=1)
    write_csv(table, layout.val_predictions_csv(cfg.work))
    write_json(decision, layout.study_pool_json(cfg.work))
    print(f"[soup] {studies.describe(decision)}")
    return decision, answers


def _print(method, scores, kept, best, tried, out, recorded):
    source = " (epochs: as training recorded it)" if recorded else ""
    print(f"[soup] {method} soup of epochs {', '.join(map(str, kept))}; val macro AUC{source}:")
    for epoch, value in scores.items():
        note = ""
        if epoch in tried:
            note = "  in the soup" if epoch in kept else f"  left out (the soup with it: {tried[epoch]:.4f})"
        print(f"  epoch {epoch:<4} {value:.4f}{note}")
    gain = best - max(scores.values())
    print(f"  soup       {best:.4f}  ({gain:+.4f} vs the best epoch) -> {out}")
