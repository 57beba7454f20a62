"""The recipe's parts a reviewer checks first: a head that starts at the classes' prevalence,
single-label decisions calibrated on val, the learning-rate schedule it documents, and no
horizontal flip unless asked."""
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from scipy.special import logit
from sklearn.metrics import balanced_accuracy_score, confusion_matrix
from train_fixtures import CLASSES, make_work, run_quietly, tiny_cfg

from kit import layout
from kit.config import Config, optimizer_kwargs
from kit.data import augment
from kit.data.loaders import XrayDataset
from kit.models.model import create_model, init_head_prior
from kit.reports import metrics
from kit.stages import train
from kit.training.optim import build_optimizer, build_scheduler


def test_the_head_starts_at_the_log_odds_of_the_train_split(tmp_path, monkeypatch):
    """Through the train stage, on a generated split with one class twice as common."""
    work = make_work(tmp_path, sizes=(("train", 36), ("val", 12)))
    table = pd.read_csv(layout.split_csv(work, "train"))
    table.loc[table.index[:8], CLASSES] = [1, 0, 0]  # Alpha: 16 of 36, Beta 10, Gamma 10
    table.to_csv(layout.split_csv(work, "train"), index=False)
    seen = {}

    class Stop(Exception):
        pass

    def capture(world, model, *args, **kwargs):
        seen["bias"] = model.get_classifier().bias.detach().clone()
        raise Stop

    monkeypatch.setattr(train, "Trainer", capture)
    with pytest.raises(Stop):
        run_quietly(tiny_cfg(work))
    expected = logit(table[CLASSES].to_numpy().mean(0))
    np.testing.assert_allclose(seen["bias"].numpy(), expected, atol=1e-6)
    assert expected[0] > expected[1]  # the commoner class starts higher
    with pytest.raises(Stop):
        run_quietly(tiny_cfg(work, head_init="zero"))
    assert not seen["bias"].any()


def test_every_head_gets_the_prior_and_an_absent_class_stays_finite():
    targets = np.zeros((20, 3), np.float32)
    targets[:5, 0], targets[:, 1] = 1, 1  # 25%, 100%, 0%
    model = timm.create_model("levit_128s", num_classes=3, pretrained=False)  # a distilled pair of heads
    init_head_prior(model, targets)
    expected = logit([0.25, 1 - 0.5 / 20, 0.5 / 20])
    for head in model.get_classifier():
        np.testing.assert_allclose(head.linear.bias.detach().numpy(), expected, rtol=1e-5)
    model.eval()
    with torch.no_grad():  # the untrained model's output starts near the prevalence
        probs = torch.sigmoid(model(torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0)))).numpy()
    assert np.isfinite(probs).all()
    # within half an image (of 20) of the train prevalence, 25%, 100% and 0%: where the prior puts it
    np.testing.assert_allclose(probs, np.broadcast_to(targets.mean(0), probs.shape), atol=0.5 / 20 + 1e-3)
    np.testing.assert_allclose(probs, np.broadcast_to([0.25, 0.975, 0.025], probs.shape), atol=1e-3)


def test_single_label_decisions_follow_the_val_thresholds():
    """Three classes whose scores are calibrated differently (class 0 inflated): the decision is
    the class furthest above its val threshold in log-odds, computed here by hand, and it beats
    the plain argmax on balanced accuracy."""
    rng = np.random.default_rng(0)

    def films(n):
        truth = rng.integers(0, 3, n)
        signal = np.eye(3)[truth] * 2.0 + rng.normal(0, 0.7, (n, 3))
        probs = 1 / (1 + np.exp(-(signal + np.array([2.5, -1.0, -2.0]))))  # shifted calibrations
        return np.eye(3)[truth], probs

    y_val, p_val = films(600)
    y_test, p_test = films(600)
    thresholds = metrics.youden_thresholds(y_val, p_val)
    by_hand = np.argmax(np.log(p_test / (1 - p_test)) - np.log(thresholds / (1 - thresholds)), axis=1)
    np.testing.assert_array_equal(metrics.single_label_decision(p_test, thresholds), by_hand)
    report = metrics.single_label_report(y_test, p_test, thresholds)
    truth = y_test.argmax(1)
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, by_hand))
    assert report["confusion_matrix"] == confusion_matrix(truth, by_hand).tolist()
    plain = balanced_accuracy_score(truth, p_test.argmax(1))
    assert plain < 0.5 < report["balanced_accuracy"]


def test_the_schedule_peaks_at_the_end_of_warmup_and_ends_on_the_floor():
    cfg = Config(epochs=3, warmup_epochs=1.0, lr=3e-4, min_lr=1e-6, layer_decay=0.5)
    optimizer = build_optimizer(create_model("eva02_tiny_patch14_224", 3, 28), **optimizer_kwargs(cfg))
    scheduler = build_scheduler(optimizer, 10, cfg.epochs, cfg.warmup_epochs, cfg.min_lr)

    def rates(update):
        scheduler.step_update(update)
        return [(g["lr"], g.get("lr_scale", 1.0)) for g in optimizer.param_groups]

    head = []
    for update in range(30):
        lrs = rates(update)
        for lr, scale in lrs:  # every group on the same schedule, scaled by its depth
            assert lr == pytest.approx(lrs[-1][0] / lrs[-1][1] * scale)
        head.append(max(lr / scale for lr, scale in lrs))
    assert head[0] == pytest.approx(1e-6)  # the first update: warmup starts at the floor
    assert head[10] == pytest.approx(3e-4)  # the end of warmup: the peak, exactly
    assert head[29] == pytest.approx(1e-6)  # the last update: the floor
    assert np.all(np.diff(head[:11]) > 0) and np.all(np.diff(head[10:]) < 0)


def test_a_run_no_longer_than_its_warmup_still_ends_on_the_floor():
    """--epochs 1 (a smoke run, or what fits) with the default 1-epoch warmup: warmup takes half."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = build_scheduler(optimizer, 10, 1, 1.0, 1e-6)
    lrs = []
    for update in range(10):
        scheduler.step_update(update)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-6) and lrs[5] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-6)


def test_no_flip_unless_asked(tmp_path, monkeypatch):
    """A flip mirrors the affine map (negative determinant): never by default, always at 1."""
    work = make_work(tmp_path, sizes=(("train", 8),))
    paths = layout.image_paths(work, pd.read_csv(layout.split_csv(work, "train"))["file"])
    dets, real = [], augment.affine_matrix

    def spy(shape, size, rng, p):
        matrix = real(shape, size, rng, p)
        dets.append(np.linalg.det(matrix[:, :2]))
        return matrix

    monkeypatch.setattr(augment, "affine_matrix", spy)
    for strength in augment.STRENGTH:
        for hflip, sign in ((Config().hflip, 1), (1.0, -1)):
            dets.clear()
            data = XrayDataset(paths, np.zeros((8, 3)), 28, strength, seed=0, hflip=hflip)
            for epoch in range(6):
                for i in range(len(paths)):
                    data[i, epoch]
            assert len(dets) == 48 and (np.sign(dets) == sign).all()
