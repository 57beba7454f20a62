"""Training losses on multi-hot targets: sigmoid focal loss, BCE, their weighted sum, and the
asymmetric loss (Ridnik et al. 2021) that multi-label chest X-ray work uses."""
import numpy as np
import torch
import torch.nn.functional as F
from timm.loss import AsymmetricLossMultiLabel
from torch import nn
from torchvision.ops import sigmoid_focal_loss

FOCAL_WEIGHT = {"focal": 1.0, "bce": 0.0}  # focal_bce takes --focal-weight


class FocalBCELoss(nn.Module):
    """w * focal + (1 - w) * BCE, each averaged over every (image, class) entry.

    pos_weight, one factor per class, weighs the positives of the BCE part only."""

    def __init__(self, focal_weight=0.7, alpha=0.25, gamma=2.0, pos_weight=None):
        super().__init__()
        self.focal_weight, self.alpha, self.gamma = focal_weight, alpha, gamma
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits, targets):
        logits, targets = logits.float(), targets.float()
        loss = logits.new_zeros(())
        if self.focal_weight > 0:
            focal = sigmoid_focal_loss(logits, targets, self.alpha, self.gamma, reduction="mean")
            loss = loss + self.focal_weight * focal
        if self.focal_weight < 1:
            bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)
            loss = loss + (1 - self.focal_weight) * bce
        return loss


def balanced_pos_weight(targets) -> torch.Tensor:
    """negatives / positives of each class; 1 for a class without positives or negatives."""
    targets = np.asarray(targets, dtype=np.float64)
    pos = targets.sum(0)
    neg = len(targets) - pos
    ratio = np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0)
    return torch.tensor(ratio, dtype=torch.float32)


class AsymmetricLoss(nn.Module):
    """timm's AsymmetricLossMultiLabel averaged over every (image, class) entry, as the other losses
    are: a sum would tie the gradient's size (and --clip-grad) to the batch."""

    def __init__(self, gamma_neg=4.0, gamma_pos=1.0, clip=0.05):
        super().__init__()
        args = dict(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)
        try:
            self.asl, self.summed = AsymmetricLossMultiLabel(**args, reduction="mean"), False
        except TypeError:  # timm before its `reduction` argument returns the sum
            self.asl, self.summed = AsymmetricLossMultiLabel(**args), True

    def forward(self, logits, targets):
        loss = self.asl(logits.float(), targets.float())
        return loss / targets.numel() if self.summed else loss


def build_loss(train_targets, loss, pos_weight, focal_weight, focal_alpha, focal_gamma,
               asl_gamma_neg, asl_gamma_pos, asl_clip) -> nn.Module:
    """The loss named `loss` (--loss; config.loss_kwargs gives the rest from a Config)."""
    if loss == "asl":
        return AsymmetricLoss(asl_gamma_neg, asl_gamma_pos, asl_clip)
    weights = balanced_pos_weight(train_targets) if pos_weight == "balanced" else None
    return FocalBCELoss(FOCAL_WEIGHT.get(loss, focal_weight), focal_alpha, focal_gamma, weights)
