"""The loop module the classifier's trainer and the generator share: a stop after the current
update with the state saved (a signal, the time limit), resume points, and a place in the run
that a state dict restores."""
import math
import os
import signal
from functools import partial

import numpy as np
import pytest

from kit.config import Config
from kit.training import interrupt, session
from kit.training.distributed import World
from kit.training.loop import Loop, Position


pytestmark = pytest.mark.usefixtures("no_run")  # conftest: no run's clock before or after a test


def counting_loop(cfg, state, **kwargs):
    saves = []
    time_up = partial(session.time_up, cfg.time_limit, cfg.work)
    return Loop(World(), lambda: saves.append(1), state, time_up, **kwargs), saves


def test_a_signal_stops_after_the_update_with_the_state_saved(request):
    loop, saves = counting_loop(Config(), "generated/last.pth", stage="generate", epoch_name="generator epoch")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever was inherited
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with pytest.raises(interrupt.Interrupted, match=r"^SIGINT in generator epoch 2: the training state is saved "
                                                    r"in generated/last.pth; run the same command") as stopped:
        with loop.running():
            loop.after_update(2, epoch_goes_on=True)
            assert saves == []  # no signal yet, no resume point due
            os.kill(os.getpid(), signal.SIGINT)
            loop.after_update(2, epoch_goes_on=True)
    assert saves == [1] and stopped.value.exit_code == 128 + signal.SIGINT


def test_the_time_limit_stops_after_the_update_with_the_state_saved(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(session, "clock", lambda: now[0])
    cfg = Config(time_limit="10s", work_dir="w")
    session.start(cfg.time_limit)
    loop, saves = counting_loop(cfg, "checkpoints/last.pth")
    loop.after_update(3, epoch_goes_on=True)
    now[0] += 10
    with pytest.raises(session.TimeUp, match=r"time limit 10s reached in epoch 3: .*training continues from "
                                             r"checkpoints/last.pth"):
        loop.after_update(3, epoch_goes_on=True)
    assert saves == [1]


def test_resume_points_fall_inside_an_epoch_and_at_its_end():
    loop, saves = counting_loop(Config(), "checkpoints/last.pth", save_every_s=0)
    loop.after_update(1, epoch_goes_on=True)
    loop.after_update(1, epoch_goes_on=False)  # the epoch's end saves it
    assert len(saves) == 1
    assert loop.end_epoch(epochs_left=0) == 0.0 and len(saves) == 2
    rare, rare_saves = counting_loop(Config(), "checkpoints/last.pth", save_every_s=3600)
    rare.after_update(1, epoch_goes_on=True)
    assert rare_saves == []


@pytest.mark.parametrize("in_epoch", ["offset", "batches"])  # the trainer's samples, the generator's batches
def test_a_position_resumes_from_its_state_dict(in_epoch):
    class Run(Position):
        IN_EPOCH = in_epoch

    run = Run()
    run.start_position()
    losses = [0.5, math.nan, 0.25, math.inf, 0.75]
    for loss in losses:
        run.add_loss(loss)
        run.updates += 1
        setattr(run, in_epoch, getattr(run, in_epoch) + 4)
    state = run.position()
    assert set(state) == {"epoch", in_epoch, "updates", "loss_sum", "loss_count", "history"}
    again = Run()
    again.start_position()
    again.load_position(state)
    finite = np.array(losses)[np.isfinite(losses)]
    assert again.mean_loss() == pytest.approx(finite.mean()) and getattr(again, in_epoch) == 20
    again.end_epoch({"epoch": 1})
    assert (again.epoch, getattr(again, in_epoch), again.loss_count, again.updates) == (1, 0, 0, 5)
    assert again.history == [{"epoch": 1}]
