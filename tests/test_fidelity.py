import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.spatial.distance import cdist

from kit.reports import fidelity


def random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_of_two_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    for d in (1, 3, 8):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        c1, c2 = random_cov(rng, d), random_cov(rng, d)
        oracle = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * np.real(sqrtm(c1 @ c2)))
        assert fidelity.frechet_from_moments(mu1, c1, mu2, c2) == pytest.approx(oracle, rel=1e-8)
    # diagonal covariances: the 2-Wasserstein distance of independent coordinates
    v1, v2 = np.array([1.0, 4.0]), np.array([9.0, 1.0])
    expected = 1.0 + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert fidelity.frechet_from_moments([0, 0], np.diag(v1), [1, 0], np.diag(v2)) == pytest.approx(expected)


def test_frechet_of_samples_approaches_the_gaussians_distance():
    rng = np.random.default_rng(1)
    c1, c2 = random_cov(rng, 4), random_cov(rng, 4)
    mu2 = np.full(4, 0.5)
    a = rng.multivariate_normal(np.zeros(4), c1, size=40_000)
    b = rng.multivariate_normal(mu2, c2, size=40_000)
    truth = fidelity.frechet_from_moments(np.zeros(4), c1, mu2, c2)
    assert fidelity.frechet_distance(a, b) == pytest.approx(truth, rel=0.05)


def test_frechet_is_zero_for_identical_sets_even_with_fewer_points_than_dimensions():
    x = np.random.default_rng(2).normal(size=(20, 64))
    assert fidelity.frechet_distance(x, x) == pytest.approx(0, abs=1e-6)
    assert fidelity.frechet_distance(x, x + 1) == pytest.approx(64, rel=1e-6)
    assert np.isnan(fidelity.frechet_distance(x[:1], x))


def test_split_half_floor_is_small_next_to_a_shifted_set():
    x = np.random.default_rng(3).normal(size=(400, 3))
    floor = fidelity.split_half_frechet(x, seed=0)
    assert floor == fidelity.split_half_frechet(x, seed=0)
    assert 0 < floor < 0.2 < fidelity.frechet_distance(x, x + 1)


def brute_force_coverage(points, centers, k):
    own = cdist(centers, centers)
    radii = np.sort(own, axis=1)[:, k]  # column 0 is the point itself
    return (cdist(points, centers) <= radii[None, :]).any(axis=1).mean()


def test_precision_recall_on_point_clouds():
    rng = np.random.default_rng(4)
    modes = np.array([[-10.0, 0.0], [10.0, 0.0]])
    real = np.concatenate([rng.normal(m, 1.0, size=(150, 2)) for m in modes])
    same = np.concatenate([rng.normal(m, 1.0, size=(150, 2)) for m in modes])
    collapsed = rng.normal(modes[0], 1.0, size=(300, 2))  # one mode only
    far = rng.normal([0.0, 50.0], 1.0, size=(300, 2))

    p, r = fidelity.precision_recall(real, same)
    assert p > 0.85 and r > 0.85
    p, r = fidelity.precision_recall(real, collapsed)
    assert p > 0.85 and 0.4 < r < 0.55
    assert fidelity.precision_recall(real, far) == (0.0, 0.0)
    # the same numbers as a brute-force pairwise computation
    p, r = fidelity.precision_recall(real, collapsed, k=3)
    assert p == pytest.approx(brute_force_coverage(collapsed, real, 3))
    assert r == pytest.approx(brute_force_coverage(real, collapsed, 3))
    assert all(np.isnan(fidelity.precision_recall(real, far[:3], k=3)))


def test_memorization_check_flags_a_planted_exact_copy():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(200, 16))
    fake = rng.normal(size=(30, 16))
    fake[17] = real[42]
    index, distance, ratio, scale = fidelity.nearest_real(fake, real, scale_rows=np.arange(200))
    assert index[17] == 42 and distance[17] == 0 and ratio[17] == 0
    assert np.argmin(ratio) == 17 and np.delete(ratio, 17).min() > 0.3
    # the scale: median distance of a real point to its nearest other real point
    own = cdist(real, real) + np.diag(np.full(200, np.inf))
    assert scale == pytest.approx(np.median(own.min(axis=1)))
    assert np.allclose(distance, cdist(fake, real).min(axis=1))
