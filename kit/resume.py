"""checkpoints/last.pth: the whole state of a training run, written at every epoch's end, every
few minutes within one and when a signal stops it, so that a rerun continues from there."""
import hashlib
from pathlib import Path

import pandas as pd
import torch

from kit.errors import KitError

# what a checkpoint is only valid for; other settings may change between sessions
SIGNATURE = {"model": "--model", "classes": "the classes", "img_size": "--img-size",
             "splits": "the train/val split files"}
# the settings that shape the trained weights: a finished run trained with others is not
# the result of these (--epochs more continues it; batch size, workers and speed options do not count)
RECIPE = ("pretrained", "drop_path", "effective_batch", "lr", "layer_decay", "weight_decay", "warmup_epochs",
          "min_lr", "loss", "focal_weight", "focal_alpha", "focal_gamma", "pos_weight", "amp", "clip_grad",
          "aug", "hflip", "ema_decay", "ema_warmup", "seed", "head_init")


def signature(cfg, classes, split_files) -> dict:
    """The split files enter without their source paths: the same images, labels and stored
    files under another --data-dir (a Kaggle input mounted elsewhere) are the same split."""
    digest = hashlib.sha256()
    for f in split_files:
        table = pd.read_csv(f, dtype=str, keep_default_na=False)
        digest.update(table.drop(columns="path", errors="ignore").to_csv(index=False).encode())
    return {"model": cfg.model, "classes": list(classes), "img_size": cfg.img_size,
            "splits": digest.hexdigest()[:16]}


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



def recipe(cfg) -> dict:
    return {k: getattr(cfg, k) for k in RECIPE}


def recipe_changes(state, cfg) -> list:
    """'--lr 0.0003 -> 0.001' for each recipe setting `cfg` changes from the saved state's."""
    saved = state.get("recipe") or {}  # states written before recipes were saved: nothing to compare
    return [f"--{k.replace('_', '-')} {saved[k]} -> {v}" for k, v in recipe(cfg).items()
            if k in saved and saved[k] != v]
