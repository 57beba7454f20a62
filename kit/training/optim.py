"""AdamW with layer-wise learning-rate decay and its cosine schedule, both timm's own.

timm groups every parameter by depth (patch embedding, cls token and position embedding at
the bottom, then each block, then the final norm and head) and stores each group's factor
layer_decay ** (depth of the head - depth of the group) as `lr_scale`; only a timm scheduler
applies it, so the optimizer and the schedule must come as a pair.
"""
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler


def build_optimizer(model, lr, weight_decay, layer_decay):
    # fused: one kernel over all the weights, the same update, faster than the default
    # per-tensor loop on CPU and GPUs
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay,
                               layer_decay=layer_decay, fused=True)


def build_scheduler(optimizer, updates_per_epoch, epochs, warmup_epochs, min_lr):
    """Linear warmup from --min-lr, then cosine down to --min-lr, stepped per optimizer update
    (call step_update(updates_done) before each update).

    Update u of the run (counting from 0) runs at: --min-lr for u = 0, --lr exactly at the end of
    warmup, --min-lr again at the last update. timm's factory fits warmup inside the cosine
    (warmup_prefix=False), which never reaches the peak and drops at the end of warmup; here the
    cosine starts where warmup ends and spans the rest of the run, ending on its last update."""
    total = epochs * updates_per_epoch
    warmup = round(warmup_epochs * updates_per_epoch)
    if warmup >= total - 1:  # a run no longer than its warmup would end at the peak: warm up over half
        warmup = total // 2
    return CosineLRScheduler(optimizer, t_initial=max(total - 1 - warmup, 1), lr_min=min_lr,
                             warmup_t=warmup, warmup_lr_init=min_lr, warmup_prefix=True,
                             t_in_epochs=False)
