"""Images/s, peak memory and model FLOPs utilization of the kit's full training step.

A step is what `Trainer.train_epoch` does per optimizer update: the uint8 batch to the device
and normalized there, forward and loss under autocast, backward (scaled for float16),
gradient clipping, AdamW with layer decay, the EMA update and the schedule. The batches come
ready-made from memory (decoding is bench.loader's part), through the kit's own loader.

First every batch size at every precision the device supports, neither compiled nor
checkpointed; then, at the kit's default precision and batch, --compile and
--grad-checkpointing each way. The kit's defaults (--amp auto, the batch that --batch-size auto
picks, --compile auto: on for GPUs, no checkpointing) are compared with the best. On a GPU,
MFU = FLOPs of one step (counted with torch.utils.flop_counter) x steps/s / the device's
dense peak at that precision (bench/gpus.py's table of known GPUs, or --peak-tflops). On a CPU it
runs EVA-02 tiny at 56 px, without compiling (minutes on two cores: --compile off,on).

    python -m bench.train_step [--model eva02_base_patch14_448 --img-size 448]
                               [--batch-sizes 16,32,64] [--precisions bf16,fp32]
"""
import argparse
import contextlib
import gc
import io
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/train_step.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from bench import common, gpus
from kit.config import Config, loss_kwargs
from kit.models.model import create_model
from kit.models.precision import allow_tf32, autocast_dtype
from kit.stages.train import batch_sizes, trainer_kwargs
from kit.training.distributed import World
from kit.training.losses import build_loss
from kit.training.trainer import Trainer, compiles

CLASSES = 5
DISTINCT_IMAGES = 64
# on a CPU: the configured model's family (EVA-02: rotary embeddings, SDPA) at its smallest
CPU_MODEL, CPU_IMG_SIZE = "eva02_tiny_patch14_224", 56
AMP = {"bf16": "bf16", "fp16": "fp16", "fp32": "off"}  # precision -> --amp


class MemoryDataset(Dataset):
    """XrayDataset-shaped training items held in memory: (uint8 [1,S,S], target, index, ok)."""

    def __init__(self, n, img_size, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.n = n
        self.images = torch.randint(0, 256, (min(n, DISTINCT_IMAGES), 1, img_size, img_size),
                                    dtype=torch.uint8, generator=g)
        self.targets = (torch.rand(len(self.images), CLASSES, generator=g) < 0.3).float()

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        i = index % len(self.images)
        return self.images[i], self.targets[i], index, True


def precisions(device) -> list:
    """The autocast precisions the device runs natively (bf16 on Ampere+ or CPUs with bf16 units)."""
    if device.type == "cuda":
        native_bf16 = torch.cuda.get_device_capability(device) >= (8, 0)
        return (["bf16"] if native_bf16 else []) + ["fp16", "fp32"]
    return (["bf16"] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else []) + ["fp32"]


def precision_name(dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def peak_tflops(device, precision, override):
    """Dense peak of the device at `precision`: --peak-tflops, else the table, else None."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    tf32 = torch.get_float32_matmul_precision() != "highest" and torch.cuda.get_device_capability(device) >= (8, 0)
    key = "tf32" if precision == "fp32" and tf32 else precision
    gpu = gpus.lookup(name)
    return gpu.tflops.get(key) if gpu else None


def step_flops(model, criterion, img_size, device, dtype) -> float:
    """FLOPs of the forward and backward pass of one image (what MFU counts; the optimizer
    and the recomputation of --grad-checkpointing are not model FLOPs)."""
    x = torch.randn(1, 3, img_size, img_size, device=device)
    y = torch.zeros(1, CLASSES, device=device)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = criterion(model(x), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def say(row):
    result = row.get("note") or f"{row['images_per_s']:.1f} img/s" + (
        f", {row['peak_gib']:.1f} GiB" if "peak_gib" in row else "")
    print(f"  {row['precision']} batch {row['batch']} compile {'on' if row['compile'] else 'off'} "
          f"grad ckpt {'on' if row['ckpt'] else 'off'}: {result}", flush=True)


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(base, world, precision, batch, compile, checkpointing, args, tmp) -> dict:
    """One configuration: median images/s of `args.repeats` epochs after one warm-up epoch, and
    the peak GPU memory. 'out of memory' when the step does not fit at this batch."""
    row = {"precision": precision, "batch": batch, "compile": compile, "ckpt": checkpointing}
    cfg = Config(**{**base.to_dict(), "amp": AMP[precision], "compile": "on" if compile else "off",
                    "grad_checkpointing": checkpointing, "effective_batch": batch})
    trainer = None
    try:
        torch.manual_seed(0)
        model = create_model(cfg.model, CLASSES, cfg.img_size, cfg.drop_path, "none").to(world.device)
        model.set_grad_checkpointing(checkpointing)
        data = MemoryDataset(batch * args.updates, cfg.img_size)
        trainer = Trainer(world, model, build_loss(data.targets.numpy(), **loss_kwargs(cfg)).to(world.device),
                          data, batch, 1, **trainer_kwargs(cfg))
        rates = []
        for epoch in range(1 + args.repeats):
            with contextlib.redirect_stdout(io.StringIO()):  # progress lines, a back-off notice
                stats = trainer.train_epoch(tmp / "last.pth", "bench")
            if trainer.batch != batch:  # the trainer backed off after running out of memory
                raise torch.OutOfMemoryError
            trainer.end_epoch({})
            if epoch:
                rates.append(stats["images_per_s"])
        row["images_per_s"] = common.median(rates)
        if compile and not trainer.compiled:
            row["note"] = "compiling failed: ran not compiled"
        if world.device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(world.device) / 2**30
    except torch.OutOfMemoryError:
        row["note"] = "out of memory"
    except Exception as e:  # one configuration that fails (a compiler error) must not lose the others
        row["note"] = f"failed: {type(e).__name__}: {e}".splitlines()[0][:160]
    finally:
        del trainer
        if compile:
            torch._dynamo.reset()
        free(world.device)
    return row


def defaults_for(device) -> dict:
    cfg = Config()
    if device.type == "cuda":
        return dict(model=cfg.model, img_size=cfg.img_size, batch_sizes="16,32,64,128", compile="off,on",
                    updates=5)
    return dict(model=CPU_MODEL, img_size=CPU_IMG_SIZE, batch_sizes="8,32", compile="off",
                updates=2)


def parse_args(argv, device):
    d = defaults_for(device)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=d["model"], help="timm model (random weights)")
    ap.add_argument("--img-size", type=int, default=d["img_size"])
    ap.add_argument("--batch-sizes", default=d["batch_sizes"], help="comma-separated; the kit's "
                    "default batch is always added")
    ap.add_argument("--precisions", default="", help="comma-separated among bf16, fp16, fp32 "
                    "(default: all the device runs natively)")
    ap.add_argument("--compile", default=d["compile"], choices=("off", "on", "off,on"))
    ap.add_argument("--grad-checkpointing", default="off,on", choices=("off", "on", "off,on"))
    ap.add_argument("--updates", type=int, default=d["updates"], help="optimizer updates per timed epoch")
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the device's dense peak, for MFU "
                    "(default: from the bench's table of GPUs)")
    args = ap.parse_args(argv)
    supported = precisions(device)
    args.precisions = [p for p in args.precisions.split(",") if p] or supported
    unknown = [p for p in args.precisions if p not in supported]
    if unknown:
        ap.error(f"--precisions {','.join(unknown)}: this {device.type} runs {', '.join(supported)}")
    args.compile = [v == "on" for v in args.compile.split(",")]
    args.grad_checkpointing = [v == "on" for v in args.grad_checkpointing.split(",")]
    return args


def kit_default(base, world):
    """(precision, batch, compiled) the train stage would pick here, and the FLOPs of one
    image's step."""
    dtype = autocast_dtype(base.amp, world.device)
    model = create_model(base.model, CLASSES, base.img_size, 0.0, "none").to(world.device)
    criterion = build_loss(torch.zeros(1, CLASSES).numpy(), **loss_kwargs(base)).to(world.device)
    batch, _, compiled = batch_sizes(base, world, model, criterion, CLASSES, None,
                                      compiles(base.compile, world.device))
    flops = step_flops(model, criterion, base.img_size, world.device, dtype)
    del model
    free(world.device)
    return precision_name(dtype), batch, compiled, flops


def sweep(base, world, batches, default, args) -> list:
    """Every batch size at every precision; then compile and checkpointing at the default
    (precision, batch)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as tmp:
        tmp = Path(tmp)
        if False in args.compile and False in args.grad_checkpointing:
            for precision in args.precisions:
                for batch in batches:
                    rows.append(measure(base, world, precision, batch, False, False, args, tmp))
                    say(rows[-1])
        precision, batch = default
        for compile in args.compile:
            for ckpt in args.grad_checkpointing:
                if compile or ckpt:
                    rows.append(measure(base, world, precision, batch, compile, ckpt, args, tmp))
                    say(rows[-1])
    return rows


def score(rows, default_key, flops, device, peak_override):
    """Add MFU, the ratio to the best row and the default flag to each row."""
    fitted = [r for r in rows if "images_per_s" in r]
    top = max((r["images_per_s"] for r in fitted), default=float("nan"))
    for r in rows:
        r["default"] = (r["precision"], r["batch"], r["compile"], r["ckpt"]) == default_key
        if "images_per_s" in r:
            r["vs_best"] = r["images_per_s"] / top
            peak = peak_tflops(device, r["precision"], peak_override)
            if peak:
                r["mfu"] = flops * r["images_per_s"] / (peak * 1e12)


def main(argv=None):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args = parse_args(argv, device)
    allow_tf32()  # as the train stage does
    world = World(device=device)
    base = Config(model=args.model, img_size=args.img_size, pretrained="none", workers=1, seed=0)
    mach = common.machine()
    default_precision, default_batch, default_compile, flops = kit_default(base, world)
    print(f"bench.train_step | {common.describe(mach)} | {args.model} at {args.img_size}px, {CLASSES} classes, "
          f"{flops / 1e9:.2f} GFLOPs per image per step | kit default: {default_precision}, batch "
          f"{default_batch}, {'compiled' if default_compile else 'not compiled'}, no checkpointing")

    rows = sweep(base, world, sorted(set(common.int_list(args.batch_sizes)) | {default_batch}),
                 (default_precision, default_batch), args)
    score(rows, (default_precision, default_batch, default_compile, False), flops, device, args.peak_tflops)
    table = [{**r, "compile": "on" if r["compile"] else "off", "ckpt": "on" if r["ckpt"] else "off",
              "mfu": 100 * r["mfu"] if "mfu" in r else None, "default": "<- default" if r["default"] else "",
              "note": r.get("note", "")}
             for r in rows]
    common.print_table(f"training step, median of {args.repeats} epochs of {args.updates} updates", table,
                       [("precision", "precision"), ("batch", "batch"), ("compile", "compile"),
                        ("ckpt", "grad ckpt"), ("images_per_s", "img/s"), ("peak_gib", "peak GiB"),
                        ("mfu", "MFU %"), ("vs_best", "vs best"), ("default", ""), ("note", "")])
    default = next((r for r in rows if r["default"]), {})
    best = max((r for r in rows if "images_per_s" in r), key=lambda r: r["images_per_s"], default={})
    if default and best:
        print(f"\nkit default: {default['images_per_s']:.1f} img/s, {default['vs_best']:.2f} of the best "
              f"({best['precision']}, batch {best['batch']}, compile {'on' if best['compile'] else 'off'}, "
              f"grad ckpt {'on' if best['ckpt'] else 'off'})")
    common.emit("train_step", common.round_floats({
        "model": args.model, "img_size": args.img_size, "device": device.type,
        "gflops_per_image": flops / 1e9, "default": default, "best": best, "rows": rows}), mach)


if __name__ == "__main__":
    main()
