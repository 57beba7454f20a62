"""Sessions: the time limit's clock and its parsing, the output budget, and --resume auto
finding and taking over a training state in a Kaggle input tree."""
import os

import pytest
import torch

from kit import env, layout
from kit.config import settings
from kit.config import Config
from kit.errors import KitError
from kit.training import interrupt, resume, session
from kit.training.distributed import World


@pytest.mark.parametrize("text, seconds", [("11h30m", 41400), ("90m", 5400), ("600s", 600), ("600", 600),
                                           ("1.5h", 5400), ("2h5s", 7205), ("none", None), ("0", None)])
def test_durations(text, seconds):
    assert settings.parse_duration(text) == seconds


@pytest.mark.parametrize("text, size", [("19GB", 19e9), ("500mb", 5e8), ("1.5T", 1.5e12), ("2048", 2048),
                                        ("none", None)])
def test_sizes(text, size):
    assert settings.parse_size(text) == size


@pytest.mark.parametrize("field, text", [("time_limit", "11h30"), ("time_limit", "soon"),
                                         ("output_budget", "19 parsecs"), ("output_budget", "GB")])
def test_malformed_limits_are_refused_at_start(field, text):
    with pytest.raises(KitError, match=f"--{field.replace('_', '-')} '{text}': pass a"):
        cfg = Config(**{field: text})
        session.resolve(cfg.time_limit, cfg.output_budget, cfg.resume, "local")


def test_auto_limits_apply_on_kaggle_and_colab_only():
    cfg = Config()
    assert session.resolve(cfg.time_limit, cfg.output_budget, cfg.resume, "kaggle") == ("11h30m", "19GB")
    assert session.resolve(cfg.time_limit, cfg.output_budget, cfg.resume, "colab") == ("11h", "15GB")
    assert session.resolve(cfg.time_limit, cfg.output_budget, cfg.resume, "local") == ("none", "none")


pytestmark = pytest.mark.usefixtures("no_run")  # conftest: no run's clock before or after a test


@pytest.fixture
def clock(monkeypatch):
    """A clock the test moves by hand."""
    now = [1000.0]
    monkeypatch.setattr(session, "clock", lambda: now[0])
    return now


def test_the_clock_runs_from_the_start_of_the_run(clock):
    cfg = Config(time_limit="10s", work_dir="w")
    assert session.start(cfg.time_limit) and not session.out_of_time()
    clock[0] += 9.9
    assert not session.out_of_time()
    clock[0] += 0.1
    assert session.out_of_time()
    with pytest.raises(session.TimeUp, match=r"time limit 10s reached before the soup stage: .*run the same command"):
        session.check_time(cfg.time_limit, cfg.work, "soup")
    session.start(cfg.time_limit)  # a run inside this one (the synthetic demo's) keeps its clock
    assert session.out_of_time()
    session.end()
    assert session.start(cfg.time_limit) and not session.out_of_time()  # a new run in the same process: a new clock


def test_worker_processes_inherit_the_runs_clock(clock, monkeypatch):
    monkeypatch.setenv(session.SESSION_ENV, f"{os.getpid() + 1}:{clock[0] - 8}")  # started by the parent
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not session.start("10s")  # the parent described the machine already
    clock[0] += 2
    assert session.out_of_time()


def test_without_a_limit_time_never_runs_out(clock):
    session.start("none")
    clock[0] += 1e9
    assert not session.out_of_time() and interrupt.reason(World()) is None


def test_the_kaggle_message_says_how_to_continue(monkeypatch):
    monkeypatch.setattr(env, "platform", lambda: "kaggle")
    message = str(session.time_up("11h30m", "/kaggle/working", "in epoch 3"))
    assert "reached in epoch 3" in message and "--resume auto" in message and "kernel_sources" in message


def test_the_output_budget_warns_from_the_real_keep_rule(tmp_path, capsys):
    from kit.stages.train import keep_policy

    model = torch.nn.Linear(1000, 1000)  # 4 MB of float32 weights
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "image.jpg").write_bytes(b"x" * 10**6)
    cfg = Config(work_dir=str(tmp_path), epochs=6, soup_epochs="last2", output_budget="34MB")
    session.warn_output_budget(cfg.output_budget, cfg.work, cfg.epochs, model, keep_policy(cfg))
    assert capsys.readouterr().out == ""
    # the soup's epochs 5 and 6, a best one (1 at worst) and the soup: 4 files; last.pth 4 copies;
    # 1 MB of images: 33 MB
    cfg.output_budget = "32MB"
    session.warn_output_budget(cfg.output_budget, cfg.work, cfg.epochs, model, keep_policy(cfg))
    out = capsys.readouterr().out
    assert out.startswith("warning: the work dir would hold about 33 MB, more than --output-budget 32MB: "
                          "4 weights files of 4 MB, last.pth of 16 MB and 1 MB already there"), out
    cfg.keep_epochs = "all"
    session.warn_output_budget(cfg.output_budget, cfg.work, cfg.epochs, model, keep_policy(cfg))
    assert "about 45 MB" in capsys.readouterr().out


SIGNATURE = {"model": "eva02_tiny_patch14_224", "classes": ["A", "B"], "img_size": 56, "splits": "abc"}


def saved_run(folder, updates, signature=SIGNATURE, epochs=(1,)):
    """A work dir's training artifacts: last.pth, epoch files and history.csv."""
    checkpoints = layout.checkpoint_dir(folder)
    checkpoints.mkdir(parents=True)
    torch.save({"signature": signature, "updates": updates, "epoch": max(epochs)}, checkpoints / "last.pth")
    for epoch in epochs:
        torch.save({"epoch": epoch}, layout.epoch_checkpoint(folder, epoch))
    layout.history_csv(folder).write_text(f"epoch\n{max(epochs)}\n")
    return checkpoints / "last.pth"


def test_states_are_found_in_old_and_new_kaggle_layouts_but_not_in_image_trees(tmp_path):
    old = saved_run(tmp_path / "xray-kit-eva-x", 10)
    new = saved_run(tmp_path / "notebooks" / "someone" / "xray-kit-eva-x", 20)
    images = tmp_path / "competitions" / "big"
    for k in range(resume.MANY_FOLDERS + 1):
        (images / f"patient{k:03d}").mkdir(parents=True)
    saved_run(images / "patient000", 30)
    saved_run(tmp_path / "a" / "b" / "c" / "d" / "e", 40)  # deeper than any Kaggle mount
    assert sorted(resume.find_states([tmp_path])) == sorted([old, new])
    assert resume.find_states([old]) == [old]


def test_resume_auto_takes_over_the_furthest_matching_state(tmp_path, capsys, monkeypatch):
    inputs, work = tmp_path / "input", tmp_path / "working"
    saved_run(inputs / "notebooks" / "someone" / "v1", 10)
    furthest = saved_run(inputs / "notebooks" / "someone" / "v2", 20, epochs=(2, 3))
    saved_run(inputs / "other-model", 99, signature={**SIGNATURE, "img_size": 448})
    monkeypatch.setattr(env, "platform", lambda: "kaggle")
    monkeypatch.setattr(env, "KAGGLE_INPUT", inputs)
    last = layout.checkpoint_dir(work) / "last.pth"
    resume.take_over("auto", False, last, SIGNATURE, World())
    assert "other-model/checkpoints/last.pth is from another run" in capsys.readouterr().out
    assert last.read_bytes() == furthest.read_bytes()
    assert sorted(layout.epoch_checkpoints(work)) == [2, 3]
    assert layout.history_csv(work).read_text() == "epoch\n3\n"

    saved_run(inputs / "v0", 15)
    resume.take_over(str(inputs / "v0"), False, last, SIGNATURE, World())
    assert "as far along as" in capsys.readouterr().out and torch.load(last)["updates"] == 20
    resume.take_over("auto", True, last, SIGNATURE, World())
    assert capsys.readouterr().out == ""


def test_the_time_limit_stops_training_cleanly_and_a_rerun_continues(tmp_path, monkeypatch, capsys):
    """Stopped by the limit in the middle of the epoch with last.pth saved; run again, it goes on."""
    from kit.stages import train
    from train_fixtures import make_work, tiny_cfg

    work = make_work(tmp_path / "work")
    now = [0.0]
    monkeypatch.setattr(session, "clock", lambda: now.append(now[-1] + 30) or now[-1])  # 30 s a look
    cfg = tiny_cfg(work, epochs=1, time_limit="80s")  # 4 updates
    session.start(cfg.time_limit)  # at 30 s: the limit comes at 110 s
    with pytest.raises(session.TimeUp, match=r"time limit 80s reached in epoch 1: .* again"):
        train.run(cfg)  # the clock reads 90 s after update 2, 120 s after update 3
    state = torch.load(layout.checkpoint_dir(work) / "last.pth", weights_only=True)
    assert (state["epoch"], state["updates"]) == (0, 3) and not layout.epoch_checkpoints(work)

    cfg.time_limit = "none"
    session.start(cfg.time_limit)
    capsys.readouterr()
    train.run(cfg)
    assert "resuming from" in capsys.readouterr().out
    state = torch.load(layout.checkpoint_dir(work) / "last.pth", weights_only=True)
    assert (state["epoch"], state["updates"], len(state["history"])) == (1, 4, 1)
    assert list(layout.epoch_checkpoints(work)) == [1]


def test_the_command_line_stops_cleanly_before_a_stage_past_the_limit(tmp_path, monkeypatch, capsys):
    from kit import cli

    now = [0.0]
    monkeypatch.setattr(session, "clock", lambda: now.append(now[-1] + 30) or now[-1])
    assert cli.main(["--stage", "split", "--time-limit", "20s", "--work-dir", str(tmp_path)]) == 0
    assert "time limit 20s reached before the split stage" in capsys.readouterr().out
    assert session.SESSION_ENV not in os.environ and not session.out_of_time()  # nothing left behind


def test_tree_bytes_counts_every_file_but_the_skipped_paths(tmp_path):
    sizes = {"a.bin": 3, "images/p1/x.jpg": 50, "images/p2/y.jpg": 7, "checkpoints/epoch_01.pth": 1000,
             "soup.pth": 400, "checkpoints.txt": 11}
    for name, n in sizes.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * n)
    skip = {tmp_path / "checkpoints", tmp_path / "soup.pth"}
    expected = sum(p.stat().st_size for p in tmp_path.rglob("*")
                   if p.is_file() and not any(p == s or s in p.parents for s in skip))
    assert session._tree_bytes(tmp_path, skip) == expected == 71
    assert session._tree_bytes(tmp_path) == sum(sizes.values())
