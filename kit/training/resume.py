"""checkpoints/last.pth: the whole state of a training run, written at every epoch's end, every
few minutes within one and when a signal stops it, so that a rerun continues from there; and
--resume, which takes over such a state from an earlier session's output (on Kaggle: an input)."""
import hashlib
import os
import shutil
from pathlib import Path

import pandas as pd
import torch

from kit import env, layout
from kit.errors import KitError
from kit.io import atomic_path

SEARCH_DEPTH = 5  # /kaggle/input/notebooks/<owner>/<kernel>/checkpoints/last.pth
MANY_FOLDERS = 100  # a folder of this many sub-folders is a dataset's tree: not searched
CHECKPOINTS, LAST, HISTORY = layout.checkpoint_dir("").name, layout.last_state("").name, layout.history_csv("").name

# what a checkpoint is only valid for; other settings may change between sessions
SIGNATURE = {"model": "--model", "classes": "the classes", "img_size": "--img-size",
             "splits": "the train/val split files"}
# the settings that shape the trained weights: a finished run trained with others is not
# the result of these (--epochs more continues it; batch size, workers and speed options do not count)
RECIPE = ("pretrained", "drop_path", "effective_batch", "lr", "layer_decay", "weight_decay", "warmup_epochs",
          "min_lr", "loss", "focal_weight", "focal_alpha", "focal_gamma", "asl_gamma_neg", "asl_gamma_pos",
          "asl_clip", "pos_weight", "amp", "clip_grad",
          "aug", "hflip", "ema_decay", "ema_warmup", "seed", "head_init")


def split_digest(split_files) -> str:
    """The split files enter without their source paths: the same images, labels and stored
    files under another --data-dir (a Kaggle input mounted elsewhere) are the same split."""
    digest = hashlib.sha256()
    for f in split_files:
        table = pd.read_csv(f, dtype=str, keep_default_na=False)
        digest.update(table.drop(columns="path", errors="ignore").to_csv(index=False).encode())
    return digest.hexdigest()[:16]


def signature(model, classes, img_size, split_files) -> dict:
    """What a training state of --model `model` is only valid for (SIGNATURE)."""
    return {"model": model, "classes": list(classes), "img_size": img_size, "splits": split_digest(split_files)}


def load(path, expected, force) -> "dict | None":
    """The saved state to resume from; None to start afresh (no state, or --force)."""
    path = Path(path)
    if force or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file: torch raises many types
        raise KitError(f"{path} cannot be read as a training state ({type(e).__name__}); "
                       f"pass --force to train from scratch") from e
    saved = state.get("signature", {}) if isinstance(state, dict) else {}
    changed = [f"{SIGNATURE[k]} ({_short(saved.get(k))} -> {_short(v)})"
               for k, v in expected.items() if saved.get(k) != v]
    if changed:
        raise KitError(f"{path} is from another run; changed since: {', '.join(changed)}; pass the "
                       f"same settings to resume it, or --force to train from scratch")
    return state


def _short(value):
    text = ",".join(value) if isinstance(value, list) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."



def recipe(cfg) -> dict:  # cfg: a whole recipe is what a state records
    return {k: getattr(cfg, k) for k in RECIPE}


def recipe_changes(state, cfg) -> list:  # cfg: a whole recipe, compared with the saved one
    """'--lr 0.0003 -> 0.001' for each recipe setting `cfg` changes from the saved state's."""
    saved = state.get("recipe") or {}  # states written before recipes were saved: nothing to compare
    return [f"--{k.replace('_', '-')} {saved[k]} -> {v}" for k, v in recipe(cfg).items()
            if k in saved and saved[k] != v]


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


def _peek(path) -> dict:
    """A saved training state, its tensors left on disk; {} for a missing, damaged or foreign file."""
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # torch raises many types
        return {}
    return state if isinstance(state, dict) and "updates" in state else {}


def _progress(path) -> "tuple[dict, int]":
    """(signature, updates done) of a saved training state; a damaged or foreign file is no candidate."""
    state = _peek(path)
    return (state.get("signature", {}), int(state["updates"])) if state else ({}, -1)


def saved_schedule(path) -> "dict | None":
    """How --epochs auto fitted the schedule of the training state at `path` (None: not fitted)."""
    return _peek(path).get("schedule")


def fitted_epochs(work) -> int:
    """--epochs auto for stages after training: the epochs the train stage fitted in `work`."""
    schedule = saved_schedule(layout.last_state(work))
    if schedule is None:
        raise KitError(f"--epochs auto: {layout.last_state(work)} holds no fitted schedule; run the train "
                       f"stage first (it fits the epochs to the time limit), or pass a number of epochs")
    return schedule["epochs"]


def _copy(src, dst):
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def take_over(where, force, last_path, signature, world):
    """--resume `where`: copy the furthest matching training state found (last.pth, its epoch files
    and history.csv) into the work dir, unless the work dir's own state is as far along; `force`
    (--force): none."""
    if where == "none" or force:
        return
    if world.is_main:
        roots = env.data_roots(env.platform()) if where == "auto" else [Path(where)]
        _take_over(roots, Path(last_path), signature)
    from kit.training import distributed

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
