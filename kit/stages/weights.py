"""Weights stage, for a machine where the internet works: save the pretrained weights of --model
as DIR/model.safetensors beside timm's config.json, which names the architecture, so that
`--pretrained auto` recognizes the folder wherever Kaggle mounts it. Upload DIR as a Kaggle
dataset and name it in dataset_sources: a kernel with the internet off then has its weights.
"""
import os
import tempfile
from pathlib import Path

import timm
from timm.models import save_for_hf

from kit import env
from kit.errors import KitError
from kit.models.model import check_arch


def out_dir(cfg) -> Path:
    """--out, else data/weights/MODEL: under ./data, where `--pretrained auto` looks on this machine."""
    return Path(cfg.out) if cfg.out else Path("data") / "weights" / cfg.model


def run(cfg):
    check_arch(cfg.model)
    if not env.hub_reachable():
        raise KitError("the Hugging Face hub cannot be reached (or HF_HUB_OFFLINE is set): run "
                       "--stage weights where the internet works, then upload the folder")
    try:
        model = timm.create_model(cfg.model, pretrained=True)
    except Exception as e:  # the hub and timm raise many types; all mean "no weights"
        raise KitError(f"cannot fetch the pretrained weights of {cfg.model} "
                       f"({str(e).strip().splitlines()[0][:200]}); check --model and the network") from e
    out = out_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".weights.") as staging:
        save_for_hf(model, staging, safe_serialization=True)
        for path in sorted(Path(staging).iterdir()):
            os.replace(path, out / path.name)
    size = (out / "model.safetensors").stat().st_size / 1e6
    print(f"[weights] {out}/model.safetensors ({size:.0f} MB) and config.json of {cfg.model}")
    print(f"[weights] to train offline on Kaggle: kaggle datasets init -p {out}; set id and title in its "
          f"dataset-metadata.json; kaggle datasets create -p {out}; then add the dataset's OWNER/SLUG to "
          f"dataset_sources in kernel-metadata.json (--pretrained auto finds it under /kaggle/input)")
