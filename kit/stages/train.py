"""Train stage: fine-tune a timm model on <work>/splits with the study's recipe (EVA-02, LLRD,
focal + BCE, AMP, EMA) and write the EMA weights of every epoch.

Each epoch: train, validate the EMA on val.csv, append a row to history.csv, write
checkpoints/epoch_NN.pth (EMA weights, timm-loadable) and checkpoints/last.pth (everything a
rerun needs to resume), prune the epoch files nobody will need. Several GPUs train
data-parallel (torch.distributed); only rank 0 writes files and prints.
"""
from functools import partial

import numpy as np
import pandas as pd
import torch

from kit import env, layout, runner
from kit.config import loss_kwargs, optimizer_kwargs, predict_kwargs, settings
from kit.data import competition
from kit.data.loaders import XrayDataset, make_loader, worker_count
from kit.errors import KitError
from kit.models import inference
from kit.models.model import create_model, init_head_prior
from kit.models.precision import allow_tf32, autocast_dtype
from kit.reports.metrics import auc_per_class, macro_auc, single_label_report
from kit.training import batching, distributed, resume, session, timing
from kit.training.losses import build_loss
from kit.training.trainer import EpochFiles, Trainer, clear_checkpoints, compile_failed, compiles

EVAL_BATCH_FACTOR = 2  # no gradients to keep: validation takes larger batches


def run(cfg):
    if distributed.should_relaunch(cfg.ddp):
        distributed.relaunch(cfg)
        if layout.interim_weights(cfg.work).exists():  # the processes stopped at the time limit
            raise session.time_up(cfg.time_limit, cfg.work, "in training")
        return
    world = distributed.setup()
    try:
        train(cfg, world)
    finally:
        distributed.teardown()


def train(cfg, world):
    say = print if world.is_main else (lambda *a, **k: None)
    train_df, val_df, classes = read_splits(cfg, world)
    keep_rule = keep_policy(cfg)
    signature = resume.signature(cfg.model, classes, cfg.img_size,
                                 [layout.split_csv(cfg.work, s) for s in ("train", "val")])
    start = resume_point(cfg, world, signature, say)
    if start is None:
        return  # up to date
    state, fitting = start
    targets = train_df[classes].to_numpy(np.float32)
    model, criterion = build_model(cfg, world, targets, state, keep_rule)
    trainer = build_trainer(cfg, world, model, criterion, train_df, targets, state)
    say(describe(cfg, world, trainer, len(train_df), len(val_df)))
    # the recipe's learning rate is set for the effective batch (auto on 3 GPUs comes close: 63 of 64)
    if trainer.effective != cfg.effective_batch and cfg.batch_size != "auto":
        say(f"warning: updates of {trainer.effective} images ({trainer.batch} x {trainer.accum} accumulated x "
            f"{world.size} device(s)), not --effective-batch {cfg.effective_batch}; pick a --batch-size that "
            f"divides it, or leave --batch-size auto")
    validate_ema = validation(cfg, world, trainer, val_df, classes)
    finish = finish_plan(cfg, val_df, len(session.most_kept(keep_rule, cfg.epochs)))
    trainer.on_rate = Clock(cfg, world, trainer, finish, len(val_df), say, fitting).measured
    seen_patients = layout.patient_hashes(pd.concat([train_df, val_df]))
    files = EpochFiles(cfg.work, cfg.model, cfg.img_size, classes, seen_patients, keep_rule, signature)
    trainer.train(files, validate_ema, len(val_df), say)


def read_splits(cfg, world):
    """(train.csv, val.csv, their class columns)."""
    train_df, classes = layout.read_split(cfg.work, "train")
    val_df, val_classes = layout.read_split(cfg.work, "val")
    if val_classes != classes:
        raise KitError("train.csv and val.csv have different class columns; rerun --stage split --force")
    if world.is_main:
        warn_missing_positives(train_df, val_df, classes)
    return train_df, val_df, classes


def resume_point(cfg, world, signature, say):
    """(last.pth's state or None, whether --epochs auto is still to be fitted), or None when the
    run is up to date. Sets cfg.epochs for --epochs auto; a fresh run clears an earlier one's
    epoch files."""
    last_path = layout.last_state(cfg.work)
    resume.take_over(cfg.resume, cfg.force, last_path, signature, world)
    state = resume.load(last_path, signature, cfg.force)
    changes = resume.recipe_changes(state, cfg) if state else []
    if state and cfg.epochs != "auto":
        state["schedule"] = None  # an explicit --epochs replaces a schedule --epochs auto fitted
    fitting = cfg.epochs == "auto" and not (state and state.get("schedule"))
    if cfg.epochs == "auto":  # until fitted, the shortest run the soup can average
        cfg.epochs = settings.soup_needs(cfg.soup_epochs) if fitting else state["schedule"]["epochs"]
    if state and state["epoch"] >= cfg.epochs:
        if changes:
            raise KitError(f"{last_path} finished {state['epoch']} epochs with other settings "
                           f"({', '.join(changes)}); pass --force to train again with the new ones, "
                           f"or the run's own settings to use its results")
        say(f"[train] up to date: {state['epoch']} epochs done (--epochs more continues, --force retrains)")
        return None
    if state:
        say(f"[train] resuming from {last_path} at epoch {state['epoch'] + 1}, "
            f"update {state['updates'] + 1}" + (f", with other settings ({', '.join(changes)})" if changes else ""))
    elif world.is_main:
        clear_checkpoints(cfg.work)
    return state, fitting


def build_model(cfg, world, targets, state, keep_rule):
    """(model, loss): a fresh run's model pretrained, its head at the prior of the train split's
    `targets`; a resumed run's weights come from its state."""
    allow_tf32()
    torch.manual_seed(cfg.seed)
    roots = env.data_roots(env.platform()) + ([cfg.data_dir] if cfg.data_dir else [])
    model = create_model(cfg.model, targets.shape[1], cfg.img_size, cfg.drop_path,
                         "none" if state else cfg.pretrained, roots).to(world.device)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if world.is_main and not state:
        session.warn_output_budget(cfg.output_budget, cfg.work, cfg.epochs, model, keep_rule)
    if cfg.head_init == "prior" and not state:  # a resumed run has its own weights
        init_head_prior(model, targets)
    return model, build_loss(targets, **loss_kwargs(cfg)).to(world.device)


def build_trainer(cfg, world, model, criterion, train_df, targets, state) -> Trainer:
    batch, accum, compiled = batch_sizes(cfg, world, model, criterion, targets.shape[1], state,
                                          compiles(cfg.compile, world.device))
    paths = layout.image_paths(cfg.work, train_df.file)
    train_set = XrayDataset(paths, targets, cfg.img_size, cfg.aug, cfg.seed, hflip=cfg.hflip)
    return Trainer(world, model, criterion, train_set, batch, accum, state, compiled, **trainer_kwargs(cfg))


def trainer_kwargs(cfg) -> dict:
    """The settings the trainer runs by; the recipe goes into its state for resume's check."""
    return dict(epochs=cfg.epochs, seed=cfg.seed, workers=cfg.workers, amp=cfg.amp, compile=cfg.compile,
                clip_grad=cfg.clip_grad, ema_decay=cfg.ema_decay, ema_warmup=cfg.ema_warmup,
                optimizer=optimizer_kwargs(cfg), warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr,
                recipe=resume.recipe(cfg), time_limit=cfg.time_limit, work=cfg.work)


def describe(cfg, world, trainer, train_images, val_images) -> str:
    return (f"[train] {cfg.model} at {cfg.img_size}px on {world.device} x{world.size} | {train_images} train, "
            f"{val_images} val images | batch {trainer.batch} x {trainer.accum} accumulation x {world.size} = "
            f"{trainer.effective} | {trainer.updates_per_epoch} updates/epoch | amp "
            f"{str(trainer.dtype).replace('torch.', '') if trainer.dtype else 'off'} | "
            f"{'compiled' if trainer.compiled else 'not compiled'}")


def validation(cfg, world, trainer, val_df, classes):
    """validate() -> the metrics of the trainer's EMA on the whole validation split."""
    loader = make_val_loader(cfg, world, val_df, classes, trainer.batch)
    return partial(validate, trainer, loader, val_df[classes].to_numpy(np.float32), classes, cfg, world)


def finish_plan(cfg, val_df, epoch_files) -> timing.Finish:
    """What the stages after training will score (soup, evaluate where there is a test split,
    with the soup and `epoch_files` epoch checkpoints, predict where there is a submission to make)."""
    test_csv = layout.split_csv(cfg.work, "test")
    test = len(layout.read_split(cfg.work, "test")[0]) if test_csv.exists() else 0
    films = 0
    if competition.skip_reason(layout.class_columns(val_df), cfg.task, **predict_kwargs(cfg)) is None:
        sample, folder = competition.find_inputs(**predict_kwargs(cfg))
        films = competition.sample_rows(sample) if sample else len(set(competition.index_images(folder).values()))
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
        self.before_s = session.time_limit(cfg.time_limit) - session.seconds_left() if self.auto else 0.0
        self.epoch_start = session.clock() if self.auto else None
        self.whole_epoch = trainer.offset == 0  # this session trains all of the epoch under way

    def measured(self, rate, val_rate=None):
        """The training images/s; after an epoch, the validation's too (`val_rate`), and the epoch's
        length on the session clock checks a fitted schedule."""
        self.infer_rate = val_rate or self.infer_rate
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
        if val_rate is not None and self.auto:
            now = session.clock()
            epoch_s, self.epoch_start = now - self.epoch_start, now
            if self.whole_epoch:
                self.fit(epoch_s, finish_s)
            self.whole_epoch = True

    def fit(self, epoch_s, finish_s, rate=None):
        """Fit the schedule to `epoch_s` seconds an epoch: first at `rate` (the first updates'),
        later only shorter."""
        cfg, t = self.cfg, self.trainer
        ended = t.schedule["ended_sessions"] if t.schedule else 0
        budget = timing.session_budget(left_s=session.seconds_left(), limit_s=session.time_limit(cfg.time_limit),
                                       before_s=self.before_s, finish_s=finish_s, sessions=cfg.sessions - ended)
        least = settings.soup_needs(cfg.soup_epochs)
        fitted, fits = timing.fit_epochs(epoch_s=epoch_s, epoch=t.epoch, fraction_done=t.offset / self.train_images,
                                         budget_s=budget, least=least)
        epochs = min(fitted, max(cfg.max_epochs, t.epoch + 1)) if cfg.max_epochs else fitted
        # every process measured its own time: all take the shortest schedule
        agreed = distributed.reduced(torch.tensor([epochs, int(fits)], device=self.world.device), self.world, "min")
        epochs, fits = int(agreed[0]), bool(agreed[1])
        if rate is None and epochs >= cfg.epochs:
            return
        before = cfg.epochs
        schedule = dict(epochs=epochs, fits=fits, images_per_s=round(rate or self.train_images / epoch_s, 2),
                        sessions=cfg.sessions, time_limit=cfg.time_limit, ended_sessions=ended)
        t.refit(schedule)
        cfg.epochs = epochs  # the keep rule and run_config.json follow the fitted schedule
        where = f"{cfg.sessions - ended} session{'s' * (cfg.sessions - ended > 1)} of {cfg.time_limit}"
        ends = f"the schedule ends on update {epochs * t.updates_per_epoch}"
        if rate is None:
            self.say(f"[train] --epochs auto: at this epoch's {timing.duration(epoch_s)} the schedule's {before} "
                     f"epochs no longer fit in {where}; it now ends after epoch {epochs}: {ends}")
        elif fits:
            said = (f"{fitted} epochs fit in {where} at {rate:.1f} images/s, --max-epochs trains {epochs}"
                    if epochs == cfg.max_epochs < fitted else f"{epochs} epochs fit in {where} at {rate:.1f} images/s")
            self.say(f"[train] --epochs auto: {said}, {timing.duration(finish_s)} kept for the stages after "
                     f"training; {ends}")
        else:
            self.say(f"[train] --epochs auto: the soup's {least} epochs do not fit in {where} at {rate:.1f} "
                     f"images/s; training {epochs} (what fits, fits: false in reports/submission.json); "
                     f"more --sessions fit more")
        if self.world.is_main:
            runner.record_config(cfg, schedule=schedule)


def batch_sizes(cfg, world, model, criterion, num_classes, state, compiled):
    """(batch, accum, compiled): the state's batch after an out-of-memory back-off, else probed
    with the step that will train (compiled or not) or given; a compile that fails in the probe
    is not tried again."""
    if state and cfg.batch_size == "auto" and state["world_size"] == world.size:
        return state["batch"], state["accum"], compiled
    if world.device.type != "cuda":
        return *batching.sizes(world.size, cfg.batch_size, cfg.accum, cfg.effective_batch), compiled
    fits = partial(batching.probe_batch, model, criterion, cfg.img_size, num_classes, world.device,
                   autocast_dtype(cfg.amp, world.device),
                   step=torch.compile(model, dynamic=False) if compiled else None)

    def probe(start):  # every rank takes the smallest: equal batches, equal updates per epoch
        return int(distributed.reduced(torch.tensor(fits(start), device=world.device), world, "min").item())
    try:
        return *batching.sizes(world.size, cfg.batch_size, cfg.accum, cfg.effective_batch, probe), compiled
    except KitError:
        raise
    except Exception as e:  # a compiler's own error, of any type
        if not compiled:
            raise
        if world.is_main:
            print(compile_failed(e), flush=True)
        return batch_sizes(cfg, world, model, criterion, num_classes, state, False)


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
        # read when asked: --epochs auto sets the run's length after its first updates, and may
        # end it at the epoch just done, so that epoch's soup stays too
        return lambda history: (set(settings.parse_epochs(cfg.soup_epochs, cfg.epochs)) | {layout.best_epoch(history)}
                                | set(settings.parse_epochs(cfg.soup_epochs, history[-1]["epoch"])))
    n = settings.count(cfg.keep_epochs, "--keep-epochs", ("auto", "all"))
    return lambda history: {row["epoch"] for row in history[-n:]}
