"""Sessions end; the work must not. The time limit (Kaggle stops a session after 12 hours), the
output budget (Kaggle keeps about 20 GB of /kaggle/working) and taking over the training state
of an earlier session (--resume).

The clock starts when the run starts. Worker processes started by the run (torchrun) inherit
its start through the environment, so every process stops at the same moment.
"""
import os
import time
from pathlib import Path

from kit import env, layout
from kit.config import settings
from kit.errors import KitError

KAGGLE_TIME_LIMIT = "11h30m"  # of the 12 h session: room left to save and to finish the run
KAGGLE_OUTPUT_BUDGET = "19GB"  # Kaggle keeps about 20 GB of /kaggle/working
# a free Colab session is cut after at most about 12 hours: stop with a submission before that
COLAB_TIME_LIMIT = "11h"
COLAB_OUTPUT_BUDGET = "15GB"  # a free Google Drive, whose trash (files replaced through the mount) counts too
TIME_LIMITS = {"kaggle": KAGGLE_TIME_LIMIT, "colab": COLAB_TIME_LIMIT}
OUTPUT_BUDGETS = {"kaggle": KAGGLE_OUTPUT_BUDGET, "colab": COLAB_OUTPUT_BUDGET}
SESSION_ENV = "XRAY_KIT_SESSION"  # "<pid>:<start time>" of the process that began the run
OPTIMIZER_COPIES = 4  # last.pth: the weights, their EMA and AdamW's two moments

clock = time.time  # wall time: shared by every process of a run
_deadline = None
_reserved = 0.0  # seconds before the limit kept for the stages after training


class TimeUp(Exception):
    """The time limit came; the work so far is saved and the message says how to continue."""


def size(n) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _auto(value, by_platform: dict, where=None) -> str:
    """`value`, or for 'auto' what it means on this platform (`by_platform`), none on a local machine."""
    if value != "auto":
        return value
    return by_platform.get(where or env.platform(), "none")


def time_limit(limit) -> "float | None":
    """Seconds of --time-limit `limit` (None: no limit)."""
    return settings.parse_duration(_auto(limit, TIME_LIMITS))


def output_budget(budget) -> "float | None":
    """Bytes of --output-budget `budget` (None: no budget)."""
    return settings.parse_size(_auto(budget, OUTPUT_BUDGETS))


def resolve(limit, budget, resume, where) -> tuple:
    """(--time-limit, --output-budget) with auto filled for this platform; refuses a malformed one,
    and a --resume path that is not there."""
    limit, budget = _auto(limit, TIME_LIMITS, where), _auto(budget, OUTPUT_BUDGETS, where)
    time_limit(limit)
    output_budget(budget)
    if resume not in ("auto", "none") and not Path(resume).exists():
        raise KitError(f"--resume {resume} does not exist; pass the folder (or last.pth) of the run "
                       f"to continue, auto to search the inputs, or none")
    return limit, budget


def start(limit) -> bool:
    """Start the run's clock, or take it over from the process that started this one (torchrun
    workers). True in the process that should describe the machine: the starting one, one per
    machine under a torchrun the user started."""
    global _deadline
    pid, _, began = os.environ.get(SESSION_ENV, "").partition(":")
    inherited = bool(pid) and int(pid) != os.getpid()
    if not pid:  # a run inside this process's run (the synthetic demo's) keeps its clock
        began = clock()
        os.environ[SESSION_ENV] = f"{os.getpid()}:{began!r}"
    seconds = time_limit(limit)
    _deadline = float(began) + seconds if seconds else None
    return not inherited and os.environ.get("LOCAL_RANK", "0") == "0"


def end():
    """The run is over: forget its clock, and hand it to no process started later."""
    global _deadline, _reserved
    _deadline, _reserved = None, 0.0
    if os.environ.get(SESSION_ENV, "").partition(":")[0] == str(os.getpid()):
        del os.environ[SESSION_ENV]


def out_of_time() -> bool:
    """Whether the time limit has come."""
    return _deadline is not None and clock() >= _deadline


def reserve(seconds: float):
    """Keep `seconds` of the limit for the stages after training (soup, evaluate, predict)."""
    global _reserved
    _reserved = max(0.0, seconds)


def training_out_of_time() -> bool:
    """Whether training must stop to leave the reserved time (interrupt.reason makes all
    processes agree)."""
    return _deadline is not None and clock() >= _deadline - _reserved


def seconds_left() -> "float | None":
    return None if _deadline is None else _deadline - clock()


def time_up(limit, work, when, state="checkpoints/last.pth") -> TimeUp:
    """The exception that stops the run under --time-limit `limit`, with the way to continue."""
    where = env.platform()
    if where == "kaggle":
        how = ("attach this version's output as an input of the next one (Add Input > Your Work, or "
               "kernel_sources in kernel-metadata.json) and run it with --resume auto")
    elif where == "colab":
        how = "start a new Colab session and run the notebook's cells again: the work dir on Drive is kept"
    else:
        how = "run the same command again"
    return TimeUp(f"time limit {limit} reached {when}: the work so far is in {work} (training "
                  f"continues from {state}); to continue, {how}")


def check_time(limit, work, stage):
    if out_of_time():
        raise time_up(limit, work, f"before the {stage} stage")


# output budget ---------------------------------------------------------------------------------

def _tree_bytes(folder, skip=()) -> int:
    """Bytes of the files below `folder`, leaving out the paths in `skip` (strings: a work dir
    holds 200k stored images)."""
    skip = {str(Path(s)) for s in skip}
    total = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
        total += sum(os.path.getsize(p) for p in (os.path.join(root, f) for f in files) if p not in skip)
    return total


def most_kept(keep_rule, epochs) -> set:
    """The epoch files `keep_rule(history) -> epochs kept` keeps at most in a run of `epochs`:
    when the best epoch is the first."""
    return keep_rule([{"epoch": e, "val_macro_auc": -e} for e in range(1, epochs + 1)])


def warn_output_budget(budget, work, epochs, model, keep_rule):
    """Before training: warn when the work dir `work` would end up larger than --output-budget
    `budget`, with the most epoch files `keep_rule` can keep in `epochs`."""
    limit = output_budget(budget)
    if limit is None:
        return
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    files = len(most_kept(keep_rule, epochs)) + 1  # and the soup, or the newest epoch before pruning
    checkpoints = files * weights + OPTIMIZER_COPIES * weights
    other = _tree_bytes(work, skip={layout.checkpoint_dir(work), layout.soup_weights(work)})
    if checkpoints + other > limit:
        print(f"warning: the work dir would hold about {size(checkpoints + other)}, more than "
              f"--output-budget {budget}: {files} weights files of {size(weights)}, last.pth "
              f"of {size(OPTIMIZER_COPIES * weights)} and {size(other)} already there; keep fewer "
              f"epoch files (--keep-epochs, --soup-epochs) or a smaller --resize")
