"""Predict stage: probabilities for a competition's test images -> submission.csv.

The images come from a sample submission (--predict-csv: its first column names the images,
the other columns are the classes asked for, in the order the submission must keep) or from
a folder (--predict-dir). Films named `<patient>_<study>_<view>.jpg` answer per study where the run
pools (--study-pool). Grand X-Ray Slam's sample_submission_N.csv with its testN/ folder is
found without flags under the data folder (on Kaggle: /kaggle/input).
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from kit import layout
from kit.config import scorer_kwargs, predict_kwargs
from kit.data import smoke, studies, synthetic
from kit.data.competition import (find_inputs, has_images, index_images, locate, match_classes, read_sample,
                                  relative_ids, sample_classes, skip_reason)
from kit.errors import KitError, examples
from kit.io import write_csv, write_json
from kit.models import eva_x
from kit.models.inference import Scorer, tta_name
from kit.models.model import read_weights
from kit.pipeline import Stamp, stamped
from kit.training import resume

FOLDER_ID_COLUMN = "image"
SHOWN = 5


def _trained_classes(cfg) -> list:
    return layout.class_columns(pd.read_csv(layout.filtered_csv(cfg.work), nrows=0))


def skipped(cfg) -> "str | None":
    """Under --stage all, once the metadata stage has chosen the targets: why predict does not
    run (None: it runs)."""
    return skip_reason(_trained_classes(cfg), cfg.task, **predict_kwargs(cfg))


def check(cfg):
    """Once the metadata stage has chosen the targets: a sample submission that asks for other
    classes stops the run now, not after training."""
    csv, folder = find_inputs(**predict_kwargs(cfg))
    if csv:
        match_classes(sample_classes(csv), _trained_classes(cfg))
    if not has_images(folder):
        raise KitError(f"{folder} holds no images to predict; pass the folder of the competition's test "
                       f"films with --predict-dir")


def _fill_values(cfg, classes, probs, ok):
    """(values, how): the prevalence of each class among the real training images, or the mean
    prediction without them."""
    train_csv = layout.split_csv(cfg.work, "train")
    if train_csv.exists():
        train, train_classes = layout.read_split(cfg.work, "train")
        train = synthetic.real_rows(train)  # synthetic images inflate the scarce classes on purpose
        if list(train_classes) == list(classes) and len(train):
            return train[classes].to_numpy().mean(0), "the training prevalence"
    return probs[ok].mean(0), "the mean prediction over the readable images (no splits/train.csv)"


def problem(path) -> str:
    """Why a test film could not be predicted."""
    path = Path(path)
    if not path.exists():
        return "missing"
    return "empty file" if path.stat().st_size == 0 else "cannot be decoded as an image"


def latest_weights(work) -> "Path | None":
    """The newest of the soup, the time limit's interim EMA and the epoch files: the furthest
    trained model there is."""
    found = [p for p in (layout.soup_weights(work), layout.interim_weights(work),
                         *layout.epoch_checkpoints(work).values()) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def finish(cfg, error=None) -> bool:
    """The run stops early and still ends with a submission: at the time limit one from the latest
    weights, labelled interim unless they are the finished run's soup; after a failure (`error`,
    --on-error submit) one from the val-best epoch, labelled fallback. False: no weights to make it."""
    weights = layout.best_epoch_weights(cfg.work) if error else latest_weights(cfg.work)
    if weights is None:
        if error is None:
            print("[predict] the time limit came before any training: no submission this session")
        return False
    if error:
        print(f"error: {error}\n[predict] --on-error submit: a fallback submission from {weights.name}, the "
              f"val-best epoch on disk", file=sys.stderr, flush=True)
    kind = "fallback" if error else "final" if weights == layout.soup_weights(cfg.work) else "interim"
    run(cfg, weights, kind, error)
    return True


def _inputs(cfg, weights):
    """(sample submission or None, image folder, weights, the folder's image index)."""
    csv, folder = find_inputs(**predict_kwargs(cfg))
    if folder is None:
        raise KitError("nothing to predict: pass --predict-csv SAMPLE_SUBMISSION and/or --predict-dir FOLDER")
    return csv, folder, weights or layout.weights_path(cfg.work, cfg.weights), index_images(folder)


def _asked(csv, folder, index, classes, smoke_run) -> tuple:
    """(id column, the classes asked for, their columns in the model's output, the image ids): the
    sample's, or every image of the folder under the model's classes."""
    if csv:
        sample = read_sample(csv)
        id_col, asked = sample.columns[0], list(sample.columns[1:])
        columns = match_classes(asked, classes)
        ids = sample[id_col].tolist()
        repeated = sample[id_col][sample[id_col].duplicated()].unique()
        if len(repeated):
            print(f"warning: {len(repeated)} ids appear more than once in {csv} (first: {repeated[0]}); "
                  f"each row gets the image's prediction, as the sample asks")
    else:
        id_col, asked, columns = FOLDER_ID_COLUMN, classes, list(range(len(classes)))
        ids = relative_ids(index, folder)
    if smoke_run:
        ids = ids[:smoke.TEST_FILMS]
    if not ids:
        raise KitError(f"no images to predict in {csv or folder}")
    return id_col, asked, columns, ids


def stamp(cfg, weights=None, kind="final", error=None) -> Stamp:
    csv, folder, weights, index = _inputs(cfg, weights)
    settings = dict(weights=str(weights), csv=str(csv), folder=str(folder), tta=tta_name(cfg.tta, cfg.hflip),
                    amp=cfg.amp, on_missing=cfg.on_missing, shorter_side=layout.stored_resize(cfg.work, cfg.resize),
                    smoke=cfg.smoke, study_pool=cfg.study_pool, kind=kind, error=str(error or ""))
    # every image, not the folder: a file copied over another leaves the folder's time as it was
    inputs = [weights, *([csv] if csv else []), *sorted(set(index.values()))]
    if layout.study_pool_json(cfg.work).exists():
        inputs.append(layout.study_pool_json(cfg.work))
    return Stamp(settings, inputs, [layout.submission_csv(cfg.work)], (csv, folder, weights, index))


def _unreadable(cfg, submission, ids, paths, probs, ok, classes, asked, columns):
    """The films that could not be read: named in reports/predict_unreadable.csv with why; with
    --on-missing fail the rest go to submission_partial.csv and the run stops, with fill their rows
    get each column's training prevalence."""
    id_col, out = submission.columns[0], layout.submission_csv(cfg.work)
    partial, listed = layout.submission_csv(cfg.work, "partial"), layout.unreadable_csv(cfg.work)
    bad = pd.DataFrame({id_col: np.array(ids)[~ok], "path": np.array(paths, dtype=str)[~ok]})
    bad["problem"] = [problem(p) for p in bad["path"]]
    write_csv(bad, listed)
    shown = examples(bad[id_col], SHOWN, sort=False)
    if not ok.any():
        raise KitError(f"none of the {len(ids)} images could be read ({shown}; all in {listed}); "
                       f"check that --predict-dir points at the test images")
    if cfg.on_missing == "fail":
        write_csv(submission[ok], partial)
        moved = ""
        if out.exists():  # an earlier run's file must not pass for this run's (Kaggle submits it)
            out.replace(layout.submission_csv(cfg.work, "previous"))
            moved = " (the earlier one is now submission_previous.csv)"
        raise KitError(f"{len(bad)} of {len(ids)} images could not be predicted ({shown}; all in "
                       f"{listed}); the {ok.sum()} others are in {partial}, submission.csv is not "
                       f"written{moved}: fix the images, or pass --on-missing fill to fill their rows")
    values, how = _fill_values(cfg, classes, probs, ok)
    submission.loc[~ok, asked] = values[columns]
    print(f"warning: {len(bad)} of {len(ids)} images could not be predicted ({shown}; all in {listed}); "
          f"their rows are filled with {how} (--on-missing fill)")


@stamped("predict", stamp)
def run(cfg, weights=None, kind="final", error=None, *, found):
    """kind: final, interim (the time limit stopped training) or fallback (the run failed: `error`)."""
    csv, folder, weights, index = found  # the sample (or None), the test folder, the weights, its index
    out, stored = layout.submission_csv(cfg.work), layout.stored_resize(cfg.work, cfg.resize)

    ckpt = read_weights(weights)
    classes = list(ckpt["classes"])
    id_col, asked, columns, ids = _asked(csv, folder, index, classes, cfg.smoke)
    paths, located = locate(index, ids, folder)
    if not located:
        raise KitError(f"none of the {len(ids)} images the submission names (first: {ids[0]}) is in "
                       f"{folder}; pass the folder holding them with --predict-dir")
    print(f"[predict] {len(ids)} images ({located} found in {folder}) with {weights}")

    # read as the separate stage stored the training images: faster than a full decode, and closer
    # to what the model saw; never below the model's input size (weights from a run stored larger)
    shorter_side = max(stored, ckpt["img_size"]) if stored else 0
    scorer = Scorer({"test": paths}, ckpt["img_size"], shorter_side, **scorer_kwargs(cfg))
    probs, ok = scorer(ckpt, "test", "[predict]")
    probs = studies.for_test(cfg.study_pool, cfg.work, ids, probs)
    print(f"[predict] {len(ids)} images at {scorer.images_per_s:.1f} images/s ({scorer.describe()})")
    submission = pd.DataFrame({id_col: ids})
    submission[asked] = probs[:, columns]

    partial, listed = layout.submission_csv(cfg.work, "partial"), layout.unreadable_csv(cfg.work)
    if not ok.all():
        _unreadable(cfg, submission, ids, paths, probs, ok, classes, asked, columns)
    write_csv(submission, out)
    partial.unlink(missing_ok=True)  # an earlier failed run's: this run wrote the whole file
    if ok.all():
        listed.unlink(missing_ok=True)
    _report(cfg, kind, error, ckpt, weights, submission, filled=int((~ok).sum()))


def _report(cfg, kind, error, ckpt, weights, submission, filled):
    """reports/submission.json and the line that say which weights made submission.csv, and how the
    session ended: final, interim or fallback."""
    schedule = resume.saved_schedule(layout.last_state(cfg.work))
    epochs = schedule["epochs"] if schedule and cfg.epochs == "auto" else cfg.epochs  # as training fitted it
    trained = "the finished run" if kind == "final" else f"epoch {ckpt['epoch']} of {epochs}"
    write_json(dict(kind=kind, interim=kind == "interim", weights=str(weights), trained=trained,
                    rows=len(submission), filled=filled, smoke=cfg.smoke, task=cfg.task,
                    model=eva_x.kit_name(ckpt["arch"], ckpt.get("model_kwargs")), epochs=epochs, schedule=schedule,
                    **({"error": str(error)} if error else {})), layout.submission_report(cfg.work))
    label = {"final": "submission",
             "interim": f"interim submission (the time limit stopped training; weights: the EMA after {trained}; "
                        f"--resume auto continues training)",
             "fallback": f"fallback submission (the run failed; weights: {trained}, the val-best epoch on "
                         f"disk; --on-error stop ends with the error instead)"}[kind]
    print(f"[predict] {label} {layout.submission_csv(cfg.work)}: {len(submission)} rows, columns "
          f"{', '.join(submission.columns)}")
