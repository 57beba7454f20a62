"""How long the rest of a run takes, from rates the train stage measures: the plan it prints
after its first updates, and the time it leaves the stages after it (soup, evaluate, predict)
before the session's time limit.

Inference rates come from validation (images/s of the EMA on val.csv); until the first
validation, forward-only inference is taken as FORWARD_SPEEDUP times the training rate.
"""
import math
import time
from dataclasses import dataclass

FORWARD_SPEEDUP = 3.0  # a training step is a forward and a backward pass, about three forwards
FILM_SLOWDOWN = 2.0  # predict decodes full-size films, slower than the stored val images
STARTUP_S = 60.0  # each later stage loads its model and starts its loader workers
MARGIN = 1.25  # rates vary over a session; better a few updates fewer than no submission
FIT_MARGIN = 1.05  # --epochs auto: an epoch's length varies a little (loader start, validation)


@dataclass
class Finish:
    """What runs after training in this run, in images to score."""
    val_images: int
    test_images: int = 0  # the held-out test split, scored by evaluate
    test_passes: int = 0  # evaluate scores the soup and every epoch file on test
    films: int = 0  # the competition's test films, scored by predict
    tta: bool = False

    def seconds(self, rate: float) -> float:
        """Seconds the stages after training need at `rate` inference images/s."""
        if not rate or not math.isfinite(rate):
            return 0.0
        views = 2 if self.tta else 1
        stages = 1 + (self.test_passes > 0) + (self.films > 0)  # soup, evaluate, predict
        images = (self.val_images * 2 + self.test_images * self.test_passes) * views \
            + self.films * views * FILM_SLOWDOWN
        return MARGIN * (images / rate + stages * STARTUP_S)


def session_budget(*, left_s, limit_s, before_s, finish_s, sessions) -> float:
    """Seconds of training left to a run spread over `sessions` sessions of `limit_s` each: the
    rest of this one (`left_s`), and the later ones, each of which first redoes what this one did
    before training (`before_s`: the data stages) and keeps `finish_s` for its own submission."""
    return left_s - finish_s + (sessions - 1) * max(0.0, limit_s - before_s - finish_s)


def fit_epochs(*, epoch_s, epoch, fraction_done, budget_s, least):
    """(epochs, fits): the most whole epochs of `epoch_s` seconds, counted from the run's start,
    whose training from here (epoch `epoch` plus `fraction_done` of the next) fits in `budget_s`;
    `fits` False when that is fewer than `least` (what the soup averages) or than the epoch under
    way, and then what fits, at least to the end of the epoch under way."""
    most = epoch + math.floor(budget_s / (epoch_s * FIT_MARGIN) + fraction_done)
    return max(most, epoch + 1), most >= max(least, epoch + 1)


def duration(seconds) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def plan(*, rate, infer_rate, train_images, val_images, epochs, epoch, fraction_done, left_s, finish_s,
         now=None) -> str:
    """One line: the measured rate and what it means for this run and this session.

    epoch: epochs finished; fraction_done: of the current one; left_s: seconds to the time limit
    (None: no limit); finish_s: what the stages after training need."""
    epoch_s = train_images / rate + val_images / infer_rate
    todo_s = (epochs - epoch - fraction_done) * epoch_s
    now = time.time() if now is None else now
    line = (f"[train] plan: {rate:.1f} images/s -> {duration(epoch_s)} an epoch (val included), "
            f"{epochs} epochs done at {time.strftime('%H:%M', time.localtime(now + todo_s))} "
            f"(in {duration(todo_s)}), then {duration(finish_s)} for the stages after training")
    if left_s is not None and todo_s + finish_s > left_s:
        reached = epoch + max(0, math.floor((left_s - finish_s) / epoch_s + fraction_done))
        line += (f"; the time limit leaves {duration(left_s)}: this session reaches epoch "
                 f"{min(reached, epochs)} of {epochs}, ends with an interim submission where there is a "
                 f"sample submission, and --resume auto continues in the next")
    return line
