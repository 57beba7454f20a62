"""`python run.py --demo` end to end: every stage on generated data, on a CPU."""
import json

import cv2
import numpy as np
import pandas as pd
import pytest

from kit import layout
from kit.data import demo as demo_data
from kit.data.sources import gxs


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from conftest import run_kit

    work = tmp_path_factory.mktemp("demo") / "work"
    result = run_kit("--demo", "--work-dir", work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, result.stdout


def test_the_demo_learns_visibly(demo):
    """A model that separates the classes, not one that follows the majority."""
    work, _ = demo
    history = pd.read_csv(work / "history.csv")
    assert history["val_macro_auc"].iloc[-1] > 0.85
    metrics = json.loads((work / "reports" / "test_metrics.json").read_text())
    assert metrics["macro_auc"] >= 0.9 and metrics["micro_auc"] >= 0.85
    assert metrics["single_label"]["balanced_accuracy"] >= 0.6


def test_the_demo_writes_every_artifact(demo):
    work, out = demo
    for name in ("run_config.json", "filtered.csv", "class_distribution.csv", "dataset/manifest.csv",
                 "splits/train.csv", "splits/val.csv", "splits/test.csv", "splits/summary.csv",
                 "history.csv", "checkpoints/last.pth", "eva_x_final_soup.pth", "reports/soup.csv",
                 "reports/test_metrics.json", "reports/test_predictions.csv"):
        assert (work / name).is_file(), name
    for png in ("class_distribution.png", "reports/roc_curves.png", "reports/pr_curves.png",
                "reports/confusion_matrix.png", "reports/training_curves.png"):
        img = cv2.imread(str(work / png))
        assert img is not None and img.std() > 5, png
    for stage in ("metadata", "separate", "split", "train", "soup", "evaluate"):
        assert f"[{stage}] done in" in out


def test_the_demo_mirrors_the_competition_and_the_study_says_which_task_submits(demo):
    """The sample scores all 14 findings and test1/ holds lateral films: the study (5 classes)
    skips predict with a line; the competition task's kernel test submits to it (test_bundle)."""
    work, out = demo
    sample = pd.read_csv(work / "demo_data" / "sample_submission_1.csv")
    assert list(sample.columns) == ["Image_name", *gxs.FINDINGS]
    films = [cv2.imread(str(work / "demo_data" / "test1" / name), cv2.IMREAD_GRAYSCALE) for name in sample.Image_name]
    assert len(films) == demo_data.TEST_IMAGES and all(f is not None for f in films)
    views = [view for _, view in demo_data._test_rows(np.random.default_rng(0))]
    assert views.count("lateral") >= len(views) // 5 and "frontal" in views
    assert "[predict] skipped: sample_submission_1.csv scores 14 classes and the study trains 5" in out
    assert "--task competition" in out and not (work / "submission.csv").exists()
    table = pd.read_csv(work / "demo_data" / "train1.csv")
    assert (table["ViewCategory"] == "Lateral").any()
    assert (table[list(gxs.FINDINGS)].sum(axis=1) == 0).any() and (table[list(gxs.FINDINGS)].sum(axis=1) > 1).any()


def test_no_patient_crosses_splits_in_the_demo(demo):
    work, _ = demo
    patients = [set(layout.read_split(work, s)[0]["patient_id"]) for s in layout.SPLITS]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
