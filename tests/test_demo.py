"""`python run.py --demo` end to end: every stage on generated data, on a CPU."""
import json

import cv2
import pandas as pd
import pytest

from kit import layout


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from conftest import run_kit

    work = tmp_path_factory.mktemp("demo") / "work"
    result = run_kit("--demo", "--work-dir", work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, result.stdout


def test_the_demo_learns(demo):
    work, _ = demo
    history = pd.read_csv(work / "history.csv")
    assert history["val_macro_auc"].iloc[-1] > 0.85
    metrics = json.loads((work / "reports" / "test_metrics.json").read_text())
    assert metrics["macro_auc"] > 0.8


def test_the_demo_writes_every_artifact(demo):
    work, out = demo
    for name in ("run_config.json", "filtered.csv", "class_distribution.csv", "dataset/manifest.csv",
                 "splits/train.csv", "splits/val.csv", "splits/test.csv", "splits/summary.csv",
                 "history.csv", "checkpoints/last.pth", "eva_x_final_soup.pth", "reports/soup.csv",
                 "reports/test_metrics.json", "reports/test_predictions.csv", "submission.csv"):
        assert (work / name).is_file(), name
    for png in ("class_distribution.png", "reports/roc_curves.png", "reports/pr_curves.png",
                "reports/confusion_matrix.png", "reports/training_curves.png"):
        img = cv2.imread(str(work / png))
        assert img is not None and img.std() > 5, png
    for stage in ("metadata", "separate", "split", "train", "soup", "evaluate", "predict"):
        assert f"[{stage}] done in" in out


def test_the_demo_submission_follows_the_sample(demo):
    work, _ = demo
    sample = pd.read_csv(work / "demo_data" / "sample_submission_1.csv")
    submission = pd.read_csv(work / "submission.csv")
    assert list(submission.columns) == list(sample.columns)
    assert submission["Image_name"].tolist() == sample["Image_name"].tolist()
    probs = submission.drop(columns="Image_name").to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()


def test_no_patient_crosses_splits_in_the_demo(demo):
    work, _ = demo
    patients = [set(layout.read_split(work, s)[0]["patient_id"]) for s in layout.SPLITS]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
