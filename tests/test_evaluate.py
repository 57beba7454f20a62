"""The evaluate stage: its report against scikit-learn on the saved predictions, its pictures,
and bad input."""
import contextlib
import dataclasses
import io
import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from eval_fixtures import (CLASSES, IMG_SIZE, evaluated_run, finished_run, plain_timm_probs, write_checkpoints,
                           write_splits, youden)
from sklearn.metrics import (average_precision_score, balanced_accuracy_score, confusion_matrix,
                             roc_auc_score)

from kit import layout
from kit.data.images import area_resize
from kit.errors import KitError
from kit.models.model import read_weights, save_weights
from kit.reports import metrics, plots
from kit.stages import evaluate, soup


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg, printed = evaluated_run(tmp_path_factory)
    reports = layout.reports_dir(cfg.work)
    report = json.loads((reports / "test_metrics.json").read_text())
    preds = pd.read_csv(reports / "test_predictions.csv", dtype={"image_id": str, "patient_id": str})
    return cfg, printed, report, preds


def test_report_matches_sklearn_on_the_saved_predictions(run):
    cfg, _, m, preds = run
    test, _ = layout.read_split(cfg.work, "test")
    assert preds["image_id"].tolist() == test["image_id"].tolist()
    assert list(preds.columns) == ["image_id", "patient_id", *CLASSES, *[f"prob_{c}" for c in CLASSES]]
    y, p = preds[CLASSES].to_numpy(), preds[[f"prob_{c}" for c in CLASSES]].to_numpy()
    assert m["test_images"] == len(test) and m["unreadable_images"] == []
    for k, c in enumerate(CLASSES):
        cm = m["classes"][c]
        assert cm["positives"] == y[:, k].sum()
        assert cm["auc"] == pytest.approx(roc_auc_score(y[:, k], p[:, k]), abs=1e-6)
        assert cm["auc_ci"][0] <= cm["auc"] <= cm["auc_ci"][1]
        assert cm["average_precision"] == pytest.approx(average_precision_score(y[:, k], p[:, k]), abs=1e-6)
        called = p[:, k] >= cm["threshold"]
        assert cm["sensitivity"] == pytest.approx(called[y[:, k] == 1].mean(), abs=1e-6)
        assert cm["specificity"] == pytest.approx((~called)[y[:, k] == 0].mean(), abs=1e-6)
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, p, average="macro"), abs=1e-6)
    assert m["macro_auc_ci"][0] <= m["macro_auc"] <= m["macro_auc_ci"][1]
    assert m["micro_auc"] == pytest.approx(roc_auc_score(y, p, average="micro"), abs=1e-6)
    single = m["single_label"]
    assert m["label_mode"] == "single"
    t = np.array([m["classes"][c]["threshold"] for c in CLASSES])  # chosen on val
    called = np.argmax(np.log(p / (1 - p)) - np.log(t / (1 - t)), axis=1)
    assert single["confusion_matrix"] == confusion_matrix(y.argmax(1), called).tolist()
    assert single["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y.argmax(1), called))
    assert "val" in single["decision_rule"]
    assert m["soup"] == {"method": "uniform", "epochs": [2, 3]}
    assert list(m["epoch_checkpoints_macro_auc"]) == ["epoch 1", "epoch 2", "epoch 3"]
    assert m["bootstrap"]["resamples"] == 200 and m["bootstrap"]["seed"] == cfg.seed


def test_printed_table_lists_each_class_with_its_interval(run):
    _, printed, m, _ = run
    assert "AUC [95% CI]" in printed and "sensitivity" in printed
    for c in CLASSES:
        cm = m["classes"][c]
        assert f"{cm['auc']:.3f} [{cm['auc_ci'][0]:.3f}, {cm['auc_ci'][1]:.3f}]" in printed


def _check_png(path):
    img = cv2.imread(str(path))
    assert img is not None, f"{path.name} does not decode"
    assert min(img.shape[:2]) > 200 and img.std() > 10, f"{path.name} looks empty"


def test_pictures_are_valid_pngs_with_content(run):
    cfg = run[0]
    for name in ("roc_curves.png", "pr_curves.png", "confusion_matrix.png", "training_curves.png"):
        _check_png(layout.reports_dir(cfg.work) / name)


def test_confusion_matrix_picture_of_a_fixed_matrix(tmp_path):
    counts = np.array([[8, 2, 0], [1, 5, 4], [0, 0, 0]])
    plots.confusion_matrix(counts, CLASSES, tmp_path / "cm.png")
    _check_png(tmp_path / "cm.png")
    assert list(tmp_path.iterdir()) == [tmp_path / "cm.png"]  # written atomically, no leftovers


def test_weights_flag_multi_label_mode_and_an_unreadable_test_image(run, tmp_path, capsys):
    cfg = dataclasses.replace(run[0])  # the module's run stays as it is for the tests after this one
    shutil.copytree(cfg.work, tmp_path / "work")
    cfg.work_dir, cfg.label_mode = str(tmp_path / "work"), "multi"
    cfg.weights = str(layout.epoch_checkpoint(cfg.work, 3))
    test, _ = layout.read_split(cfg.work, "test")
    layout.image_path(cfg.work, test["file"][4]).write_bytes(b"not an image")
    evaluate.run(cfg)
    reports = layout.reports_dir(cfg.work)
    m = json.loads((reports / "test_metrics.json").read_text())
    assert m["weights"] == cfg.weights and m["soup"] is None and m["label_mode"] == "multi"
    assert m["unreadable_images"] == [test["file"][4]] and m["test_images"] == len(test) - 1
    assert "single_label" not in m
    preds = pd.read_csv(reports / "test_predictions.csv")
    assert len(preds) == len(test) - 1 and test["image_id"][4] not in preds["image_id"].tolist()
    assert m["epoch_checkpoints_macro_auc"]["epoch 3"] == pytest.approx(m["macro_auc"], abs=1e-6)
    assert "warning: 1 test images could not be read" in capsys.readouterr().out


@pytest.fixture
def scored(monkeypatch):
    """What evaluate scores, in order: one line per call of its Scorer."""
    calls = []

    class Counting(evaluate.Scorer):
        def __call__(self, ckpt, split, desc):
            calls.append(desc)
            return super().__call__(ckpt, split, desc)

    monkeypatch.setattr(evaluate, "Scorer", Counting)
    return calls


def test_an_epoch_that_is_the_evaluated_weights_is_not_scored_again(cfg, scored):
    c = cfg(workers=0, bootstrap=50, epochs=1)
    finished_run(c.work, epochs=(1,))
    with contextlib.redirect_stdout(io.StringIO()):
        soup.run(c)
        evaluate.run(c)
    assert scored == ["[evaluate] val", "[evaluate] test"]
    m = json.loads((layout.reports_dir(c.work) / "test_metrics.json").read_text())
    assert m["soup"]["epochs"] == [1] and m["epoch_checkpoints_macro_auc"] == {"epoch 1": m["macro_auc"]}


def test_another_runs_one_epoch_soup_is_not_taken_for_this_runs_epoch(cfg, tmp_path, scored):
    other = cfg(work_dir=str(tmp_path / "other"), workers=0, bootstrap=50, epochs=1)
    write_splits(other.work)
    write_checkpoints(other.work, epochs=(1,), seed=1)  # other weights, same epoch number
    with contextlib.redirect_stdout(io.StringIO()):
        soup.run(other)
    c = cfg(workers=0, bootstrap=50, epochs=1, weights=str(layout.soup_weights(other.work)))
    finished_run(c.work, epochs=(1,))
    with contextlib.redirect_stdout(io.StringIO()):
        evaluate.run(c)
    assert scored == ["[evaluate] val", "[evaluate] test", "[evaluate] test, epoch 1"]
    m = json.loads((layout.reports_dir(c.work) / "test_metrics.json").read_text())
    assert m["epoch_checkpoints_macro_auc"]["epoch 1"] != m["macro_auc"]


def test_weights_that_saw_test_patients_are_refused(cfg, tmp_path):
    c = cfg(workers=0, bootstrap=20, epochs=3)
    finished_run(c.work)
    with contextlib.redirect_stdout(io.StringIO()):
        soup.run(c)
    own = read_weights(layout.soup_weights(c.work))
    seen = pd.concat([layout.read_split(c.work, s)[0] for s in ("train", "val")])
    assert own["seen_patients"].tolist() == layout.patient_hashes(seen).tolist()  # the soup keeps the record
    test, _ = layout.read_split(c.work, "test")
    leaky = {**own, "seen_patients": torch.as_tensor(layout.patient_hashes(test.iloc[:6]))}  # 3 test patients
    save_weights(leaky, tmp_path / "leaky.pth")
    with pytest.raises(KitError, match=r"leaky.pth was trained or selected on 3 of the 12 patients of this "
                                       r"run's test split, so its test figures would be optimistic"):
        evaluate.run(dataclasses.replace(c, weights=str(tmp_path / "leaky.pth")))
    with contextlib.redirect_stdout(io.StringIO()):
        evaluate.run(c)  # its own soup saw none of them


def test_intervals_resample_patients_and_say_so(run):
    """Oracle: draws of patients made with numpy (the documented convention: the patients'
    sorted ids indexed by default_rng(seed).integers), each scored by scikit-learn."""
    _, _, m, preds = run
    assert m["bootstrap"]["patients"] == preds["patient_id"].nunique() == len(preds) // 2
    assert "patients resampled" in m["bootstrap"]["method"]
    y, p = preds[CLASSES].to_numpy(), preds[[f"prob_{c}" for c in CLASSES]].to_numpy()
    patients = np.unique(preds["patient_id"])
    rows = {pid: np.flatnonzero(preds["patient_id"].to_numpy() == pid) for pid in patients}
    picks = np.random.default_rng(m["bootstrap"]["seed"]).integers(0, len(patients), (200, len(patients)))
    aucs = np.full((200, len(CLASSES)), np.nan)
    for r, picked in enumerate(picks):
        idx = np.concatenate([rows[patients[i]] for i in picked])
        for k in range(len(CLASSES)):
            if 0 < y[idx, k].sum() < len(idx):
                aucs[r, k] = roc_auc_score(y[idx, k], p[idx, k])
    for k, c in enumerate(CLASSES):
        scored = aucs[np.isfinite(aucs[:, k]), k]
        assert m["classes"][c]["auc_ci_draws"] == len(scored)
        np.testing.assert_allclose(m["classes"][c]["auc_ci"], np.percentile(scored, [2.5, 97.5]), atol=1e-6)
    whole = np.isfinite(aucs).all(axis=1)
    assert m["bootstrap"]["macro_draws"] == whole.sum()
    np.testing.assert_allclose(m["macro_auc_ci"], np.percentile(aucs[whole].mean(1), [2.5, 97.5]), atol=1e-6)
    per_image = metrics.bootstrap_auc(y, p, 200, m["bootstrap"]["seed"])[0]  # what ignoring patients gives
    assert not np.allclose(per_image, [m["classes"][c]["auc_ci"] for c in CLASSES], atol=1e-3)


def test_thresholds_are_chosen_on_val_where_test_would_choose_others(run):
    """val's probabilities from plain timm on the stored images; the report's thresholds are
    Youden's on val, and differ from those test would choose."""
    cfg, _, m, preds = run
    val, _ = layout.read_split(cfg.work, "val")
    grays = [area_resize(cv2.imread(str(layout.image_path(cfg.work, f)), cv2.IMREAD_GRAYSCALE), (IMG_SIZE,) * 2)
             for f in val["file"]]  # the kit's resize, checked against an exact area average in test_separate
    p_val = plain_timm_probs(layout.soup_weights(cfg.work), grays)
    chosen = np.array([m["classes"][c]["threshold"] for c in CLASSES])
    on_val = [youden(val[c].to_numpy(), p_val[:, k]) for k, c in enumerate(CLASSES)]
    on_test = [youden(preds[c].to_numpy(), preds[f"prob_{c}"].to_numpy()) for c in CLASSES]
    np.testing.assert_allclose(chosen, on_val, atol=1e-5)
    assert not np.allclose(chosen, on_test, atol=1e-3)


def _tta_report(run, tmp_path, hflip):
    cfg = dataclasses.replace(run[0])
    shutil.copytree(cfg.work, tmp_path / "work")
    cfg.work_dir, cfg.tta, cfg.hflip, cfg.bootstrap = str(tmp_path / "work"), True, hflip, 20
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        evaluate.run(cfg)
    reports = layout.reports_dir(cfg.work)
    m = json.loads((reports / "test_metrics.json").read_text())
    preds = pd.read_csv(reports / "test_predictions.csv")
    test, _ = layout.read_split(cfg.work, "test")
    grays = [area_resize(cv2.imread(str(layout.image_path(cfg.work, f)), cv2.IMREAD_GRAYSCALE), (IMG_SIZE,) * 2)
             for f in test["file"]]
    return m, printed.getvalue(), preds[[f"prob_{c}" for c in CLASSES]].to_numpy(), grays


def test_tta_averages_the_flipped_film_when_training_flipped(run, tmp_path):
    m, printed, got, grays = _tta_report(run, tmp_path, hflip=0.5)
    weights = layout.soup_weights(run[0].work)
    plain, flipped = plain_timm_probs(weights, grays), plain_timm_probs(weights, grays, flip=True)
    np.testing.assert_allclose(got, (plain + flipped) / 2, atol=1e-5)
    assert not np.allclose(got, plain, atol=1e-4)
    assert m["tta"] == "flip" and "with flip TTA" in printed


def test_tta_without_flips_in_training_averages_a_scaled_and_shifted_film(run, tmp_path):
    """Never the flip a model trained without flips never saw: the film zoomed in 5% and shifted
    2% of its side, warped here by scipy (exact bilinear, black outside the film)."""
    from scipy.ndimage import affine_transform

    m, printed, got, grays = _tta_report(run, tmp_path, hflip=0.0)
    scale, dx, dy = 1.05, 0.02, 0.02
    centre = (IMG_SIZE - 1) / 2
    # output pixel o reads input pixel centre + (o - centre - shift) / scale, on (row, column)
    offset = [centre - (centre + dy * IMG_SIZE) / scale, centre - (centre + dx * IMG_SIZE) / scale]
    jittered = [affine_transform(g.astype(np.float64), [1 / scale, 1 / scale], offset, order=1, cval=0.0)
                for g in grays]
    weights = layout.soup_weights(run[0].work)
    plain = plain_timm_probs(weights, grays)
    np.testing.assert_allclose(got, (plain + plain_timm_probs(weights, jittered)) / 2, atol=1e-4)
    assert not np.allclose(got, (plain + plain_timm_probs(weights, grays, flip=True)) / 2, atol=1e-4)
    assert m["tta"] == "scale and shift jitter" and "with scale and shift jitter TTA" in printed


def test_missing_soup_says_which_stage_to_run(tmp_path, cfg):
    c = cfg()
    finished_run(c.work, epochs=(1,))
    with pytest.raises(KitError, match="run --stage soup first"):
        evaluate.run(c)
    c.weights = str(tmp_path / "nope.pth")
    with pytest.raises(KitError, match="--weights .*nope.pth not found"):
        evaluate.run(c)
