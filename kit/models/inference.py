"""Running a model over images: one loop over a loader (raw logits for validation, probabilities
in dataset order with optional test-time augmentation), the Scorer that soup, evaluate and predict use
on weights files, and penultimate-layer features for judging synthetic images."""
import time

import numpy as np
import torch
import torch.nn.functional as F

from kit import layout
from kit.config import settings
from kit.data.loaders import XrayDataset, make_loader, to_input, worker_count
from kit.errors import KitError
from kit.models.model import load_model
from kit.models.precision import Autocast, autocast_dtype
from kit.progress import progress as report

# --tta's second view when training never flipped: zoomed in 5% about the centre and shifted 2% of
# the side right and down, well inside both augmentations' ranges (light: scale 0.9-1.1, shift 5%)
JITTER = (1.05, 0.02, 0.02)


def tta_views(tta, hflip) -> tuple:
    """The views --tta averages: the film itself and one the model was trained on, its flip
    only when training flipped (--hflip > 0), else the small scale and shift of JITTER."""
    if not tta:
        return (None,)
    return (None, "flip") if hflip > 0 else (None, JITTER)


def tta_name(tta, hflip) -> str:
    """What --tta averages in this run, in words (also what decides whether scores are up to date)."""
    views = tta_views(tta, hflip)
    return "off" if len(views) == 1 else "flip" if "flip" in views else "scale and shift jitter"


def _view(x, view, mean, std):
    """Normalized batch `x` as `view` sees it; a jittered film's border is black, as in training."""
    if view is None:
        return x
    if view == "flip":
        return x.flip(-1)
    scale, dx, dy = view
    # affine_grid maps output to input in [-1, 1] coordinates: a shift of d sides is 2d there
    theta = x.new_tensor([[1 / scale, 0, -2 * dx / scale], [0, 1 / scale, -2 * dy / scale]])
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    black = -(torch.as_tensor(mean, dtype=x.dtype, device=x.device)
              / torch.as_tensor(std, dtype=x.dtype, device=x.device)).view(1, -1, 1, 1)
    return F.grid_sample(x - black, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + black


def _batches(model, loader, device, mean, std, amp, views, progress):
    """(index, [float32 CPU outputs, one per view], ok) for each batch of the loader."""
    device = torch.device(device)
    dtype = autocast_dtype(amp, device)
    model.eval()
    batches = report(loader, len(loader), progress, unit="batch") if progress else loader
    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (mean, std))  # copied once
    with torch.inference_mode():
        for images, _, index, ok in batches:
            x = to_input(images, mean, std, device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                outs = [model(_view(x, view, mean, std)).float().cpu() for view in views]
            yield index.numpy(), outs, ok.numpy()


def logits(model, loader, device, mean, std, amp="auto", progress=None):
    """(index, logits float32 [n, C], ok) for the rows the loader yields, in its order."""
    parts = list(_batches(model, loader, device, mean, std, amp, (None,), progress))
    if not parts:
        return np.zeros(0, int), np.zeros((0, 0), np.float32), np.zeros(0, bool)
    index, outs, ok = zip(*parts)
    return np.concatenate(index), torch.cat([o[0] for o in outs]).numpy(), np.concatenate(ok)


def predict(model, loader, device, mean, std, amp="auto", views=(None,), progress=None):
    """(probs float [N, C] in dataset order, NaN rows where ok is False; ok bool [N]).

    The probabilities are averaged over `views` (see tta_views). progress: a label to show
    progress under, or None for none."""
    n = len(loader.dataset)
    probs, seen_ok = None, np.zeros(n, bool)
    for index, outs, ok in _batches(model, loader, device, mean, std, amp, views, progress):
        p = torch.stack([o.sigmoid() for o in outs]).mean(0).numpy()
        if probs is None:
            probs = np.full((n, p.shape[1]), np.nan)
        probs[index] = np.where(ok[:, None], p, np.nan)
        seen_ok[index] = ok
    return (probs if probs is not None else np.zeros((0, 0))), seen_ok


# weights files over fixed lists of images (soup, evaluate, predict) ----------------------------

GPU_BATCH, CPU_BATCH = 64, 32


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def inference_batch(setting, on: torch.device) -> int:
    """The training batch when one was given (--batch-size `setting`); inference needs no more
    memory than training."""
    given = settings.count(setting, "--batch-size")
    if given != "auto":
        return given
    return GPU_BATCH if on.type == "cuda" else CPU_BATCH


def check_classes(ckpt, classes, split):
    """The weights must score the split's classes, in the split's order."""
    if list(ckpt["classes"]) != list(classes):
        raise KitError(f"the weights know classes {ckpt['classes']} but splits/{split}.csv has "
                       f"{classes}; rerun --stage train on this split, or point --work-dir at its run")


def check_unseen(ckpt, weights, test):
    """Weights trained or selected on some of the test split's patients would score them too
    well: refuse them (weights saved without the record pass)."""
    seen = ckpt.get("seen_patients")
    if seen is None:
        return
    shared = np.isin(layout.patient_hashes(test), seen.numpy())
    if shared.any():
        raise KitError(f"{weights} was trained or selected on {int(shared.sum())} of the {len(shared)} "
                       f"patients of this run's test split, so its test figures would be optimistic; "
                       f"evaluate it with the --work-dir of the run that trained it")


class Scorer:
    """Loaders over named image lists (say val and test) and one model, reused for every
    checkpoint scored on them: the model is built once, later checkpoints only load weights.

    Several GPUs share each batch (DataParallel): inference has no gradients to synchronize,
    so the simple replication is close to linear in GPUs. `shorter_side`: see XrayDataset."""

    def __init__(self, image_lists: dict, img_size, shorter_side=0, *, batch_size, workers, seed, amp, tta,
                 hflip):
        """The keywords: the run's settings of those names (config.scorer_kwargs)."""
        self.device = device()
        self.amp, self.tta, self.hflip = amp, tta, hflip
        self.loaders = {name: make_loader(XrayDataset(paths, None, img_size, shorter_side=shorter_side),
                                          inference_batch(batch_size, self.device), shuffle=False,
                                          workers=worker_count(workers), seed=seed)
                        for name, paths in image_lists.items()}
        self.images_per_s = float("nan")
        self._model, self._built_for = None, None

    def _load(self, ckpt):
        """The checkpoint's model; built once, later checkpoints of the same shape only load weights."""
        shape = (ckpt["arch"], len(ckpt["classes"]), ckpt["img_size"], str(ckpt.get("model_kwargs")))
        if shape != self._built_for:
            self._model, self._built_for = load_model(ckpt, self.device), shape
        else:
            self._model.load_state_dict(ckpt["state_dict"])
        return self._model

    def __call__(self, ckpt, images, desc):
        """(probs [N, C], ok [N]) of the checkpoint dict `ckpt` on the image list named `images`;
        NaN rows where ok is False."""
        model = self._load(ckpt)
        if torch.cuda.device_count() > 1:
            model = torch.nn.DataParallel(Autocast(model, autocast_dtype(self.amp, self.device)))
        start = time.perf_counter()
        probs, ok = predict(model, self.loaders[images], self.device, ckpt["mean"], ckpt["std"],
                            amp=self.amp, views=tta_views(self.tta, self.hflip), progress=desc)
        self.images_per_s = len(ok) / max(time.perf_counter() - start, 1e-9)
        return probs, ok

    def describe(self) -> str:
        gpus = torch.cuda.device_count()
        where = f"{gpus} GPU{'s' if gpus > 1 else ''}" if gpus else "CPU"
        loader = next(iter(self.loaders.values()))
        return (f"{where}, batch {loader.batch_size}, {loader.num_workers} workers, "
                f"amp {self.amp}, tta {tta_name(self.tta, self.hflip)}")


# features (synth-quality) --------------------------------------------------------------------

class FeaturesAndLogits(torch.nn.Module):
    """The model's pre-logits features with its logits appended as the last columns, so one
    forward pass (and the loop above) gives both."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        # the head twice over one trunk pass, not get_classifier(): some heads are more than one
        # layer (LeViT's distilled pair), and forward_head knows how to combine them
        trunk = self.model.forward_features(x)
        return torch.cat([self.model.forward_head(trunk, pre_logits=True), self.model.forward_head(trunk)], dim=1)


def extract(model, paths, img_size, mean, std, device, desc, *, batch_size, workers, seed, amp):
    """(features float32 [N, D], logits float32 [N, C], ok bool [N]) in `paths` order; rows of
    unreadable images are not meaningful where ok is False."""
    loader = make_loader(XrayDataset(paths, None, img_size), inference_batch(batch_size, device), shuffle=False,
                         workers=worker_count(workers), seed=seed)
    index, out, ok = logits(FeaturesAndLogits(model), loader, device, mean, std, amp, progress=desc)
    n_classes = model.num_classes
    ordered, good = np.empty_like(out), np.zeros(len(paths), bool)
    ordered[index], good[index] = out, ok
    return ordered[:, :-n_classes], ordered[:, -n_classes:], good
