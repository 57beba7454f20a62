"""Per-device batch size and gradient accumulation that keep the effective batch.

`--batch-size auto` probes the GPU: a real forward and backward pass at the training image
size, halving from the largest useful batch until it fits with room left for the optimizer
state and the EMA. Out of memory later on, `back_off` halves the batch (or less) and multiplies
the accumulation to match, so the effective batch (and the learning-rate schedule) stays the same.
"""

import torch

from kit.config import settings
from kit.errors import KitError

CPU_BATCH = 32  # CPU memory is rarely the limit there; larger batches only add latency
MEMORY_USE = 0.9  # fraction of GPU memory a probe may fill
STATE_COPIES = 3  # AdamW's two moments and the EMA, each one float32 copy of the weights


def sizes(world_size, batch_size, accum, effective_batch, probe=None):
    """(per-device batch, accumulation steps) from --batch-size, --accum, --effective-batch.

    probe(start) -> the largest batch <= start that fits; needed for --batch-size auto on GPU.
    With auto, the fewest accumulation steps whose share of --effective-batch fits, and the
    batch nearest that share: exact where the devices divide it, else close (63 of 64 on 3
    GPUs), never a whole extra round of accumulation (126)."""
    target = effective_batch
    if batch_size == "auto":
        start = max(1, round(target / world_size))
        batch = probe(start) if probe else min(start, CPU_BATCH)
    else:
        batch = settings.count(batch_size, "--batch-size")
    if accum != "auto":
        return batch, settings.count(accum, "--accum")
    if batch_size != "auto":
        return batch, max(1, round(target / (batch * world_size)))
    accum = 1  # the fewest steps whose share of the target fits in `batch`
    while round(target / (accum * world_size)) > batch:
        accum += 1
    return max(1, round(target / (accum * world_size))), accum


def probe_batch(model, criterion, img_size, num_classes, device, dtype, start, step=None):
    """Largest power-of-two fraction of `start` whose training step fits in GPU memory.

    step: the forward pass training will run (`model` compiled, which needs about two thirds of
    the memory of the plain one; default: `model`). Errors other than out of memory propagate."""
    total = torch.cuda.get_device_properties(device).total_memory
    state = STATE_COPIES * sum(p.numel() * 4 for p in model.parameters())
    buffers = {k: v.clone() for k, v in model.named_buffers()}  # batch-norm statistics, if any
    batch = start
    try:
        while batch >= 1:
            # not `step or model`: a compiled module has no truth value (its len() raises)
            fits = _try_batch(model if step is None else step, criterion, batch, img_size, num_classes, device,
                              dtype)
            model.zero_grad(set_to_none=True)
            if fits and torch.cuda.max_memory_allocated(device) + state <= MEMORY_USE * total:
                break
            batch //= 2
    finally:  # the probe's random images leave no trace, even when compiling failed
        model.zero_grad(set_to_none=True)
        model.load_state_dict(buffers, strict=False)
    if batch >= 1:
        return batch
    raise KitError(f"one {img_size}px image does not fit in GPU memory for training; lower "
                   f"--img-size or add --grad-checkpointing")


def _try_batch(step, criterion, batch, img_size, num_classes, device, dtype) -> bool:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        x = torch.randn(batch, 3, img_size, img_size, device=device)
        y = torch.zeros(batch, num_classes, device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            criterion(step(x), y).backward()
        return True
    except torch.OutOfMemoryError:
        return False


def back_off(batch, accum):
    """The largest batch that divides this one and is at most half of it, with the
    accumulation raised to match: the same effective batch in less memory."""
    if batch == 1:
        raise KitError("out of GPU memory at batch 1; lower --img-size or add --grad-checkpointing "
                       "(rerun resumes from the last checkpoint)")
    smaller = max(d for d in range(1, batch // 2 + 1) if batch % d == 0)
    return smaller, accum * (batch // smaller)
