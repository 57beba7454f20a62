"""A tiny learnable work directory (splits + stored images) and a CPU-sized training config."""
import contextlib
import io
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from kit import layout
from kit.config import Config
from kit.stages import train

CLASSES = ["Alpha", "Beta", "Gamma"]
SIZE = 40


def film(label: int, rng) -> np.ndarray:
    """Noise with a bright square whose position says the class."""
    img = rng.normal(90, 20, (SIZE, SIZE)).clip(0, 255).astype(np.uint8)
    x = 4 + 12 * label
    img[14:26, x:x + 10] = 230
    return img


def make_work(work, sizes=(("train", 32), ("val", 12)), classes=CLASSES, seed=0) -> Path:
    """Split tables and JPEGs in the layout the split stage writes; class i % C for image i."""
    work, rng = Path(work), np.random.default_rng(seed)
    for split, n in sizes:
        rows = []
        for i in range(n):
            label = i % len(classes)
            file = f"images/{split}_{i:03d}.jpg"
            path = layout.image_path(work, file)
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), film(label, rng))
            rows.append({"image_id": f"{split}{i}", "patient_id": f"{split}{i}", "view": "PA",
                         "path": str(path), "label": classes[label], "file": file,
                         **{c: int(k == label) for k, c in enumerate(classes)}})
        out = layout.split_csv(work, split)
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(out, index=False)
    return work


def tiny_cfg(work, **overrides) -> Config:
    """eva02_tiny at 28 px (2x2 patches), 4 updates of 8 images per epoch, no worker processes."""
    settings = dict(work_dir=str(work), model="eva02_tiny_patch14_224", img_size=28, pretrained="none",
                    drop_path=0.0, epochs=2, batch_size="4", accum="auto", effective_batch=8,
                    lr=1e-3, warmup_epochs=0.5, workers=0, soup_epochs="last1", bootstrap=10)
    settings.update(overrides)
    return Config(**settings)



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run as fast on one thread, and one thread does not slow down many times
    over, as OpenMP's waiting threads do, when other processes keep the cores busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_quietly(cfg) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train.run(cfg)
    return out.getvalue()


def last_state(work):
    return torch.load(layout.checkpoint_dir(work) / "last.pth", weights_only=True)
