"""Penultimate features and logits in one pass, against the plain timm forward of each model
family the kit trains: the recipe's EVA-02, the demo's LeViT (a distilled pair of heads) and a CNN."""
import cv2
import numpy as np
import pytest
import timm
import torch

from kit.config import Config
from kit.data.loaders import to_input
from kit.models.inference import extract


@pytest.mark.parametrize("arch, img_size", [("eva02_tiny_patch14_224", 28), ("levit_128s", 64), ("resnet18", 32)])
def test_features_and_logits_match_the_plain_timm_forward(tmp_path, arch, img_size):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=3,
                              **({} if arch == "resnet18" else {"img_size": img_size})).eval()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 256, (img_size, img_size), dtype=np.uint8))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    cfg = Config(workers=0, amp="off")
    feats, logits, ok = extract(model, paths, img_size, mean, std, torch.device("cpu"), None,
                                batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed, amp=cfg.amp)
    images = torch.stack([torch.from_numpy(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE))[None] for p in paths])
    with torch.no_grad():
        x = to_input(images, mean, std, torch.device("cpu"))
        expected_logits = model(x)
        expected_feats = model.forward_head(model.forward_features(x), pre_logits=True)
    assert ok.all() and logits.shape == (5, 3) and feats.shape == tuple(expected_feats.shape)
    np.testing.assert_allclose(logits, expected_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(feats, expected_feats.numpy(), atol=1e-4)
