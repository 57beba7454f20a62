"""Inference images/s of the predict stage: batch size, mixed precision, loader workers and
test-time augmentation, each varied alone from the kit's defaults.

The path is the stage's own (`kit.models.inference.Scorer`: XrayDataset decode and area resize in
the loader's workers, or in the main process on a CPU-only machine, then `infer.predict` with
uint8 batches normalized on the device) over generated full-size test films, random weights.
Films are decoded as the separate stage stores images (reduced-size JPEG decode, area shrink
to --resize); the "full-size decode" row decodes every pixel first, as a plain loader would.
One more row runs the model alone on images already in memory at the input size: the gap to
it is what decoding costs. TTA and precision change the probabilities; batch size and
workers do not. Each worker decodes whole batches, so a row with fewer than two batches per
worker leaves workers idle and says so: such a figure is not the stage's rate on a real test
set. --images can exceed the films written: the list cycles over --films distinct ones.

    python -m bench.predict [--model eva02_base_patch14_448 --img-size 448] [--images 64]
"""
import argparse
import contextlib
import io
import math
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/predict.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench import common
from bench.train_step import CPU_IMG_SIZE, CPU_MODEL, MemoryDataset, precision_name, precisions
from kit import env
from kit.config import Config, scorer_kwargs
from kit.data.loaders import make_loader, worker_count
from kit.models.inference import predict
from kit.models.inference import Scorer, inference_batch
from kit.models.model import checkpoint_dict, create_model, load_model, norm_stats
from kit.models.precision import allow_tf32, autocast_dtype

CLASSES = [f"class_{k}" for k in range(5)]
AMP = {"bf16": "bf16", "fp16": "fp16", "fp32": "off"}


def random_checkpoint(arch, img_size) -> dict:
    torch.manual_seed(0)
    model = create_model(arch, len(CLASSES), img_size, 0.0, "none")
    mean, std = norm_stats(model)
    return checkpoint_dict(model.state_dict(), arch=arch, classes=CLASSES, img_size=img_size, mean=mean,
                           std=std, epoch=0, metric=0.0)


def stage_rates(paths, ckpt, configs, repeats) -> list:
    """images/s of `repeats` passes of the predict stage's scorer for each configuration, after
    one warm-up pass each (loader workers started, model built, kernels chosen). The
    configurations take turns, so a drifting machine load weighs on all of them alike."""
    scorers = [Scorer({"test": paths}, ckpt["img_size"], c.resize, **scorer_kwargs(c)) for c in configs]
    rates = [[] for _ in configs]
    for i in range(1 + repeats):
        for scorer, done in zip(scorers, rates):
            with contextlib.redirect_stdout(io.StringIO()):
                scorer(ckpt, "test", None)
            if i:
                done.append(scorer.images_per_s)
    return rates


def model_rates(ckpt, batch, amp, n, device, repeats) -> list:
    """images/s of infer.predict over uint8 images held in memory at the input size."""
    model = load_model(ckpt, device)
    loader = make_loader(MemoryDataset(n, ckpt["img_size"]), batch, shuffle=False, workers=0)
    rates = []
    for i in range(1 + repeats):
        start = time.perf_counter()
        predict(model, loader, device, ckpt["mean"], ckpt["std"], amp=amp)
        if i:
            rates.append(n / (time.perf_counter() - start))
    return rates


def variations(default: Config, device, args) -> list:
    """(what changed, Config) for the default and each setting varied alone."""
    default_batch = inference_batch(default.batch_size, device)
    default_precision = precision_name(autocast_dtype(default.amp, device))
    out = [("default", default)]
    out += [(f"batch {b}", Config(**{**default.to_dict(), "batch_size": str(b)}))
            for b in common.int_list(args.batch_sizes) if b != default_batch]
    out += [(f"amp {p}", Config(**{**default.to_dict(), "amp": AMP[p]}))
            for p in precisions(device) if p != default_precision]
    out += [(f"workers {w}", Config(**{**default.to_dict(), "workers": w}))
            for w in common.int_list(args.workers) if worker_count(w) != worker_count(default.workers)]
    out.append(("tta on", Config(**{**default.to_dict(), "tta": True})))
    out.append(("full-size decode", Config(**{**default.to_dict(), "resize": 0})))
    return out


def main(argv=None):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, cores = Config(), env.cpu_count()
    on_gpu = device.type == "cuda"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=cfg.model if on_gpu else CPU_MODEL)
    ap.add_argument("--img-size", type=int, default=cfg.img_size if on_gpu else CPU_IMG_SIZE)
    ap.add_argument("--images", type=int, default=2048 if on_gpu else 64, help="predicted per pass")
    ap.add_argument("--films", type=int, default=256, help="distinct films written")
    ap.add_argument("--height", type=int, default=common.FILM_SHAPE[0], help="of the test films")
    ap.add_argument("--width", type=int, default=common.FILM_SHAPE[1])
    ap.add_argument("--batch-sizes", default="32,128" if on_gpu else "8,64", help="comma-separated")
    ap.add_argument("--workers", default=",".join(map(str, sorted({1, max(1, cores // 2)}))),
                    help="comma-separated loader workers besides the default (all cores, at most 8)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    allow_tf32()  # as the stages do
    mach = common.machine()
    default = Config(model=args.model, img_size=args.img_size, workers=cores)

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        films = common.write_films(Path(tmp), min(args.films, args.images), args.height, args.width)
        paths = [films[i % len(films)] for i in range(args.images)]
        ckpt = random_checkpoint(args.model, args.img_size)
        print(f"bench.predict | {common.describe(mach)} | {args.model} at {args.img_size}px | "
              f"{len(paths)} images a pass over {len(films)} generated {args.height}x{args.width} grey JPEG "
              f"test films")
        settings = variations(default, device, args)
        rates = stage_rates(paths, ckpt, [c for _, c in settings], args.repeats)
        rows = [{"setting": what, "batch": inference_batch(c.batch_size, device), "amp": c.amp,
                 "workers": worker_count(c.workers), "tta": "on" if c.tta else "off", "images_per_s": common.median(r)}
                for (what, c), r in zip(settings, rates)]
    default_batch = inference_batch(default.batch_size, device)
    alone = common.median(model_rates(ckpt, default_batch, default.amp, args.images, device, args.repeats))
    rows.append({"setting": "model alone (images in memory)", "batch": default_batch, "amp": default.amp,
                 "workers": 0, "tta": "off", "images_per_s": alone})
    base = rows[0]["images_per_s"]
    for r in rows:
        r["vs_default"] = r["images_per_s"] / base
        batches = math.ceil(args.images / r["batch"])
        r["note"] = f"{batches} batches for {r['workers']} workers" if batches < 2 * r["workers"] else ""
    common.print_table(f"predict stage images/s, median of {args.repeats} passes", rows,
                       [("setting", "setting"), ("batch", "batch"), ("amp", "amp"), ("workers", "workers"),
                        ("tta", "tta"), ("images_per_s", "img/s"), ("vs_default", "vs default"),
                        ("note", "")])
    common.emit("predict", common.round_floats({
        "model": args.model, "img_size": args.img_size, "images": args.images,
        "films": f"{args.height}x{args.width}", "device": device.type, "rows": rows}), mach)


if __name__ == "__main__":
    main()
