"""The training input pipeline against the study notebook's, per worker process.

Both read the same images, stored by the separate stage (grey JPEGs, shorter side 512, from
generated films), and deliver batches of augmented 448x448 images to the GPU:

- kit: `XrayDataset(aug="strong")` (decode, one composed affine warp, lookup-table tone,
  CLAHE and dropout on uint8), `make_loader`, then `to_input` (normalize on the GPU);
- notebook: a Dataset that opens the zip archive of the images for every item, decodes with
  PIL to RGB and applies torchvision's Resize, RandomRotation, RandomAffine, ColorJitter,
  ToTensor and Normalize in the worker, then copies the batch to the GPU.

`--pipeline validation` measures the validation and inference input instead: the kit's decode
and area resize, the notebook's Resize, ToTensor and Normalize.

Without a GPU the kit's side ends at the uint8 batch: normalizing is the model device's work
(bench.train_step counts it in the step), not the loader's.

Same batch size, shuffling and worker count on both sides; they take turns within each
repetition (an epoch over the images with a fresh loader, timed from its first batch on, so
that worker start-up, paid once per training run, does not weigh on a short bench epoch), and
the main process uses one thread, so that images/s per worker is per core.

    python -m bench.loader [--images 512] [--workers 0,1,2] [--repeats 3] [--batch 32] [--pipeline validation]
"""
import argparse
import io
import sys
import tempfile
import time
import zipfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/loader.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from bench import common
from kit import env
from kit.config import Config
from kit.data.images import store_all
from kit.data.loaders import XrayDataset, make_loader, to_input

CLASSES = 5
# films drawn at half size with half the grain: stored at 512 they match full-size films
# (the separate stage's area shrink averages grain away) and take a quarter of the time to draw
SOURCE_SHAPE, SOURCE_GRAIN = (1250, 1000), common.GRAIN / 2


class NotebookDataset(Dataset):
    """The study notebook's Dataset: its training transform, or with augment=False its
    validation one."""

    def __init__(self, archive, names, targets, size, mean, std, augment=True):
        self.archive, self.names, self.targets = archive, names, targets
        random = [T.RandomRotation(15), T.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.9, 1.1)),
                  T.ColorJitter(brightness=0.2, contrast=0.2)] if augment else []
        self.transform = T.Compose([T.Resize((size, size)), *random, T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        with zipfile.ZipFile(self.archive) as z:
            img = Image.open(io.BytesIO(z.read(self.names[i]))).convert("RGB")
        return self.transform(img), torch.from_numpy(self.targets[i])


def stored_images(folder, n, resize):
    """n images stored by the separate stage from generated films; their paths."""
    films = common.write_films(folder / "films", n, *SOURCE_SHAPE, grain=SOURCE_GRAIN)
    jobs = [(str(p), str(folder / "stored" / p.name)) for p in films]
    store_all(jobs, resize, workers=env.cpu_count(), desc="[bench] storing")
    return [Path(dst) for _, dst in jobs]


def zip_archive(paths, archive):
    with zipfile.ZipFile(archive, "w") as z:  # the default: stored, JPEGs do not deflate
        for p in paths:
            z.write(p, p.name)
    return archive


def steady_rate(batches, finish) -> float:
    """Images/s from the first batch's arrival to the end of the epoch: worker start-up is paid
    once per run (the kit's workers persist across epochs), not once per batch."""
    first, n = None, 0
    for images in batches:
        if first is None:
            first = time.perf_counter()
        else:
            n += len(images)
    finish()
    return n / (time.perf_counter() - first)


def kit_epoch(paths, targets, args, workers, mean, std, device) -> float:
    aug = "strong" if args.pipeline == "training" else None
    loader = make_loader(XrayDataset(paths, targets, args.img_size, aug=aug, seed=0),
                         args.batch, shuffle=True, workers=workers)
    batches = (to_input(images, mean, std, device) if device.type == "cuda" else images
               for images, _, _, _ in loader)
    return steady_rate(batches, finish=lambda: synchronize(device))


def notebook_epoch(archive, names, targets, args, workers, mean, std, device) -> float:
    notebook = NotebookDataset(archive, names, targets, args.img_size, mean, std, args.pipeline == "training")
    loader = DataLoader(notebook, batch_size=args.batch, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda")
    batches = (images.to(device, non_blocking=True) for images, _ in loader)
    return steady_rate(batches, finish=lambda: synchronize(device))


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    cfg = Config()
    cores = env.cpu_count()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--workers", default=",".join(map(str, sorted({0, 1, 2, cores}))),
                    help="comma-separated loader worker counts (default: 0, 1, 2 and all cores)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--img-size", type=int, default=cfg.img_size)
    ap.add_argument("--resize", type=int, default=cfg.resize, help="shorter side of the stored images")
    ap.add_argument("--pipeline", default="training", choices=("training", "validation"),
                    help="training: strong augmentation; validation: the validation and inference input")
    args = ap.parse_args(argv)
    if args.images < 2 * args.batch:
        ap.error("--images must hold at least two batches: the rate is timed from the first batch on")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pretrained = timm.models.get_pretrained_cfg(cfg.model)
    mean, std = pretrained.mean, pretrained.std
    mach = common.machine()

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        tmp = Path(tmp)
        paths = stored_images(tmp, args.images, args.resize)
        archive = zip_archive(paths, tmp / "images.zip")
        names = [p.name for p in paths]
        targets = np.eye(CLASSES, dtype=np.float32)[np.arange(len(paths)) % CLASSES]
        kib = np.mean([p.stat().st_size for p in paths]) / 1024
        h, w = cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE).shape
        print(f"bench.loader | {common.describe(mach)} | {len(paths)} stored {h}x{w} grey JPEGs "
              f"({kib:.0f} KiB each) -> {args.img_size}x{args.img_size}, {args.pipeline} input, "
              f"batch {args.batch}, batches end on the {'GPU' if device.type == 'cuda' else 'CPU'}")
        rows, figures = [], {"kit": {}, "notebook": {}, "kit_per_worker": {}, "notebook_per_worker": {},
                             "ratio": {}}
        for workers in common.int_list(args.workers):
            kit, notebook = [], []
            for _ in range(args.repeats):
                kit.append(kit_epoch(paths, targets, args, workers, mean, std, device))
                notebook.append(notebook_epoch(archive, names, targets, args, workers, mean, std, device))
            k, nb, procs = common.median(kit), common.median(notebook), max(workers, 1)
            rows.append({"workers": workers, "kit": k, "notebook": nb, "kit_w": k / procs,
                         "notebook_w": nb / procs, "ratio": k / nb})
            figures["kit"][workers], figures["notebook"][workers] = k, nb
            figures["kit_per_worker"][workers], figures["notebook_per_worker"][workers] = k / procs, nb / procs
            figures["ratio"][workers] = k / nb

    common.print_table(f"images/s from the first batch on, median of {args.repeats} epochs "
                       f"(workers 0: in the main process)", rows,
                       [("workers", "workers"), ("kit", "kit img/s"), ("notebook", "notebook img/s"),
                        ("ratio", "ratio"), ("kit_w", "kit img/s/worker"),
                        ("notebook_w", "notebook img/s/worker")])
    common.emit("loader", common.round_floats({
        "images": args.images, "stored": f"{h}x{w}", "img_size": args.img_size, "pipeline": args.pipeline,
        "batch": args.batch,
        "repeats": args.repeats, "device": device.type, **figures}), mach)


if __name__ == "__main__":
    main()
