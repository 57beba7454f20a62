"""Probabilities of weights files over a fixed list of images: the one inference path of the
soup, evaluate and predict stages."""
import time

import numpy as np
import torch

from kit import layout, settings
from kit.data import XrayDataset, make_loader, worker_count
from kit.errors import KitError
from kit.infer import predict
from kit.model import load_model
from kit.precision import Autocast, autocast_dtype

GPU_BATCH, CPU_BATCH = 64, 32


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batch_size(cfg, on: torch.device) -> int:
    """The training batch when one was given; inference needs no more memory than training."""
    given = settings.count(cfg.batch_size, "--batch-size")
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

    def __init__(self, image_lists: dict, img_size, cfg, shorter_side=0):
        self.device = device()
        self.cfg = cfg
        self.loaders = {name: make_loader(XrayDataset(paths, None, img_size, shorter_side=shorter_side),
                                          batch_size(cfg, self.device), shuffle=False,
                                          workers=worker_count(cfg.workers), seed=cfg.seed)
                        for name, paths in image_lists.items()}
        self.images_per_s = float("nan")
        self._model, self._built_for = None, None

    def _load(self, ckpt):
        """The checkpoint's model; built once, later checkpoints of the same shape only load weights."""
        shape = (ckpt["arch"], len(ckpt["classes"]), ckpt["img_size"])
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
            model = torch.nn.DataParallel(Autocast(model, autocast_dtype(self.cfg.amp, self.device)))
        start = time.perf_counter()
        probs, ok = predict(model, self.loaders[images], self.device, ckpt["mean"], ckpt["std"],
                            amp=self.cfg.amp, tta=self.cfg.tta, progress=desc)
        self.images_per_s = len(ok) / max(time.perf_counter() - start, 1e-9)
        return probs, ok

    def describe(self) -> str:
        gpus = torch.cuda.device_count()
        where = f"{gpus} GPU{'s' if gpus > 1 else ''}" if gpus else "CPU"
        loader = next(iter(self.loaders.values()))
        return (f"{where}, batch {loader.batch_size}, {loader.num_workers} workers, "
                f"amp {self.cfg.amp}, tta {'on' if self.cfg.tta else 'off'}")
