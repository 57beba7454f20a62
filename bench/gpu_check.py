"""Every GPU figure that plans a Kaggle session, in one run of about 8 minutes on one GPU: one
table, printed and written to bench/results/<GPU>_<date>.txt with the versions and the command.

- Training: images/s, peak memory and the fraction of the card's peak of the kit's whole step
  (bench.train_step's measure) at 448 px, batch 64, random weights, for the default model and
  eva_x_base_patch16 (a line says when the kit cannot build it), in four modes: bf16 compiled,
  bf16 eager, fp16 eager with the gradient scaler and the attention kernels a T4 gets (SDPA
  restricted to memory-efficient and math: flash attention needs compute capability 8.0),
  and fp32 eager (matmuls as TF32) as the floor.
- Fraction of peak: FLOPs of one image's forward and backward pass counted by
  torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions and attention; elementwise
  work is not counted) x images/s / the card's dense peak at the mode's precision
  (bench/gpus.py).
- Predict: the predict stage's Scorer (default settings) on full-size JPEG films, against the
  model alone on uint8 images in memory; the model alone at fp16 with the T4's attention too.
- The time plan's constants (kit/training/timing.py): FORWARD_SPEEDUP = the Scorer on stored-size films
  (what validation reads) / the training step in the kit's default mode; FILM_SLOWDOWN = the
  Scorer on stored-size / on full-size films.
- The generate stage's training and sampling images/s at the study's size (128 px, width 64,
  batch 64, sampled 256 at a time in 25 steps, bf16 where the card has it).
- On a card of bench/gpus.py's table: the T4 x2 estimate of each model (bench.gpus.t4_estimate).

    bash bench/gpu_check.sh                # on a GPU
    bash bench/gpu_check.sh --cpu-smoke    # the same code on the CPU: tiny model, small films
"""
import argparse
import contextlib
import io
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a script: python bench/gpu_check.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench import common, generate, gpus, predict, train_step
from kit import env, io as kit_io
from kit.config import Config, loss_kwargs
from kit.data.images import header_size, store_all
from kit.data.loaders import worker_count
from kit.errors import KitError
from kit.models.inference import inference_batch
from kit.models.model import create_model
from kit.models.precision import allow_tf32, autocast_dtype
from kit.stages.generate import SAMPLE_BATCH
from kit.training import timing
from kit.training.distributed import World
from kit.training.losses import build_loss
from kit.training.trainer import compiles

RESULTS = Path(__file__).resolve().parent / "results"
EVA_X = "eva_x_base_patch16"
T4_ATTENTION = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]  # flash attention needs sm80+


@dataclass(frozen=True)
class Mode:
    name: str
    precision: str
    compile: bool
    t4_attention: bool = False


MODES = (Mode("bf16 compiled", "bf16", True), Mode("bf16 eager", "bf16", False),
         Mode("fp16 eager, T4 attention", "fp16", False, True), Mode("fp32 eager", "fp32", False))

KIT = Config()  # the kit's defaults: the model, its size, the study's generator
# what one run measures: on a GPU sized to about 8 minutes, on the CPU to seconds
SETTINGS = {
    "gpu": dict(models=f"{KIT.model},{EVA_X}", img_size=KIT.img_size, batch=64, updates=5,
                repeats=2, films=256, film_shape=common.FILM_SHAPE, resize=KIT.resize,
                predict_images=1024,
                generator=["--size", str(KIT.gen_size), "--width", str(KIT.gen_width), "--batch",
                           str(KIT.gen_batch), "--sample-batch", str(SAMPLE_BATCH["cuda"]), "--steps", str(KIT.gen_steps),
                           "--updates", "10", "--repeats", "2"]),
    "cpu-smoke": dict(models=f"{train_step.CPU_MODEL},{EVA_X}", img_size=28, batch=2, updates=1, repeats=1,
                      films=2, film_shape=(300, 240), resize=64, predict_images=4,
                      generator=["--size", "32", "--width", "8", "--batch", "2", "--sample-batch", "2",
                                 "--steps", "2", "--updates", "1", "--repeats", "1"]),
}


def attention(mode: Mode):
    return sdpa_kernel(T4_ATTENTION) if mode.t4_attention else contextlib.nullcontext()


def skipped(mode: Mode, device) -> str:
    """Why `mode` cannot run on this device, or ''."""
    runs = train_step.precisions(device)
    if mode.precision not in runs:
        return f"this {device.type} runs {', '.join(runs)}"
    if mode.compile and device.type != "cuda":
        return "compiling takes minutes on a CPU"
    return ""


def buildable(arch, img_size, device) -> "tuple[float, str]":
    """(FLOPs of one image's forward and backward pass, '') or (nan, why the kit cannot build it)."""
    try:
        model = create_model(arch, train_step.CLASSES, img_size, 0.0, "none")
    except KitError as e:
        return float("nan"), str(e).split(";")[0]  # the kit's message, less its hints
    except Exception as e:  # a model that exists but fails to build must not stop the others
        return float("nan"), f"{type(e).__name__}: {e}".splitlines()[0][:160]
    criterion = build_loss(torch.zeros(1, train_step.CLASSES).numpy(), **loss_kwargs(Config())).to(device)
    flops = train_step.step_flops(model.to(device), criterion, img_size, device, None)
    del model
    train_step.free(device)
    return flops, ""


def train_rows(arch, flops, s, world, tmp) -> list:
    """One row per mode: images/s, peak GiB, % of the card's peak."""
    base = Config(model=arch, img_size=s["img_size"], pretrained="none", workers=1, seed=0)
    args = SimpleNamespace(updates=s["updates"], repeats=s["repeats"])
    rows = []
    for mode in MODES:
        row = {"what": f"train {arch}", "model": arch, "setting": f"{mode.name}, batch {s['batch']}", "mode": mode,
               "gflops_per_image": flops / 1e9}
        why = skipped(mode, world.device)
        if why:
            row["note"] = f"skipped: {why}"
        else:
            with attention(mode):
                got = train_step.measure(base, world, mode.precision, s["batch"], mode.compile, False, args, tmp)
            row.update(value=got.get("images_per_s"), unit="img/s", peak_gib=got.get("peak_gib"),
                       note=got.get("note", ""))
            peak = train_step.peak_tflops(world.device, mode.precision, 0)
            if peak and row["value"]:
                row["pct_peak"] = 100 * flops * row["value"] / (peak * 1e12)
        print(f"  {row['what']} {row['setting']}: {common.cell(row.get('value'))} img/s {row['note']}", flush=True)
        rows.append(row)
    return rows


def forward_rows(arch, s, device) -> list:
    """The model alone on uint8 images in memory: the kit's default precision, and fp16 with the
    T4's attention kernels (what the T4 estimate scales)."""
    ckpt = predict.random_checkpoint(arch, s["img_size"])
    cfg = Config(model=arch, img_size=s["img_size"])
    batch = inference_batch(cfg.batch_size, device)
    rows = [{"what": f"model alone {arch}", "model": arch, "alone": True, "setting": f"amp {cfg.amp}, batch {batch}", "unit": "img/s",
             "value": common.median(predict.model_rates(ckpt, batch, cfg.amp, s["predict_images"], device,
                                                        s["repeats"]))}]
    if "fp16" in train_step.precisions(device):
        with sdpa_kernel(T4_ATTENTION):
            rate = predict.model_rates(ckpt, batch, "fp16", s["predict_images"], device, s["repeats"])
        rows.append({"what": f"model alone {arch}", "model": arch, "alone": True, "setting": f"fp16, T4 attention, batch {batch}",
                     "unit": "img/s", "value": common.median(rate), "t4_forward": True})
    return rows


def predict_rows(arch, s, device, tmp) -> list:
    """The predict stage's images/s on full-size films and on the same films as the separate
    stage stores them (shorter side --resize), which validation reads."""
    ckpt = predict.random_checkpoint(arch, s["img_size"])
    # workers: the stage's default, every core (at most 8)
    cfg = Config(model=arch, img_size=s["img_size"], workers=env.cpu_count(), resize=s["resize"])
    full = common.write_films(tmp / "full", s["films"], *s["film_shape"])
    stored = [tmp / "stored" / p.name for p in full]
    store_all(list(zip(full, stored)), cfg.resize, env.cpu_count(), desc=None)
    rows = []
    for name, films in (("full-size", full), ("stored", stored)):
        paths = [films[i % len(films)] for i in range(s["predict_images"])]
        (rates,) = predict.stage_rates(paths, ckpt, [cfg], s["repeats"])
        width, height = header_size(films[0])
        rows.append({"what": f"predict stage {arch}, {name} films", "unit": "img/s", "value": common.median(rates),
                     "setting": f"{height}x{width}, amp {cfg.amp}, batch {inference_batch(cfg.batch_size, device)}, "
                                f"{worker_count(cfg.workers)} workers", "films": name, "model": arch})
    return rows


def constant_rows(arch, rows, device) -> list:
    """The time plan's constants from `arch`'s rows, beside the values kit/training/timing.py holds."""
    precision, compiled = train_step.precision_name(autocast_dtype("auto", device)), compiles("auto", device)
    mine = [r for r in rows if r.get("model") == arch and r.get("value")]
    step = next((r["value"] for r in mine if "mode" in r and r["mode"].precision == precision
                 and r["mode"].compile == compiled), None)
    alone = next((r["value"] for r in mine if r.get("alone") and not r.get("t4_forward")), None)
    full, stored = (next((r["value"] for r in mine if r.get("films") == f), None) for f in ("full-size", "stored"))
    default = f"training {precision} {'compiled' if compiled else 'eager'} (the kit's default here)"
    ratios = [("FORWARD_SPEEDUP: stored-film inference / training step", stored, step, default,
               f"kit/training/timing.py: {timing.FORWARD_SPEEDUP}"),
              ("model alone / training step", alone, step, default, ""),
              ("FILM_SLOWDOWN: stored / full-size film inference", stored, full, "",
               f"kit/training/timing.py: {timing.FILM_SLOWDOWN}"),
              ("predict stage on full-size films / model alone", full, alone, "", "")]
    return [{"what": what, "unit": "x", "value": a / b, "setting": setting, "note": note}
            for what, a, b, setting, note in ratios if a and b]


def generator_rows(s, device) -> list:
    args = generate.parse_args(s["generator"])
    dtype = autocast_dtype("auto", device)
    _, train, sample, _, _ = generate.kit_rates(args, device, dtype)
    setting = f"{args.size} px, width {args.width}, {train_step.precision_name(dtype)}"
    return [{"what": "generator training", "setting": f"{setting}, batch {args.batch}", "unit": "img/s",
             "value": common.median(train)},
            {"what": "generator sampling", "setting": f"{setting}, {args.steps} steps, batch {args.sample_batch}",
             "unit": "img/s", "value": common.median(sample)}]


def t4_rows(card, train, forward) -> list:
    """The T4 x2 estimate of each model measured at fp16 with the T4's attention, or a line why not."""
    gpu = gpus.lookup(card)
    if gpu is None or "fp16" not in gpu.tflops:
        return [{"what": "T4 x2 estimate", "note": f"skipped: {card} is not in bench/gpus.py's table"}]
    compute, bandwidth = gpus.ratios_to_t4(gpu)
    rows = []
    for t in train:
        f16 = next((f for f in forward if f.get("model") == t["model"] and f.get("t4_forward")), None)
        if not (t["mode"].t4_attention and t.get("value") and f16):
            continue
        est = gpus.t4_estimate(t["value"], f16["value"], compute, bandwidth)
        arch = t["model"]
        basis = f"this card / T4: {compute:.1f}x fp16 TFLOPS, {bandwidth:.1f}x bandwidth"
        for key, what, unit in (("train_img_s", "training", "img/s"),
                                ("epochs_per_session", f"epochs of {gpus.TRAIN_FILMS:,} films in "
                                                       f"{gpus.SESSION_HOURS} h", "epochs"),
                                ("predict_min", f"predict, {gpus.TEST_FILMS:,} films", "min")):
            rows.append({"what": f"T4 x2 estimate {arch}, {what}", "unit": unit, "value": est["slow"][key],
                         "setting": basis, "note": f"slow bound; fast bound {common.cell(est['fast'][key])}"})
    return rows or [{"what": "T4 x2 estimate", "note": "skipped: no fp16 row was measured"}]


def nvidia_smi() -> str:
    """The first GPU's memory, driver and power limit, which torch does not report ('' without
    nvidia-smi)."""
    if not shutil.which("nvidia-smi"):
        return ""
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,power.limit",
                           "--format=csv,noheader"], capture_output=True, text=True)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""


def section(what, run) -> list:
    """run()'s rows, or one row saying how it failed: one part that breaks must not lose the
    figures of the others."""
    try:
        return run()
    except Exception as e:
        note = f"failed: {type(e).__name__}: {e}".splitlines()[0][:160]
        print(f"{what} {note}", flush=True)
        return [{"what": what, "note": note}]


def card_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {common.cpu_model()}"


def result_path(out_dir, card, now) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", card).strip("-")
    return Path(out_dir) / f"{slug}_{now:%Y-%m-%dT%H%MZ}.txt"


COLUMNS = [("what", "what"), ("setting", "setting"), ("value", "value"), ("unit", "unit"),
           ("peak_gib", "peak GiB"), ("pct_peak", "% of peak"), ("note", "")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="a tiny model on the CPU: checks the code, "
                    "measures nothing worth keeping")
    ap.add_argument("--models", default="", help="comma-separated timm names (default: the kit's model "
                    f"and {EVA_X}); the first also runs the predict stage and gives the constants")
    ap.add_argument("--batch", type=int, default=0, help="training batch of every mode (default: 64, the "
                    "kit's pick on an 80 GB card; lower it where fp32 runs out of memory)")
    ap.add_argument("--out-dir", default="", help="where the table goes (default: bench/results on a GPU, "
                    "a temporary folder with --cpu-smoke)")
    args = ap.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        ap.error("no CUDA GPU here: run on a GPU, or pass --cpu-smoke to check the code on the CPU")
    s = SETTINGS["cpu-smoke" if args.cpu_smoke else "gpu"]
    s = {**s, "batch": args.batch or s["batch"]}
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    models = [m for m in (args.models or s["models"]).split(",") if m]
    allow_tf32()  # as the train stage does
    world, mach, card = World(device=device), common.machine(), card_name(device)
    now, started = datetime.now(timezone.utc), time.perf_counter()
    lines = [f"bench.gpu_check | {card} | {now:%Y-%m-%d %H:%M} UTC | PyTorch {torch.__version__} (CUDA "
             f"{torch.version.cuda or '-'}), timm {timm.__version__} | {common.describe(mach)}",
             f"command: python -m bench.gpu_check {' '.join(argv if argv is not None else sys.argv[1:])}",
             "FLOPs: torch.utils.flop_counter.FlopCounterMode, one image's forward and backward pass; % of "
             "peak against bench/gpus.py's dense peak at each mode's precision (fp32 as TF32)"]
    if device.type == "cuda":
        lines.insert(1, f"nvidia-smi: {nvidia_smi()}")
    header = "\n".join(lines)
    print(header, flush=True)

    rows, forward, stage, predicted = [], [], [], None
    with tempfile.TemporaryDirectory(prefix="bench-gpu-check-") as tmp:
        tmp = Path(tmp)
        for arch in models:
            flops, why = buildable(arch, s["img_size"], device)
            if why:
                print(f"skipped {arch}: {why}", flush=True)
                rows.append({"what": f"train {arch}", "note": f"skipped: {why}"})
                continue
            rows += train_rows(arch, flops, s, world, tmp)
            forward += section(f"model alone {arch}", lambda: forward_rows(arch, s, device))
            if predicted is None:  # the first model that builds
                predicted, stage = arch, section(f"predict stage {arch}", lambda: predict_rows(arch, s, device, tmp))
            print(f"  {arch} done at {time.perf_counter() - started:.0f} s", flush=True)
    rows += forward + stage
    if predicted:
        rows += constant_rows(predicted, rows, device)
    rows += section("generator", lambda: generator_rows(s, device))
    rows += t4_rows(card, [r for r in rows if "mode" in r], forward)
    seconds = time.perf_counter() - started

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        common.print_table(f"GPU check: {card}, {seconds:.0f} s", rows, COLUMNS)
        common.emit("gpu_check", common.round_floats({
            "card": card, "torch": torch.__version__, "seconds": seconds,
            "rows": [{k: (v.name if isinstance(v, Mode) else v) for k, v in r.items()} for r in rows]}), mach)
    table, line = out.getvalue().rstrip("\n").rsplit("\n", 1)
    path = result_path(args.out_dir or (tempfile.gettempdir() if args.cpu_smoke else RESULTS), card, now)
    path.parent.mkdir(parents=True, exist_ok=True)
    kit_io.write_text(f"{header}\n{table}\n{line}\n", path)
    print(f"{table}\n\nwritten to {path}\n{line}")


if __name__ == "__main__":
    main()
