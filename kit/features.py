"""A timm model's penultimate-layer features (pooled pre-logits), with its logits, over image files."""
import numpy as np
import torch

from kit.data import XrayDataset, make_loader, worker_count
from kit.infer import logits
from kit.scoring import batch_size


class FeaturesAndLogits(torch.nn.Module):
    """The model's pre-logits features with its logits appended as the last columns, so one
    forward pass (and kit.infer's loop) gives both."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        # the head twice over one trunk pass, not get_classifier(): some heads are more than one
        # layer (LeViT's distilled pair), and forward_head knows how to combine them
        trunk = self.model.forward_features(x)
        return torch.cat([self.model.forward_head(trunk, pre_logits=True), self.model.forward_head(trunk)], dim=1)


def extract(model, paths, img_size, mean, std, cfg, device, desc):
    """(features float32 [N, D], logits float32 [N, C], ok bool [N]) in `paths` order; rows of
    unreadable images are not meaningful where ok is False."""
    loader = make_loader(XrayDataset(paths, None, img_size), batch_size(cfg, device), shuffle=False,
                         workers=worker_count(cfg.workers), seed=cfg.seed)
    index, out, ok = logits(FeaturesAndLogits(model), loader, device, mean, std, cfg.amp, progress=desc)
    n_classes = model.num_classes
    ordered, good = np.empty_like(out), np.zeros(len(paths), bool)
    ordered[index], good[index] = out, ok
    return ordered[:, :-n_classes], ordered[:, -n_classes:], good
