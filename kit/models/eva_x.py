"""EVA-X (Yao et al. 2024, hustvl/EVA-X): ViTs pretrained by masked image modelling on about
520,000 chest X-rays, built with timm's `Eva` exactly as the EVA-X repository configures it
(SwiGLU MLP, rotary position embeddings on a 14x14 reference grid, mean pooling; the base
with separate q/k/v and a scaled MLP), registered in timm as eva_x_{tiny,small,base}_patch16.

Each is timm's EVA-02 of the same width with 16-pixel patches and the 14x14 rope grid, so a
weights file records that recipe (`timm_recipe`) and plain timm rebuilds it without this module.
The published MIM checkpoints (`eva_x_*_patch16_merged520k_mim.pt`: `model` or `model_ema`, EVA's
original key names) load through timm's EVA key conversion, strictly for the backbone.
"""
from pathlib import Path

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.eva import Eva, checkpoint_filter_fn

from kit.errors import KitError, examples

# EVA-X's normalization (its classification datasets.py): the grey mean and spread of its X-rays
MEAN, STD = (0.49185243,) * 3, (0.28509309,) * 3
EVA_X = dict(img_size=224, patch_size=16, depth=12, mlp_ratio=4 * 2 / 3, swiglu_mlp=True,
             use_rot_pos_emb=True, ref_feat_shape=(14, 14))  # 224 / 16
SIZES = {
    "eva_x_tiny_patch16": dict(embed_dim=192, num_heads=3),
    "eva_x_small_patch16": dict(embed_dim=384, num_heads=6),
    "eva_x_base_patch16": dict(embed_dim=768, num_heads=12, qkv_fused=False, scale_mlp=True),
}
# the timm model each is, given patch_size=16 and ref_feat_shape=(14, 14)
TIMM_BASE = {"eva_x_tiny_patch16": "eva02_tiny_patch14_224", "eva_x_small_patch16": "eva02_small_patch14_224",
             "eva_x_base_patch16": "eva02_base_patch14_224"}
TIMM_KWARGS = {k: EVA_X[k] for k in ("patch_size", "ref_feat_shape")}
FILE_SUFFIX = "_merged520k_mim.pt"
SHOWN = 3

default_cfgs = generate_default_cfgs({
    f"{name}.mim_merged520k": dict(url="", hf_hub_id="MapleF/eva_x", num_classes=0, mean=MEAN, std=STD,
                                   input_size=(3, 224, 224), license="apache-2.0")
    for name in SIZES})


def _build(name, pretrained=False, **kwargs):
    if pretrained:
        raise KitError(f"{name}: load EVA-X weights with the kit's --pretrained FILE, not timm's pretrained=True")
    return build_model_with_cfg(Eva, name, False, **dict(EVA_X, **SIZES[name], **kwargs))


@register_model
def eva_x_tiny_patch16(pretrained=False, **kwargs) -> Eva:
    return _build("eva_x_tiny_patch16", pretrained, **kwargs)


@register_model
def eva_x_small_patch16(pretrained=False, **kwargs) -> Eva:
    return _build("eva_x_small_patch16", pretrained, **kwargs)


@register_model
def eva_x_base_patch16(pretrained=False, **kwargs) -> Eva:
    return _build("eva_x_base_patch16", pretrained, **kwargs)


def _untagged(arch) -> str:
    """The model's name without its pretrained tag (eva_x_small_patch16.mim_merged520k)."""
    return arch.partition(".")[0]


def _patch_weight(state):
    return next((v for k, v in state.items() if k.endswith("patch_embed.proj.weight")), None)


def is_eva_x(arch) -> bool:
    return _untagged(arch) in SIZES


def timm_recipe(arch) -> tuple:
    """(timm model name, extra timm.create_model arguments) that build `arch` in plain timm."""
    name = _untagged(arch)
    return (TIMM_BASE[name], dict(TIMM_KWARGS)) if name in SIZES else (arch, {})


def kit_name(arch, model_kwargs=None) -> str:
    """The name a weights file's plain-timm `arch` and `model_kwargs` were built from: the inverse
    of timm_recipe, so that a judge or a report names the EVA-X model, not its EVA-02 twin."""
    if (model_kwargs or {}).get("patch_size") == TIMM_KWARGS["patch_size"]:
        return next((name for name, base in TIMM_BASE.items() if base == arch), arch)
    return arch


def weights_file(arch) -> str:
    """The published MIM checkpoint's file name, as --pretrained auto looks for it."""
    return _untagged(arch) + FILE_SUFFIX


def _read(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise KitError(f"--pretrained {path} is not a readable weights file ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:120]}); attach eva_x_*{FILE_SUFFIX}") from e


def _unwrap(ckpt) -> dict:
    for key in ("model_ema", "model", "module", "state_dict"):  # as timm's checkpoint_filter_fn reads it
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
    return ckpt


def looks_like(state) -> str:
    """Which model a raw state dict seems to belong to, in words."""
    patch = _patch_weight(state)
    if patch is None or patch.ndim != 4:
        return "no ViT (it holds no patch_embed.proj.weight)"
    width, kernel = patch.shape[0], tuple(patch.shape[-2:])
    split_qkv = any(k.endswith("blocks.0.attn.q_proj.weight") for k in state)
    for name, size in SIZES.items():
        if (kernel == (16, 16) and size["embed_dim"] == width and split_qkv == (not size.get("qkv_fused", True))
                and any(".mlp.w12." in k or ".mlp.w1." in k or ".mlp.fc1_g." in k for k in state)):
            return name
    return f"a ViT of width {width} with {kernel[0]}x{kernel[1]} patches, not an EVA-X"


def load_pretrained(model, arch, path):
    """Load an EVA-X MIM checkpoint into `model` (built by timm as `arch`), every backbone tensor
    or none: a file of another size or model stops the run naming the keys that do not fit."""
    path = Path(path)
    state = _unwrap(_read(path))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KitError(f"--pretrained {path} holds no state dict of tensors; attach eva_x_*{FILE_SUFFIX}")
    name = _untagged(arch)
    patch = model.patch_embed.proj.weight
    raw_patch = _patch_weight(state)
    target = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    if raw_patch is not None and raw_patch.shape != patch.shape:  # timm would resample another patch size
        converted, missing, extra, wrong = {}, [], [], [f"patch_embed.proj.weight {tuple(raw_patch.shape)}"]
    else:
        converted = checkpoint_filter_fn(state, model)
        missing = [k for k in target if k not in converted]
        extra = [k for k in converted if k not in target]
        wrong = [f"{k} {tuple(converted[k].shape)}" for k in target
                 if k in converted and converted[k].shape != target[k].shape]
    if missing or extra or wrong:
        parts = [f"{what} {examples(keys, SHOWN, sort=False)}"
                 for what, keys in (("missing", missing), ("left over", extra), ("shapes differ", wrong)) if keys]
        raise KitError(f"--pretrained {path} does not fit {name} ({'; '.join(parts)}): it looks like "
                       f"{looks_like(state)}; pass the matching --model or {weights_file(name)}")
    model.load_state_dict({k: converted[k] for k in target}, strict=False)
    new = [k for k in model.state_dict() if k not in target]
    print(f"[train] {name}: {len(target)} backbone tensors loaded from {path.name}; new: {', '.join(new)}")
    return model
