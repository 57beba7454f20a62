"""The generate stage with a tiny generator (32 px, 8 channels, a few updates): what it learns
from, what it writes, resuming, and the study's steps taking its folder as it is."""
import copy
import os
import signal
import subprocess
import sys

import contract
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from test_synthetic import manifest, run_split, store_real_images
from train_fixtures import make_work, one_thread  # noqa: F401 (one_thread: autouse)

from kit import layout, pipeline
from kit.data import synthetic
from kit.data.images import load_gray
from kit.models.model import checkpoint_dict, create_model, norm_stats, save_weights
from kit.stages import generate, synth_quality
from kit.training import generator
from kit.training import interrupt

TINY = dict(gen_size=32, gen_width=8, gen_batch=4, gen_lr=1e-3, gen_epochs=2, gen_steps=3, workers=1)


def state(work):
    return torch.load(layout.generator_state(work), weights_only=True)


def assert_same_state(a, b):
    assert (a["epoch"], a["updates"]) == (b["epoch"], b["updates"])
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"]):
        assert torch.allclose(x, y, atol=1e-6)
    for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.allclose(s["exp_avg_sq"], t["exp_avg_sq"], rtol=1e-4, atol=1e-12)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Two uninterrupted epochs of 5 updates on the 21 train images of the two rarest classes,
    with what the stage read and wrote."""
    work = make_work(tmp_path_factory.mktemp("gen_reference"))
    from kit.config import Config

    with contract.record([pipeline.BY_NAME["generate"]]) as accesses:
        generate.run(Config(work_dir=str(work), gen_per_class=2, **TINY))
    return work, accesses


@pytest.fixture(scope="module")
def reference(recorded):
    return recorded[0]


def test_the_generator_learns_from_train_images_only_and_writes_its_folder(recorded, capsys):
    work, accesses = recorded
    assert contract.undeclared(pipeline.BY_NAME["generate"], accesses, contract.areas(work)) == []
    train, _ = layout.read_split(work, "train")
    trained_on = pd.read_csv(layout.generated_trained_on(work))
    assert set(trained_on["image_id"]) <= set(train["image_id"])
    assert not set(trained_on["image_id"]) & set(layout.read_split(work, "val")[0]["image_id"])
    # the two rarest classes of train (Gamma 10, then Alpha 11 before Beta 11 in class order)
    assert sorted(trained_on["class"].unique()) == ["Alpha", "Gamma"] and len(trained_on) == 21

    listed = pd.read_csv(layout.generated_manifest(work))
    root = layout.generated_dir(work)
    assert sorted(listed["path"]) == sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert (listed["path"].str.split("/").str[0] == listed["label"]).all() and len(listed) == 4
    for p in listed["path"]:
        img = load_gray(root / p)
        assert img.shape == (32, 32) and img.std() > 0
    assert cv2.imread(str(layout.generated_grid(work))) is not None

    # generator.pth restores with diffusers alone and samples
    file = torch.load(layout.generator_weights(work), weights_only=True)
    from diffusers import UNet2DModel

    model = UNet2DModel.from_config(file["config"])
    model.load_state_dict(file["state_dict"])
    assert file["classes"] == ["Gamma", "Alpha"] and file["epoch"] == 2
    images = generator.sample(model, [0, 1], [torch.Generator().manual_seed(s) for s in (0, 1)], 2,
                              torch.device("cpu"), None)
    assert images.shape == (2, 32, 32) and images.dtype == np.uint8

    capsys.readouterr()
    from kit.config import Config

    generate.run(Config(work_dir=str(work), gen_per_class=2, **TINY))
    assert "[generate] up to date, skipped" in capsys.readouterr().out


@pytest.mark.parametrize("target", ["sample", "v_prediction"])
def test_a_generator_predicting_the_image_or_velocity_trains_and_samples(target, monkeypatch):
    """The loss of an update is diffusers' own objective for its draws of noise and timesteps:
    the mean squared error to the image itself, or to the scheduler's velocity."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    run = generator.Training(generator.build(2, 32, 8), 1e-3, 0, torch.device("cpu"), None, target=target)
    untrained = copy.deepcopy(run.model)
    images, labels = torch.randint(0, 256, (4, 32, 32), dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    drawn, add_noise = {}, DDPMScheduler.add_noise

    def seen(self, original, noise, timesteps):
        drawn.update(noise=noise, t=timesteps)
        return add_noise(self, original, noise, timesteps)
    monkeypatch.setattr(DDPMScheduler, "add_noise", seen)
    loss = run.update(images, labels)
    monkeypatch.undo()
    assert np.isfinite(loss)
    file = generator.weights(run.ema_model(), ["a", "b"], 32, 0, target)
    assert file["noise_schedule"]["prediction_type"] == target
    schedule = DDPMScheduler.from_config(file["noise_schedule"])  # the schedule the file names
    x0, noise, t = images.float()[:, None] / 127.5 - 1, drawn["noise"], drawn["t"]
    with torch.no_grad():
        predicted = untrained(schedule.add_noise(x0, noise, t), t, class_labels=labels).sample
    wanted = {"epsilon": noise, "sample": x0, "v_prediction": schedule.get_velocity(x0, noise, t)}
    errors = {name: torch.nn.functional.mse_loss(predicted, w).item() for name, w in wanted.items()}
    assert loss == pytest.approx(errors[target], rel=1e-4)
    assert all(loss != pytest.approx(e, rel=1e-2) for name, e in errors.items() if name != target)
    out = generator.sample(run.ema_model(), [0, 1], [torch.Generator().manual_seed(s) for s in (0, 1)], 2,
                           torch.device("cpu"), None, target)
    assert out.shape == (2, 32, 32) and out.dtype == np.uint8


def test_a_killed_generator_resumes_to_the_uninterrupted_state(tmp_path, reference, monkeypatch, cfg):
    work = make_work(tmp_path)
    c = cfg(work_dir=str(work), gen_per_class=1, **TINY)
    update, calls = generator.Training.update, []

    def dies_at_update_8(self, images, labels):  # a kill in epoch 2, after update 7 was saved
        calls.append(1)
        if len(calls) == 8:
            raise SystemExit("killed")
        return update(self, images, labels)
    monkeypatch.setattr(generate, "SAVE_EVERY_S", 0)  # a resume point every update, as a long epoch has
    monkeypatch.setattr(generator.Training, "update", dies_at_update_8)
    with pytest.raises(SystemExit):
        generate.run(c)
    assert state(work)["updates"] == 7
    monkeypatch.setattr(generator.Training, "update", update)
    generate.run(c)
    assert_same_state(state(work), state(reference))


@pytest.mark.parametrize("where", ["mid-epoch", "the epoch's last update"])
def test_ctrl_c_saves_the_generator_at_the_next_update_and_the_rerun_loses_nothing(tmp_path, reference, monkeypatch,
                                                                                   cfg, capsys, request, where):
    work = make_work(tmp_path)
    c = cfg(work_dir=str(work), gen_per_class=1, **TINY)
    update = generator.Training.update
    at = 2 if where == "mid-epoch" else state(reference)["updates"] // TINY["gen_epochs"] - 1

    def interrupted(self, images, labels):
        if self.updates == at:
            os.kill(os.getpid(), signal.SIGINT)
        return update(self, images, labels)
    monkeypatch.setattr(generator.Training, "update", interrupted)
    # Python's own Ctrl-C handler, whatever this process inherited (a background job starts with
    # SIGINT ignored, which the kit keeps ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with pytest.raises(interrupt.Interrupted, match="SIGINT in generator epoch 1: the training state is saved "
                                                    r"in .*generated/last.pth"):
        generate.run(c)
    assert state(work)["updates"] == at + 1 and not layout.generated_manifest(work).exists()
    monkeypatch.setattr(generator.Training, "update", update)
    generate.run(c)
    assert "resuming from" in capsys.readouterr().out
    assert_same_state(state(work), state(reference))


def test_the_split_and_synth_quality_take_the_generated_folder_as_it_is(cfg, tmp_path):
    df = manifest(n_patients=30)
    work = tmp_path / "run"
    store_real_images(work, df["file"])
    c, real = run_split(cfg, df, work_dir=str(work), pretrained="none", workers=0)
    generate.run(cfg(work_dir=str(work), gen_per_class=3, **{**TINY, "gen_epochs": 1}))
    trained_on = pd.read_csv(layout.generated_trained_on(work))
    assert set(trained_on["image_id"]) <= set(real["train"]["image_id"])

    folder = layout.generated_dir(work)
    by_folder = synthetic.listing(str(folder), ["A", "B", "C"])
    by_manifest = synthetic.listing(str(layout.generated_manifest(work)), ["A", "B", "C"])
    assert by_folder["name"].tolist() == sorted(by_manifest["name"])
    c, parts = run_split(cfg, df, work_dir=str(work), synthetic_dir=str(folder), pretrained="none", workers=0)
    syn = parts["train"][parts["train"]["source"] == "synthetic"]
    assert len(syn) == 6 and sorted(syn["label"].unique()) == sorted(trained_on["class"].unique())
    for s in ("val", "test"):
        assert parts[s]["image_id"].tolist() == real[s]["image_id"].tolist()

    model = create_model("test_vit", 3, 32)
    save_weights(checkpoint_dict(model.state_dict(), arch="test_vit", classes=["A", "B", "C"], img_size=32,
                                 mean=norm_stats(model)[0], std=norm_stats(model)[1], epoch=1, metric=0.5),
                 layout.soup_weights(work))
    with contract.record([pipeline.BY_NAME["synth-quality"]]) as accesses:
        synth_quality.run(c)
    assert contract.undeclared(pipeline.BY_NAME["synth-quality"], accesses, contract.areas(work)) == []
    quality = pd.read_csv(layout.reports_dir(work) / "synthetic_quality.csv")
    assert sorted(quality["class"]) == sorted(trained_on["class"].unique())


def test_the_classifier_stages_never_import_diffusers():
    others = [s.name.replace("-", "_") for s in pipeline.PIPELINE + pipeline.TOOLS if s.name != "generate"]
    code = ("import sys; import kit.cli, kit.data.demo; "
            + "; ".join(f"import kit.stages.{s}" for s in others)
            + "; print('diffusers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=layout.Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_bad_generate_input_is_one_line(tmp_path, capsys, monkeypatch):
    from kit import cli

    monkeypatch.setattr(generate, "generator", None)  # diffusers not installed
    assert cli.main(["--stage", "generate", "--work-dir", str(tmp_path / "w")]) == 2
    assert "error: the generate stage needs Hugging Face diffusers: pip install diffusers" in capsys.readouterr().err
    monkeypatch.undo()
    assert cli.main(["--stage", "generate", "--work-dir", str(tmp_path / "w")]) == 2
    assert "train.csv not found: run --stage split first" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main(["--stage", "generate", "--gen-size", "100"])
    assert stop.value.code == 2
    assert "--gen-size: 100 is out of range (it must be 32, 64, 128 or 256)" in capsys.readouterr().err
