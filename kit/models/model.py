"""The timm model: creation with pretrained weights found offline first, and weights files.

A weights file is a dict in timm's checkpoint convention (`state_dict` plus `arch`, `classes`,
`img_size`, `mean`, `std`, `epoch`, `metric`), so plain timm restores it:
`timm.create_model(arch, num_classes=len(classes), img_size=img_size)` then
`timm.models.load_checkpoint(model, path)`; a file that also holds `model_kwargs` (EVA-X: timm's
EVA-02 with 16-pixel patches) passes them to `timm.create_model` too.
"""
import difflib
import json
import os
from pathlib import Path

import numpy as np
import timm
import torch
from timm.layers import to_2tuple

from kit import env
from kit.errors import KitError
from kit.io import save_torch
from kit.models import eva_x

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
SEARCH_DEPTH = 6  # /kaggle/input/<model>/<framework>/<variation>/<version>/model.safetensors
CHECKPOINT_KEYS = ("state_dict", "arch", "classes", "img_size", "mean", "std")


def check_arch(arch):
    name, _, tag = arch.partition(".")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"close timm names: {', '.join(close)}" if close else "see timm.list_models()"
        raise KitError(f"unknown model {arch!r}; {hint}")
    if tag and arch not in timm.list_models(pretrained=True):
        tags = timm.list_models(name + ".*", pretrained=True)
        raise KitError(f"{name} has no pretrained tag {tag!r}; known: {', '.join(tags) or 'none'}")


def create_model(arch, num_classes, img_size, drop_path=0.0, pretrained="none", search_roots=()):
    """A timm model with a `num_classes` head for `img_size` images.

    pretrained: "none" (random init), "auto" (weights found by `find_weights`) or a weights file.
    timm loads the file, resamples position embeddings to `img_size` and drops the old head."""
    check_arch(arch)
    kwargs = dict(num_classes=num_classes, img_size=img_size, drop_path_rate=drop_path)
    file, own_loader = None, eva_x.is_eva_x(arch)  # EVA-X's MIM checkpoints load strictly, below
    if pretrained != "none":
        file = find_weights(arch, search_roots) if pretrained == "auto" else Path(pretrained)
        if not file.is_file():
            raise KitError(f"--pretrained {file}: no such file; pass a weights file, auto or none")
        if not own_loader:
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))
    try:
        model = timm.create_model(arch, **kwargs)
    except TypeError as e:
        raise KitError(f"{arch} does not take an image size ({e}); use a ViT-family model "
                       f"such as eva02_*, vit_* or deit_*") from e
    except (RuntimeError, KeyError, ValueError, OSError) as e:
        reason = str(e).strip().splitlines()[0][:200]
        if "pretrained" not in kwargs:
            raise KitError(f"timm cannot build {arch} at --img-size {img_size} ({reason}); try the "
                           f"model's own size, e.g. 224 or 448") from e
        raise KitError(f"weights file {kwargs['pretrained_cfg_overlay']['file']} does not match "
                       f"{arch} ({reason}); attach this model's weights or pass --pretrained none") from e
    patch = to_2tuple(getattr(getattr(model, "patch_embed", None), "patch_size", 1))[0]
    if img_size % patch:
        raise KitError(f"--img-size {img_size} is not a multiple of {arch}'s patch size {patch}; "
                       f"use {max(1, round(img_size / patch)) * patch}")
    if file and own_loader:
        eva_x.load_pretrained(model, arch, file)
    return model


def find_weights(arch, search_roots=()) -> Path:
    """Weights for `arch`: a file attached to the machine, then the Hugging Face cache, then
    the hub if the network answers. Offline is the normal case on Kaggle: never wait on it."""
    found = _search_local(arch, search_roots)
    if found:
        return found
    if eva_x.is_eva_x(arch):
        raise KitError(f"no {eva_x.weights_file(arch)} under {', '.join(map(str, search_roots)) or 'the data roots'}: "
                       f"attach it (Kaggle: Add Input, a dataset or model holding the file; Colab: put it "
                       f"under the data folder), pass --pretrained PATH, or train from scratch with "
                       f"--pretrained none")
    repo = timm.models.get_pretrained_cfg(arch).hf_hub_id
    if repo:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        for name in HUB_FILES:
            cached = try_to_load_from_cache(repo, name)
            if isinstance(cached, str):
                return Path(cached)
        if env.hub_reachable():
            try:
                return Path(hf_hub_download(repo, HUB_FILES[0]))
            except Exception as e:  # any hub failure means "not available"; the message below says what to do
                print(f"[train] download of {repo} failed: {str(e).splitlines()[0][:200]}")
    raise KitError(
        f"no pretrained weights for {arch} on this machine and the hub cannot be reached: attach "
        f"them (Kaggle: Add Input > Models > {repo or arch}, or a dataset holding its "
        f"model.safetensors), pass --pretrained PATH, or train from scratch with --pretrained none")


def _search_local(arch, roots):
    """The weights file under `roots` whose folder names `arch` (or whose config.json says so);
    one that also names the pretrained tag is preferred."""
    name, _, tag = arch.partition(".")
    if eva_x.is_eva_x(arch):  # one published file per size, found by its name
        wanted = eva_x.weights_file(arch)
        return next((folder / wanted for root in map(Path, roots) for folder, files in _walk(root)
                     if wanted in files), None)
    hits = []
    for root in map(Path, roots):
        for folder, files in _walk(root):
            if not any(f.endswith(WEIGHT_SUFFIXES) for f in files):
                continue
            where = str(folder).lower().replace("-", "_")
            if name not in where and _config_arch(folder, files) != name:
                continue
            for f in sorted(files):
                if f.endswith(WEIGHT_SUFFIXES):
                    hits.append((bool(tag) and tag in where, f in HUB_FILES, folder / f))
    return max(hits, key=lambda h: h[:2])[2] if hits else None


def _walk(root):
    """(folder, file names) below root, skipping deep trees and folders of many sub-folders
    (a dataset's image tree is no place for weights and can take minutes to list)."""
    if not root.is_dir():
        return
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        if depth >= SEARCH_DEPTH or len(dirs) > 100:
            dirs.clear()
        yield Path(folder), files


def _config_arch(folder, files):
    if "config.json" not in files:
        return None
    try:
        return json.loads((folder / "config.json").read_text()).get("architecture")
    except (OSError, ValueError, AttributeError):
        return None


def init_head_prior(model, targets):
    """Set the classifier bias to the log-odds of each class's share of `targets` (train images x
    classes, 0/1), as RetinaNet does (Lin et al. 2017): the model starts at the prevalence, so
    the first updates go to the signs instead of a slow drift of every output from 0.5 (focal
    loss gives that drift little gradient). A share of 0 or 1 counts half an image the other way."""
    n = len(targets)
    prevalence = np.clip(np.asarray(targets, np.float64).mean(0), 0.5 / n, 1 - 0.5 / n)
    bias = torch.as_tensor(np.log(prevalence / (1 - prevalence)), dtype=torch.float32)
    heads = model.get_classifier()
    for head in heads if isinstance(heads, (tuple, list)) else (heads,):  # LeViT's distilled pair
        linear = head if isinstance(head, torch.nn.Linear) else \
            [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            linear.bias.copy_(bias)


def norm_stats(model):
    """(mean, std) of the model's pretrained input normalization."""
    cfg = model.pretrained_cfg
    return tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"]))


def checkpoint_dict(state_dict, *, arch, classes, img_size, mean, std, epoch, metric, seen_patients=None,
                    model_kwargs=None) -> dict:
    """Weights and what it takes to use them; `seen_patients` (`layout.patient_hashes` of the
    train and val splits) lets evaluate refuse a test split the weights have seen. `arch` is
    stored as plain timm builds it: an EVA-X name becomes its EVA-02 and `model_kwargs`."""
    if eva_x.is_eva_x(arch):
        arch, model_kwargs = eva_x.timm_recipe(arch)
    ckpt = {
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "arch": arch,
        "classes": list(classes),
        "img_size": int(img_size),
        "mean": tuple(map(float, mean)),
        "std": tuple(map(float, std)),
        "epoch": int(epoch),
        "metric": float(metric),
    }
    if model_kwargs:
        ckpt["model_kwargs"] = dict(model_kwargs)
    if seen_patients is not None:
        ckpt["seen_patients"] = torch.as_tensor(seen_patients)
    return ckpt


def save_weights(ckpt, path):
    """Atomic: a kill or a full disk mid-write leaves the previous file as it was."""
    try:
        save_torch(ckpt, path)
    except OSError as e:
        raise KitError(f"cannot write {path} ({e.strerror or e}): free some disk space and rerun; "
                       f"the previous file is intact") from e


def read_weights(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise KitError(f"weights file {path} not found; run --stage train (and soup) first, "
                       f"or pass an existing file with --weights")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise KitError(f"{path} is not a readable weights file ({type(e).__name__}); "
                       f"point --weights at a checkpoint written by this kit") from e
    if isinstance(ckpt, dict) and "optimizer" in ckpt and "ema" in ckpt:
        raise KitError(f"{path} is a training state, not weights; point --weights at the soup "
                       f"or at checkpoints/epoch_NN.pth")
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in CHECKPOINT_KEYS):
        raise KitError(f"{path} is not a kit weights file (needs {', '.join(CHECKPOINT_KEYS)}); "
                       f"point --weights at a checkpoint written by this kit")
    return ckpt


def load_model(ckpt, device) -> torch.nn.Module:
    """The checkpoint's model on `device`, in eval mode."""
    model = timm.create_model(ckpt["arch"], num_classes=len(ckpt["classes"]), img_size=ckpt["img_size"],
                              **ckpt.get("model_kwargs", {}))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise KitError(f"weights do not match {ckpt['arch']} with {len(ckpt['classes'])} classes "
                       f"({str(e).splitlines()[0][:200]})") from e
    return model.to(device).eval()
