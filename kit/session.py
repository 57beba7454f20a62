"""Sessions end; the work must not. The time limit (Kaggle stops a session after 12 hours), the
output budget (Kaggle keeps about 20 GB of /kaggle/working) and taking over the training state
of an earlier session (--resume).

The clock starts when the run starts. Worker processes started by the run (torchrun) inherit
its start through the environment, so every process stops at the same moment.
"""
import os
import re
import shutil
import time
from pathlib import Path

from kit import env, layout
from kit.errors import KitError
from kit.io import atomic_path

KAGGLE_TIME_LIMIT = "11h30m"  # of the 12 h session: room left to save and to finish the run
KAGGLE_OUTPUT_BUDGET = "19GB"  # Kaggle keeps about 20 GB of /kaggle/working
SESSION_ENV = "XRAY_KIT_SESSION"  # "<pid>:<start time>" of the process that began the run
DURATION_UNITS = {"h": 3600, "m": 60, "s": 1}
SIZE_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12}
OPTIMIZER_COPIES = 4  # last.pth: the weights, their EMA and AdamW's two moments
SEARCH_DEPTH = 5  # /kaggle/input/notebooks/<owner>/<kernel>/checkpoints/last.pth
MANY_FOLDERS = 100  # a folder of this many sub-folders is a dataset's tree: not searched
CHECKPOINTS, LAST, HISTORY = layout.checkpoint_dir("").name, layout.last_state("").name, layout.history_csv("").name

clock = time.time  # wall time: shared by every process of a run
_deadline = None
_reserved = 0.0  # seconds before the limit kept for the stages after training


class TimeUp(Exception):
    """The time limit came; the work so far is saved and the message says how to continue."""


def parse_duration(text) -> "float | None":
    """Seconds of '11h30m', '90m', '600s' or '600'; None for 'none' or 0."""
    t = str(text).strip().lower()
    if t in ("none", "0", ""):
        return None
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise KitError(f"--time-limit {text!r}: pass a duration such as 11h30m, 90m or 600s, or none")
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


def parse_size(text) -> "float | None":
    """Bytes of '19GB', '500MB', '1.5T'; None for 'none' or 0."""
    t = str(text).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", t)
    if t in ("none", "0", ""):
        return None
    if not match or match[2] not in SIZE_UNITS:
        raise KitError(f"--output-budget {text!r}: pass a size such as 19GB or 500MB, or none")
    return float(match[1]) * SIZE_UNITS[match[2]]


def size(n) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _auto(value, on_kaggle, where=None) -> str:
    """`value`, or for 'auto' what it means on this platform: `on_kaggle` on Kaggle, none elsewhere."""
    if value != "auto":
        return value
    return on_kaggle if (where or env.platform()) == "kaggle" else "none"


def time_limit(cfg) -> "float | None":
    return parse_duration(_auto(cfg.time_limit, KAGGLE_TIME_LIMIT))


def output_budget(cfg) -> "float | None":
    return parse_size(_auto(cfg.output_budget, KAGGLE_OUTPUT_BUDGET))


def resolve(cfg, where):
    """Fill --time-limit and --output-budget auto for this platform; refuse a malformed one, and
    a --resume path that is not there."""
    cfg.time_limit = _auto(cfg.time_limit, KAGGLE_TIME_LIMIT, where)
    cfg.output_budget = _auto(cfg.output_budget, KAGGLE_OUTPUT_BUDGET, where)
    time_limit(cfg)
    output_budget(cfg)
    if cfg.resume not in ("auto", "none") and not Path(cfg.resume).exists():
        raise KitError(f"--resume {cfg.resume} does not exist; pass the folder (or last.pth) of the run "
                       f"to continue, auto to search the inputs, or none")


def start(cfg) -> bool:
    """Start the run's clock, or take it over from the process that started this one (torchrun
    workers). True in the process that should describe the machine: the starting one, one per
    machine under a torchrun the user started."""
    global _deadline
    pid, _, began = os.environ.get(SESSION_ENV, "").partition(":")
    inherited = bool(pid) and int(pid) != os.getpid()
    if not inherited:
        began = clock()
        os.environ[SESSION_ENV] = f"{os.getpid()}:{began!r}"
    limit = time_limit(cfg)
    _deadline = float(began) + limit if limit else None
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


def time_up(cfg, when, state="checkpoints/last.pth") -> TimeUp:
    """The exception that stops the run, with the way to continue."""
    if env.platform() == "kaggle":
        how = ("attach this version's output as an input of the next one (Add Input > Your Work, or "
               "kernel_sources in kernel-metadata.json) and run it with --resume auto")
    else:
        how = "run the same command again"
    return TimeUp(f"time limit {cfg.time_limit} reached {when}: the work so far is in {cfg.work} (training "
                  f"continues from {state}); to continue, {how}")


def check_time(cfg, stage):
    if out_of_time():
        raise time_up(cfg, f"before the {stage} stage")


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


def warn_output_budget(cfg, model, keep_rule):
    """Before training: warn when the work dir would end up larger than --output-budget.
    `keep_rule(history) -> epochs kept`; the estimate assumes the best epoch is the first,
    which keeps the most files."""
    budget = output_budget(cfg)
    if budget is None:
        return
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    history = [{"epoch": e, "val_macro_auc": -e} for e in range(1, cfg.epochs + 1)]
    files = len(keep_rule(history)) + 1  # and the soup, or the newest epoch before pruning
    checkpoints = files * weights + OPTIMIZER_COPIES * weights
    other = _tree_bytes(cfg.work, skip={layout.checkpoint_dir(cfg.work), layout.soup_weights(cfg.work)})
    if checkpoints + other > budget:
        print(f"warning: the work dir would hold about {size(checkpoints + other)}, more than "
              f"--output-budget {cfg.output_budget}: {files} weights files of {size(weights)}, last.pth "
              f"of {size(OPTIMIZER_COPIES * weights)} and {size(other)} already there; keep fewer "
              f"epoch files (--keep-epochs, --soup-epochs) or a smaller --resize")


# --resume -------------------------------------------------------------------------------------

def find_states(roots) -> list:
    """Every checkpoints/last.pth under `roots` (a root may be such a file itself)."""
    found = []
    for root in map(Path, roots):
        if root.is_file():
            found.append(root)
            continue
        for folder, dirs, files in os.walk(root):
            folder = Path(folder)
            if folder.name == CHECKPOINTS and LAST in files:
                found.append(folder / LAST)
            if len(folder.relative_to(root).parts) >= SEARCH_DEPTH or len(dirs) > MANY_FOLDERS:
                dirs.clear()
            dirs.sort()
    return found


def _progress(path) -> "tuple[dict, int]":
    """(signature, updates done) of a saved training state, read without loading its tensors."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        return state.get("signature", {}), int(state["updates"])
    except Exception:  # a damaged or foreign file is simply not a candidate
        return {}, -1


def _copy(src, dst):
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def take_over(cfg, last_path, signature, world):
    """--resume: copy the furthest matching training state found (last.pth, its epoch files and
    history.csv) into the work dir, unless the work dir's own state is as far along."""
    if cfg.resume == "none" or cfg.force:
        return
    if world.is_main:
        roots = env.data_roots(env.platform()) if cfg.resume == "auto" else [Path(cfg.resume)]
        _take_over(roots, Path(last_path), signature)
    from kit import distributed

    distributed.gather(None, world)  # the other processes wait for the copy


def _take_over(roots, last_path, signature):
    candidates = []
    for path in find_states(roots):
        if path.resolve() == last_path.resolve():  # the work dir under a searched root (Colab's /content)
            continue
        saved, updates = _progress(path)
        if saved == signature:
            candidates.append((updates, path))
        else:
            print(f"[train] --resume: {path} is from another run (other model, classes, image size or "
                  f"split), skipped")
    if not candidates:
        print(f"[train] --resume: no matching checkpoints/last.pth under {', '.join(map(str, roots))}")
        return
    updates, source = max(candidates)
    own_signature, own = _progress(last_path) if last_path.exists() else ({}, -1)
    if own_signature == signature and own >= updates:
        print(f"[train] --resume: the work dir's last.pth is as far along as {source}; kept")
        return
    for path in sorted(source.parent.glob("*.pth")):
        _copy(path, last_path.parent / path.name)
    history = source.parent.parent / HISTORY
    if history.is_file():
        _copy(history, layout.history_csv(last_path.parent.parent))
    print(f"[train] --resume: took over {source.parent} (update {updates})")
