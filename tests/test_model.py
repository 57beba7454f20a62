import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from train_fixtures import one_thread  # noqa: F401 (autouse)

from kit.errors import KitError
from kit.models import model as kit_model
from kit.models.model import checkpoint_dict, create_model, load_model, norm_stats, read_weights, save_weights

ARCH = "eva02_tiny_patch14_224"


def test_pretrained_file_loads_through_timm_with_a_new_head_and_resampled_positions(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model(ARCH, num_classes=7, img_size=28)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    model = create_model(ARCH, num_classes=3, img_size=56, pretrained=str(tmp_path / "weights.pth"))
    assert model.head.weight.shape == (3, 192)
    assert torch.equal(model.blocks[5].mlp.fc1.weight, source.blocks[5].mlp.fc1.weight)
    assert model.pos_embed.shape[1] == 1 + 4 * 4 and source.pos_embed.shape[1] == 1 + 2 * 2
    # the 2x2 grid of positions at 28 px, resampled by timm's own function to 56 px's 4x4
    expected = resample_abs_pos_embed(source.pos_embed, new_size=[4, 4], num_prefix_tokens=1)
    assert torch.allclose(model.pos_embed, expected, atol=1e-6)
    assert not torch.allclose(model.pos_embed[:, 1:5], source.pos_embed[:, 1:], atol=1e-3)


def test_weights_of_another_model_are_refused_in_one_line(tmp_path):
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "resnet.pth")
    with pytest.raises(KitError, match="does not match"):
        create_model(ARCH, 3, 28, pretrained=str(tmp_path / "resnet.pth"))
    with pytest.raises(KitError, match="no such file"):
        create_model(ARCH, 3, 28, pretrained=str(tmp_path / "absent.pth"))


def test_auto_finds_weights_attached_under_a_data_root(tmp_path):
    kaggle_model = tmp_path / "input" / "eva02-tiny-patch14-224" / "pytorch" / "mim_in22k" / "1"
    kaggle_model.mkdir(parents=True)
    (kaggle_model / "model.safetensors").write_bytes(b"")
    other = tmp_path / "input" / "vit-base" / "model.safetensors"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"")
    assert kit_model.find_weights(ARCH + ".mim_in22k", [tmp_path / "input"]) == kaggle_model / "model.safetensors"


def test_auto_without_weights_or_network_stops_with_advice(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(kit_model.env, "hub_reachable", lambda: False)
    with pytest.raises(KitError, match="--pretrained none"):
        create_model(ARCH, 3, 28, pretrained="auto", search_roots=[tmp_path])


def test_unknown_model_names_close_timm_models():
    with pytest.raises(KitError, match="eva02_tiny_patch14_224"):
        create_model("eva02_tiny_patch14_22", 3, 28)
    with pytest.raises(KitError, match="multiple of"):
        create_model(ARCH, 3, 30)


def test_weights_file_round_trip_and_plain_timm_load(tmp_path):
    torch.manual_seed(1)
    model = create_model(ARCH, 3, 28)
    mean, std = norm_stats(model)
    ckpt = checkpoint_dict(model.state_dict(), arch=ARCH, classes=["a", "b", "c"], img_size=28,
                           mean=mean, std=std, epoch=2, metric=0.75)
    save_weights(ckpt, tmp_path / "w.pth")
    loaded = load_model(read_weights(tmp_path / "w.pth"), "cpu")
    plain = timm.create_model(ARCH, num_classes=3, img_size=28)
    timm.models.load_checkpoint(plain, str(tmp_path / "w.pth"))
    x = torch.randn(2, 3, 28, 28)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)) and torch.equal(plain.eval()(x), model(x))


def test_read_weights_refuses_other_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(KitError, match="not a readable weights file"):
        read_weights(tmp_path / "junk.pth")
    torch.save({"state_dict": {}}, tmp_path / "bare.pth")
    with pytest.raises(KitError, match="not a kit weights file"):
        read_weights(tmp_path / "bare.pth")
    with pytest.raises(KitError, match="not found"):
        read_weights(tmp_path / "absent.pth")
