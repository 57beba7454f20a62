"""Ctrl-C (a notebook's interrupt button) or SIGTERM during training: the run stops after the
current optimizer update with its whole state saved, so a rerun continues with nothing lost.

In one process a second signal stops at once, as usual. Under torchrun, which passes each signal
on to its workers (and kills them 30 s later), every signal only asks; all processes agree on
the update after which they stop, so none waits forever for the others.
"""
import contextlib
import os
import signal
import threading

from kit.training import session

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_asked = None  # the signal that asked training to stop


class Interrupted(Exception):
    """Training stopped on a signal with its state saved; the exit status is 128 + its number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


@contextlib.contextmanager
def stop_after_update(say=print, stage="train", state="checkpoints/last.pth"):
    """Within: a signal asks training to stop (see `reason`). Signal handlers belong to the main
    thread; elsewhere nothing changes. A signal that comes after the last update stops the run
    when the block ends."""
    from kit.training import distributed  # torch: imported only once training runs

    global _asked
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    once, owner = not distributed.under_torchrun(), os.getpid()

    def ask(signum, frame):
        global _asked
        if os.getpid() != owner:  # a loader worker forked within: it serves the update to its end
            return
        if _asked is None:
            _asked = signal.Signals(signum)
            say(f"\n[{stage}] {_asked.name}: stopping after this update with the state saved"
                f"{' (once more: stop at once, losing the updates since the last save)' if once else ''}",
                flush=True)
        elif once:
            raise KeyboardInterrupt

    # a signal this process was started to ignore (a background job's SIGINT) stays ignored
    previous = {s: signal.signal(s, ask) for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        asked, _asked = _asked, None
    if asked is not None:
        raise interrupted("after the last update", asked, state)


def reason(world) -> "str | None":
    """Why training must stop after this update: 'signal', 'time' (the time limit), or None.
    With several processes all give the same answer: any one's reason stops them all."""
    code = 2 if _asked is not None else 1 if session.training_out_of_time() else 0
    if world.size > 1:
        import torch

        from kit.training import distributed

        code = distributed.reduced(torch.tensor(float(code), device=world.device), world, "max").item()
    return {0: None, 1: "time", 2: "signal"}[int(code)]


def interrupted(when, signum=None, state="checkpoints/last.pth") -> Interrupted:
    # SIGINT for a process that only heard of the signal from the others
    signum = signal.Signals(signum or _asked or signal.SIGINT)
    return Interrupted(f"{signum.name} {when}: the training state is saved in {state}; "
                       f"run the same command again to continue", signum)
