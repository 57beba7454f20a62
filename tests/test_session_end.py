"""Every session ends with the best submission it can make: --epochs auto fits the schedule to the
time (over --sessions sessions), unreadable test films are filled, a failure after the first
epoch ends with a fallback submission (--on-error submit), and data-parallel processes that run
out of memory restart at a smaller batch.

Training runs for real on data shaped like Grand X-Ray Slam. What a GPU would take hours for is
given instead: the rate the first updates measure (RATE), and a session clock that moves by the
time those updates would take at it."""
import json
import re
import math

import numpy as np
import pandas as pd
import pytest

from kit import cli, layout
from kit.config import settings
from kit.config import loss_kwargs, optimizer_kwargs
from kit.models.model import create_model
from kit.training import distributed, session, timing, trainer
from kit.training.optim import build_optimizer, build_scheduler
from test_competition import SAMPLE_COLUMNS, TINY, competition

RATE = 1.0  # images/s the first updates measure: 8 s an update of 8 images
# the schedule's length is the fit's, and the soup the default's last two epochs
TIMED = [a for flag, value in zip(TINY[::2], TINY[1::2]) if flag not in ("--epochs", "--soup-epochs")
         for a in (flag, value)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return competition(tmp_path_factory.mktemp("gxs") / "data")


@pytest.fixture
def virtual_time(monkeypatch):
    """The session clock moves 1/RATE s per image trained (times slowdown[0]); the trainer
    reports RATE."""
    trained_s, slowdown = [0.0], [1.0]
    account = trainer.Trainer._account

    def timed_account(self, loss, finite):
        trained_s[0] += self.effective / RATE * slowdown[0]
        account(self, loss, finite)

    def measured_rate(self):
        self._session_updates += 1
        if self._session_updates == trainer.RATE_WARMUP and self.on_rate:
            self.on_rate(RATE)

    monkeypatch.setattr(trainer.Trainer, "_account", timed_account)
    monkeypatch.setattr(trainer.Trainer, "_time_rate", measured_rate)
    monkeypatch.setattr(session, "clock", lambda: 1e6 + trained_s[0])
    monkeypatch.delenv(session.SESSION_ENV, raising=False)
    return slowdown


def lr_at(cfg_epochs, updates_per_epoch, update, **recipe):
    """The highest learning rate of `update` (0-based) in a run planned for `cfg_epochs` from
    the start: the oracle a refitted or resumed schedule must agree with."""
    from kit.config import Config

    cfg = Config(epochs=cfg_epochs, **recipe)
    optimizer = build_optimizer(create_model("eva02_tiny_patch14_224", 3, 28), **optimizer_kwargs(cfg))
    scheduler = build_scheduler(optimizer, updates_per_epoch, cfg.epochs, cfg.warmup_epochs, cfg.min_lr)
    scheduler.step_update(update)
    return max(g["lr"] for g in optimizer.param_groups)


def report(work) -> dict:
    return json.loads(layout.submission_report(work).read_text())


def test_the_fit_is_the_most_whole_epochs_that_fit_and_never_fewer_than_one_more():
    # 3600 training images at 10/s and 300 val images at 30/s: 370 s an epoch, 388.5 s with the margin
    fit = dict(epoch_s=3600 / 10.0 + 300 / 30.0, least=2)
    assert timing.fit_epochs(**fit, epoch=0, fraction_done=0.0, budget_s=4000) == (10, True)  # 10.3
    assert timing.fit_epochs(**fit, epoch=0, fraction_done=0.5, budget_s=4000) == (10, True)  # 10.8 from the start
    assert timing.fit_epochs(**fit, epoch=0, fraction_done=0.0, budget_s=700) == (1, False)  # 1.8: fewer than the soup's
    assert timing.fit_epochs(**fit, epoch=3, fraction_done=0.2, budget_s=10) == (4, False)  # at least one more
    # two sessions of 11h30m: this one has 11h left after 30 min of data stages, the next redoes them
    assert timing.session_budget(left_s=39600, limit_s=41400, before_s=1800, finish_s=3000, sessions=2) == \
        (39600 - 3000) + (41400 - 1800 - 3000)
    assert timing.session_budget(left_s=39600, limit_s=41400, before_s=1800, finish_s=3000, sessions=1) == 36600
    assert [settings.soup_needs(s) for s in ("last2", "last1", "4,6", "7")] == [2, 1, 6, 7]


def soup_epochs(work) -> list:
    import torch

    return torch.load(layout.soup_weights(work), map_location="cpu", weights_only=False)["soup"]["epochs"]


def test_epochs_auto_ends_the_session_with_a_finished_schedule_and_a_final_submission(data, tmp_path, capsys,
                                                                                        virtual_time):
    root, sample = data
    work = tmp_path / "w"
    argv = ["--task", "competition", "--data-dir", str(root), "--work-dir", str(work), *TIMED,
            "--epochs", "auto", "--time-limit", "8m"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    history = pd.read_csv(work / "history.csv")
    epochs = len(history)
    assert f"--epochs auto: {epochs} epochs fit in 1 session of 8m at 1.0 images/s" in out
    assert 2 <= epochs <= 8 and "time limit 8m reached" not in out
    assert history["lr"].iloc[-1] == pytest.approx(1e-6)  # the schedule reached its floor on the last update
    config = json.loads((work / "run_config.json").read_text())
    schedule = config["schedule"]
    assert config["epochs"] == epochs and {"platform", "stored_images"} <= set(config)  # the runner's too
    assert schedule == dict(epochs=epochs, fits=True, images_per_s=RATE, sessions=1, time_limit="8m", ended_sessions=0)
    done = report(work)
    assert done["kind"] == "final" and done["epochs"] == epochs and done["schedule"] == schedule
    assert soup_epochs(work) == [epochs - 1, epochs]
    assert pd.read_csv(work / "submission.csv")["Image_name"].tolist() == sample["Image_name"].tolist()
    assert not layout.interim_weights(work).exists()
    # a later process that does not train takes the length the train stage fitted
    assert cli.main([*argv, "--stage", "soup", "--force"]) == 0 and soup_epochs(work) == [epochs - 1, epochs]
    # an explicit --epochs, with no time limit, replaces the fitted schedule: one more epoch
    explicit = argv[:-4] + ["--epochs", str(epochs + 1)]
    assert cli.main(explicit) == 0 and len(pd.read_csv(work / "history.csv")) == epochs + 1
    assert "--epochs auto" not in capsys.readouterr().out and report(work)["schedule"] is None


def test_a_rate_that_falls_ends_the_schedule_sooner_not_the_session_without_it(data, tmp_path, capsys, monkeypatch,
                                                                             virtual_time):
    root, _ = data
    work = tmp_path / "w"
    refit = trainer.Trainer.refit

    def slower_after_the_fit(self, schedule):  # the first updates measured RATE; then the card slows down
        refit(self, schedule)
        virtual_time[0] = 1.5
    monkeypatch.setattr(trainer.Trainer, "refit", slower_after_the_fit)
    argv = ["--task", "competition", "--data-dir", str(root), "--work-dir", str(work), *TIMED,
            "--epochs", "auto", "--time-limit", "8m"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    fitted = int(re.search(r"--epochs auto: (\d+) epochs fit", out)[1])
    shortened = re.search(r"epochs no longer fit in 1 session of 8m; it now ends after epoch (\d+)", out)
    assert shortened and "time limit 8m reached" not in out
    history = pd.read_csv(work / "history.csv")
    assert len(history) == int(shortened[1]) < fitted and history["lr"].iloc[-1] == pytest.approx(1e-6)
    assert report(work)["kind"] == "final" and report(work)["schedule"]["epochs"] == len(history)


def test_max_epochs_caps_what_fits_and_the_schedule_still_ends_at_its_floor(data, tmp_path, capsys, virtual_time):
    root, _ = data
    work = tmp_path / "w"
    argv = ["--task", "competition", "--data-dir", str(root), "--work-dir", str(work), *TIMED,
            "--epochs", "auto", "--time-limit", "30m", "--max-epochs", "2"]
    assert cli.main(argv) == 0
    fitted = int(re.search(r"--epochs auto: (\d+) epochs fit in 1 session of 30m at 1.0 images/s, "
                           r"--max-epochs trains 2,", capsys.readouterr().out)[1])
    history = pd.read_csv(work / "history.csv")
    assert fitted > 2 and len(history) == 2 and history["lr"].iloc[-1] == pytest.approx(1e-6)
    assert report(work)["kind"] == "final" and report(work)["schedule"]["epochs"] == 2


def test_two_sessions_end_interim_then_final_on_one_continuous_schedule(data, tmp_path, capsys, virtual_time):
    root, _ = data
    work = tmp_path / "w"
    argv = ["--task", "competition", "--data-dir", str(root), "--work-dir", str(work), *TIMED,
            "--epochs", "auto", "--time-limit", "6m", "--sessions", "2", "--warmup-epochs", "1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    first = report(work)
    epochs = first["schedule"]["epochs"]
    assert f"--epochs auto: {epochs} epochs fit in 2 sessions of 6m" in out and "time limit 6m reached" in out
    assert first["kind"] == "interim" and len(pd.read_csv(work / "history.csv")) < epochs

    assert cli.main(argv) == 0  # the next session, as --resume auto would continue it on Kaggle
    out = capsys.readouterr().out
    assert "[train] resuming from" in out and "--epochs auto:" not in out  # the schedule it was given
    assert report(work)["kind"] == "final" and soup_epochs(work) == [epochs - 1, epochs]
    history = pd.read_csv(work / "history.csv")
    updates = len(pd.read_csv(work / "splits" / "train.csv")) // 8  # effective batch 8
    # each epoch's last update ran where a run planned for `epochs` from its start runs it
    expected = [lr_at(epochs, updates, e * updates - 1, warmup_epochs=1.0) for e in history["epoch"]]
    np.testing.assert_allclose(history["lr"], expected, rtol=1e-6)
    assert len(history) == epochs and history["lr"].iloc[-1] == pytest.approx(1e-6)


def test_a_corrupt_test_film_costs_its_row_only(data, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data[0], root)
    sample = pd.read_csv(root / "sample_submission_1.csv")
    broken, empty = sample["Image_name"][2], sample["Image_name"][5]
    (root / "test1" / broken).write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "test1" / empty).write_bytes(b"")
    work = tmp_path / "w"
    argv = ["--task", "competition", "--data-dir", str(root), "--work-dir", str(work), *TINY, "--epochs", "1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "warning: 2 of 12 images could not be predicted" in out
    submission = pd.read_csv(work / "submission.csv")
    assert submission["Image_name"].tolist() == sample["Image_name"].tolist()
    train = pd.read_csv(work / "splits" / "train.csv")
    for film in (broken, empty):  # each column's training prevalence
        row = submission[submission["Image_name"] == film].iloc[0]
        np.testing.assert_allclose(row[SAMPLE_COLUMNS].astype(float), train[SAMPLE_COLUMNS].mean())
    named = pd.read_csv(work / "reports" / "predict_unreadable.csv")
    assert dict(zip(named["Image_name"], named["problem"])) == {broken: "cannot be decoded as an image",
                                                                empty: "empty file"}
    assert report(work)["filled"] == 2 and report(work)["kind"] == "final"


def nan_from_epoch(monkeypatch, first_bad_epoch):
    """Every update from `first_bad_epoch` (0-based) on has non-finite gradients; three in a row stop."""
    monkeypatch.setattr(trainer, "MAX_BAD_UPDATES", 3)
    step = trainer.Trainer._step

    def bad_step(self, total):
        if self.epoch < first_bad_epoch:
            return step(self, total)
        self.optimizer.zero_grad(set_to_none=True)
        return math.nan, False
    monkeypatch.setattr(trainer.Trainer, "_step", bad_step)


def test_a_failure_after_the_first_epoch_stops_or_ends_with_a_fallback_from_the_val_best_epoch(
        data, tmp_path, capsys, monkeypatch):
    root, sample = data
    work = tmp_path / "w"
    nan_from_epoch(monkeypatch, 2)
    argv = ["--task", "competition", "--data-dir", str(root), "--work-dir", str(work), *TINY, "--epochs", "3",
            "--soup-epochs", "last2"]
    assert cli.main([*argv, "--on-error", "stop"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"error: 3 updates in a row had NaN or infinite gradients \(epoch 3\)", err[0])
    assert not (work / "submission.csv").exists()  # and nothing lost: two epochs and the state
    assert len(pd.read_csv(work / "history.csv")) == 2 and layout.last_state(work).exists()

    assert cli.main([*argv, "--on-error", "submit"]) == 0
    captured = capsys.readouterr()
    assert "[train] resuming from" in captured.out and "fallback submission" in captured.out
    assert "error: [train] 3 updates in a row had NaN" in captured.err
    history = pd.read_csv(work / "history.csv")
    on_disk = history[history["epoch"].isin(list(layout.epoch_checkpoints(work)))]
    best = int(on_disk.loc[on_disk["val_macro_auc"].idxmax(), "epoch"])
    done = report(work)
    assert done["kind"] == "fallback" and "NaN or infinite gradients" in done["error"]
    assert done["weights"] == str(layout.epoch_checkpoint(work, best)) and done["interim"] is False
    submission = pd.read_csv(work / "submission.csv")
    assert submission["Image_name"].tolist() == sample["Image_name"].tolist()
    assert np.isfinite(submission[SAMPLE_COLUMNS].to_numpy()).all()


def test_any_failure_counts_and_one_before_any_weights_is_still_one_line(data, tmp_path, capsys, monkeypatch):
    root, _ = data
    accumulate = trainer.Trainer._accumulate

    def crash_in_epoch_2(self, batches):
        if self.epoch >= 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")
        return accumulate(self, batches)
    monkeypatch.setattr(trainer.Trainer, "_accumulate", crash_in_epoch_2)
    argv = ["--task", "competition", "--data-dir", str(root), *TINY, "--on-error", "submit"]
    assert cli.main([*argv, "--work-dir", str(tmp_path / "a")]) == 0
    assert "error: [train] RuntimeError: CUDA error: an illegal memory access" in capsys.readouterr().err
    assert report(tmp_path / "a")["weights"].endswith("epoch_01.pth")

    monkeypatch.undo()
    nan_from_epoch(monkeypatch, 0)
    assert cli.main([*argv, "--work-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or infinite gradients (epoch 1)" in err[0]
    assert not (tmp_path / "b" / "submission.csv").exists()


def test_out_of_memory_under_ddp_restarts_every_process_at_half_the_batch(tmp_path, monkeypatch, capsys):
    import torch

    from kit.data.loaders import XrayDataset
    from kit.errors import KitError
    from kit.stages import train
    from kit.training.distributed import World
    from kit.training.losses import build_loss
    from train_fixtures import make_work, tiny_cfg

    work = make_work(tmp_path / "work")
    cfg = tiny_cfg(work, batch_size="4", accum="2")
    df, classes = layout.read_split(work, "train")
    targets = df[classes].to_numpy(np.float32)
    dataset = XrayDataset([layout.image_path(work, f) for f in df.file], targets, 28)
    t = trainer.Trainer(World(), create_model(cfg.model, 3, 28), build_loss(targets, **loss_kwargs(cfg)), dataset, 4, 2,
                        **train.trainer_kwargs(cfg))
    t.world = World(rank=1, size=2)  # one of two processes; the others wait in its all-reduce
    with pytest.raises(KitError, match=r"out of GPU memory at batch 4 per GPU; every process restarts from the "
                                       r"last saved state at batch 2 x 4"):
        t._back_off()
    assert json.loads(layout.batch_back_off(work).read_text()) == {"batch": 2, "accum": 4}

    commands = []

    def launch(command):  # torchrun: the first time a process runs out of memory, then all fit
        commands.append(command)
        if len(commands) == 1:
            layout.batch_back_off(work).write_text(json.dumps({"batch": 2, "accum": 4}))
            return 1
        return 0
    monkeypatch.setattr(distributed, "launch", launch)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    distributed.relaunch(cfg)
    assert "every process restarts from the last saved state at batch 2 x 4" in capsys.readouterr().out
    assert "--batch-size=4" in commands[0] and {"--batch-size=2", "--accum=4"} <= set(commands[1])
    assert not layout.batch_back_off(work).exists()

    monkeypatch.setattr(distributed, "launch", lambda command: 1)  # a crash, not memory: the error stands
    with pytest.raises(KitError, match=r"data-parallel training stopped \(exit code 1"):
        distributed.relaunch(cfg)


@pytest.mark.parametrize("argv, message", [
    (["--sessions", "0"], r"argument --sessions: 0 is out of range \(it must be at least 1\)"),
    (["--on-error", "maybe"], r"argument --on-error: invalid choice: 'maybe'"),
    (["--epochs", "auto"], r"--epochs auto fits the schedule to the time limit, and this run has none; pass "
                           r"--time-limit"),
    (["--epochs", "0"], r"--epochs 0: pass a positive whole number or auto"),
    (["--max-epochs", "1"], r"--max-epochs 1 is fewer than the 2 epochs --soup-epochs last2 averages"),
])
def test_bad_schedule_and_error_settings_are_one_line_before_any_stage(tmp_path, capsys, argv, message):
    work = tmp_path / "w"
    try:
        code = cli.main(["--task", "competition", "--work-dir", str(work), *argv])
    except SystemExit as e:  # the parser's own refusal
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert not work.exists()


def test_on_kaggle_and_colab_the_competition_fits_its_epochs_and_submits_on_failure(monkeypatch):
    from kit import env

    def resolved(*argv):
        return cli.resolve(cli.parse_config([*argv, "--work-dir", "w"]))

    monkeypatch.setattr(env, "platform", lambda: "kaggle")
    kaggle = resolved("--task", "competition")
    assert (kaggle.epochs, kaggle.on_error, kaggle.on_missing, kaggle.time_limit) == ("auto", "submit", "fill", "11h30m")
    assert resolved("--task", "competition", "--epochs", "4", "--on-error", "stop").epochs == 4
    study = resolved()
    assert (study.epochs, study.on_error, study.on_missing) == (6, "stop", "fail")
    monkeypatch.setattr(env, "platform", lambda: "colab")
    colab = resolved("--task", "competition")
    assert (colab.epochs, colab.on_error, colab.time_limit) == ("auto", "submit", "11h")
    monkeypatch.setattr(env, "platform", lambda: "local")
    local = resolved("--task", "competition")
    assert (local.epochs, local.on_error, local.on_missing) == (6, "stop", "fill")
