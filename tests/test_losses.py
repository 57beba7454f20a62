import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from kit.config import Config, loss_kwargs
from kit.training.losses import FocalBCELoss, balanced_pos_weight, build_loss


def _batch(seed=0, n=16, c=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 3
    targets = (torch.rand(n, c, generator=g) < 0.3).float()
    return logits, targets


def _focal_by_hand(logits, targets, alpha, gamma):
    """The focal loss formula (Lin et al., 2017) in numpy, averaged over every entry."""
    x, t = logits.double().numpy(), targets.double().numpy()
    p = 1 / (1 + np.exp(-x))
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return float(np.mean(alpha_t * (1 - p_t) ** gamma * ce))


@pytest.mark.parametrize("w", [0.0, 0.3, 0.7, 1.0])
def test_focal_bce_is_the_weighted_sum_of_torchvision_focal_and_bce(w):
    logits, targets = _batch()
    got = FocalBCELoss(w, alpha=0.25, gamma=2.0)(logits, targets)
    focal = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="mean")
    bce = torch.nn.BCEWithLogitsLoss()(logits, targets)
    assert got.item() == pytest.approx((w * focal + (1 - w) * bce).item(), rel=1e-6)
    assert focal.item() == pytest.approx(_focal_by_hand(logits, targets, 0.25, 2.0), rel=1e-5)


def test_pos_weight_applies_to_the_bce_part_only():
    logits, targets = _batch(seed=1)
    pw = torch.tensor([1.0, 2.0, 3.0, 0.5, 4.0])
    got = FocalBCELoss(0.7, 0.25, 2.0, pos_weight=pw)(logits, targets)
    focal = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="mean")
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=pw)(logits, targets)
    assert got.item() == pytest.approx((0.7 * focal + 0.3 * bce).item(), rel=1e-6)


def test_build_loss_picks_the_configured_mix():
    logits, targets = _batch(seed=2)
    bce = torch.nn.BCEWithLogitsLoss()(logits, targets).item()
    focal = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="mean").item()
    def loss(**chosen):
        return build_loss(targets, **loss_kwargs(Config(**chosen)))(logits, targets).item()

    assert loss(loss="bce") == pytest.approx(bce, rel=1e-6)
    assert loss(loss="focal") == pytest.approx(focal, rel=1e-6)
    mix = loss(loss="focal_bce", focal_weight=0.7)
    assert mix == pytest.approx(0.7 * focal + 0.3 * bce, rel=1e-6)


def test_balanced_pos_weight_is_negatives_over_positives():
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    assert balanced_pos_weight(targets).tolist() == [1.0, 3.0, 1.0]  # no positive: neutral 1
    loss = build_loss(targets, **loss_kwargs(Config(pos_weight="balanced")))
    assert loss.pos_weight.tolist() == [1.0, 3.0, 1.0]


def _asl_by_hand(logits, targets, gamma_neg, gamma_pos, clip):
    """The asymmetric loss (Ridnik et al., 2021) in numpy: negatives' probability shifted down by
    `clip`, each side focused by its own exponent, averaged over every entry."""
    x, t = logits.double().numpy(), targets.double().numpy()
    p = 1 / (1 + np.exp(-x))
    p_neg = np.clip(p - clip, 0, None)
    pos = t * (1 - p) ** gamma_pos * np.log(np.clip(p, 1e-8, None))
    neg = (1 - t) * p_neg ** gamma_neg * np.log(np.clip(1 - p_neg, 1e-8, None))
    return float(-np.mean(pos + neg))


@pytest.mark.parametrize("gammas", [(4.0, 1.0, 0.05), (2.0, 0.0, 0.0)])
def test_asl_is_the_asymmetric_loss_formula_averaged(gammas):
    logits, targets = _batch(seed=3)
    gamma_neg, gamma_pos, clip = gammas
    cfg = Config(loss="asl", asl_gamma_neg=gamma_neg, asl_gamma_pos=gamma_pos, asl_clip=clip)
    got = build_loss(targets, **loss_kwargs(cfg))(logits, targets).item()
    assert got == pytest.approx(_asl_by_hand(logits, targets, gamma_neg, gamma_pos, clip), rel=1e-5)
