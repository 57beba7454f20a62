"""Soup arithmetic: epoch selection, refusal of mismatched checkpoints, uniform and greedy soups."""
import numpy as np
import pytest
import timm.models
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kit import soup
from kit.errors import KitError
from kit.metrics import macro_auc


def test_parse_epochs():
    assert soup.parse_epochs("last2", 6) == [5, 6]
    assert soup.parse_epochs("LAST3", 6) == [4, 5, 6]
    assert soup.parse_epochs("6, 3,5", 6) == [3, 5, 6]
    for bad in ("last0", "last7", "five", "", "0,1"):
        with pytest.raises(KitError, match="--soup-epochs"):
            soup.parse_epochs(bad, 6)


def _ckpt(seed, arch="m", classes=("a", "b"), shape=(3, 4)):
    g = torch.Generator().manual_seed(seed)
    sd = {"w": torch.randn(shape, generator=g), "b": torch.randn(3, generator=g) * 1e3,
          "steps": torch.tensor([seed], dtype=torch.int64)}
    return {"state_dict": sd, "arch": arch, "classes": list(classes), "img_size": 56}


def test_check_compatible_names_what_differs():
    soup.check_compatible({"epoch_05.pth": _ckpt(0), "epoch_06.pth": _ckpt(1)})
    with pytest.raises(KitError, match=r"epoch_06.pth.*arch \(m vs other\)"):
        soup.check_compatible({"epoch_05.pth": _ckpt(0), "epoch_06.pth": _ckpt(1, arch="other")})
    with pytest.raises(KitError, match="classes"):
        soup.check_compatible({"x": _ckpt(0), "y": _ckpt(1, classes=("a", "c"))})
    with pytest.raises(KitError, match="shapes"):
        soup.check_compatible({"x": _ckpt(0), "y": _ckpt(1, shape=(3, 5))})


def timm_average(paths):
    """Independent oracle: timm's avg_checkpoints.py algorithm (timm's own file loader, each
    tensor summed in float64, divided by the count, cast to float32), written with numpy."""
    total = {}
    for path in paths:
        for key, value in timm.models.load_state_dict(str(path), use_ema=True).items():
            total[key] = total.get(key, 0) + value.numpy().astype(np.float64)
    return {k: (v / len(paths)).astype(np.float32) for k, v in total.items()}


def test_uniform_average_equals_timm_algorithm(tmp_path):
    paths = []
    for seed in range(3):
        paths.append(tmp_path / f"epoch_{seed:02d}.pth")
        torch.save(_ckpt(seed), paths[-1])
    sds = [torch.load(p, weights_only=True)["state_dict"] for p in paths]
    avg = soup.uniform_average(sds)
    oracle = timm_average(paths)
    for key in ("w", "b"):
        assert avg[key].dtype == torch.float32
        np.testing.assert_array_equal(avg[key].numpy(), oracle[key])
    assert avg["steps"].dtype == torch.int64 and avg["steps"].item() == 2  # from the last one


def _linear_auc(features, targets):
    """Validation macro AUC of a linear classifier's state dict on fixed data."""
    def score(sd):
        logits = features @ sd["weight"].double().T.numpy() + sd["bias"].double().numpy()
        return macro_auc(targets, logits)
    return score


@pytest.fixture(scope="module")
def val_data():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 8))
    true_w = rng.normal(size=(3, 8))
    targets = (features @ true_w.T + rng.normal(scale=2.0, size=(300, 3)) > 0.5).astype(int)
    return features, targets, true_w


def test_greedy_soup_skips_a_harmful_ingredient(val_data):
    features, targets, true_w = val_data
    good = {"weight": torch.tensor(true_w, dtype=torch.float32), "bias": torch.zeros(3)}
    noisy = {"weight": good["weight"] + 0.5 * torch.randn(3, 8, generator=torch.Generator().manual_seed(1)),
             "bias": torch.zeros(3)}
    harmful = {"weight": -5 * good["weight"], "bias": torch.zeros(3)}
    ingredients = {"epoch_04": harmful, "epoch_05": noisy, "epoch_06": good}
    score = _linear_auc(features, targets)
    scores = {n: score(sd) for n, sd in ingredients.items()}
    sd, best, steps = soup.greedy(ingredients, score, scores)
    assert [s[0] for s in steps] == sorted(scores, key=scores.get, reverse=True)
    kept = [name for name, _, accepted in steps if accepted]
    assert "epoch_04" not in kept
    assert best == pytest.approx(score(sd)) and best >= max(scores.values())


@settings(max_examples=25, deadline=None)
@given(noise_levels=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=5), seed=st.integers(0, 10_000))
def test_greedy_soup_never_scores_below_its_best_ingredient(noise_levels, seed, val_data):
    features, targets, true_w = val_data
    g = torch.Generator().manual_seed(seed)
    ingredients = {f"epoch_{i}": {"weight": torch.tensor(true_w, dtype=torch.float32)
                                  + level * torch.randn(3, 8, generator=g), "bias": torch.randn(3, generator=g)}
                   for i, level in enumerate(noise_levels)}
    score = _linear_auc(features, targets)
    scores = {n: score(sd) for n, sd in ingredients.items()}
    sd, best, steps = soup.greedy(ingredients, score, scores)
    assert best >= max(scores.values())
    assert best == pytest.approx(score(sd))
    assert [v for _, v, accepted in steps if accepted] == sorted(v for _, v, accepted in steps if accepted)
