"""Train stage: fine-tune a timm model on <work>/splits with the study's recipe (EVA-02, LLRD,
focal + BCE, AMP, EMA) and write the EMA weights of every epoch.

Each epoch: train, validate the EMA on val.csv, append a row to history.csv, write
checkpoints/epoch_NN.pth (EMA weights, timm-loadable) and checkpoints/last.pth (everything a
rerun needs to resume), prune the epoch files nobody will need. Several GPUs train
data-parallel (torch.distributed); only rank 0 writes files and prints.
"""
import math
import time
from functools import partial

import numpy as np
import pandas as pd
import torch

from kit import batching, distributed, env, inference, interrupt, layout, resume, session, settings, submission, timing
from kit.data import XrayDataset, make_loader, worker_count
from kit.errors import KitError
from kit.io import write_csv, write_json
from kit.losses import build_loss
from kit.metrics import auc_per_class, macro_auc, single_label_report
from kit.model import checkpoint_dict, create_model, init_head_prior, save_weights
from kit.precision import allow_tf32, autocast_dtype
from kit.trainer import Trainer, compile_failed, compiles

EVAL_BATCH_FACTOR = 2  # no gradients to keep: validation takes larger batches


def run(cfg):
    if distributed.should_relaunch(cfg):
        distributed.relaunch(cfg)
        if cfg.epochs == "auto" and resume.saved_schedule(layout.last_state(cfg.work)):
            resume.apply_schedule(cfg)  # as the processes fitted it
        if layout.interim_weights(cfg.work).exists():  # the processes stopped at the time limit
            raise session.time_up(cfg, "in training")
        return
    world = distributed.setup()
    try:
        train(cfg, world)
    finally:
        distributed.teardown()


def train(cfg, world):
    say = print if world.is_main else (lambda *a, **k: None)
    train_df, classes = layout.read_split(cfg.work, "train")
    val_df, val_classes = layout.read_split(cfg.work, "val")
    if val_classes != classes:
        raise KitError("train.csv and val.csv have different class columns; rerun --stage split --force")
    if world.is_main:
        warn_missing_positives(train_df, val_df, classes)
    keep_rule = keep_policy(cfg)
    last_path = layout.last_state(cfg.work)
    signature = resume.signature(cfg, classes, [layout.split_csv(cfg.work, s) for s in ("train", "val")])
    resume.take_over(cfg, last_path, signature, world)
    state = resume.load(last_path, signature, cfg.force)
    changes = resume.recipe_changes(state, cfg) if state else []
    fitting = cfg.epochs == "auto" and not (state and state.get("schedule"))
    if cfg.epochs == "auto":  # until fitted, the shortest run the soup can average
        cfg.epochs = settings.soup_needs(cfg.soup_epochs) if fitting else state["schedule"]["epochs"]
    if state and state["epoch"] >= cfg.epochs:
        if changes:
            raise KitError(f"{last_path} finished {state['epoch']} epochs with other settings "
                           f"({', '.join(changes)}); pass --force to train again with the new ones, "
                           f"or the run's own settings to use its results")
        say(f"[train] up to date: {state['epoch']} epochs done (--epochs more continues, --force retrains)")
        return
    if state:
        say(f"[train] resuming from {last_path} at epoch {state['epoch'] + 1}, "
            f"update {state['updates'] + 1}" + (f", with other settings ({', '.join(changes)})" if changes else ""))
    elif world.is_main:
        clear_checkpoints(cfg.work)

    device = world.device
    allow_tf32()
    torch.manual_seed(cfg.seed)
    roots = env.data_roots(env.platform()) + ([cfg.data_dir] if cfg.data_dir else [])
    model = create_model(cfg.model, len(classes), cfg.img_size, cfg.drop_path,
                         "none" if state else cfg.pretrained, roots).to(device)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if world.is_main and not state:
        session.warn_output_budget(cfg, model, keep_rule)
    targets = train_df[classes].to_numpy(np.float32)
    if cfg.head_init == "prior" and not state:  # a resumed run has its own weights
        init_head_prior(model, targets)
    criterion = build_loss(cfg, targets).to(device)
    batch, accum, compiled = plan_batches(cfg, world, model, criterion, len(classes), state,
                                          compiles(cfg.compile, device))

    paths = layout.image_paths(cfg.work, train_df.file)
    train_set = XrayDataset(paths, targets, cfg.img_size, cfg.aug, cfg.seed, hflip=cfg.hflip)
    trainer = Trainer(cfg, world, model, criterion, train_set, batch, accum, state, compiled)
    say(f"[train] {cfg.model} at {cfg.img_size}px on {device} x{world.size} | {len(train_df)} train, "
        f"{len(val_df)} val images | batch {batch} x {accum} accumulation x {world.size} = "
        f"{trainer.effective} | {trainer.updates_per_epoch} updates/epoch | amp "
        f"{str(trainer.dtype).replace('torch.', '') if trainer.dtype else 'off'} | "
        f"{'compiled' if trainer.compiled else 'not compiled'}")
    val_loader = make_val_loader(cfg, world, val_df, classes, batch)
    val_targets = val_df[classes].to_numpy(np.float32)
    seen_patients = layout.patient_hashes(pd.concat([train_df, val_df]))

    finish = finish_plan(cfg, val_df, len(session.most_kept(keep_rule, cfg.epochs)))
    clock = Clock(cfg, world, trainer, finish, len(val_df), say, fitting)
    trainer.on_rate = clock.measured
    session_start, session_epochs = time.perf_counter(), 0
    with interrupt.stop_after_update(say):
        while trainer.epoch < cfg.epochs:
            epoch_start = time.perf_counter()
            try:
                stats = trainer.train_epoch(last_path, signature)
            except session.TimeUp:
                if world.is_main:  # the next stages' interim submission is made with these
                    save_weights(ema_weights(trainer, cfg, classes, seen_patients, math.nan),
                                 layout.interim_weights(cfg.work))
                raise
            val_start = time.perf_counter()
            val = validate(trainer, val_loader, val_targets, classes, cfg, world)
            val_rate = len(val_df) / max(time.perf_counter() - val_start, 1e-9)
            clock.epoch_done(stats["images_per_s"], val_rate)  # fits the schedule, if the first updates did not
            lr_high, lr_low = trainer.last_update_lrs()
            epoch = trainer.epoch + 1
            row = {"epoch": epoch, "train_loss": stats["train_loss"], **val, "lr": lr_high, "lr_lowest": lr_low,
                   "ema_decay": trainer.ema.get_decay(trainer.updates),
                   "images_per_s": stats["images_per_s"], "val_images_per_s": val_rate,
                   "epoch_s": time.perf_counter() - epoch_start,
                   "batch_size": trainer.batch, "accum": trainer.accum, "peak_gpu_mem_gib": peak_memory(device)}
            trainer.end_epoch(row)
            if world.is_main:
                save_weights(ema_weights(trainer, cfg, classes, seen_patients, val["val_macro_auc"]),
                             layout.epoch_checkpoint(cfg.work, epoch))
                write_csv(pd.DataFrame(trainer.history), layout.history_csv(cfg.work))
                prune(cfg.work, keep_rule(trainer.history))
            # last: a run killed before this redoes the epoch and rewrites all of the above
            trainer.save(last_path, signature)
            session_epochs += 1
            eta = (time.perf_counter() - session_start) / session_epochs * (cfg.epochs - epoch)
            say(summary(row, classes, cfg.epochs, eta))
    if world.is_main:
        layout.interim_weights(cfg.work).unlink(missing_ok=True)  # the soup of the finished run replaces it


def ema_weights(trainer, cfg, classes, seen_patients, metric) -> dict:
    """The EMA as a timm-loadable weights file of the epochs finished so far."""
    return checkpoint_dict(trainer.ema.module.state_dict(), arch=cfg.model, classes=classes,
                           img_size=cfg.img_size, mean=trainer.mean, std=trainer.std, epoch=trainer.epoch,
                           metric=metric, seen_patients=seen_patients)


def finish_plan(cfg, val_df, epoch_files) -> timing.Finish:
    """What the stages after training will score (soup, evaluate where there is a test split,
    with the soup and `epoch_files` epoch checkpoints, predict where there is a submission to make)."""
    test_csv = layout.split_csv(cfg.work, "test")
    test = len(layout.read_split(cfg.work, "test")[0]) if test_csv.exists() else 0
    films = 0
    if submission.skip_reason(cfg, layout.class_columns(val_df)) is None:
        sample, folder = submission.find_inputs(cfg)
        films = submission.sample_rows(sample) if sample else len(set(submission.index_images(folder).values()))
    return timing.Finish(len(val_df), test, 1 + epoch_files if test else 0, films, cfg.tta)


class Clock:
    """Once the training rate is measured: fits the schedule to the time (--epochs auto), prints
    the plan, and keeps the time the stages after training need out of the training's share of
    the time limit. After every epoch a fitted schedule is checked against the epoch's own length
    on the session clock, and ends sooner (never later) when the rate fell."""

    def __init__(self, cfg, world, trainer, finish, val_images, say, fitting):
        self.cfg, self.world, self.trainer, self.finish, self.say = cfg, world, trainer, finish, say
        self.train_images = trainer.updates_per_epoch * trainer.effective
        self.val_images, self.infer_rate, self.planned, self.fitting = val_images, None, False, fitting
        self.auto = fitting or trainer.schedule is not None
        # what this session spent before training (the data stages, mainly): each later one spends it again
        self.before_s = session.time_limit(cfg) - session.seconds_left() if self.auto else 0.0
        self.epoch_start = session.clock() if self.auto else None
        self.whole_epoch = trainer.offset == 0  # this session trains all of the epoch under way

    def measured(self, rate):
        infer_rate = self.infer_rate or timing.FORWARD_SPEEDUP * rate
        finish_s = self.finish.seconds(infer_rate)
        session.reserve(finish_s)
        if self.fitting:
            self.fitting = False
            self.fit(self.train_images / rate + self.val_images / infer_rate, finish_s, rate=rate)
        if not self.planned:
            self.planned = True
            t = self.trainer
            self.say(timing.plan(rate=rate, infer_rate=infer_rate, train_images=self.train_images,
                                 val_images=self.val_images, epochs=self.cfg.epochs, epoch=t.epoch,
                                 fraction_done=t.offset / self.train_images, left_s=session.seconds_left(),
                                 finish_s=finish_s))
        return finish_s

    def fit(self, epoch_s, finish_s, rate=None):
        """Fit the schedule to `epoch_s` seconds an epoch: first at `rate` (the first updates'),
        later only shorter."""
        cfg, t = self.cfg, self.trainer
        ended = t.schedule["ended_sessions"] if t.schedule else 0
        budget = timing.session_budget(left_s=session.seconds_left(), limit_s=session.time_limit(cfg),
                                       before_s=self.before_s, finish_s=finish_s, sessions=cfg.sessions - ended)
        least = settings.soup_needs(cfg.soup_epochs)
        epochs, fits = timing.fit_epochs(epoch_s=epoch_s, epoch=t.epoch, fraction_done=t.offset / self.train_images,
                                         budget_s=budget, least=least)
        # every process measured its own time: all take the shortest schedule
        agreed = distributed.reduced(torch.tensor([epochs, int(fits)], device=self.world.device), self.world, "min")
        epochs, fits = int(agreed[0]), bool(agreed[1])
        if rate is None and epochs >= cfg.epochs:
            return
        before = cfg.epochs
        schedule = dict(epochs=epochs, fits=fits, images_per_s=round(rate or self.train_images / epoch_s, 2),
                        sessions=cfg.sessions, time_limit=cfg.time_limit, ended_sessions=ended)
        t.refit(schedule)
        where = f"{cfg.sessions - ended} session{'s' * (cfg.sessions - ended > 1)} of {cfg.time_limit}"
        ends = f"the schedule ends on update {epochs * t.updates_per_epoch}"
        if rate is None:
            self.say(f"[train] --epochs auto: at this epoch's {timing.duration(epoch_s)} the schedule's {before} "
                     f"epochs no longer fit in {where}; it now ends after epoch {epochs}: {ends}")
        elif fits:
            self.say(f"[train] --epochs auto: {epochs} epochs fit in {where} at {rate:.1f} images/s, "
                     f"{timing.duration(finish_s)} kept for the stages after training; {ends}")
        else:
            self.say(f"[train] --epochs auto: the soup's {least} epochs do not fit in {where} at {rate:.1f} "
                     f"images/s; training {epochs} (what fits, fits: false in reports/submission.json); "
                     f"more --sessions fit more")
        if self.world.is_main:
            write_json({**cfg.to_dict(), "schedule": schedule}, layout.run_config(cfg.work))

    def epoch_done(self, rate, val_rate):
        self.infer_rate = val_rate
        finish_s = self.measured(rate)
        if self.auto:
            now = session.clock()
            epoch_s, self.epoch_start = now - self.epoch_start, now
            if self.whole_epoch:
                self.fit(epoch_s, finish_s)
            self.whole_epoch = True


def plan_batches(cfg, world, model, criterion, num_classes, state, compiled):
    """(batch, accum, compiled): the state's batch after an out-of-memory back-off, else probed
    with the step that will train (compiled or not) or given; a compile that fails in the probe
    is not tried again."""
    if state and cfg.batch_size == "auto" and state["world_size"] == world.size:
        return state["batch"], state["accum"], compiled
    if world.device.type != "cuda":
        return *batching.plan(cfg, world.size), compiled
    fits = partial(batching.probe_batch, model, criterion, cfg.img_size, num_classes, world.device,
                   autocast_dtype(cfg.amp, world.device),
                   step=torch.compile(model, dynamic=False) if compiled else None)

    def probe(start):  # every rank takes the smallest: equal batches, equal updates per epoch
        return int(distributed.reduced(torch.tensor(fits(start), device=world.device), world, "min").item())
    try:
        return *batching.plan(cfg, world.size, probe), compiled
    except KitError:
        raise
    except Exception as e:  # a compiler's own error, of any type
        if not compiled:
            raise
        if world.is_main:
            print(compile_failed(e), flush=True)
        return plan_batches(cfg, world, model, criterion, num_classes, state, False)


def make_val_loader(cfg, world, val_df, classes, batch):
    paths = layout.image_paths(cfg.work, val_df.file)
    dataset = XrayDataset(paths, val_df[classes].to_numpy(np.float32), cfg.img_size)
    sampler = None
    if world.size > 1:
        sampler = torch.utils.data.DistributedSampler(dataset, world.size, world.rank, shuffle=False)
    return make_loader(dataset, batch * EVAL_BATCH_FACTOR, shuffle=False,
                       workers=worker_count(cfg.workers, world.size), sampler=sampler)


def validate(trainer, loader, targets, classes, cfg, world) -> dict:
    """Loss and metrics of the EMA weights on the whole validation split (gathered over ranks)."""
    part = inference.logits(trainer.ema.module, loader, world.device, trainer.mean, trainer.std, cfg.amp)
    index, logits, ok = (np.concatenate(a) for a in zip(*distributed.gather(part, world)))
    index, first = np.unique(index, return_index=True)  # DistributedSampler repeats a few rows
    logits, ok = logits[first], ok[first]
    if not ok.all() and world.is_main:
        print(f"warning: {int((~ok).sum())} unreadable validation images left out of the metrics")
    y, logits = targets[index][ok], logits[ok]
    with torch.no_grad():
        loss = trainer.criterion(torch.from_numpy(logits).to(world.device),
                                 torch.from_numpy(y).to(world.device)).item()
    probs = 1 / (1 + np.exp(-logits))
    aucs = auc_per_class(y, probs)
    out = {"val_loss": loss,
           "val_macro_auc": macro_auc(y, probs),
           **{f"val_auc_{c}": float(a) for c, a in zip(classes, aucs)}}
    if cfg.label_mode == "single":
        report = single_label_report(y, probs)
        out.update(val_accuracy=report["accuracy"], val_macro_f1=report["macro_f1"])
    return out


def peak_memory(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan


def summary(row, classes, epochs, eta) -> str:
    per_class = ", ".join(f"{c} {row[f'val_auc_{c}']:.3f}" for c in classes)
    return (f"[train] epoch {row['epoch']}/{epochs} | train loss {row['train_loss']:.4f} | val loss "
            f"{row['val_loss']:.4f} | val AUC {row['val_macro_auc']:.4f} ({per_class}) | lr "
            f"{row['lr']:.2e} | {row['images_per_s']:.0f} img/s | {timing.duration(row['epoch_s'])} | "
            f"ETA {timing.duration(eta)}")


def warn_missing_positives(train_df, val_df, classes):
    for name, df in (("train", train_df), ("val", val_df)):
        empty = [c for c in classes if not df[c].any()]
        if empty:
            print(f"warning: no positive {', '.join(empty)} in {name}.csv; "
                  f"{'its AUC is reported as NaN' if name == 'val' else 'the model cannot learn it'}")


def keep_policy(cfg):
    """history -> the epoch numbers whose files stay (--keep-epochs)."""
    if cfg.keep_epochs == "all" or (cfg.keep_epochs == "auto" and cfg.soup == "greedy"):
        return lambda history: {row["epoch"] for row in history}
    if cfg.keep_epochs == "auto":
        # read when asked: --epochs auto sets the run's length after its first updates
        return lambda history: set(settings.parse_epochs(cfg.soup_epochs, cfg.epochs)) | {layout.best_epoch(history)}
    n = settings.count(cfg.keep_epochs, "--keep-epochs", ("auto", "all"))
    return lambda history: {row["epoch"] for row in history[-n:]}


def prune(work, keep):
    for epoch, path in layout.epoch_checkpoints(work).items():
        if epoch not in keep:
            path.unlink()


def clear_checkpoints(work):
    """A fresh run: epoch files of an earlier run would mix into this one's soup."""
    for path in layout.checkpoint_dir(work).glob("*.pth"):
        path.unlink()
