"""EVA-X backbones: the published configuration, its MIM checkpoints in EVA's own key layout,
strict loading, and weights files that plain timm rebuilds."""
import re

import pytest
import timm
import torch
from eval_fixtures import write_checkpoints, write_splits
from timm.models.eva import Eva

from kit import layout
from kit.errors import KitError
from kit.models import eva_x
from kit.models.model import checkpoint_dict, create_model, load_model, read_weights, save_weights
from kit.stages import soup, synth_quality

# EVA-X's eva_x.py, written out: what each published model is
PUBLISHED = {
    "eva_x_tiny_patch16": dict(embed_dim=192, num_heads=3),
    "eva_x_small_patch16": dict(embed_dim=384, num_heads=6),
    "eva_x_base_patch16": dict(embed_dim=768, num_heads=12, qkv_fused=False, scale_mlp=True),
}
COMMON = dict(img_size=224, patch_size=16, depth=12, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, use_rot_pos_emb=True,
              ref_feat_shape=(14, 14))
# timm's names -> EVA's original ones (the reverse of timm's checkpoint_filter_fn)
TO_EVA = (("mlp.norm", "mlp.ffn_ln"), ("attn.norm", "attn.inner_attn_ln"), ("mlp.fc1_g", "mlp.w1"),
          ("mlp.fc1_x", "mlp.w2"), ("mlp.fc2", "mlp.w3"), ("mlp.fc1", "mlp.w12"),
          ("attn.q_proj.bias", "attn.q_bias"), ("attn.v_proj.bias", "attn.v_bias"))


def published(name, img_size, seed=0):
    torch.manual_seed(seed)
    return Eva(**dict(COMMON, **PUBLISHED[name], img_size=img_size, num_classes=0))


def mim_checkpoint(source, path, key="model"):
    """`source`'s weights as EVA-X's MIM pretraining saves them: EVA's key names, the final norm
    as `norm`, a mask token, the MIM head, rope tables."""
    state = {}
    for k, v in source.state_dict().items():
        for timm_name, eva_name in TO_EVA:
            k = k.replace(timm_name, eva_name)
        state["norm" + k[len("fc_norm"):] if k.startswith("fc_norm") else k] = v.clone()
    width = source.embed_dim
    state.update({"mask_token": torch.zeros(1, 1, width), "lm_head.weight": torch.randn(width, width),
                  "lm_head.bias": torch.zeros(width), "rope.freqs_cos": torch.ones(4, 8)})
    torch.save({key: state, "epoch": 199}, path)
    return path


def _backbone(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}


@pytest.mark.parametrize("name,key", [("eva_x_tiny_patch16", "model"), ("eva_x_base_patch16", "model_ema")])
def test_mim_checkpoint_loads_every_backbone_tensor(name, key, tmp_path, capsys):
    source = published(name, 32)
    file = mim_checkpoint(source, tmp_path / eva_x.weights_file(name), key)
    model = create_model(name, num_classes=5, img_size=32, pretrained=str(file))
    got, want = _backbone(model), _backbone(source)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    assert model.head.out_features == 5
    assert re.search(rf"{name}: {len(want)} backbone tensors loaded .*; new: head.weight, head.bias",
                     capsys.readouterr().out)


def test_synth_quality_judges_an_eva_x_run_with_eva_x_pretrained_features(cfg, tmp_path):
    """A weights file names EVA-02 for plain timm; the judge's pretrained backbone is still the
    EVA-X model with every MIM tensor, not an EVA-02 that the file does not fit."""
    source = published("eva_x_tiny_patch16", 32)
    file = mim_checkpoint(source, tmp_path / eva_x.weights_file("eva_x_tiny_patch16"))
    run = create_model("eva_x_tiny_patch16", 3, 32)
    ckpt = checkpoint_dict(run.state_dict(), arch="eva_x_tiny_patch16", classes=list("abc"), img_size=32,
                           mean=eva_x.MEAN, std=eva_x.STD, epoch=1, metric=0.5)
    assert eva_x.kit_name(ckpt["arch"], ckpt["model_kwargs"]) == "eva_x_tiny_patch16"
    assert eva_x.kit_name("eva02_tiny_patch14_224") == "eva02_tiny_patch14_224"
    backbone = synth_quality.pretrained_backbone(cfg(pretrained=str(file)), ckpt)
    got, want = _backbone(backbone), _backbone(source)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


def test_mim_checkpoint_at_224_resamples_the_position_table_to_the_image_size(tmp_path):
    source = published("eva_x_tiny_patch16", 224)
    file = mim_checkpoint(source, tmp_path / "w.pt")
    model = create_model("eva_x_tiny_patch16", num_classes=3, img_size=64, pretrained=str(file))
    want = timm.layers.resample_abs_pos_embed(source.pos_embed.detach(), (4, 4), num_prefix_tokens=1,
                                              interpolation="bicubic", antialias=True)
    torch.testing.assert_close(model.pos_embed.detach(), want)
    torch.testing.assert_close(model.blocks[3].mlp.fc2.weight, source.blocks[3].mlp.fc2.weight, rtol=0, atol=0)


@pytest.mark.parametrize("source,looks", [
    (lambda: published("eva_x_tiny_patch16", 32), "looks like eva_x_tiny_patch16"),
    (lambda: timm.create_model("vit_small_patch16_224", img_size=32, num_classes=0), "not an EVA-X"),
    (lambda: timm.create_model("eva02_small_patch14_224", img_size=28, num_classes=0), "14x14 patches"),
])
def test_a_file_of_another_model_is_refused_in_one_line(source, looks, tmp_path):
    model, file = source(), tmp_path / "other.pt"
    if isinstance(model, Eva):
        mim_checkpoint(model, file)
    else:  # timm's own names, as another model's file holds them
        torch.save({"model": model.state_dict()}, file)
    with pytest.raises(KitError) as err:
        create_model("eva_x_small_patch16", num_classes=3, img_size=32, pretrained=str(file))
    message = str(err.value)
    assert "\n" not in message and "does not fit eva_x_small_patch16" in message and looks in message
    assert re.search(r"\((missing|left over|shapes differ) \S+", message)


def test_auto_finds_the_published_file_by_its_name(tmp_path):
    source = published("eva_x_tiny_patch16", 32)
    folder = tmp_path / "input" / "eva-x" / "pytorch" / "default" / "1"
    folder.mkdir(parents=True)
    mim_checkpoint(published("eva_x_small_patch16", 32), folder / eva_x.weights_file("eva_x_small_patch16"))
    mim_checkpoint(source, folder / eva_x.weights_file("eva_x_tiny_patch16"))
    model = create_model("eva_x_tiny_patch16", 3, 32, pretrained="auto", search_roots=[tmp_path / "input"])
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    with pytest.raises(KitError, match="no eva_x_base_patch16_merged520k_mim.pt under"):
        create_model("eva_x_base_patch16", 3, 32, pretrained="auto", search_roots=[tmp_path / "input"])


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_registered_model_is_the_published_configuration(name):
    depth = 2  # the blocks are alike; two show how they chain, at a fraction of the time
    ours = timm.create_model(name, num_classes=3, img_size=48, depth=depth)
    torch.manual_seed(1)
    theirs = Eva(**dict(COMMON, **PUBLISHED[name], img_size=48, num_classes=3, depth=depth))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))
    assert ours.pretrained_cfg["mean"] == eva_x.MEAN


def test_weights_file_loads_in_plain_timm_with_the_same_outputs(tmp_path):
    """The README's recipe: timm.create_model(arch, num_classes, img_size, **model_kwargs) and
    timm's own checkpoint loader, no kit code."""
    model = create_model("eva_x_small_patch16", 4, 32).eval()
    path = tmp_path / "soup.pth"
    save_weights(checkpoint_dict(model.state_dict(), arch="eva_x_small_patch16", classes=list("abcd"), img_size=32,
                                 mean=eva_x.MEAN, std=eva_x.STD, epoch=2, metric=0.5), path)
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["arch"] == "eva02_small_patch14_224" and ckpt["model_kwargs"]["patch_size"] == 16
    plain = timm.create_model(ckpt["arch"], num_classes=len(ckpt["classes"]), img_size=ckpt["img_size"],
                              **ckpt["model_kwargs"])
    timm.models.load_checkpoint(plain, str(path))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(plain.eval()(x), want)
        torch.testing.assert_close(load_model(read_weights(path), "cpu")(x), want)


def test_eva_x_soup_loads_with_the_readme_recipe(cfg):
    """A run of eva_x_tiny_patch16 through the soup stage: plain timm rebuilds the soup from
    the file alone and answers as the average of the epochs' weights does."""
    c = cfg(epochs=2, workers=0)
    write_splits(c.work)
    paths = write_checkpoints(c.work, epochs=(1, 2), arch="eva_x_tiny_patch16", img_size=32)
    soup.run(c)
    path = layout.soup_weights(c.work)
    ckpt = torch.load(path, weights_only=False)
    plain = timm.create_model(ckpt["arch"], num_classes=len(ckpt["classes"]), img_size=ckpt["img_size"],
                              **ckpt.get("model_kwargs", {}))
    timm.models.load_checkpoint(plain, str(path))
    epochs = [read_weights(p) for p in paths.values()]
    average = {k: (epochs[0]["state_dict"][k] + epochs[1]["state_dict"][k]) / 2 for k in epochs[0]["state_dict"]}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), load_model({**epochs[0], "state_dict": average}, "cpu")(x))
