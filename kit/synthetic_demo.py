"""`run.py --demo --synthetic`: the synthetic-data study end to end on the demo data, on a CPU.

The synthetic images are demo films of the two rarest classes, distorted the way an imperfect
generator's would be (blurred, flatter contrast, grainier). Then two runs of the whole study:
real images only, in <work> itself (so a finished `--demo` run there is reused, not redone),
and with the synthetic images in train.csv, in <work>/synthetic; synth-quality judges the
synthetic images with the real-only run's soup; compare puts the two runs' test results side
by side (<work>/reports/compare.csv).
"""
import dataclasses
from pathlib import Path

import cv2
import numpy as np

from kit import demo, layout
from kit.io import atomic_path

PER_CLASS = 40  # about the real train images of each rare demo class, so the default cap keeps most
RARE_CLASSES = 2


def rarest_classes(n=RARE_CLASSES) -> list:
    return sorted(demo.PROPORTIONS, key=demo.PROPORTIONS.get)[:n]


def distorted_film(finding, rng) -> np.ndarray:
    img = cv2.GaussianBlur(demo.film([finding], rng).astype(np.float32), (0, 0), rng.uniform(1.0, 2.0))
    img = 128 + (img - 128) * rng.uniform(0.6, 0.85) + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(root: Path, classes, per_class=PER_CLASS, seed=0) -> Path:
    """root/<class>/syn_NNN.png for each class (kept when already complete)."""
    rng = np.random.default_rng(seed)
    for c in classes:
        folder = root / c
        if len(list(folder.glob("*.png"))) == per_class:
            continue
        for i in range(per_class):
            with atomic_path(folder / f"syn_{i:03d}.png") as tmp:
                tmp.write_bytes(cv2.imencode(".png", distorted_film(c, rng))[1].tobytes())
    return root


def run(cfg, run_stages):
    """cfg: prepared by demo.prepare; run_stages: kit.cli.run (one config's stages)."""
    classes = rarest_classes()
    synthetic_dir = generate(cfg.work / "demo_synthetic", classes, seed=cfg.seed)
    print(f"[demo] {PER_CLASS} synthetic images each of {', '.join(classes)} in {synthetic_dir}")
    study = dataclasses.replace(cfg, demo=False, synthetic=False, stage="all")
    real = dataclasses.replace(study, synthetic_dir="")
    mixed = dataclasses.replace(study, work_dir=str(cfg.work / "synthetic"), synthetic_dir=str(synthetic_dir))
    for name, run_cfg in (("real images only", real), ("with synthetic images", mixed)):
        print(f"[demo] run {name}: {run_cfg.work}")
        run_stages(run_cfg)
    run_stages(dataclasses.replace(mixed, stage="synth-quality", weights=str(layout.soup_weights(real.work))))
    run_stages(dataclasses.replace(study, stage="compare", runs=(real.work_dir, mixed.work_dir)))
