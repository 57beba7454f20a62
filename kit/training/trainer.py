"""One training run's moving parts (model, EMA, optimizer, scaler, schedule, data order), its
loop over optimizer updates and epochs, and the files each epoch writes (`EpochFiles`).

Position in the run is (epochs done, samples of this epoch done, updates done). The data
order, each image's augmentation and the random numbers of each update are functions of that
position and the seed, so a run resumed from `state_dict()` continues exactly where it was.
"""
import contextlib
import math
import time

import numpy as np
import pandas as pd
import torch
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from kit import layout
from kit.data.loaders import EpochSampler, make_loader, to_input, worker_count
from kit.errors import KitError
from kit.io import write_csv, write_json
from kit.models.model import checkpoint_dict, norm_stats, save_weights
from kit.models.precision import autocast_dtype, grad_scaler
from kit.progress import progress
from kit.training import batching, distributed, session, timing
from kit.training.loop import SAVE_EVERY_S, Loop, Position
from kit.training.optim import build_optimizer, build_scheduler

RATE_WARMUP, RATE_UPDATES = 2, 10  # the rate is timed after compiling and the loaders' start
MAX_BAD_UPDATES = 10  # non-finite gradients in a row before giving up
# what a param group holds of the recipe (--lr, --layer-decay, --weight-decay): a resumed run takes
# this run's, as its resume line says, with the saved moments
GROUP_RECIPE = ("initial_lr", "lr_scale", "weight_decay")


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


class Trainer(Position):
    def __init__(self, world, model, criterion, train_set, batch, accum, state=None, compiled=None, *, epochs,
                 seed, workers, amp, compile, clip_grad, ema_decay, ema_warmup, optimizer, warmup_epochs, min_lr,
                 recipe, time_limit, work):
        """compiled: whether to compile the step (None: as --compile `compile` decides for this
        device). The keywords: the run's settings of those names (the train stage's
        trainer_kwargs); `optimizer`: build_optimizer's, `recipe`: resume.recipe's, saved with the
        state."""
        self.world, self.model, self.criterion = world, model, criterion
        self.epochs, self.seed, self.workers, self.clip_grad = epochs, seed, workers, clip_grad
        self.warmup_epochs, self.min_lr, self.recipe = warmup_epochs, min_lr, recipe
        self.time_limit, self.work = time_limit, work
        self.train_set, self.batch, self.accum = train_set, batch, accum
        self.mean, self.std = norm_stats(model)
        # on the device once: a list copied there each update would wait for the GPU each time
        self._norm = tuple(torch.tensor(v, device=world.device) for v in (self.mean, self.std))
        self.dtype = autocast_dtype(amp, world.device)
        self.scaler = grad_scaler(self.dtype, world.device)
        self.effective = batch * accum * world.size
        self.updates_per_epoch = len(train_set) // self.effective
        if self.updates_per_epoch == 0:
            raise KitError(f"the train split has {len(train_set)} images, fewer than one effective "
                           f"batch of {self.effective}; lower --effective-batch")
        self.optimizer = build_optimizer(model, **optimizer)
        self.scheduler = self._scheduler()
        self.ema = ModelEmaV3(model, decay=ema_decay, use_warmup=ema_warmup)
        self.start_position()
        self.bad_in_row = 0
        self.schedule = None  # --epochs auto: how the schedule was fitted to the time (resumed with it)
        if state:
            self.load_state_dict(state)
        self.scheduler.step_update(self.updates)
        self._wrap(compiles(compile, world.device) if compiled is None else compiled)
        self.sampler = EpochSampler(len(train_set), self.updates_per_epoch * self.effective,
                                    seed, world.rank, world.size)
        self.loader = self._loader()
        self.loop = Loop(world, self._save_state, "checkpoints/last.pth", self._session_ends,
                         save_every_s=SAVE_EVERY_S)
        self._state_file = None  # (path, signature) of last.pth: train_epoch's
        # called with this session's measured training images/s, once the first updates ran and
        # again with the validation images/s after each epoch
        self.on_rate = None
        self._session_updates, self._rate_start = 0, None

    def _wrap(self, compiled):
        """The step's network: data-parallel over several processes, compiled or not."""
        self.ddp = None
        if self.world.size > 1:
            gpu = [self.world.device.index] if self.world.device.type == "cuda" else None
            # gradients as views of the all-reduce buckets: no second copy of them in GPU memory
            self.ddp = DistributedDataParallel(self.model, device_ids=gpu, gradient_as_bucket_view=True)
        net = self.ddp or self.model
        self.compiled = compiled
        self.net = torch.compile(net, dynamic=False) if compiled else net  # as the batch probe ran it
        # until a compiled update succeeds: what a failed one may have changed (batch-norm statistics)
        self._unproven = {k: v.clone() for k, v in self.model.named_buffers()} if compiled else None

    # state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.module.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                **self.position(), "batch": self.batch, "accum": self.accum, "world_size": self.world.size,
                "recipe": self.recipe, "schedule": self.schedule}

    def load_state_dict(self, state):
        if state["batch"] * state["accum"] * state["world_size"] != self.effective:
            raise KitError(f"last.pth was trained with an effective batch of "
                           f"{state['batch'] * state['accum'] * state['world_size']}, now {self.effective}; "
                           f"pass the same --effective-batch to resume, or --force to start over")
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        recipe = [{k: g[k] for k in GROUP_RECIPE if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, settings in zip(self.optimizer.param_groups, recipe):  # the moments resume, not the recipe
            group.update(settings)
        if state["scaler"]:  # empty when saved without float16 scaling
            self.scaler.load_state_dict(state["scaler"])
        self.load_position(state)
        self.schedule = state.get("schedule")

    def refit(self, schedule: dict):
        """The schedule to end after `schedule["epochs"]`. The updates so far ran in warmup, which is
        the same for any length, so the run goes on as if planned so."""
        self.schedule, self.epochs = schedule, schedule["epochs"]
        self.scheduler = self._scheduler()
        self.scheduler.step_update(self.updates)

    def _scheduler(self):
        return build_scheduler(self.optimizer, self.updates_per_epoch, self.epochs, self.warmup_epochs, self.min_lr)

    def _session_ends(self, where, state) -> session.TimeUp:
        """The time limit ends this session: a fitted schedule counts it (the next one fits what is
        left to the sessions left), before the state is saved."""
        if self.schedule:
            self.schedule["ended_sessions"] += 1
        return session.time_up(self.time_limit, self.work, where, state)

    def _save_state(self):
        if self.world.is_main:
            path, signature = self._state_file
            save_weights({**self.state_dict(), "signature": signature}, path)

    # training ------------------------------------------------------------------------------

    def _loader(self):
        self.sampler.set_position(self.epoch, self.offset)
        return make_loader(self.train_set, self.batch, shuffle=False,
                           workers=worker_count(self.workers, self.world.size),
                           seed=self.seed, drop_last=True, sampler=self.sampler)

    def train(self, files, validate, val_images, say=print):
        """Train to `epochs` (--epochs auto may change it on the way: refit). Each epoch: train,
        `validate()` the EMA (its metrics on `val_images` images), write the epoch's `files`, last
        of all last.pth, and print the epoch line."""
        with self.loop.running(say):
            while self.epoch < self.epochs:
                row = self._epoch(files, validate, val_images)
                if self.world.is_main:
                    files.write_epoch(self)
                # last: a run killed before this redoes the epoch and rewrites all of the above
                eta = self.loop.end_epoch(self.epochs - self.epoch)
                say(epoch_line(row, files.classes, self.epochs, eta))
        if self.world.is_main:
            files.finished()

    def _epoch(self, files, validate, val_images) -> dict:
        """Train and validate one epoch; its history row."""
        epoch_start = time.perf_counter()
        try:
            stats = self.train_epoch(files.last_path, files.signature)
        except session.TimeUp:
            if self.world.is_main:  # the next stages' interim submission is made with these
                files.write_interim(self)
            raise
        val_start = time.perf_counter()
        val = validate()
        val_rate = val_images / max(time.perf_counter() - val_start, 1e-9)
        # fits the schedule, if the first updates did not; a session that resumed after the epoch's
        # last update trained none of it and measured nothing
        if self.on_rate and stats["images_per_s"]:
            self.on_rate(stats["images_per_s"], val_rate)
        lr_high, lr_low = self.last_update_lrs()
        row = {"epoch": self.epoch + 1, "train_loss": stats["train_loss"], **val, "lr": lr_high,
               "lr_lowest": lr_low, "ema_decay": self.ema.get_decay(self.updates),
               "images_per_s": stats["images_per_s"], "val_images_per_s": val_rate,
               "epoch_s": time.perf_counter() - epoch_start, "batch_size": self.batch, "accum": self.accum,
               "peak_gpu_mem_gib": peak_memory(self.world.device)}
        self.end_epoch(row)
        return row

    def train_epoch(self, last_path, signature) -> dict:
        """Train to the end of the current epoch, with resume points in `last_path` (its resume
        `signature` in it); its mean loss and this session's images/s."""
        self._state_file = (last_path, signature)
        start, start_offset = time.perf_counter(), self.offset
        if self.world.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.world.device)
        self.sampler.set_position(self.epoch, self.offset)
        batches = iter(self.loader)
        todo = range(self.offset // self.effective, self.updates_per_epoch)
        if self.world.is_main:
            todo = progress(todo, len(todo), f"epoch {self.epoch + 1}", unit="update",
                            status=lambda: f"loss {self.mean_loss():.4f}")
        for _ in todo:
            batches = self._update(batches)
            self.loop.after_update(self.epoch + 1, self.offset < self.sampler.samples_per_epoch)
        seconds = time.perf_counter() - start
        return {"train_loss": self.mean_loss(),
                "images_per_s": (self.offset - start_offset) / max(seconds, 1e-9)}

    def _update(self, batches):
        """One optimizer update; the batches to go on with (restarted after an out-of-memory
        back-off or a failed compile, which redo the update)."""
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
        return batches

    def _time_rate(self):
        self._session_updates += 1
        if self._session_updates == RATE_WARMUP:
            self._rate_start = time.perf_counter()
        elif self._session_updates == RATE_WARMUP + RATE_UPDATES and self.on_rate:
            self.on_rate(RATE_UPDATES * self.effective / max(time.perf_counter() - self._rate_start, 1e-9))

    def _accumulate(self, batches):
        """Forward and backward over `accum` micro-batches: the gradients of one update and the
        summed loss. Out of memory here, the update can be redone at a smaller batch."""
        seed = np.random.SeedSequence((self.seed, self.world.rank, self.updates)).generate_state(1)[0]
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
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad or math.inf)
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
        self.add_loss(loss)
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
            write_json({"batch": self.batch, "accum": self.accum}, layout.batch_back_off(self.work))
            raise KitError(f"out of GPU memory at batch {old} per GPU; every process restarts from the last "
                           f"saved state at batch {self.batch} x {self.accum} accumulation steps")
        print(f"[train] out of GPU memory at batch {old}: continuing with batch {self.batch} x "
              f"{self.accum} accumulation steps (same effective batch)", flush=True)
        self.loader = self._loader()
        return iter(self.loader)

    def last_update_lrs(self):
        """(highest, lowest) learning rate the last update ran at: the schedule one step back."""
        self.scheduler.step_update(max(self.updates - 1, 0))
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.scheduler.step_update(self.updates)
        return max(lrs), min(lrs)


class EpochFiles:
    """What a run writes as its epochs end: the EMA weights of each epoch (timm-loadable, with
    what the soup and the reports need), history.csv, the pruning of epoch files `keep_rule`
    lets go, and last.pth (with the run's resume `signature`); interim.pth when the time limit
    stops the run mid-epoch. Only the main process writes them."""

    def __init__(self, work, arch, img_size, classes, seen_patients, keep_rule, signature):
        self.work, self.arch, self.img_size, self.classes = work, arch, img_size, classes
        self.seen_patients, self.keep_rule, self.signature = seen_patients, keep_rule, signature
        self.last_path = layout.last_state(work)

    def ema_weights(self, trainer, metric) -> dict:
        """The EMA as a timm-loadable weights file of the epochs finished so far."""
        return checkpoint_dict(trainer.ema.module.state_dict(), arch=self.arch, classes=self.classes,
                               img_size=self.img_size, mean=trainer.mean, std=trainer.std, epoch=trainer.epoch,
                               metric=metric, seen_patients=self.seen_patients)

    def write_epoch(self, trainer):
        metric = trainer.history[-1]["val_macro_auc"]
        save_weights(self.ema_weights(trainer, metric), layout.epoch_checkpoint(self.work, trainer.epoch))
        write_csv(pd.DataFrame(trainer.history), layout.history_csv(self.work))
        prune(self.work, self.keep_rule(trainer.history))

    def write_interim(self, trainer):
        save_weights(self.ema_weights(trainer, math.nan), layout.interim_weights(self.work))

    def finished(self):
        layout.interim_weights(self.work).unlink(missing_ok=True)  # the soup of the finished run replaces it


def prune(work, keep):
    for epoch, path in layout.epoch_checkpoints(work).items():
        if epoch not in keep:
            path.unlink()


def clear_checkpoints(work):
    """A fresh run: epoch files of an earlier run would mix into this one's soup."""
    for path in layout.checkpoint_dir(work).glob("*.pth"):
        path.unlink()


def peak_memory(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan


def epoch_line(row, classes, epochs, eta) -> str:
    per_class = ", ".join(f"{c} {row[f'val_auc_{c}']:.3f}" for c in classes)
    return (f"[train] epoch {row['epoch']}/{epochs} | train loss {row['train_loss']:.4f} | val loss "
            f"{row['val_loss']:.4f} | val AUC {row['val_macro_auc']:.4f} ({per_class}) | lr "
            f"{row['lr']:.2e} | {row['images_per_s']:.0f} img/s | {timing.duration(row['epoch_s'])} | "
            f"ETA {timing.duration(eta)}")
