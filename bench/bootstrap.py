"""The bootstrap confidence intervals of evaluate and compare against the usual notebook loop.

Kit: `metrics.bootstrap_auc_draws` (each class's scores sorted once; a draw is the images'
multiplicities, scored by cumulative sums). Notebook: for each draw, index the resampled test
set and call scikit-learn's `roc_auc_score` per class. Both sides score the same draws of the
same generated test split (scores rounded to 3 decimals, so ties occur as in real
predictions), and the bench checks that every AUC agrees.

    python -m bench.bootstrap [--images 30000] [--classes 5] [--resamples 200] [--repeats 3]
"""
import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/bootstrap.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from sklearn.metrics import roc_auc_score

from bench import common
from kit.reports import metrics

CHUNK = 100  # the kit's draws per block of random numbers


def test_split(images, classes, seed=0):
    """(0/1 targets, probabilities) with prevalences from 2% to 35% and an AUC near 0.8."""
    rng = np.random.default_rng(seed)
    y = (rng.random((images, classes)) < np.linspace(0.02, 0.35, classes)).astype(int)
    p = np.round(np.clip(0.3 * y + 0.7 * rng.random((images, classes)), 0, 1), 3)
    return y, p


def draws(n, resamples, seed):
    """The kit's draws of image indices, one row at a time."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, CHUNK):
        yield from rng.integers(0, n, size=(min(CHUNK, resamples - start), n))


def notebook_draws(y, p, resamples, seed):
    """[resamples, C] AUCs, one scikit-learn call per draw and class."""
    n, n_classes = y.shape
    out = np.full((resamples, n_classes), np.nan)
    for r, idx in enumerate(draws(n, resamples, seed)):
        for k in range(n_classes):
            yk = y[idx, k]
            if 0 < yk.sum() < n:
                out[r, k] = roc_auc_score(yk, p[idx, k])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=30000, help="test images (15%% of a 200k-image dataset)")
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--resamples", type=int, default=200, help="draws per timed call (evaluate makes 1000)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    mach = common.machine(gpus=False)
    y, p = test_split(args.images, args.classes)
    print(f"bench.bootstrap | {common.describe(mach)} | {args.images} test images, {args.classes} classes, "
          f"{args.resamples} draws per call")

    kit = metrics.bootstrap_auc_draws(y, [p], args.resamples, seed=0, chunk=CHUNK)[0]
    notebook = notebook_draws(y, p, args.resamples, seed=0)
    np.testing.assert_allclose(kit, notebook, atol=1e-12, err_msg="the two sides disagree")
    kit_rates = common.rates(lambda: metrics.bootstrap_auc_draws(y, [p], args.resamples, seed=0, chunk=CHUNK),
                             args.resamples, args.repeats)
    notebook_rates = common.rates(lambda: notebook_draws(y, p, args.resamples, 0), args.resamples, args.repeats)
    k, n = common.median(kit_rates), common.median(notebook_rates)
    rows = [{"side": "kit", "rate": k, "evaluate_s": 1000 / k},
            {"side": "notebook", "rate": n, "evaluate_s": 1000 / n}]
    common.print_table(f"draws/s, median of {args.repeats}; ratio {k / n:.1f}x", rows,
                       [("side", "side"), ("rate", "draws/s"), ("evaluate_s", "s for evaluate's 1000 draws")])
    common.emit("bootstrap", common.round_floats({
        "images": args.images, "classes": args.classes, "resamples": args.resamples, "repeats": args.repeats,
        "kit": {"draws_per_s": k}, "notebook": {"draws_per_s": n}, "ratio": k / n}), mach)


if __name__ == "__main__":
    main()
