"""Images/s of the generate stage's generator: its training update and its sampler, against the
same UNet2DModel driven the way diffusers' examples and pipelines drive it.

Training: the kit's update (`kit.training.generator.Training.update`: noise and timesteps from the
update's own generator, autocast, clipping, AdamW, warmup schedule, EMAModel) against the loop
of diffusers' train_unconditional example (the same objective, scheduler, optimizer and EMA,
full precision). Sampling: the kit's DPM-Solver++ at --steps against `DDIMPipeline(unet,
scheduler)(batch_size, num_inference_steps)`, the plain pipeline call, at its default 50 steps
and at --steps; the class labels reach the UNet through a forward pre-hook, since diffusers'
pixel-space pipelines are unconditional. Batches are demo films of two classes at --size.

    python -m bench.generate [--size 32 --width 32 --batch 8 --steps 20]   # the demo's generator
    python -m bench.generate --size 128 --width 64 --batch 64 --sample-batch 256   # a GPU, bf16
"""
import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/generate.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMPipeline, DDIMScheduler
from diffusers.optimization import get_constant_schedule_with_warmup
from diffusers.training_utils import EMAModel

from bench import common
from kit.data import demo
from kit.data.demo import GENERATOR_OVERRIDES, rarest_classes
from kit.models.precision import autocast_dtype
from kit.training import generator

PIPELINE_STEPS = 50  # DDIMPipeline's default num_inference_steps


def films(n, size, seed=0):
    """(uint8 [n, size, size] demo films of the two rarest classes, their labels)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = [cv2.resize(demo.film([rarest_classes()[k]], rng), (size, size), interpolation=cv2.INTER_AREA)
              for k in labels]
    return torch.from_numpy(np.stack(images)), torch.from_numpy(labels)


def plain_update(model, schedule, optimizer, lr, ema, images, labels, device):
    """One step of diffusers' examples/unconditional_image_generation/train_unconditional.py."""
    clean = generator.to_model_range(images).to(device)
    noise = torch.randn(clean.shape, device=device)
    t = torch.randint(0, schedule.config.num_train_timesteps, (len(clean),), device=device)
    loss = F.mse_loss(model(schedule.add_noise(clean, noise, t), t, class_labels=labels.to(device)).sample, noise)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), generator.CLIP_GRAD)
    optimizer.step()
    lr.step()
    optimizer.zero_grad()
    ema.step(model.parameters())


def plain_pipeline(model, labels, device) -> DDIMPipeline:
    """DDIMPipeline over the UNet, the class labels handed to its forward by a hook."""
    model.register_forward_pre_hook(
        lambda module, args, kwargs: (args, {**kwargs, "class_labels": labels.to(device)}), with_kwargs=True)
    pipe = DDIMPipeline(model, DDIMScheduler.from_config(generator.noise_schedule().config)).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=GENERATOR_OVERRIDES["gen_size"])
    p.add_argument("--width", type=int, default=GENERATOR_OVERRIDES["gen_width"])
    p.add_argument("--batch", type=int, default=GENERATOR_OVERRIDES["gen_batch"])
    p.add_argument("--sample-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=GENERATOR_OVERRIDES["gen_steps"])
    p.add_argument("--updates", type=int, default=10, help="updates per timed repetition")
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def kit_rates(args, device, dtype):
    """The generate stage's own update and sampler timed: (its generator.Training, training
    images/s, sampling images/s, the training batch, the sampled labels)."""
    images, labels = films(max(args.batch, args.sample_batch), args.size)
    batch = (images[:args.batch], labels[:args.batch])
    torch.manual_seed(0)
    kit = generator.Training(generator.build(2, args.size, args.width), 1e-4, 0, device, dtype)
    train = common.rates(lambda: [kit.update(*batch) for _ in range(args.updates)],
                         args.updates * args.batch, args.repeats, warmup=1)
    sampler = kit.ema_model()
    wanted = labels[:args.sample_batch]
    seeds = lambda: [generator.image_seed(0, int(k), i) for i, k in enumerate(wanted)]  # noqa: E731
    sample = common.rates(lambda: generator.sample(sampler, wanted, seeds(), args.steps, device, dtype),
                          len(wanted), args.repeats, warmup=1)
    return kit, train, sample, batch, wanted


def main(argv=None):
    args = parse_args(argv)
    mach = common.machine()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = autocast_dtype("auto", device)
    print(f"{common.describe(mach)} | UNet2DModel at {args.size}px, width {args.width}, "
          f"{str(dtype).replace('torch.', '') if dtype else 'fp32'}")
    kit, kit_train, kit_sample, batch, wanted = kit_rates(args, device, dtype)

    model = generator.build(2, args.size, args.width).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    lr = get_constant_schedule_with_warmup(optimizer, generator.WARMUP_UPDATES)
    ema = EMAModel(model.parameters(), decay=generator.EMA_DECAY, use_ema_warmup=True)
    schedule = generator.noise_schedule()
    plain_train = common.rates(lambda: [plain_update(model, schedule, optimizer, lr, ema, *batch, device)
                                        for _ in range(args.updates)],
                               args.updates * args.batch, args.repeats, warmup=1)

    pipe = plain_pipeline(kit.ema_model(), wanted, device)
    pipe_default = common.rates(lambda: pipe(len(wanted), num_inference_steps=PIPELINE_STEPS, output_type="np"),
                                len(wanted), args.repeats, warmup=1)
    pipe_same = common.rates(lambda: pipe(len(wanted), num_inference_steps=args.steps, output_type="np"),
                             len(wanted), args.repeats)

    rows = [{"what": "training, img/s", "kit": common.median(kit_train), "alt": common.median(plain_train)},
            {"what": f"sampling, img/s (DDIMPipeline {PIPELINE_STEPS} steps)", "kit": common.median(kit_sample),
             "alt": common.median(pipe_default)},
            {"what": f"sampling, img/s (DDIMPipeline {args.steps} steps)", "kit": common.median(kit_sample),
             "alt": common.median(pipe_same)}]
    for r in rows:
        r["ratio"] = r["kit"] / r["alt"]
    common.print_table(f"kit (DPM-Solver++ {args.steps} steps) against diffusers' example loop and pipeline",
                       rows, [("what", "what"), ("kit", "kit"), ("alt", "diffusers"), ("ratio", "ratio")])
    figures = {"size": args.size, "width": args.width, "batch": args.batch, "steps": args.steps,
               "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
               "train_img_s": kit_train, "train_plain_img_s": plain_train,
               "sample_img_s": kit_sample, "sample_pipeline_default_img_s": pipe_default,
               "sample_pipeline_same_steps_img_s": pipe_same,
               "train_ratio": rows[0]["ratio"], "sample_ratio_default": rows[1]["ratio"],
               "sample_ratio_same_steps": rows[2]["ratio"]}
    common.emit("generate", common.round_floats(figures), mach)


if __name__ == "__main__":
    main()
