"""What every long training loop needs, for the classifier's trainer and the generator alike: its
place in the run as a state that resumes exactly (`Position`), and around its updates (`Loop`) a
resume point every SAVE_EVERY_S, a stop after the current update with the state saved when
Ctrl-C, SIGTERM or the time limit asks, and the ETA of the epochs left.

A place in the run is (epochs done, progress in the current epoch, updates done). Each loop makes
its data order and random numbers functions of that place and its seed, so a run resumed from its
state continues where it was.
"""
import contextlib
import math
import time

from kit.training import interrupt

SAVE_EVERY_S = 600  # mid-epoch resume points: a session can end at any moment


class Position:
    """Epochs done, progress in the current epoch (the attribute named IN_EPOCH), updates done,
    the current epoch's loss so far and the rows of the finished epochs; in a state dict under
    these names."""

    IN_EPOCH = "offset"

    def start_position(self):
        self.epoch = self.updates = 0
        setattr(self, self.IN_EPOCH, 0)
        self.loss_sum, self.loss_count, self.history = 0.0, 0, []

    def _keys(self):
        return "epoch", self.IN_EPOCH, "updates", "loss_sum", "loss_count", "history"

    def position(self) -> dict:
        return {key: getattr(self, key) for key in self._keys()}

    def load_position(self, state):
        for key in self._keys():
            setattr(self, key, state[key])

    def add_loss(self, loss: float):
        """An update's loss; a non-finite one stays out of the epoch's mean."""
        if math.isfinite(loss):
            self.loss_sum, self.loss_count = self.loss_sum + loss, self.loss_count + 1

    def mean_loss(self) -> float:
        return self.loss_sum / max(self.loss_count, 1)

    def end_epoch(self, row):
        self.history.append(row)
        self.epoch += 1
        setattr(self, self.IN_EPOCH, 0)
        self.loss_sum, self.loss_count = 0.0, 0


class Loop:
    """Saves and stops one training loop. `save()` writes its whole state; `state` names where
    (in the messages), `stage` prefixes its lines and `epoch_name` says whose epoch it is;
    `time_up(where, state)` is the exception that ends the session."""

    def __init__(self, world, save, state, time_up, stage="train", epoch_name="epoch", save_every_s=SAVE_EVERY_S):
        self.world, self._save, self.state, self.time_up = world, save, state, time_up
        self.stage, self.epoch_name, self.save_every_s = stage, epoch_name, save_every_s
        self.last_save = time.monotonic()
        self.started, self.epochs_done = time.perf_counter(), 0

    @contextlib.contextmanager
    def running(self, say=print):
        """Within: a signal stops the loop after its current update (kit.training.interrupt); the ETA
        counts from here."""
        with interrupt.stop_after_update(say, self.stage, self.state):
            self.started, self.epochs_done = time.perf_counter(), 0
            yield

    def save(self):
        self._save()
        self.last_save = time.monotonic()

    def after_update(self, epoch: int, epoch_goes_on: bool):
        """After an update of epoch number `epoch`: stop with the state saved when a signal or the
        time limit asks (all processes agree), else save when SAVE_EVERY_S have passed and the
        epoch goes on (its end saves anyway)."""
        stop = interrupt.reason(self.world)
        if stop:
            where = f"in {self.epoch_name} {epoch}"
            error = self.time_up(where, self.state) if stop == "time" else interrupt.interrupted(where, state=self.state)
            self.save()  # after time_up, which may still change the state
            raise error
        if epoch_goes_on and time.monotonic() - self.last_save >= self.save_every_s:
            self.save()

    def end_epoch(self, epochs_left: int) -> float:
        """Save at an epoch's end; the seconds the `epochs_left` take at this session's pace."""
        self.save()
        self.epochs_done += 1
        return (time.perf_counter() - self.started) / self.epochs_done * epochs_left
