import dataclasses
import math
import os
import re
import shutil
import types
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from sklearn.metrics import roc_auc_score
from train_fixtures import CLASSES, last_state, make_work, one_thread, run_quietly, tiny_cfg  # noqa: F401 (one_thread: autouse)

from kit import layout
from kit.config import Config, loss_kwargs, optimizer_kwargs
from kit.data.images import area_resize
from kit.data.loaders import XrayDataset, make_loader
from kit.errors import KitError
from kit.io import write_csv
from kit.models import inference
from kit.models.model import create_model, load_model, read_weights
from kit.models.precision import Autocast, autocast_dtype, grad_scaler
from kit.stages import train
from kit.training import batching, interrupt
from kit.training import trainer as trainer_module
from kit.training.distributed import World
from kit.training.losses import FocalBCELoss, build_loss
from kit.training.optim import build_optimizer, build_scheduler
from kit.training.trainer import Trainer, compiles


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = make_work(tmp_path_factory.mktemp("trained"))
    return work, run_quietly(tiny_cfg(work))


def test_each_epoch_writes_history_ema_checkpoint_and_summary(trained):
    work, out = trained
    history = pd.read_csv(layout.history_csv(work))
    assert history.epoch.tolist() == [1, 2]
    assert {"train_loss", "val_loss", "val_macro_auc", "lr", "lr_lowest", "images_per_s", "val_accuracy",
            "val_macro_f1", *(f"val_auc_{c}" for c in CLASSES)} <= set(history.columns)
    assert (history.lr_lowest < history.lr).all()  # layer-wise decay reaches the history
    cfg = tiny_cfg(work)
    optimizer = build_optimizer(create_model(cfg.model, len(CLASSES), 28), **optimizer_kwargs(cfg))
    schedule = (cfg.epochs, cfg.warmup_epochs, cfg.min_lr)
    build_scheduler(optimizer, 4, *schedule).step_update(7)  # the 8th and last update
    last_update_lr = max(g["lr"] for g in optimizer.param_groups)
    assert history.lr.iloc[-1] == pytest.approx(last_update_lr) and last_update_lr == pytest.approx(cfg.min_lr)
    build_scheduler(optimizer, 4, *schedule).step_update(3)  # the last update of epoch 1
    epoch_1_lr = max(g["lr"] for g in optimizer.param_groups)
    assert history.lr.iloc[0] == pytest.approx(epoch_1_lr) and epoch_1_lr > 10 * cfg.min_lr
    # timm's warmup, 1 - (1 + t)^(-2/3) with t = 0 at the first update: t = 3 and 7 at the epochs' ends
    assert history.ema_decay.tolist() == pytest.approx([1 - 4 ** (-2 / 3), 1 - 8 ** (-2 / 3)])
    kept = layout.epoch_checkpoints(work)
    best = int(history.epoch[history.val_macro_auc == history.val_macro_auc.max()].max())  # of equal ones, the latest
    assert set(kept) == {2, best}  # --keep-epochs auto: the soup's (last1) and the best
    ckpt = read_weights(kept[2])
    assert ckpt["epoch"] == 2 and ckpt["metric"] == pytest.approx(history.val_macro_auc[1])
    seen = pd.concat([layout.read_split(work, s)[0] for s in ("train", "val")])
    assert ckpt["seen_patients"].tolist() == layout.patient_hashes(seen).tolist()
    state = last_state(work)
    assert state["epoch"] == 2 and state["updates"] == 8 and state["offset"] == 0
    assert all(torch.equal(state["ema"][k], v) for k, v in ckpt["state_dict"].items())
    assert "[train] epoch 2/2 | train loss" in out and "val AUC" in out and "ETA" in out
    assert "up to date" in run_quietly(tiny_cfg(work, workers=2, keep_epochs="all"))  # not the recipe
    with pytest.raises(KitError, match=r"finished 2 epochs with other settings \(--lr 0.001 -> 0.002, "
                                       r"--aug strong -> light\); pass --force"):
        run_quietly(tiny_cfg(work, lr=2e-3, aug="light"))
    with pytest.raises(KitError, match=r"other settings \(--asl-clip 0.05 -> 0.1\)"):
        run_quietly(tiny_cfg(work, asl_clip=0.1))
    with pytest.raises(KitError, match=r"last.pth is from another run; changed since: --img-size \(28 -> 56\); "
                                       r"pass the same settings to resume it, or --force"):
        run_quietly(tiny_cfg(work, img_size=56))


def test_a_run_killed_at_the_end_of_an_epoch_leaves_no_short_history(tmp_path, monkeypatch):
    work = make_work(tmp_path)
    written = []

    def killed_at_the_second(df, path):  # the process dies while epoch 2's history is written
        written.append(len(df))
        if len(written) == 2:
            raise SystemExit("killed")
        write_csv(df, path)
    monkeypatch.setattr(trainer_module, "write_csv", killed_at_the_second)
    with pytest.raises(SystemExit):
        run_quietly(tiny_cfg(work))
    monkeypatch.setattr(trainer_module, "write_csv", write_csv)
    assert "resuming from" in run_quietly(tiny_cfg(work))
    assert pd.read_csv(layout.history_csv(work)).epoch.tolist() == [1, 2]


def test_a_stop_on_an_epochs_last_update_resumes_into_the_next_epoch(tmp_path, monkeypatch):
    """Saved with the epoch's every image trained but not yet validated: the rerun trains
    nothing of it, so it measures no rate, and goes on to validate it and train the next."""
    work = make_work(tmp_path)
    asked = []

    def signal_on_the_fourth_update(world):  # 4 updates an epoch
        asked.append(world)
        return "signal" if len(asked) == 4 else None
    monkeypatch.setattr(interrupt, "reason", signal_on_the_fourth_update)
    with pytest.raises(interrupt.Interrupted):
        run_quietly(tiny_cfg(work))
    state = last_state(work)
    assert (state["epoch"], state["offset"], state["updates"]) == (0, 32, 4)
    monkeypatch.undo()
    assert "resuming from" in run_quietly(tiny_cfg(work))
    assert pd.read_csv(layout.history_csv(work)).epoch.tolist() == [1, 2] and last_state(work)["updates"] == 8


def test_a_resumed_run_takes_its_new_layer_decay_weight_decay_and_lr(tmp_path):
    """The resume line names the changed settings; the optimizer's groups then hold them, not
    the saved ones (the moments resume)."""
    work = make_work(tmp_path)
    run_quietly(tiny_cfg(work, epochs=1))
    cfg = tiny_cfg(work, epochs=2, layer_decay=0.5, weight_decay=0.01, lr=2e-3)
    said = re.search(r"with other settings \((.*?)\)", run_quietly(cfg))[1]
    assert "--lr 0.001 -> 0.002" in said and "--layer-decay" in said and "--weight-decay" in said
    saved = last_state(work)["optimizer"]["param_groups"]
    fresh = build_optimizer(create_model(cfg.model, len(CLASSES), cfg.img_size), **optimizer_kwargs(cfg)).param_groups
    assert [(g["lr_scale"], g["weight_decay"]) for g in saved] == [(g["lr_scale"], g["weight_decay"]) for g in fresh]
    assert {g["initial_lr"] for g in saved} == {2e-3}


def test_a_batch_that_does_not_divide_the_effective_batch_says_what_it_trains(tmp_path):
    out = run_quietly(tiny_cfg(make_work(tmp_path), epochs=1, batch_size="3"))  # 3 x round(8 / 3)
    assert "warning: updates of 9 images (3 x 3 accumulated x 1 device(s)), not --effective-batch 8" in out


def test_gradient_checkpointing_changes_memory_not_results(trained, tmp_path, monkeypatch):
    """Checkpointed blocks run their forward pass again in the backward pass: twice per
    micro-batch with gradients, against once without (the reference run)."""
    work, _ = trained
    forwards = []

    def counted(*args, **kwargs):
        model = create_model(*args, **kwargs)
        block, forward = model.blocks[0], model.blocks[0].forward

        def counting(*a, **kw):  # checkpoint's recomputation calls forward, not the module's hooks
            forwards.append(torch.is_grad_enabled())
            return forward(*a, **kw)
        block.forward = counting
        return model
    monkeypatch.setattr(train, "create_model", counted)
    again = make_work(tmp_path)
    run_quietly(tiny_cfg(again, grad_checkpointing=True))
    state, reference = last_state(again), last_state(work)
    micro_batches = state["updates"] * state["accum"]
    assert sum(forwards) == 2 * micro_batches == 32  # 8 updates of 2 micro-batches
    for k, v in reference["ema"].items():
        assert torch.allclose(state["ema"][k], v, atol=1e-6), k
    forwards.clear()
    run_quietly(tiny_cfg(make_work(tmp_path / "plain"), epochs=1))
    assert sum(forwards) == micro_batches // 2  # one epoch without checkpointing: one pass each


def test_epochs_more_continue_a_finished_run(trained, tmp_path):
    work, _ = trained
    shutil.copytree(work, tmp_path / "work")
    out = run_quietly(tiny_cfg(tmp_path / "work", epochs=3))
    assert f"resuming from {layout.last_state(tmp_path / 'work')} at epoch 3, update 9" in out
    history, before = pd.read_csv(layout.history_csv(tmp_path / "work")), pd.read_csv(layout.history_csv(work))
    assert history.epoch.tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(history.iloc[:2][before.columns], before)  # the first two kept as they were
    state = last_state(tmp_path / "work")
    assert (state["epoch"], state["updates"]) == (3, 12)
    assert 3 in layout.epoch_checkpoints(tmp_path / "work")


def test_the_default_keep_epochs_deletes_what_the_soup_does_not_need(tmp_path):
    """--keep-epochs auto with the recipe's soup (last2 of 6): a run whose best epoch is 3
    keeps 3, 5 and 6 of six epoch files."""
    cfg = tiny_cfg(tmp_path, epochs=6, soup_epochs=Config().soup_epochs, keep_epochs=Config().keep_epochs)
    assert (cfg.keep_epochs, cfg.soup_epochs, cfg.soup) == ("auto", "last2", "uniform")
    history = [{"epoch": e, "val_macro_auc": auc} for e, auc in enumerate([0.6, 0.7, 0.9, 0.8, 0.75, 0.85], 1)]
    layout.checkpoint_dir(tmp_path).mkdir()
    for row in history:
        torch.save({}, layout.epoch_checkpoint(tmp_path, row["epoch"]))
    trainer_module.prune(tmp_path, train.keep_policy(cfg)(history))
    assert sorted(layout.epoch_checkpoints(tmp_path)) == [3, 5, 6]
    greedy = dataclasses.replace(cfg, soup="greedy")  # a greedy soup may take any epoch: all stay
    assert train.keep_policy(greedy)(history) == set(range(1, 7))
    # --epochs auto planned 8 and may end the schedule at the epoch just done: its soup stays too
    planned = train.keep_policy(dataclasses.replace(cfg, epochs=8))
    assert planned(history[:5]) & set(range(1, 6)) == {3, 4, 5} and planned(history) & set(range(1, 7)) == {3, 5, 6}


def test_checkpoint_in_plain_timm_matches_the_kit_and_the_history(trained):
    work, _ = trained
    path = layout.epoch_checkpoints(work)[2]
    ckpt = read_weights(path)
    plain = timm.create_model(ckpt["arch"], num_classes=len(ckpt["classes"]), img_size=ckpt["img_size"])
    timm.models.load_checkpoint(plain, str(path))
    val, classes = layout.read_split(work, "val")
    paths = [layout.image_path(work, f) for f in val.file]
    # the kit's resize, checked against an exact area average in test_separate
    gray = np.stack([area_resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (28, 28)) for p in paths]) / 255.0
    x = torch.tensor(np.stack([(gray - m) / s for m, s in zip(ckpt["mean"], ckpt["std"])], 1), dtype=torch.float32)
    with torch.no_grad():
        expected = plain.eval()(x).sigmoid().numpy()
        flipped = plain(x.flip(-1)).sigmoid().numpy()
    loader = make_loader(XrayDataset(paths, None, 28), 5, shuffle=False, workers=0)
    probs, ok = inference.predict(load_model(ckpt, "cpu"), loader, "cpu", ckpt["mean"], ckpt["std"])
    assert ok.all() and np.allclose(probs, expected, atol=1e-5)
    tta, _ = inference.predict(load_model(ckpt, "cpu"), loader, "cpu", ckpt["mean"], ckpt["std"],
                             views=inference.tta_views(tta=True, hflip=0.5))
    assert np.allclose(tta, (expected + flipped) / 2, atol=1e-5)
    history = pd.read_csv(layout.history_csv(work))
    for k, c in enumerate(classes):
        assert history[f"val_auc_{c}"].iloc[-1] == pytest.approx(roc_auc_score(val[c], probs[:, k]), abs=1e-6)


def test_autocast_wrapper_keeps_its_dtype_in_a_replica_thread():
    """DataParallel's replica threads enter autocast with only enabled=True, as here: without the
    wrapper they would run in the device's default dtype (bfloat16 on CPU, float16 on CUDA)."""
    import threading

    linear, x, got = torch.nn.Linear(8, 4), torch.randn(2, 8), {}

    def replica(name, module):
        with torch.autocast("cpu", enabled=True):
            got[name] = module(x).dtype
    for name, module in (("plain", linear), ("wrapped", Autocast(linear, torch.float16))):
        thread = threading.Thread(target=replica, args=(name, module))
        thread.start()
        thread.join()
    assert got == {"plain": torch.bfloat16, "wrapped": torch.float16}


def test_llrd_covers_every_parameter_and_the_schedule_scales_each_group():
    cfg = tiny_cfg("unused", lr=3e-4, layer_decay=0.77, epochs=2, warmup_epochs=0.5, min_lr=1e-6)
    model = create_model(cfg.model, 3, 28)
    optimizer = build_optimizer(model, **optimizer_kwargs(cfg))
    scheduler = build_scheduler(optimizer, 10, cfg.epochs, cfg.warmup_epochs, cfg.min_lr)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert set(group_of) == {id(p) for p in named.values()}  # cls_token, pos_embed, fc_norm included
    depth = len(model.blocks)
    expected = {"head.weight": 1.0, "fc_norm.weight": 1.0, "blocks.11.attn.qkv.weight": 0.77,
                "blocks.6.mlp.fc2.weight": 0.77 ** 6, "blocks.0.norm1.weight": 0.77 ** depth,
                "patch_embed.proj.weight": 0.77 ** (depth + 1), "cls_token": 0.77 ** (depth + 1),
                "pos_embed": 0.77 ** (depth + 1)}
    for name, scale in expected.items():
        assert group_of[id(named[name])]["lr_scale"] == pytest.approx(scale), name
    for name in ("cls_token", "pos_embed", "head.bias", "fc_norm.weight"):
        assert group_of[id(named[name])]["weight_decay"] == 0
    assert group_of[id(named["head.weight"])]["weight_decay"] == cfg.weight_decay
    total, warmup = 20, 5
    for t in (0, 2, 5, 9, 19):
        scheduler.step_update(t)
        if t < warmup:
            base = cfg.min_lr + (cfg.lr - cfg.min_lr) * t / warmup
        else:
            base = cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * (t - warmup) / (total - 1 - warmup)))
        for g in optimizer.param_groups:
            assert g["lr"] == pytest.approx(base * g["lr_scale"])


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_averages_the_weights_with_the_warmup_decay(tmp_path, warmup):
    work = make_work(tmp_path)
    cfg = tiny_cfg(work, ema_decay=0.5, ema_warmup=warmup)
    df, classes = layout.read_split(work, "train")
    targets = df[classes].to_numpy(np.float32)
    data = XrayDataset([layout.image_path(work, f) for f in df.file], targets, 28, "strong")
    torch.manual_seed(0)
    model = create_model(cfg.model, 3, 28)
    trainer = Trainer(World(), model, build_loss(targets, **loss_kwargs(cfg)), data, 4, 2, **train.trainer_kwargs(cfg))
    batches, expected = iter(trainer.loader), None
    for step in range(1, 5):
        trainer._account(*trainer._step(trainer._accumulate(batches)))
        weights = model.head.weight.detach().clone()
        decay = 0.0 if step == 1 else (min(0.5, 1 - step ** (-2 / 3)) if warmup else 0.5)
        expected = weights if expected is None else decay * expected + (1 - decay) * weights
        assert torch.allclose(trainer.ema.module.head.weight, expected, atol=1e-7)


def test_amp_choice_follows_the_device(monkeypatch):
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("off", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(KitError, match="needs a GPU"):
        autocast_dtype("fp16", cpu)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert autocast_dtype("auto", "cuda:0") == torch.float16
    with pytest.raises(KitError, match="bfloat16"):
        autocast_dtype("bf16", "cuda:0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert autocast_dtype("auto", "cuda:0") == torch.bfloat16
    assert autocast_dtype("fp16", "cuda:0") == torch.float16
    assert autocast_dtype("off", "cuda:0") is None
    assert grad_scaler(torch.float16, cpu).is_enabled() and not grad_scaler(torch.bfloat16, cpu).is_enabled()


@pytest.mark.parametrize("capability, auto", [((6, 0), False), ((7, 0), False), ((7, 5), False),
                                              ((8, 0), True), ((8, 9), True), ((9, 0), True), ((12, 0), True)],
                         ids=["P100", "V100", "T4", "A100", "L4", "H100", "RTX-50"])
def test_compile_auto_follows_tritons_supported_gpus(monkeypatch, capability, auto):
    assert not compiles("auto", "cpu") and compiles("on", "cpu") and not compiles("off", "cpu")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert compiles("auto", "cuda:0") is auto
    assert compiles("on", "cuda:0") and not compiles("off", "cuda:0")


@pytest.fixture
def no_cxx(monkeypatch, tmp_path):
    """Inductor with no C++ compiler (a real failure of compiling on a CPU), no cache to hide it."""
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (str(tmp_path / "no-such-g++"),))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-cache"))
    monkeypatch.setattr(inductor, "fx_graph_cache", False)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_a_compile_that_fails_falls_back_to_the_uncompiled_weights(tmp_path, no_cxx):
    reference = make_work(tmp_path / "off")
    run_quietly(tiny_cfg(reference, epochs=1, compile="off"))
    work = make_work(tmp_path / "on")
    out = run_quietly(tiny_cfg(work, epochs=1, compile="on"))
    lines = [line for line in out.splitlines() if "torch.compile failed" in line]
    assert len(lines) == 1 and "InvalidCxxCompiler" in lines[0] and "continuing not compiled" in lines[0]
    state, ref = last_state(work), last_state(reference)
    assert state["updates"] == ref["updates"] == 4
    for part in ("model", "ema"):
        for k, v in ref[part].items():
            assert torch.equal(state[part][k], v), (part, k)


def test_a_compiled_step_failing_midway_is_redone_from_the_state_before_it(tmp_path, monkeypatch):
    """The second micro-batch of the first update fails after the first one accumulated its
    gradients and moved the batch-norm statistics: the redone update matches an uncompiled run."""
    calls = []

    def fails_on_its_second_run(gm, example_inputs):
        def run(*args):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("kernel launch failed (simulated)")
            return gm(*args)
        return run

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net, **kw: real_compile(net, backend=fails_on_its_second_run, **kw))
    settings = dict(epochs=1, model="levit_128s", img_size=64)  # LeViT: batch norm throughout
    reference = make_work(tmp_path / "off")
    run_quietly(tiny_cfg(reference, compile="off", **settings))
    work = make_work(tmp_path / "on")
    out = run_quietly(tiny_cfg(work, compile="on", **settings))
    assert "torch.compile failed (RuntimeError: kernel launch failed (simulated))" in out
    assert len(calls) == 2  # never compiled again
    state, ref = last_state(work), last_state(reference)
    assert any("running_mean" in k for k in ref["model"])
    for part in ("model", "ema"):
        for k, v in ref[part].items():
            assert torch.equal(state[part][k], v), (part, k)


def test_batch_plan_keeps_the_effective_batch():
    auto = ("auto", "auto", 64)  # --batch-size, --accum, --effective-batch
    assert batching.sizes(1, *auto) == (32, 2)  # CPU: no probe
    assert batching.sizes(2, *auto, probe=lambda start: start // 4) == (8, 4)  # 32 a GPU wanted, 8 fit
    assert batching.sizes(2, "12", "auto", 64) == (12, 3)
    # devices that do not divide it: the nearest share, not another round of accumulation
    assert batching.sizes(3, *auto, probe=lambda start: start) == (21, 1)  # 63 images, not 126
    assert batching.sizes(6, *auto, probe=lambda start: start) == (11, 1)  # 66
    assert batching.sizes(1, *auto, probe=lambda start: 24) == (21, 3)  # 63, not 24 x 3 = 72
    for world in (1, 2, 4, 8):  # a probe halves from the even share: always exact
        for fit in (1, 2, 4):
            batch, accum = batching.sizes(world, *auto, probe=lambda start: max(1, start // fit))
            assert batch * accum * world == 64
    assert batching.sizes(1, "8", "3", 8) == (8, 3)
    with pytest.raises(KitError, match="--batch-size"):
        batching.sizes(1, "big", "auto", 64)
    assert batching.back_off(32, 2) == (16, 4) and batching.back_off(6, 1) == (3, 2)
    assert batching.back_off(5, 1) == (1, 5)  # the effective batch stays whole
    with pytest.raises(KitError, match="batch 1"):
        batching.back_off(1, 64)


class GpuOnCpu(types.ModuleType):
    """torch as a module sees it on a GPU of 8.5 GiB where a training step takes half a GiB an
    image: tensors asked for on the GPU are made on the CPU, and the peak memory of a step is
    that of the batch of the last images made. Set as that module's `torch` only."""
    GIB = 2**30

    def __init__(self):
        super().__init__("torch")
        self.batches = []  # the batch of each step the module made images for
        self.cuda = SimpleNamespace(
            get_device_properties=lambda device: SimpleNamespace(total_memory=17 * self.GIB // 2),
            max_memory_allocated=lambda device: self.batches[-1] * self.GIB // 2,
            reset_peak_memory_stats=lambda device: None, empty_cache=lambda: None)

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn(self, *size, device=None, **kwargs):
        self.batches.append(size[0])
        return torch.randn(*size, **kwargs)

    def zeros(self, *size, device=None, **kwargs):
        return torch.zeros(*size, **kwargs)

    def tensor(self, data, device=None, **kwargs):
        return torch.tensor(data, **kwargs)

    def autocast(self, device_type, **kwargs):
        return torch.autocast("cpu", **kwargs)


class Loss(torch.nn.Module):
    """The training loss, out of memory beyond 24 images as a 8.5 GiB GPU would be: after a real
    forward pass."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, logits, targets):
        self.batches.append(len(targets))
        if len(targets) > 24:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return FocalBCELoss()(logits, targets)


def test_batch_probe_halves_until_a_real_step_fits(monkeypatch):
    """The probe runs real training steps; the GPU's memory is played by GpuOnCpu."""
    monkeypatch.setattr(batching, "torch", GpuOnCpu())
    model, loss = create_model("eva02_tiny_patch14_224", 3, 28), Loss()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # 64 and 32 run out of memory; 16 runs, but 8 GiB is more than 90% of 8.5
    assert batching.probe_batch(model, loss, 28, 3, torch.device("cpu"), None, start=64) == 8
    assert loss.batches == batching.torch.batches == [64, 32, 16, 8]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_the_batch_probe_runs_the_compiled_step_and_falls_back_when_it_fails(monkeypatch, capsys):
    """On a GPU played by GpuOnCpu: the compiled step is probed first, really compiled, and its
    compiler's failure is met by probing the plain step, whose batch training then takes."""
    gpu, graphs, backends = GpuOnCpu(), [], []

    def runs(graph, inputs):  # compiler backends that take the graph of the model's forward pass
        graphs.append(graph)
        return graph.forward

    def fails(graph, inputs):
        graphs.append(graph)
        raise RuntimeError("triton: no kernel image is available (simulated)")

    gpu.compile = lambda net, **kwargs: torch.compile(net, backend=backends[-1], **kwargs)
    monkeypatch.setattr(batching, "torch", gpu)
    monkeypatch.setattr(train, "torch", gpu)
    world = SimpleNamespace(device=torch.device("cuda", 0), size=1, rank=0, is_main=True)
    model, loss = create_model("test_vit", 3, 32), Loss()  # a small ViT: quick to compile
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # 32 runs out of memory; 16 runs, but 8 GiB is more than 90% of 8.5: batch 8, 4 steps an update
    cfg = tiny_cfg("w", batch_size="auto", effective_batch=32, amp="off", img_size=32)
    assert train.batch_sizes(cfg, world, model, loss, 3, None, compiled=False) == (8, 4, False)
    assert loss.batches == [32, 16, 8] and not graphs
    loss.batches.clear()
    backends.append(runs)
    assert train.batch_sizes(cfg, world, model, loss, 3, None, compiled=True) == (8, 4, True)
    assert loss.batches == [32, 16, 8] and len(graphs) == 3  # compiled for each batch (dynamic=False)
    loss.batches.clear()
    graphs.clear()
    torch._dynamo.reset()
    backends.append(fails)
    assert train.batch_sizes(cfg, world, model, loss, 3, None, compiled=True) == (8, 4, False)
    # the compiled step got a graph of the model's forward pass for 32 images, and failed before a
    # loss; the plain step then found its batch as above
    assert len(graphs) == 1 and loss.batches == [32, 16, 8]
    assert "[train] torch.compile failed" in capsys.readouterr().out
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_out_of_memory_halves_the_batch_and_keeps_the_effective_batch(tmp_path, monkeypatch):
    reference = make_work(tmp_path / "reference")
    run_quietly(tiny_cfg(reference, epochs=1, batch_size="4"))
    work = make_work(tmp_path / "work")
    original, calls = Trainer._accumulate, []

    def out_of_memory_once(self, batches):
        calls.append(self.batch)
        if len(calls) == 2:  # the second update fails after its first micro-batch was loaded
            next(batches)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, batches)

    monkeypatch.setattr(Trainer, "_accumulate", out_of_memory_once)
    out = run_quietly(tiny_cfg(work, epochs=1, batch_size="8"))
    assert "out of GPU memory at batch 8: continuing with batch 4 x 2" in out
    state, ref = last_state(work), last_state(reference)
    assert (state["batch"], state["accum"], state["updates"]) == (4, 2, ref["updates"])
    for k, v in ref["ema"].items():
        assert torch.allclose(state["ema"][k], v, atol=1e-5), k


def test_out_of_memory_in_the_optimizer_step_is_not_redone(tmp_path, monkeypatch):
    """Past unscale_ a redone update would unscale twice, and AdamW may have stepped some groups."""
    def clip(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    with pytest.raises(KitError, match=r"out of GPU memory in the optimizer step \(batch 4\); rerun with "
                                       r"--grad-checkpointing or --batch-size 2"):
        run_quietly(tiny_cfg(make_work(tmp_path), epochs=1))


def test_a_nan_update_is_skipped_and_a_run_of_them_stops_keeping_the_checkpoint(tmp_path, monkeypatch):
    work = make_work(tmp_path)
    original, calls = FocalBCELoss.forward, []

    def nan_once(self, logits, targets):
        calls.append(1)
        loss = original(self, logits, targets)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(FocalBCELoss, "forward", nan_once)
    run_quietly(tiny_cfg(work, epochs=1))
    state = last_state(work)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert math.isfinite(state["history"][0]["train_loss"])
    before = (layout.checkpoint_dir(work) / "last.pth").read_bytes()
    monkeypatch.setattr(FocalBCELoss, "forward", lambda self, logits, targets: logits.sum() * float("nan"))
    monkeypatch.setattr(trainer_module, "MAX_BAD_UPDATES", 2)
    with pytest.raises(KitError, match="NaN or infinite"):
        run_quietly(tiny_cfg(work, epochs=2))
    assert (layout.checkpoint_dir(work) / "last.pth").read_bytes() == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    work = make_work(tmp_path)
    run_quietly(tiny_cfg(work, epochs=1))
    before = (layout.checkpoint_dir(work) / "last.pth").read_bytes()

    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        open(f, "wb").write(b"half a checkpoint")
        real_save(obj, "/dev/full")  # torch's own error for a write that fails

    monkeypatch.setattr(torch, "save", disk_full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=1 << 20))
    with pytest.raises(KitError, match=r"cannot write .*\.pth \(No space left on device\): free some disk space"):
        run_quietly(tiny_cfg(work, epochs=2))
    assert (layout.checkpoint_dir(work) / "last.pth").read_bytes() == before
    assert sorted(p.name for p in layout.checkpoint_dir(work).iterdir()) == ["epoch_01.pth", "last.pth"]


def test_bad_inputs_stop_with_one_line(tmp_path):
    with pytest.raises(KitError, match="run --stage split first"):
        train.run(tiny_cfg(tmp_path / "empty"))
    work = make_work(tmp_path / "work")
    run_quietly(tiny_cfg(work, epochs=1))
    with pytest.raises(KitError, match=r"--img-size \(28 -> 56\).*--force"):
        train.run(tiny_cfg(work, img_size=56))
    with pytest.raises(KitError, match="--model"):
        train.run(tiny_cfg(work, model="vit_tiny_patch16_224"))
    with pytest.raises(KitError, match="--keep-epochs"):
        train.run(tiny_cfg(work, keep_epochs="some"))
    with pytest.raises(KitError, match="fewer than one effective batch"):
        train.run(tiny_cfg(work, effective_batch=64, force=True))


def test_missing_positives_and_unreadable_images_do_not_crash(tmp_path):
    work = make_work(tmp_path, sizes=(("train", 32), ("val", 4)), classes=["Alpha", "Beta", "Gamma", "Delta"])
    val = pd.read_csv(layout.split_csv(work, "val"))
    val["Delta"] = 0  # no positive Delta in val
    val.to_csv(layout.split_csv(work, "val"), index=False)
    layout.image_path(work, "images/train_005.jpg").write_bytes(b"not an image")
    out = run_quietly(tiny_cfg(work, epochs=1))
    assert "no positive Delta in val.csv" in out and "unreadable image" in out
    history = pd.read_csv(layout.history_csv(work))
    assert np.isnan(history.val_auc_Delta[0]) and np.isfinite(history.val_macro_auc[0])
