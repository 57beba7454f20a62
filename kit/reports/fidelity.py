"""How close generated images are to real ones, measured on image features ([N, D] arrays).

- Frechet distance (FID's formula on any feature space): the Frechet distance between the
  Gaussians fitted to the two feature sets.
- Precision and recall of a generated distribution (Kynkaanniemi et al. 2019, "Improved
  precision and recall metric for assessing generative models"): each point's k-NN ball
  approximates its set's manifold; precision is the share of generated points inside the real
  manifold, recall the share of real points inside the generated one.
- Memorization: each generated point's distance to its nearest real point, in units of the
  distance between a real image and its own nearest real neighbour.
"""
import numpy as np
from sklearn.metrics import pairwise_distances_chunked
from sklearn.neighbors import NearestNeighbors

KNN = 3  # the paper's choice


def _psd_sqrt(matrix):
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_from_moments(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^1/2) of two Gaussians.

    Tr((C1 C2)^1/2) is taken as the sum of square roots of the eigenvalues of the symmetric
    C1^1/2 C2 C1^1/2 (the same eigenvalues): stable for the singular covariances that fewer
    images than feature dimensions give, where a general matrix square root is not."""
    root = _psd_sqrt(np.asarray(cov1, dtype=float))
    middle = root @ np.asarray(cov2, dtype=float) @ root
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = np.asarray(mu1, dtype=float) - np.asarray(mu2, dtype=float)
    return max(0.0, float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * cross))


def frechet_distance(a, b) -> float:
    """Frechet distance of two feature sets; NaN when either has fewer than 2 rows."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return frechet_from_moments(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def split_half_frechet(x, seed=0) -> float:
    """Frechet distance between two random halves of one set: what sampling noise alone gives
    (the noise floor a generated set cannot be expected to beat)."""
    order = np.random.default_rng(seed).permutation(len(x))
    half = len(x) // 2
    return frechet_distance(np.asarray(x)[order[:half]], np.asarray(x)[order[half:2 * half]])


def knn_radii(x, k=KNN) -> np.ndarray:
    """Distance from each point to its k-th nearest other point of the same set."""
    dist, _ = NearestNeighbors(n_neighbors=k).fit(x).kneighbors()
    return dist[:, -1]


def coverage(points, centers, radii) -> float:
    """Share of `points` inside at least one ball (centers[j], radii[j])."""
    def inside(chunk, start):
        return (chunk <= radii[None, :]).any(axis=1)

    return float(np.concatenate(list(pairwise_distances_chunked(points, centers, reduce_func=inside))).mean())


def precision_recall(real, fake, k=KNN):
    """(precision, recall) of `fake` against `real`; NaN when a set has k points or fewer."""
    real, fake = np.asarray(real, dtype=float), np.asarray(fake, dtype=float)
    if len(real) <= k or len(fake) <= k:
        return float("nan"), float("nan")
    return coverage(fake, real, knn_radii(real, k)), coverage(real, fake, knn_radii(fake, k))


def nearest_real(fake, reference, scale_rows):
    """Each fake point's nearest reference point, and that distance relative to the real scale.

    The scale is the median distance from the reference points `scale_rows` (indices into
    `reference`) to their nearest other reference point. A ratio near 0 means a near-copy;
    about 1 means as close as two different real images usually are.
    Returns (index [F], distance [F], ratio [F], scale)."""
    reference = np.asarray(reference, dtype=float)
    search = NearestNeighbors(n_neighbors=2).fit(reference)
    distance, index = search.kneighbors(np.asarray(fake, dtype=float), n_neighbors=1)
    own, _ = search.kneighbors(reference[np.asarray(scale_rows)], n_neighbors=2)
    scale = float(np.median(own[:, 1]))
    distance = distance[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = distance / scale if scale > 0 else np.where(distance > 0, np.inf, 0.0)
    return index[:, 0], distance, ratio, scale
