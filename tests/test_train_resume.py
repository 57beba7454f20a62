"""Resume after a killed training process, and data-parallel training on CPU (gloo), both
compared with one uninterrupted single-process run."""
import contextlib
import io
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from train_fixtures import last_state, make_work, one_thread, run_quietly, tiny_cfg  # noqa: F401 (one_thread: autouse)

from kit import cli, layout
from kit.cli import parse_config
from kit.training import resume
from kit.training.distributed import RUN_PY, config_flags, relaunch_command

MODEL = "test_vit"  # timm's 0.3M-parameter ViT: resume files of a few MB, written after every update
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(RUN_PY.parent)}
ENV.pop("KAGGLE_KERNEL_RUN_TYPE", None)


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Two uninterrupted epochs: batch 4 x 2 accumulation steps, 4 updates an epoch."""
    work = make_work(tmp_path_factory.mktemp("reference"))
    run_quietly(tiny_cfg(work, model=MODEL, img_size=32, workers=1))
    return last_state(work)


def test_config_flags_rebuild_the_config():
    cfg = parse_config(["--compile", "on", "--runs", "a", "b", "--", "--stage", "all"])
    assert parse_config(config_flags(cfg)) == cfg and cfg.kernel_args == "--stage all"
    command = relaunch_command(cfg, 2)
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert command[5] == str(RUN_PY) and "--no-demo" in command and "--stage=train" in command


def test_the_same_split_under_another_data_dir_has_the_same_signature(tmp_path):
    cfg = tiny_cfg(tmp_path / "w")
    split = pd.DataFrame({"image_id": ["a.jpg", "b.jpg"], "path": ["/kaggle/input/v1/a.jpg", "/kaggle/input/v1/b.jpg"],
                          "file": ["images/a.jpg", "images/b.jpg"], "Alpha": [1, 0], "Beta": [0, 1]})
    variants = {"same": split, "moved": split.assign(path=split.path.str.replace("v1", "v2")),
                "relabelled": split.assign(Alpha=[1, 1])}
    for name, table in variants.items():
        table.to_csv(tmp_path / f"{name}.csv", index=False)
    sig = {name: resume.signature(cfg.model, ["Alpha", "Beta"], cfg.img_size, [tmp_path / f"{name}.csv"])
           for name in variants}
    assert sig["same"] == sig["moved"] != sig["relabelled"]


def test_a_killed_run_resumes_to_the_uninterrupted_state(tmp_path, reference, monkeypatch):
    work = make_work(tmp_path)
    cfg = tiny_cfg(work, model=MODEL, img_size=32, workers=1)
    script = ("import sys; import kit.training.trainer; kit.training.trainer.SAVE_EVERY_S = 0; "  # a resume point every update
              "from kit.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", script, *config_flags(cfg, stage="train")], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_epoch = layout.epoch_checkpoint(work, 1)
    while not first_epoch.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.kill()  # somewhere in epoch 2, perhaps in the middle of writing last.pth
    proc.wait()
    (layout.checkpoint_dir(work) / ".last.pth.killed.tmp").write_bytes(b"half")  # what a kill in a save leaves
    monkeypatch.setattr("kit.io.STARTED", time.time())  # the rerun is a new process, as run.py is
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(config_flags(cfg, stage="train")) == 0
    assert "resuming from" in out.getvalue()
    state = last_state(work)
    assert (state["epoch"], state["updates"]) == (reference["epoch"], reference["updates"]) == (2, 8)
    assert_same_weights(state["model"], reference["model"], atol=1e-6)
    assert_same_weights(state["ema"], reference["ema"], atol=1e-6)
    moments = [s["exp_avg_sq"] for s in state["optimizer"]["state"].values()]
    expected = [s["exp_avg_sq"] for s in reference["optimizer"]["state"].values()]
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-12) for a, b in zip(moments, expected))
    assert not list(layout.checkpoint_dir(work).glob(".*.tmp"))


def default_signals():
    """In the child, before run.py starts: Ctrl-C and SIGTERM at their default handlers, whatever
    this process inherited (a shell's background job starts with SIGINT ignored)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


def slowed_training(cfg, sleep, stdout=subprocess.DEVNULL):
    """run.py's train stage in a child whose every micro-batch first sleeps `sleep` (an
    expression in `self`, the Trainer)."""
    script = ("import sys, time; import kit.training.trainer as t; update = t.Trainer._accumulate; "
              f"t.Trainer._accumulate = lambda self, b: (time.sleep({sleep}), update(self, b))[1]; "
              "from kit.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", script, *config_flags(cfg, stage="train")], env=ENV,
                            stdout=stdout, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_state_at_the_next_update_and_the_rerun_loses_nothing(tmp_path, reference, signum,
                                                                                  code):
    work = make_work(tmp_path)
    cfg = tiny_cfg(work, model=MODEL, img_size=32, workers=1)
    proc = slowed_training(cfg, "0.5")  # 2 s an epoch
    first_epoch = layout.epoch_checkpoint(work, 1)
    while not first_epoch.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signum)  # early in epoch 2, whose end would be the next save
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in err
    assert f"{signum.name} in epoch 2: the training state is saved" in err
    saved = last_state(work)
    assert saved["epoch"] == 1 and 4 < saved["updates"] < 8
    out = run_quietly(cfg)
    assert f"resuming from {layout.checkpoint_dir(work) / 'last.pth'} at epoch 2, update {saved['updates'] + 1}" in out
    state = last_state(work)
    assert (state["epoch"], state["updates"]) == (2, 8)
    assert_same_weights(state["model"], reference["model"], atol=1e-6)
    assert_same_weights(state["ema"], reference["ema"], atol=1e-6)


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path):
    work = make_work(tmp_path)
    cfg = tiny_cfg(work, model=MODEL, img_size=32, workers=1)
    proc = slowed_training(cfg, "30 if self.epoch else 0", stdout=subprocess.PIPE)  # epoch 2's update: 60 s
    last = layout.checkpoint_dir(work) / "last.pth"
    while not last.exists() and proc.poll() is None:  # epoch 1's end is saved
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    for line in proc.stdout:
        if "stopping after this update" in line:
            break
    proc.send_signal(signal.SIGINT)  # long before that update's end
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err
    assert "interrupted: rerun the same command to resume" in err and "the training state is saved" not in err
    saved = last_state(work)
    assert (saved["epoch"], saved["updates"]) == (1, 4)  # epoch 1's save, none since


def test_two_gloo_processes_train_like_one(tmp_path, reference):
    work = make_work(tmp_path)
    cfg = tiny_cfg(work, model=MODEL, img_size=32, workers=1)  # each process: batch 4, 2 x 4 = the same 8
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(RUN_PY), *config_flags(cfg, stage="train")],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[train] epoch 2/2") == 1  # rank 0 alone reports
    state = last_state(work)
    assert (state["updates"], state["batch"], state["accum"], state["world_size"]) == (8, 4, 1, 2)
    assert_same_weights(state["ema"], reference["ema"], atol=1e-5)
    history = pd.read_csv(layout.history_csv(work))
    assert history.val_loss.tolist() == pytest.approx([h["val_loss"] for h in reference["history"]], abs=1e-5)
