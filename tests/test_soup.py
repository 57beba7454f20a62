"""Soup arithmetic: epoch selection, refusal of mismatched checkpoints, uniform and greedy soups."""
import glob
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import timm.models
import torch
from eval_fixtures import CLASSES, IMG_SIZE, STUDY_ARCH, STUDY_IMG_SIZE, finished_run
from hypothesis import given, settings
from sklearn.metrics import roc_auc_score
from hypothesis import strategies as st

from kit import layout
from kit.config.settings import parse_epochs
from kit.data.loaders import XrayDataset, make_loader
from kit.errors import KitError
from kit.models import averaging
from kit.models.inference import predict
from kit.models.model import load_model
from kit.reports.metrics import macro_auc
from kit.stages import soup as soup_stage


def test_parse_epochs():
    assert parse_epochs("last2", 6) == [5, 6]
    assert parse_epochs("LAST3", 6) == [4, 5, 6]
    assert parse_epochs("6, 3,5", 6) == [3, 5, 6]
    assert parse_epochs("last2", 1) == [1]  # a run shorter than N: all its epochs
    for bad in ("last0", "five", "", "0,1"):
        with pytest.raises(KitError, match="--soup-epochs"):
            parse_epochs(bad, 6)


def _ckpt(seed, arch="m", classes=("a", "b"), shape=(3, 4)):
    g = torch.Generator().manual_seed(seed)
    sd = {"w": torch.randn(shape, generator=g), "b": torch.randn(3, generator=g) * 1e3,
          "steps": torch.tensor([seed], dtype=torch.int64)}
    return {"state_dict": sd, "arch": arch, "classes": list(classes), "img_size": 56}


def test_check_compatible_names_what_differs():
    averaging.check_compatible({"epoch_05.pth": _ckpt(0), "epoch_06.pth": _ckpt(1)})
    with pytest.raises(KitError, match=r"epoch_06.pth.*arch \(m vs other\)"):
        averaging.check_compatible({"epoch_05.pth": _ckpt(0), "epoch_06.pth": _ckpt(1, arch="other")})
    with pytest.raises(KitError, match="classes"):
        averaging.check_compatible({"x": _ckpt(0), "y": _ckpt(1, classes=("a", "c"))})
    with pytest.raises(KitError, match="shapes"):
        averaging.check_compatible({"x": _ckpt(0), "y": _ckpt(1, shape=(3, 5))})


def timm_average(folder, pattern):
    """Oracle: the averaging of timm's avg_checkpoints.py (huggingface/pytorch-image-models, repo
    root), which the installed timm does not ship: its main() with --no-sort, run step by step
    on the files the glob finds, through the timm function it imports (load_state_dict, EMA
    weights first) and the file it saves, read back."""
    from timm.models import load_state_dict  # the script's `timm.models.helpers` import, now re-exported here

    checkpoints = glob.glob(os.path.join(str(folder), pattern), recursive=True)
    avg_state_dict, avg_counts = {}, {}
    for c in checkpoints:
        new_state_dict = load_state_dict(c, True)
        for k, v in new_state_dict.items():
            if k not in avg_state_dict:
                avg_state_dict[k] = v.clone().to(dtype=torch.float64)
                avg_counts[k] = 1
            else:
                avg_state_dict[k] += v.to(dtype=torch.float64)
                avg_counts[k] += 1
    for k, v in avg_state_dict.items():
        v.div_(avg_counts[k])
    float32_info = torch.finfo(torch.float32)
    final_state_dict = {k: v.clamp(float32_info.min, float32_info.max).to(dtype=torch.float32)
                        for k, v in avg_state_dict.items()}
    output = Path(folder) / "averaged.pth"
    torch.save(final_state_dict, output)
    return {k: v.numpy() for k, v in torch.load(output, weights_only=True).items()}


def test_uniform_average_equals_timm_algorithm(tmp_path):
    paths = []
    for seed in range(3):
        paths.append(tmp_path / f"epoch_{seed:02d}.pth")
        torch.save(_ckpt(seed), paths[-1])
    sds = [torch.load(p, weights_only=True)["state_dict"] for p in paths]
    avg = averaging.uniform_average(sds)
    oracle = timm_average(tmp_path, "epoch_*.pth")
    for key in ("w", "b"):
        assert avg[key].dtype == torch.float32
        np.testing.assert_array_equal(avg[key].numpy(), oracle[key])
    # timm averages integer buffers too (a step count of 1.0); the kit keeps the last one's
    assert avg["steps"].dtype == torch.int64 and avg["steps"].item() == 2 and oracle["steps"] == 1.0


def _linear_auc(features, targets):
    """Validation macro AUC of a linear classifier's state dict on fixed data."""
    def score(sd):
        logits = features @ sd["weight"].double().T.numpy() + sd["bias"].double().numpy()
        return macro_auc(targets, logits)
    return score


def _greedy(ingredients, score):
    scores = {n: score(sd) for n, sd in ingredients.items()}
    kept, best, steps = averaging.greedy(
        scores, lambda names: score(averaging.uniform_average([ingredients[n] for n in names])))
    return scores, kept, best, steps


@pytest.fixture(scope="module")
def val_data():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 8))
    true_w = rng.normal(size=(3, 8))
    targets = (features @ true_w.T + rng.normal(scale=2.0, size=(300, 3)) > 0.5).astype(int)
    return features, targets, true_w


def test_greedy_soup_skips_a_harmful_ingredient(val_data):
    features, targets, true_w = val_data
    good = {"weight": torch.tensor(true_w, dtype=torch.float32), "bias": torch.zeros(3)}
    noisy = {"weight": good["weight"] + 0.5 * torch.randn(3, 8, generator=torch.Generator().manual_seed(1)),
             "bias": torch.zeros(3)}
    harmful = {"weight": -5 * good["weight"], "bias": torch.zeros(3)}
    score = _linear_auc(features, targets)
    scores, kept, best, steps = _greedy({"epoch_04": harmful, "epoch_05": noisy, "epoch_06": good}, score)
    assert [s[0] for s in steps] == sorted(scores, key=scores.get, reverse=True)
    assert kept[0] == "epoch_06" and "epoch_04" not in kept
    assert best >= max(scores.values())
    assert best == pytest.approx(score(averaging.uniform_average([{"epoch_04": harmful, "epoch_05": noisy,
                                                                "epoch_06": good}[n] for n in kept])))


@settings(max_examples=15, deadline=None)
@given(noise_levels=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=5), seed=st.integers(0, 10_000))
def test_greedy_soup_never_scores_below_its_best_ingredient(noise_levels, seed, val_data):
    features, targets, true_w = val_data
    g = torch.Generator().manual_seed(seed)
    weight = torch.tensor(true_w, dtype=torch.float32)
    ingredients = {f"epoch_{i}": {"weight": weight + level * torch.randn(3, 8, generator=g),
                                  "bias": torch.randn(3, generator=g)}
                   for i, level in enumerate(noise_levels)}
    score = _linear_auc(features, targets)
    scores, kept, best, steps = _greedy(ingredients, score)
    assert best >= max(scores.values())
    assert best == pytest.approx(score(averaging.uniform_average([ingredients[n] for n in kept])))
    assert [v for _, v, accepted in steps if accepted] == sorted(v for _, v, accepted in steps if accepted)


# --- the soup stage on a small finished run ---------------------------------------------

@pytest.fixture
def run_dir(tmp_path, cfg):
    c = cfg(epochs=3, workers=0)
    paths = finished_run(c.work)
    return c, paths


def test_stage_uniform_soup_equals_timm_average_and_loads_in_plain_timm(cfg, capsys):
    c = cfg(epochs=3, workers=0)
    finished_run(c.work, epochs=(2, 3), arch=STUDY_ARCH, img_size=STUDY_IMG_SIZE)
    soup_stage.run(c)
    out = layout.soup_weights(c.work)
    ckpt = torch.load(out, weights_only=True)
    oracle = timm_average(layout.checkpoint_dir(c.work), "epoch_0[23].pth")
    assert ckpt["state_dict"].keys() == oracle.keys()
    for key, value in ckpt["state_dict"].items():
        assert value.dtype == torch.float32
        np.testing.assert_array_equal(value.numpy(), oracle[key])
    assert ckpt["soup"] == {"method": "uniform", "epochs": [2, 3]}
    assert ckpt["arch"] == STUDY_ARCH and ckpt["classes"] == CLASSES and ckpt["epoch"] == 3

    model = timm.create_model(ckpt["arch"], num_classes=len(ckpt["classes"]), img_size=ckpt["img_size"])
    timm.models.load_checkpoint(model, str(out))
    np.testing.assert_array_equal(model.head.weight.detach().numpy(), oracle["head.weight"])

    report = pd.read_csv(layout.reports_dir(c.work) / "soup.csv")
    assert report["model"].tolist() == ["epoch 2", "epoch 3", "uniform soup"]
    assert report["val_macro_auc"].iloc[-1] == pytest.approx(ckpt["metric"])
    aucs = report[[f"val_auc_{k}" for k in CLASSES]].to_numpy()
    np.testing.assert_allclose(report["val_macro_auc"], np.nanmean(aucs, axis=1))
    history = pd.read_csv(layout.history_csv(c.work)).set_index("epoch")  # training scored the epochs
    np.testing.assert_allclose(aucs[:2], history.loc[[2, 3], [f"val_auc_{k}" for k in CLASSES]])
    printed = capsys.readouterr().out
    assert "epoch 2" in printed and "epoch 3" in printed and "vs the best epoch" in printed

    # the soup's val answers, kept for a blend: every val film, scored as the soup scored on val
    val, _ = layout.read_split(c.work, "val")
    answers = pd.read_csv(layout.val_predictions_csv(c.work), dtype={"image_id": str})
    decision = json.loads(layout.study_pool_json(c.work).read_text())
    assert answers["image_id"].tolist() == val["image_id"].tolist()
    assert decision["method"] == "none" and "study pool: none" in printed
    assert macro_auc(val[CLASSES], answers[[f"prob_{k}" for k in CLASSES]]) == pytest.approx(ckpt["metric"])
    assert decision["val_macro_auc"]["none"] == pytest.approx(ckpt["metric"])

    soup_stage.run(c)
    assert "up to date" in capsys.readouterr().out


def test_stage_soup_epochs_choose_the_ingredients_scored_on_val_without_history(run_dir):
    c, paths = run_dir
    c.soup_epochs = "1,3"
    layout.history_csv(c.work).unlink()
    soup_stage.run(c)
    ckpt = torch.load(layout.soup_weights(c.work), weights_only=True)
    assert ckpt["soup"]["epochs"] == [1, 3]
    np.testing.assert_array_equal(ckpt["state_dict"]["head.bias"].numpy(),
                                  timm_average(layout.checkpoint_dir(c.work), "epoch_0[13].pth")["head.bias"])
    report = pd.read_csv(layout.reports_dir(c.work) / "soup.csv").set_index("model")
    val, _ = layout.read_split(c.work, "val")
    loader = make_loader(XrayDataset([layout.image_path(c.work, f) for f in val["file"]], None, IMG_SIZE),
                         batch_size=5, shuffle=False, workers=0)
    for epoch in (1, 3):
        weights = torch.load(paths[epoch], weights_only=True)
        probs, _ = predict(load_model(weights, "cpu"), loader, "cpu", weights["mean"], weights["std"])
        assert report.loc[f"epoch {epoch}", "val_macro_auc"] == pytest.approx(macro_auc(val[CLASSES], probs))


def test_stage_greedy_soup_does_not_lower_val_auc(run_dir, capsys):
    c, paths = run_dir
    c.soup = "greedy"
    layout.history_csv(c.work).unlink()  # every score measured here, none recorded
    soup_stage.run(c)
    report = pd.read_csv(layout.reports_dir(c.work) / "soup.csv", dtype={"epochs": str}).set_index("model")
    ingredients = report.loc[["epoch 1", "epoch 2", "epoch 3"], "val_macro_auc"]
    assert report.loc["greedy soup", "val_macro_auc"] >= ingredients.max()
    ckpt = torch.load(layout.soup_weights(c.work), weights_only=True)
    kept = report.loc["greedy soup", "epochs"].split()
    assert ckpt["soup"]["method"] == "greedy" and kept == [str(e) for e in ckpt["soup"]["epochs"]]
    assert ingredients.idxmax().split()[1] in kept
    assert "in the soup" in capsys.readouterr().out


def test_stage_missing_epochs_lists_what_exists(run_dir):
    c, paths = run_dir
    paths[3].unlink()
    with pytest.raises(KitError, match=r"epochs 2, 3 .*epoch 3 .*on disk: epochs 1, 2"):
        soup_stage.run(c)
    assert not layout.soup_weights(c.work).exists()


def test_stage_refuses_checkpoints_of_different_class_lists(run_dir):
    c, paths = run_dir
    other = torch.load(paths[3], weights_only=True)
    other["classes"] = ["A", "B", "C"]
    torch.save(other, paths[3])
    with pytest.raises(KitError, match=r"epoch_02.pth and epoch_03.pth.*classes"):
        soup_stage.run(c)
    assert not layout.soup_weights(c.work).exists()


def test_without_a_test_split_the_soup_writes_the_val_report(cfg, capsys):
    c = cfg(epochs=3, workers=0, bootstrap=100)
    finished_run(c.work, epochs=(2, 3))
    test_csv = layout.split_csv(c.work, "test")
    pd.read_csv(test_csv).iloc[:0].to_csv(test_csv, index=False)  # --test-frac 0: the competition's default
    soup_stage.run(c)
    reports = layout.reports_dir(c.work)
    report = json.loads((reports / "val_metrics.json").read_text())
    answers = pd.read_csv(layout.val_predictions_csv(c.work))
    for k in CLASSES:
        auc = roc_auc_score(answers[k], answers[f"prob_{k}"])
        low, high = report["classes"][k]["auc_ci"]
        assert report["classes"][k]["auc"] == pytest.approx(auc, abs=1e-6) and low <= auc <= high
    assert report["study_pool"]["method"] == "none" and report["bootstrap"]["resamples"] == 100
    assert (reports / "val_roc_curves.png").stat().st_size and (reports / "training_curves.png").stat().st_size
    printed = capsys.readouterr().out
    weakest_first = sorted(CLASSES, key=lambda k: report["classes"][k]["auc"])
    shown = [line.split()[0] for line in printed.split("weakest first:")[1].splitlines()[1:4]]
    assert [k.split()[0] for k in weakest_first] == shown


def test_the_val_report_prints_no_interval_that_few_draws_hold(tmp_path):
    """Eight findings on one patient each, among 18: a draw seldom holds all of them, so the macro
    interval would rest on a handful of draws; the report says so instead of printing it."""
    from kit.reports import val_report

    rng = np.random.default_rng(0)
    patients = [f"p{i}" for i in range(18)]
    val = pd.DataFrame({"image_id": patients, "patient_id": patients, "file": patients})
    classes = [f"F{k}" for k in range(8)]
    for k, c in enumerate(classes):
        val[c] = (np.arange(18) == k).astype(int)
    probs = np.clip(val[classes].to_numpy() * 0.6 + rng.uniform(0, 0.5, (18, 8)), 0, 1)
    result = val_report.write(tmp_path, val, classes, probs, {"method": "none"}, 200, 0)
    assert result["macro_auc_ci_draws"] < 0.5 * 200 <= min(m["auc_ci_draws"] for m in result["classes"].values())
    lines = val_report.describe(result)
    assert f"[too few draws for an interval: {result['macro_auc_ci_draws']} of 200]" in lines[0]
    assert all("too few" not in line for line in lines[1:])
