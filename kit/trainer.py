"""One training run's moving parts (model, EMA, optimizer, scaler, schedule, data order) and
its loop over optimizer updates.

Position in the run is (epochs done, samples of this epoch done, updates done). The data
order, each image's augmentation and the random numbers of each update are functions of that
position and the seed, so a run resumed from `state_dict()` continues exactly where it was.
"""
import contextlib
import math
import time

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from kit import batching, distributed, interrupt, layout, resume, session
from kit.data import EpochSampler, make_loader, to_input, worker_count
from kit.errors import KitError
from kit.io import write_json
from kit.model import norm_stats, save_weights
from kit.optim import build_optimizer, build_scheduler
from kit.precision import autocast_dtype, grad_scaler
from kit.progress import progress

SAVE_EVERY_S = 600  # mid-epoch resume points: a session can end at any moment
RATE_WARMUP, RATE_UPDATES = 2, 10  # the rate is timed after compiling and the loaders' start
MAX_BAD_UPDATES = 10  # non-finite gradients in a row before giving up


TRITON_SUPPORTED = (8, 0)  # Triton's README: NVIDIA GPUs of compute capability 8.0+


def compiles(setting, device) -> bool:
    """--compile auto: on GPUs that Triton supports (compute capability 8.0 and newer: not the
    T4 or the P100, where inductor still tries from 7.0 on), where fusing EVA-02's elementwise
    operations pays most; off on CPU, where compiling costs minutes for little (bench/README.md
    has both measured)."""
    if setting != "auto":
        return setting == "on"
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= TRITON_SUPPORTED


def compile_failed(error) -> str:
    """The line that says compiling failed and training goes on without it."""
    first = next((line for line in str(error).splitlines() if line.strip()), "")[:200]
    return (f"[train] torch.compile failed ({type(error).__name__}: {first}); continuing not compiled "
            f"from the same state (--compile off skips the attempt)")


class CompileFailed(Exception):
    """The compiled forward or backward pass of the first compiled update failed."""


class Trainer:
    def __init__(self, cfg, world, model, criterion, train_set, batch, accum, state=None, compiled=None):
        """compiled: whether to compile the step (None: as --compile decides for this device)."""
        self.cfg, self.world, self.model, self.criterion = cfg, world, model, criterion
        self.train_set, self.batch, self.accum = train_set, batch, accum
        self.mean, self.std = norm_stats(model)
        # on the device once: a list copied there each update would wait for the GPU each time
        self._norm = tuple(torch.tensor(v, device=world.device) for v in (self.mean, self.std))
        self.dtype = autocast_dtype(cfg.amp, world.device)
        self.scaler = grad_scaler(self.dtype, world.device)
        self.effective = batch * accum * world.size
        self.updates_per_epoch = len(train_set) // self.effective
        if self.updates_per_epoch == 0:
            raise KitError(f"the train split has {len(train_set)} images, fewer than one effective "
                           f"batch of {self.effective}; lower --effective-batch")
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.updates_per_epoch)
        self.ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
        self.epoch = self.offset = self.updates = 0
        self.loss_sum, self.loss_count, self.bad_in_row = 0.0, 0, 0
        self.history = []
        self.schedule = None  # --epochs auto: how the schedule was fitted to the time (resumed with it)
        if state:
            self.load_state_dict(state)
        self.scheduler.step_update(self.updates)
        self.ddp = None
        if world.size > 1:
            gpu = [world.device.index] if world.device.type == "cuda" else None
            # gradients as views of the all-reduce buckets: no second copy of them in GPU memory
            self.ddp = DistributedDataParallel(model, device_ids=gpu, gradient_as_bucket_view=True)
        net = self.ddp or model
        self.compiled = compiles(cfg.compile, world.device) if compiled is None else compiled
        self.net = torch.compile(net, dynamic=False) if self.compiled else net  # as the batch probe ran it
        # until a compiled update succeeds: what a failed one may have changed (batch-norm statistics)
        self._unproven = {k: v.clone() for k, v in model.named_buffers()} if self.compiled else None
        self.sampler = EpochSampler(len(train_set), self.updates_per_epoch * self.effective,
                                    cfg.seed, world.rank, world.size)
        self.loader = self._loader()
        self.last_save = time.monotonic()
        self.on_rate = None  # called once with this session's measured training images/s
        self._session_updates, self._rate_start = 0, None

    # state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.module.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "offset": self.offset, "updates": self.updates,
                "loss_sum": self.loss_sum, "loss_count": self.loss_count,
                "batch": self.batch, "accum": self.accum, "world_size": self.world.size,
                "history": self.history, "recipe": resume.recipe(self.cfg), "schedule": self.schedule}

    def load_state_dict(self, state):
        if state["batch"] * state["accum"] * state["world_size"] != self.effective:
            raise KitError(f"last.pth was trained with an effective batch of "
                           f"{state['batch'] * state['accum'] * state['world_size']}, now {self.effective}; "
                           f"pass the same --effective-batch to resume, or --force to start over")
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when saved without float16 scaling
            self.scaler.load_state_dict(state["scaler"])
        for key in ("epoch", "offset", "updates", "loss_sum", "loss_count", "history"):
            setattr(self, key, state[key])
        self.schedule = state.get("schedule")

    def refit(self, schedule: dict):
        """The schedule to end after `schedule["epochs"]` (cfg.epochs is set to it). The updates so far
        ran in warmup, which is the same for any length, so the run goes on as if planned so."""
        self.schedule, self.cfg.epochs = schedule, schedule["epochs"]
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.updates_per_epoch)
        self.scheduler.step_update(self.updates)

    def save(self, path, signature):
        if self.world.is_main:
            save_weights({**self.state_dict(), "signature": signature}, path)
        self.last_save = time.monotonic()

    # training ------------------------------------------------------------------------------

    def _loader(self):
        self.sampler.set_position(self.epoch, self.offset)
        return make_loader(self.train_set, self.batch, shuffle=False,
                           workers=worker_count(self.cfg.workers, self.world.size),
                           seed=self.cfg.seed, drop_last=True, sampler=self.sampler)

    def train_epoch(self, last_path, signature) -> dict:
        """Train to the end of the current epoch; its mean loss and this session's images/s."""
        start, start_offset = time.perf_counter(), self.offset
        if self.world.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.world.device)
        self.sampler.set_position(self.epoch, self.offset)
        batches = iter(self.loader)
        todo = range(self.offset // self.effective, self.updates_per_epoch)
        if self.world.is_main:
            todo = progress(todo, len(todo), f"epoch {self.epoch + 1}", unit="update",
                            status=lambda: f"loss {self.loss_sum / max(self.loss_count, 1):.4f}")
        for _ in todo:
            while True:
                try:
                    total = self._accumulate(batches)
                    break
                except torch.OutOfMemoryError:
                    pass  # handled below, outside the except block that still holds the tensors
                except CompileFailed as e:
                    batches = self._stop_compiling(e.__cause__)
                    continue
                batches = self._back_off()
            self._unproven = None
            loss, finite = self._step(total)
            self._account(loss, finite)
            self._time_rate()
            stop = interrupt.reason(self.world)
            if stop:
                if stop == "time" and self.schedule:  # the next session fits what is left to the sessions left
                    self.schedule["ended_sessions"] += 1
                self.save(last_path, signature)
                where = f"in epoch {self.epoch + 1}"
                raise session.time_up(self.cfg, where) if stop == "time" else interrupt.interrupted(where)
            if time.monotonic() - self.last_save >= SAVE_EVERY_S and self.offset < self.sampler.samples_per_epoch:
                self.save(last_path, signature)
        seconds = time.perf_counter() - start
        return {"train_loss": self.loss_sum / max(self.loss_count, 1),
                "images_per_s": (self.offset - start_offset) / max(seconds, 1e-9)}

    def _time_rate(self):
        self._session_updates += 1
        if self._session_updates == RATE_WARMUP:
            self._rate_start = time.perf_counter()
        elif self._session_updates == RATE_WARMUP + RATE_UPDATES and self.on_rate:
            self.on_rate(RATE_UPDATES * self.effective / max(time.perf_counter() - self._rate_start, 1e-9))

    def _accumulate(self, batches):
        """Forward and backward over `accum` micro-batches: the gradients of one update and the
        summed loss. Out of memory here, the update can be redone at a smaller batch."""
        seed = np.random.SeedSequence((self.cfg.seed, self.world.rank, self.updates)).generate_state(1)[0]
        torch.manual_seed(int(seed))  # drop-path masks: a function of the position, like the data
        device, total = self.world.device, torch.zeros((), device=self.world.device)
        self.optimizer.zero_grad(set_to_none=True)
        for i in range(self.accum):
            images, targets, _, _ = next(batches)
            x, y = to_input(images, *self._norm, device), targets.to(device, non_blocking=True)
            last = i == self.accum - 1
            with contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync():
                try:
                    with torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None):
                        loss = self.criterion(self.net(x), y) / self.accum
                    self.scaler.scale(loss).backward()
                except torch.OutOfMemoryError:
                    raise
                except Exception as e:  # compiling runs here first: a compiler's own error, any type
                    if self._unproven is None:
                        raise
                    raise CompileFailed() from e
            total += loss.detach()
        return total

    def _step(self, total):
        """Unscale, clip and step; (mean loss, gradients finite). Out of memory here is final: the
        scaler has unscaled and fused AdamW may have stepped some parameter groups already."""
        try:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad or math.inf)
            # one wait for the GPU per update: the loss and whether the gradients are finite, together
            # (gradients are all-reduced, so every rank agrees)
            loss, finite = torch.stack([distributed.mean(total, self.world), torch.isfinite(norm).float()]).tolist()
            finite = bool(finite)
            if finite or self.scaler.is_enabled():  # the scaler skips a non-finite step by itself
                self.scaler.step(self.optimizer)
        except torch.OutOfMemoryError:
            raise KitError(f"out of GPU memory in the optimizer step (batch {self.batch}); rerun with "
                           f"--grad-checkpointing or --batch-size {max(1, self.batch // 2)} (training "
                           f"resumes from the last checkpoint)") from None
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, finite

    def _account(self, loss, finite):
        self.updates += 1
        self.offset += self.effective
        self.ema.update(self.model, step=self.updates)
        self.scheduler.step_update(self.updates)
        if math.isfinite(loss):
            self.loss_sum, self.loss_count = self.loss_sum + loss, self.loss_count + 1
        self.bad_in_row = 0 if finite else self.bad_in_row + 1
        if self.bad_in_row >= MAX_BAD_UPDATES:
            raise KitError(f"{MAX_BAD_UPDATES} updates in a row had NaN or infinite gradients "
                           f"(epoch {self.epoch + 1}); the last good checkpoint is kept: lower --lr or "
                           f"use --amp off, then rerun")

    def _stop_compiling(self, error):
        """The first compiled update failed: redo it not compiled from the state before it. Nothing
        was stepped; the gradients go, the buffers are restored, the data restarts at the update."""
        self.optimizer.zero_grad(set_to_none=True)
        self.model.load_state_dict(self._unproven, strict=False)
        self.net, self.compiled, self._unproven = self.ddp or self.model, False, None
        if self.world.is_main:
            print(compile_failed(error), flush=True)
        self.loader = self._loader()
        return iter(self.loader)

    def _back_off(self):
        """Out of memory: a smaller batch, more accumulation, and the current update redone. With
        several processes the others wait in this update's all-reduce: all of them restart from
        the last saved state at the smaller batch (the process that started them reads it)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.world.device.type == "cuda":
            torch.cuda.empty_cache()
        old = self.batch
        self.batch, self.accum = batching.back_off(self.batch, self.accum)
        if self.world.size > 1:
            write_json({"batch": self.batch, "accum": self.accum}, layout.batch_back_off(self.cfg.work))
            raise KitError(f"out of GPU memory at batch {old} per GPU; every process restarts from the last "
                           f"saved state at batch {self.batch} x {self.accum} accumulation steps")
        print(f"[train] out of GPU memory at batch {old}: continuing with batch {self.batch} x "
              f"{self.accum} accumulation steps (same effective batch)", flush=True)
        self.loader = self._loader()
        return iter(self.loader)

    def end_epoch(self, row):
        self.history.append(row)
        self.epoch += 1
        self.offset, self.loss_sum, self.loss_count = 0, 0.0, 0

    def last_update_lrs(self):
        """(highest, lowest) learning rate the last update ran at: the schedule one step back."""
        self.scheduler.step_update(max(self.updates - 1, 0))
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.scheduler.step_update(self.updates)
        return max(lrs), min(lrs)
