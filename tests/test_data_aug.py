import cv2
import numpy as np
import pytest
import torch

from kit.data import augment
from kit.data.images import load_gray
from kit.data.loaders import EpochSampler, XrayDataset, make_loader, to_input


def _gradient(h=60, w=80):
    return np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))


def test_load_gray_decodes_jpeg_rgba_and_16_bit_png(tmp_path):
    img = _gradient()
    cv2.imwrite(str(tmp_path / "a.jpg"), img)
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.merge([img, img, img, np.full_like(img, 255)]))
    cv2.imwrite(str(tmp_path / "deep.png"), (img.astype(np.uint16) * 16))  # 12-bit range in 16 bits
    for name in ("a.jpg", "rgba.png", "deep.png"):
        out = load_gray(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert np.abs(out.astype(int) - img).max() <= 3, name  # the full range survives
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    assert load_gray(tmp_path / "broken.jpg") is None
    assert load_gray(tmp_path / "missing.png") is None


def test_affine_without_randomness_is_a_resize_and_flip_mirrors():
    img = _gradient(64, 96)
    still = dict(augment.STRENGTH["strong"], rotate=0.0, scale=(1, 1), shift=0.0, flip=0.0)
    rng = np.random.default_rng(0)
    warped = cv2.warpAffine(img, augment.affine_matrix(img.shape, 32, rng, still), (32, 32))
    resized = cv2.resize(img, (32, 32), interpolation=cv2.INTER_LINEAR)
    assert np.abs(warped.astype(int) - resized).max() <= 2
    flipped = cv2.warpAffine(img, augment.affine_matrix(img.shape, 32, rng, dict(still, flip=1.0)), (32, 32))
    assert np.abs(flipped.astype(int) - warped[:, ::-1]).max() <= 2


def test_tone_table_is_monotonic_uint8():
    for seed in range(20):
        lut = augment.tone_table(np.random.default_rng(seed), augment.STRENGTH["strong"])
        assert lut.dtype == np.uint8 and lut.shape == (256,)
        assert np.all(np.diff(lut.astype(int)) >= 0)


def _files(tmp_path, n=6):
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"{i}.jpg")
        cv2.imwrite(str(paths[-1]), np.random.default_rng(i).integers(0, 255, (50, 40), dtype=np.uint8))
    return paths, np.eye(3, dtype=np.float32)[np.arange(n) % 3]


def test_training_items_depend_only_on_seed_epoch_and_index(tmp_path):
    paths, targets = _files(tmp_path)
    a = XrayDataset(paths, targets, 28, aug="strong", seed=1)
    b = XrayDataset(paths, targets, 28, aug="strong", seed=1)
    image, target, index, ok = a[(2, 0)]
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28)
    assert target.tolist() == targets[2].tolist() and index == 2 and ok
    assert torch.equal(a[(2, 0)][0], b[(2, 0)][0])
    assert not torch.equal(a[(2, 0)][0], a[(2, 1)][0])  # a new epoch, a new augmentation


@pytest.mark.parametrize("aug", ["light", "none"])
def test_unreadable_images(tmp_path, capsys, aug):
    paths, targets = _files(tmp_path)
    paths[3].write_bytes(b"garbage")
    train = XrayDataset(paths, targets, 28, aug=aug)  # --aug none trains too: never on a blank image
    image, target, index, ok = train[(3, 0)]
    assert index != 3 and ok and target.tolist() == targets[index].tolist() and int(image.max()) > 0
    assert "unreadable image" in capsys.readouterr().out
    val = XrayDataset(paths, targets, 28)
    image, _, index, ok = val[3]
    assert index == 3 and not ok and int(image.sum()) == 0
    assert XrayDataset(paths, None, 28)[0][1].numel() == 0


def test_epoch_sampler_shards_one_global_order():
    one = list(EpochSampler(20, 16, seed=3))
    ranks = [list(EpochSampler(20, 16, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(one) == 16 and len({i for i, _ in one}) == 16
    assert sorted(ranks[0] + ranks[1]) == sorted(one)
    assert ranks[0][:2] == [one[0], one[2]] and ranks[1][:2] == [one[1], one[3]]
    later = EpochSampler(20, 16, seed=3)
    later.set_position(0, 8)
    assert list(later) == one[8:]
    later.set_position(1, 0)
    assert [i for i, _ in later] != [i for i, _ in one] and all(e == 1 for _, e in later)


def test_loader_and_to_input(tmp_path):
    paths, targets = _files(tmp_path)
    loader = make_loader(XrayDataset(paths, targets, 28), batch_size=4, shuffle=False, workers=0)
    images, y, index, ok = next(iter(loader))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = to_input(images, mean, std, "cpu")
    assert x.shape == (4, 3, 28, 28) and x.dtype == torch.float32
    for c in range(3):
        expected = (images[:, 0].float() / 255 - mean[c]) / std[c]
        assert torch.allclose(x[:, c], expected, atol=1e-6)
    # the trainer hands mean and std over as tensors already on the device: the same input
    assert torch.equal(to_input(images, torch.tensor(mean), torch.tensor(std), "cpu"), x)
    assert index.tolist() == [0, 1, 2, 3] and ok.all()
