"""A generated dataset in the Grand X-Ray Slam layout, so the whole study runs anywhere.

train1.csv carries every column of the real file; train1/*.jpg are synthetic films: two
dark lung fields in a brighter body, with a drawn sign per finding (a dark apex for
pneumothorax, a wide heart for cardiomegaly, patches for opacity, a fluid level for
effusion, tubes for support devices), so a model can really learn them. The five study
classes come in the study's proportions; some rows carry other findings or lateral views
so the metadata filter has work to do, and some carry several findings or none. A sample
submission shaped like the real one (Image_name and the 14 findings) and test1/ (frontal and
lateral films) mimic the competition's test set: `--demo --task competition` submits to it.
`--demo --synthetic` runs the synthetic-data study on it (kit/stages/synthetic_demo.py).
"""
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from kit.data import smoke
from kit.data.images import encode_jpeg
from kit.data.sources import gxs
from kit.io import atomic_path, write_csv

# the study's images per class: 4543 : 3527 : 2131 : 1194 : 1059
PROPORTIONS = {"Lung Opacity": 4543, "Support Devices": 3527, "Pleural Effusion": 2131,
               "Cardiomegaly": 1194, "Pneumothorax": 1059}
FRONTAL_IMAGES = 640
TEST_IMAGES = 48
HEIGHT, WIDTH = 288, 320

# CPU-sized settings; flags the user passes explicitly win over these. Without pretrained weights
# a plain ViT (eva02_tiny) stays at the class priors for the few hundred updates a CPU affords;
# LeViT's convolutional stem learns the drawn signs within them. No layer-wise decay from scratch.
# Light augmentation: through the strong one, a model from scratch on 450 images stalls for some
# seeds within these 160 updates (the README gives the figures); the strong recipe is for
# pretrained weights and real datasets. Not compiled: compiling costs more than its epochs take.
TRAIN_OVERRIDES = dict(
    dataset="gxs", resize=128, model="levit_128s", img_size=112, pretrained="none",
    epochs=6, batch_size="16", effective_batch=16, lr=5e-4, layer_decay=1.0, warmup_epochs=0.5,
    drop_path=0.0, aug="light", bootstrap=200, compile="off",
)


def _body(rng) -> np.ndarray:
    img = np.full((HEIGHT, WIDTH), 150, np.float32)
    for cx in (0.3, 0.7):
        cv2.ellipse(img, (int(cx * WIDTH), int(0.45 * HEIGHT)), (int(0.16 * WIDTH), int(0.32 * HEIGHT)),
                    0, 0, 360, 60, -1)
    cv2.ellipse(img, (int(0.53 * WIDTH), int(0.62 * HEIGHT)), (int(0.09 * WIDTH), int(0.1 * HEIGHT)),
                0, 0, 360, 170, -1)
    noise = cv2.GaussianBlur(rng.normal(0, 25, (HEIGHT, WIDTH)).astype(np.float32), (0, 0), 3)
    return img + noise


def _draw(img, finding, rng):
    side = rng.choice([0.3, 0.7])
    cx = int(side * WIDTH)
    if finding == "Pneumothorax":
        cv2.ellipse(img, (cx, int(0.2 * HEIGHT)), (int(0.14 * WIDTH), int(0.1 * HEIGHT)), 0, 180, 360, 5, -1)
    elif finding == "Cardiomegaly":
        cv2.ellipse(img, (int(0.52 * WIDTH), int(0.62 * HEIGHT)), (int(0.2 * WIDTH), int(0.17 * HEIGHT)),
                    0, 0, 360, 200, -1)
    elif finding == "Lung Opacity":
        for _ in range(rng.integers(3, 6)):
            c = (cx + int(rng.integers(-30, 30)), int(rng.uniform(0.3, 0.7) * HEIGHT))
            cv2.circle(img, c, int(rng.integers(10, 18)), 185, -1)
    elif finding == "Pleural Effusion":
        top = int(rng.uniform(0.62, 0.7) * HEIGHT)
        cv2.rectangle(img, (cx - int(0.16 * WIDTH), top), (cx + int(0.16 * WIDTH), int(0.8 * HEIGHT)), 210, -1)
    elif finding == "Support Devices":
        x = int(rng.uniform(0.45, 0.55) * WIDTH)
        cv2.line(img, (x, 0), (x + int(rng.integers(-15, 15)), int(0.75 * HEIGHT)), 255, 3)
        cv2.rectangle(img, (int(0.12 * WIDTH), 20), (int(0.2 * WIDTH), 40), 255, -1)
    else:  # another finding: a faint mark unrelated to the targets
        cv2.circle(img, (int(rng.uniform(0.2, 0.8) * WIDTH), int(0.9 * HEIGHT)), 8, 230, -1)


def film(findings, rng, lateral=False) -> np.ndarray:
    img = _body(rng)
    if lateral:
        img = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
        img = cv2.resize(img, (WIDTH, HEIGHT))
    for f in findings:
        _draw(img, f, rng)
    return np.clip(img, 0, 255).astype(np.uint8)


def _rows(rng):
    """(findings, view) per image: target images by the study's proportions plus distractors."""
    total = sum(PROPORTIONS.values())
    rows = [([c], "frontal") for c, n in PROPORTIONS.items() for _ in range(round(FRONTAL_IMAGES * n / total))]
    others = [f for f in gxs.FINDINGS if f not in PROPORTIONS and f != "No Finding"]
    extra = FRONTAL_IMAGES // 10
    rows += [(["No Finding"], "frontal") for _ in range(extra)]
    rows += [([rng.choice(others)], "frontal") for _ in range(extra)]
    rows += [(list(rng.choice(list(PROPORTIONS), 2, replace=False)), "frontal") for _ in range(extra // 2)]
    rows += [([rng.choice(list(PROPORTIONS))], "lateral") for _ in range(extra)]
    rows += [([], "frontal") for _ in range(extra // 4)]  # no finding marked at all, not even No Finding
    return [rows[i] for i in rng.permutation(len(rows))]


def _test_rows(rng):
    """The competition's test set: every view, one finding, several, or none."""
    targets = list(PROPORTIONS)
    rows = []
    for i in range(TEST_IMAGES):
        kind = i % 8
        findings = ([] if kind == 0 else list(rng.choice(targets, 2, replace=False)) if kind == 1
                    else [rng.choice(targets)])
        rows.append((findings, "lateral" if kind in (2, 5) else "frontal"))
    return rows


def _write_jpeg(img, path: Path):
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode_jpeg(img))


def generate(root: Path, seed: int = 0) -> Path:
    """Write the demo dataset under `root` (kept when already complete); returns train1.csv."""
    csv_path = root / "train1.csv"
    if csv_path.exists():  # written last, so the folder is complete
        return csv_path
    rng = np.random.default_rng(seed)
    records, patient, left = [], 0, 0
    for i, (findings, view) in enumerate(_rows(rng)):
        if left == 0:
            patient, left = patient + 1, int(rng.integers(1, 5))
        left -= 1
        name = f"demo_{i:05d}.jpg"
        _write_jpeg(film(findings, rng, lateral=view == "lateral"), root / "train1" / name)
        position = "Lateral" if view == "lateral" else rng.choice(["AP", "PA"])
        record = {"Image_name": name, "Patient_ID": f"P{patient:05d}", "Study": f"S{i:05d}",
                  "Sex": rng.choice(["M", "F"]), "Age": int(rng.integers(20, 90)),
                  "ViewCategory": "Lateral" if view == "lateral" else "Frontal", "ViewPosition": position}
        record.update({f: int(f in findings) for f in gxs.FINDINGS})
        records.append(record)
    test = []
    for i, (findings, view) in enumerate(_test_rows(rng)):
        name = f"test_{i:05d}.jpg"
        _write_jpeg(film(findings, rng, lateral=view == "lateral"), root / "test1" / name)
        test.append({"Image_name": name, **{c: 0.5 for c in gxs.FINDINGS}})
    write_csv(pd.DataFrame(test), root / "sample_submission_1.csv")
    write_csv(pd.DataFrame(records), csv_path)
    return csv_path


def defaults(task, smoke_run) -> dict:
    """The demo's CPU-sized settings, where a --smoke run (`smoke_run`) sets none of its own."""
    short = smoke.defaults(task) if smoke_run else {}
    return {k: v for k, v in TRAIN_OVERRIDES.items() if k not in short}


def data_dir(work) -> str:
    """Where the demo's dataset goes when --data-dir leaves it open."""
    return str(Path(work) / "demo_data")


def prepare(folder):
    """The demo's dataset, generated into `folder`."""
    csv_path = generate(Path(folder))
    print(f"[demo] dataset in the Grand X-Ray Slam layout: {csv_path.parent}")


# the synthetic-data study on the demo data -------------------------------------------------------

RARE_CLASSES = 2
# CPU-sized generator (flags the user passes win): 32 px, a 32-channel UNet (1.0M parameters), 40
# epochs of batches of 8 of the 81 demo train images of the two rarest classes (400 updates, a
# higher rate than the study's for so few), 20 sampling steps. It predicts the clean image: a
# noise-predicting one still samples saturated noise after 150 updates, this one films with the
# class's signs after 70; 400 rather than 150 updates halve synth-quality's Frechet distance
GENERATOR_OVERRIDES = dict(gen_size=32, gen_width=32, gen_batch=8, gen_lr=1e-3, gen_epochs=40, gen_target="sample",
                           gen_steps=20)


def rarest_classes(n=RARE_CLASSES) -> list:
    return sorted(PROPORTIONS, key=PROPORTIONS.get)[:n]
