"""A small finished training run in a work dir (split tables, stored images, epoch checkpoints,
history.csv) for the soup, evaluate and predict tests: no training needed."""
import contextlib
import dataclasses
import functools
import io
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from kit import layout
from kit.config import Config
from kit.models.model import checkpoint_dict, create_model, norm_stats, save_weights
from kit.stages import evaluate, soup

ARCH, IMG_SIZE = "test_vit", 32  # timm's own 0.3M-parameter test ViT: quick to build and save
STUDY_ARCH, STUDY_IMG_SIZE = "eva02_tiny_patch14_224", 28  # the recipe's family, where it matters
CLASSES = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax"]
SPLIT_SIZES = {"train": 9, "val": 24, "test": 24}


def film(rng, k) -> np.ndarray:
    """A 40x36 grayscale image whose brightness pattern depends on class k."""
    img = rng.normal(110, 30, (40, 36))
    img[:, 12 * k:12 * k + 12] += 60
    return np.clip(img, 0, 255).astype(np.uint8)


def write_splits(work: Path, classes=CLASSES, seed=0):
    """Single-label split tables and their stored JPEGs; returns {split: table}."""
    rng = np.random.default_rng(seed)
    tables = {}
    for split, n in SPLIT_SIZES.items():
        truth = np.arange(n) % len(classes)
        rows = []
        for i, k in enumerate(truth):
            file = f"images/{split}_{i:03d}.jpg"
            path = layout.image_path(work, file)
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), film(rng, k))
            rows.append(dict(image_id=f"{split}_{i:03d}.jpg", patient_id=f"{split}{i // 2}", view="PA",
                             path=str(path), label=classes[k], file=file,
                             **{c: int(j == k) for j, c in enumerate(classes)}))
        tables[split] = pd.DataFrame(rows)
        layout.split_csv(work, split).parent.mkdir(parents=True, exist_ok=True)
        tables[split].to_csv(layout.split_csv(work, split), index=False)
    return tables


@functools.lru_cache
def initial_weights(arch, n_classes, img_size, seed):
    """(state dict, mean, std) of a freshly initialized model; built once per session."""
    torch.manual_seed(seed)
    model = create_model(arch, n_classes, img_size)
    return model.state_dict(), *norm_stats(model)


def write_checkpoints(work: Path, epochs=(1, 2, 3), classes=CLASSES, arch=ARCH, img_size=IMG_SIZE, seed=0,
                      seen_patients=None):
    """Epoch checkpoints of one 'run': shared weights plus a per-epoch drift; returns {epoch: path}."""
    base, mean, std = initial_weights(arch, len(classes), img_size, seed)
    paths = {}
    for epoch in epochs:
        g = torch.Generator().manual_seed(seed * 100 + epoch)
        sd = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
              for k, v in base.items()}
        ckpt = checkpoint_dict(sd, arch=arch, classes=classes, img_size=img_size, mean=mean, std=std,
                               epoch=epoch, metric=0.5, seen_patients=seen_patients)
        paths[epoch] = layout.epoch_checkpoint(work, epoch)
        save_weights(ckpt, paths[epoch])
    history = pd.DataFrame({"epoch": list(epochs), "train_loss": [0.5 / e for e in epochs],
                            "val_loss": [0.6 / e for e in epochs],
                            "val_macro_auc": [0.6 + 0.05 * e for e in epochs],
                            **{f"val_auc_{c}": [0.55 + 0.04 * e + 0.01 * j for e in epochs]
                               for j, c in enumerate(classes)},
                            "lr": [1e-3] * len(epochs), "images_per_s": [100.0] * len(epochs)})
    history.to_csv(layout.history_csv(work), index=False)
    return paths


def finished_run(work: Path, epochs=(1, 2, 3), arch=ARCH, img_size=IMG_SIZE):
    tables = write_splits(work)
    seen = layout.patient_hashes(pd.concat([tables["train"], tables["val"]]))
    return write_checkpoints(work, epochs, arch=arch, img_size=img_size, seen_patients=seen)


_evaluated = {}


def evaluated_run(tmp_path_factory):
    """(config, printed output) of a finished run after its soup and evaluate stages; built once
    per test session. The config is a copy: change it freely."""
    if not _evaluated:
        work = tmp_path_factory.mktemp("evaluated") / "work"
        finished_run(work)
        cfg = Config(work_dir=str(work), workers=0, epochs=3, bootstrap=200)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            soup.run(cfg)
            evaluate.run(cfg)
        _evaluated.update(cfg=cfg, printed=printed.getvalue())
    return dataclasses.replace(_evaluated["cfg"]), _evaluated["printed"]


def plain_timm_probs(weights, grays, flip=False) -> np.ndarray:
    """Independent of the kit's inference path: timm's own model and checkpoint loader, the
    normalization written out, on uint8 images already at the model's input size."""
    import timm
    import timm.models

    ckpt = torch.load(weights, weights_only=False)
    model = timm.create_model(ckpt["arch"], num_classes=len(ckpt["classes"]), img_size=ckpt["img_size"])
    timm.models.load_checkpoint(model, str(weights))
    x = np.stack(grays).astype(np.float64) / 255.0
    x = torch.tensor(np.stack([(x - m) / s for m, s in zip(ckpt["mean"], ckpt["std"])], 1), dtype=torch.float32)
    with torch.no_grad():
        return model.eval()(x.flip(-1) if flip else x).sigmoid().numpy()


def youden(y, p) -> float:
    """The threshold maximizing sensitivity + specificity - 1 over every cut of `p` (brute force)."""
    cuts = np.unique(p)
    called = p[None, :] >= cuts[:, None]
    j = (called & (y == 1)).sum(1) / (y == 1).sum() + (~called & (y == 0)).sum(1) / (y == 0).sum()
    return float(cuts[::-1][np.argmax(j[::-1])])  # of equal ones, the highest, as roc_curve's order gives
