"""--task competition on data shaped like Grand X-Ray Slam: every view, several findings and
none, a sample submission whose columns come in another order than train1.csv's; the
submission it writes, the interim one at the time limit, --smoke, and the bad inputs."""
import json
import re

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch

from fake_data import GXS_META
from kit import cli, layout
from kit.data import demo, smoke
from kit.data.sources import gxs
from kit.stages import submit
from kit.training import session, timing

# the sample scores every finding, in an order of its own (train1.csv's is alphabetical)
SAMPLE_COLUMNS = ["No Finding", *reversed([f for f in gxs.FINDINGS if f != "No Finding"])]
# what a CPU trains in seconds: eva02_tiny at 28 px, 2 epochs
TINY = ["--model", "eva02_tiny_patch14_224", "--img-size", "28", "--pretrained", "none", "--drop-path", "0",
        "--epochs", "2", "--batch-size", "8", "--effective-batch", "8", "--workers", "0", "--resize", "64",
        "--soup-epochs", "last1", "--bootstrap", "10", "--compile", "off"]


def competition(root, patients=60, test_films=12, seed=0):
    """train1.csv with every real column, frontal and lateral films, images with one finding,
    several, or none; sample_submission_1.csv and test1/ with frontal and lateral films."""
    rng = np.random.default_rng(seed)
    records, k = [], 0
    for p in range(patients):
        for view in ("frontal", "lateral")[:1 + p % 2]:
            kind = k % 5
            findings = ([] if kind == 0 else ["No Finding"] if kind == 1 else
                        list(rng.choice([f for f in gxs.FINDINGS if f != "No Finding"], 1 + kind % 2, replace=False)))
            if p < 3:  # every finding on a few patients, so that a small val split holds each
                findings = [f for f in gxs.FINDINGS if f != "No Finding"]
            name = f"img_{k:05d}.jpg"
            films = demo.film([f for f in findings if f in demo.PROPORTIONS], rng, lateral=view == "lateral")
            (root / "train1").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "train1" / name), films)
            rec = {"Image_name": name, "Patient_ID": f"P{p:04d}", "Study": f"S{k}", "Sex": "F", "Age": 60,
                   "ViewCategory": "Lateral" if view == "lateral" else "Frontal",
                   "ViewPosition": "LL" if view == "lateral" else rng.choice(["AP", "PA"])}
            rec.update({f: int(f in findings) for f in gxs.FINDINGS})
            records.append(rec)
            k += 1
    pd.DataFrame(records, columns=GXS_META + list(gxs.FINDINGS)).to_csv(root / "train1.csv", index=False)
    (root / "test1").mkdir()
    ids = []
    for i in range(test_films):
        name = f"test_{i:04d}.jpg"
        cv2.imwrite(str(root / "test1" / name), demo.film([], rng, lateral=i % 3 == 0))
        ids.append(name)
    sample = pd.DataFrame({"Image_name": ids[::-1], **{c: 0.5 for c in SAMPLE_COLUMNS}})
    sample.to_csv(root / "sample_submission_1.csv", index=False)
    return root, sample


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return competition(tmp_path_factory.mktemp("gxs") / "data")


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    root, sample = data
    work = tmp_path_factory.mktemp("competition") / "work"
    assert cli.main(["--task", "competition", "--data-dir", str(root), "--work-dir", str(work), *TINY]) == 0
    return work


def test_the_submission_has_the_samples_ids_and_columns_in_its_order(data, finished):
    root, sample = data
    submission = pd.read_csv(finished / "submission.csv")
    assert list(submission.columns) == list(sample.columns)
    assert submission["Image_name"].tolist() == sample["Image_name"].tolist()
    probs = submission[SAMPLE_COLUMNS].to_numpy()
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    assert json.loads((finished / "reports" / "submission.json").read_text())["interim"] is False


def test_each_column_is_the_model_output_of_its_class(data, finished, tmp_path):
    """Against plain timm and OpenCV. A model trained for seconds scores every class alike, so
    its head's biases are set apart first (the soup's weights otherwise): a column taken from
    another class would be off by at least 0.1."""
    root, sample = data
    ckpt = torch.load(finished / "eva_x_final_soup.pth", map_location="cpu", weights_only=False)
    assert sorted(ckpt["classes"]) == sorted(SAMPLE_COLUMNS)
    ckpt["state_dict"]["head.bias"] = torch.linspace(-3, 3, len(ckpt["classes"]))
    torch.save(ckpt, tmp_path / "apart.pth")
    out = tmp_path / "w"
    argv = ["--task", "competition", "--data-dir", str(root), "--work-dir", str(out), *TINY]
    assert cli.main([*argv, "--stage", "predict", "--weights", str(tmp_path / "apart.pth")]) == 0

    submission = pd.read_csv(out / "submission.csv")
    assert list(submission.columns) == list(sample.columns)
    assert_timm_outputs(submission, ckpt, root / "test1", atol=0.01)


def assert_timm_outputs(submission, ckpt, folder, atol):
    """Each column of `submission` is plain timm's sigmoid output of its class on the films of
    `folder`, read by OpenCV and shrunk to 28 px, for the weights file `ckpt`."""
    model = timm.create_model(ckpt["arch"], num_classes=len(ckpt["classes"]), img_size=ckpt["img_size"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    films = [cv2.imread(str(folder / i), cv2.IMREAD_GRAYSCALE) for i in submission["Image_name"]]
    x = np.stack([cv2.resize(f, (28, 28), interpolation=cv2.INTER_AREA) for f in films]).astype(np.float32) / 255
    x = (np.repeat(x[:, None], 3, 1) - np.array(ckpt["mean"])[:, None, None]) / np.array(ckpt["std"])[:, None, None]
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(x.astype(np.float32)))).numpy()
    for column in SAMPLE_COLUMNS:
        np.testing.assert_allclose(submission[column], expected[:, ckpt["classes"].index(column)], atol=atol)


def test_it_trains_on_every_view_and_labelled_image_with_a_small_val_split(data, finished):
    root, _ = data
    table = pd.read_csv(root / "train1.csv")
    filtered = pd.read_csv(finished / "filtered.csv")
    assert len(filtered) == len(table)  # laterals, several findings and none all kept
    assert layout.class_columns(filtered) == SAMPLE_COLUMNS
    assert (filtered[SAMPLE_COLUMNS].sum(axis=1) == 0).any() and (filtered[SAMPLE_COLUMNS].sum(axis=1) > 1).any()
    splits = {s: pd.read_csv(layout.split_csv(finished, s)) for s in layout.SPLITS}
    assert splits["test"].empty and 0 < len(splits["val"]) <= 0.15 * len(table)
    assert not set(splits["train"]["patient_id"]) & set(splits["val"]["patient_id"])
    config = json.loads((finished / "run_config.json").read_text())
    assert config["task"] == "competition" and config["label_mode"] == "multi" and config["views"] == "all"


def test_the_bare_command_runs_the_study_and_says_which_task_submits(data, tmp_path, capsys):
    root, _ = data
    argv = ["--data-dir", str(root), "--work-dir", str(tmp_path / "w"), *TINY, "--classes",
            "Cardiomegaly,Lung Opacity,Pleural Effusion,Support Devices,Pneumothorax", "--label-mode", "multi",
            "--val-frac", "0.25", "--test-frac", "0.25"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "[predict] skipped: sample_submission_1.csv scores 14 classes and the study trains 5" in out
    assert "--task competition" in out and not (tmp_path / "w" / "submission.csv").exists()
    assert (tmp_path / "w" / "reports" / "test_metrics.json").exists()


def test_the_time_limit_ends_with_an_interim_submission_and_the_rerun_continues(data, tmp_path, capsys,
                                                                                  monkeypatch):
    root, sample = data
    argv = ["--task", "competition", "--data-dir", str(root), "--work-dir", str(tmp_path / "w"), *TINY]
    calls = iter(range(10**6))
    monkeypatch.setattr(session, "training_out_of_time", lambda: next(calls) >= 5)  # after 6 updates
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    work = tmp_path / "w"
    assert "interim submission" in out and "time limit" in out
    report = json.loads((work / "reports" / "submission.json").read_text())
    assert report["interim"] is True and report["weights"].endswith("interim.pth")
    assert re.fullmatch(r"xray kit competition: eva02_tiny_patch14_224, 2 epochs, (val macro AUC \d\.\d{4} "
                        r"\(epoch 1\), )?interim, epoch [01] of 2", submit.description(work))  # what submit says
    submission = pd.read_csv(work / "submission.csv")
    assert submission["Image_name"].tolist() == sample["Image_name"].tolist()
    assert np.isfinite(submission[SAMPLE_COLUMNS].to_numpy()).all()
    # a model trained for 6 updates moves its outputs about 2e-3 from where the head's prior put
    # them: a finer tolerance tells the interim weights from others
    assert_timm_outputs(submission, torch.load(layout.interim_weights(work), weights_only=False), root / "test1",
                        atol=2e-4)
    assert not (work / "eva_x_final_soup.pth").exists()

    monkeypatch.undo()
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "[train] resuming from" in out and "update 7" in out
    assert json.loads((work / "reports" / "submission.json").read_text())["interim"] is False
    assert not layout.interim_weights(work).exists() and (work / "eva_x_final_soup.pth").exists()


def test_smoke_runs_every_stage_on_a_slice_and_leaves_the_real_run_alone(data, tmp_path, capsys, monkeypatch):
    root, _ = data
    monkeypatch.setattr(smoke, "IMAGES", 40)
    monkeypatch.setattr(smoke, "PATIENTS_PER_CLASS", 2)
    monkeypatch.setattr(smoke, "TEST_FILMS", 5)
    work = tmp_path / "w"
    base = ["--task", "competition", "--data-dir", str(root), "--work-dir", str(work), *TINY]
    assert cli.main([*base, "--smoke"]) == 0
    out = capsys.readouterr().out
    filtered = pd.read_csv(work / "smoke" / "filtered.csv")
    table = pd.read_csv(root / "train1.csv")
    assert 30 <= len(filtered) <= 50 < len(table)
    assert (filtered[SAMPLE_COLUMNS].sum() >= 2).all()  # every class, on whole patients
    assert len(table[table["Patient_ID"].isin(filtered["patient_id"])]) == len(filtered)
    assert len(pd.read_csv(work / "smoke" / "submission.csv")) == 5
    assert not (work / "submission.csv").exists() and not (work / "checkpoints").exists()
    assert "[predict] done" in out

    assert cli.main(base) == 0  # a real run in the same work dir: all the data, training from scratch
    out = capsys.readouterr().out
    assert "resuming" not in out and len(pd.read_csv(work / "filtered.csv")) == len(table)
    assert len(pd.read_csv(work / "submission.csv")) == len(pd.read_csv(root / "sample_submission_1.csv"))


@pytest.mark.parametrize("case, pattern", [
    ("no class columns", r"sample_submission_1.csv has no class columns"),
    ("unknown class", r"sample_submission_1.csv scores Nodule, which train1.csv has no column for"),
    ("other classes", r"--classes Cardiomegaly,Edema disagrees with sample_submission_1.csv"),
    ("empty test folder", r"test1 holds no images to predict"),
])
def test_bad_competition_inputs_are_one_line(data, tmp_path, capsys, case, pattern):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data[0], root)
    sample = pd.read_csv(root / "sample_submission_1.csv")
    argv = ["--task", "competition", "--data-dir", str(root), "--work-dir", str(tmp_path / "w"), *TINY]
    if case == "no class columns":
        sample[["Image_name"]].to_csv(root / "sample_submission_1.csv", index=False)
    elif case == "unknown class":
        sample.assign(Nodule=0.5).to_csv(root / "sample_submission_1.csv", index=False)
    elif case == "other classes":
        argv += ["--classes", "Cardiomegaly,Edema"]
    else:
        shutil.rmtree(root / "test1")
        (root / "test1").mkdir()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert __import__("re").search(pattern, err[0]), err[0]
    assert not (tmp_path / "w" / "checkpoints").exists()  # stopped before training


def test_the_task_sets_only_what_the_user_left_to_it():
    cfg = cli.resolve(cli.parse_config(["--task", "competition", "--views", "AP,PA", "--work-dir", "w"]))
    assert (cfg.views, cfg.label_mode, cfg.val_frac, cfg.test_frac, cfg.keep_negatives) == ("AP,PA", "multi", 0.05,
                                                                                            0.0, 1.0)
    study = cli.resolve(cli.parse_config(["--work-dir", "w"]))
    assert (study.views, study.label_mode, study.val_frac, study.test_frac) == ("AP,PA", "single", 0.15, 0.15)


def test_the_plan_says_how_far_this_session_gets():
    line = timing.plan(rate=100.0, infer_rate=300.0, train_images=36000, val_images=3000, epochs=6, epoch=0,
                       fraction_done=0.0, left_s=3 * 3600, finish_s=600, now=0)
    # an epoch: 360 s of training and 10 s of validation; 6 of them take 37 minutes
    assert "100.0 images/s -> 6m10s an epoch" in line and "(in 37m00s)" in line
    assert "time limit" not in line
    line = timing.plan(rate=100.0, infer_rate=300.0, train_images=360000, val_images=30000, epochs=6, epoch=1,
                       fraction_done=0.5, left_s=3 * 3600, finish_s=600, now=0)
    # 3700 s an epoch; (10800 - 600) / 3700 = 2.76 epochs from epoch 1.5: this session ends in epoch 4
    assert "this session reaches epoch 4 of 6" in line and "--resume auto" in line


def test_the_time_kept_for_after_training_grows_with_what_they_score():
    """At 500 inference images/s; each later stage starts in a minute, and a quarter more is kept."""
    small, large = timing.Finish(1000, films=1000), timing.Finish(1000, films=46000, tta=True)
    # the soup scores 1,000 val images twice (2,000 images) and predict decodes 1,000 full-size
    # films at half the rate (2,000): 8 s + 2 stages x 60 s = 128 s, x 1.25 = 160 s
    assert small.seconds(500.0) == pytest.approx(160.0)
    # with TTA every image twice: 4,000 val + 46,000 x 2 views x 2 = 188,000 images, 376 s + 120 s = 496 s
    assert large.seconds(500.0) == pytest.approx(620.0) and small.seconds(500.0) < large.seconds(500.0)
    # a study run: 3,000 val twice, evaluate scores 3,000 test images with the soup and 2 epoch
    # files (9,000): 30 s + 2 stages x 60 s = 150 s, x 1.25
    assert timing.Finish(3000, test_images=3000, test_passes=3).seconds(500.0) == pytest.approx(187.5)
    assert timing.Finish(1000, films=1000).seconds(0.0) == 0.0  # no rate measured yet: nothing to keep
