"""A model's outputs over a loader: raw logits (validation) and probabilities in dataset order,
optionally averaged with the horizontal flip (evaluate, predict)."""
import numpy as np
import torch

from kit.data import to_input
from kit.precision import autocast_dtype
from kit.progress import progress as report


def _batches(model, loader, device, mean, std, amp, flips, progress):
    """(index, [float32 CPU outputs, one per flip], ok) for each batch of the loader."""
    device = torch.device(device)
    dtype = autocast_dtype(amp, device)
    model.eval()
    batches = report(loader, len(loader), progress, unit="batch") if progress else loader
    with torch.inference_mode():
        for images, _, index, ok in batches:
            x = to_input(images, mean, std, device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                outs = [model(x.flip(-1) if flip else x).float().cpu() for flip in flips]
            yield index.numpy(), outs, ok.numpy()


def logits(model, loader, device, mean, std, amp="auto", progress=None):
    """(index, logits float32 [n, C], ok) for the rows the loader yields, in its order."""
    parts = list(_batches(model, loader, device, mean, std, amp, (False,), progress))
    if not parts:
        return np.zeros(0, int), np.zeros((0, 0), np.float32), np.zeros(0, bool)
    index, outs, ok = zip(*parts)
    return np.concatenate(index), torch.cat([o[0] for o in outs]).numpy(), np.concatenate(ok)


def predict(model, loader, device, mean, std, amp="auto", tta=False, progress=None):
    """(probs float [N, C] in dataset order, NaN rows where ok is False; ok bool [N]).

    tta averages the probabilities of the image and its horizontal flip. progress: a label to
    show progress under, or None for none."""
    n = len(loader.dataset)
    probs, seen_ok = None, np.zeros(n, bool)
    flips = (False, True) if tta else (False,)
    for index, outs, ok in _batches(model, loader, device, mean, std, amp, flips, progress):
        p = torch.stack([o.sigmoid() for o in outs]).mean(0).numpy()
        if probs is None:
            probs = np.full((n, p.shape[1]), np.nan)
        probs[index] = np.where(ok[:, None], p, np.nan)
        seen_ok[index] = ok
    return (probs if probs is not None else np.zeros((0, 0))), seen_ok
