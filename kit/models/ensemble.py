"""Blends of finished runs' predictions: weights chosen on val by Caruana et al.'s ensemble
selection (2004: greedy forward selection with replacement), against equal weights.
"""
import numpy as np

from kit.errors import KitError
from kit.reports.metrics import macro_auc

SELECTION_STEPS = 25  # additions tried; a run added k times weighs k / steps kept


def blend(probs: list, weights) -> np.ndarray:
    """The weighted mean of the runs' probabilities (weights summing to 1)."""
    return np.tensordot(np.asarray(weights, float), np.stack(probs), axes=1)


def forward_selection(y, probs: list, steps=SELECTION_STEPS) -> "tuple[np.ndarray, float]":
    """(weights, val macro AUC): each step adds the run (again, if it helps most) whose addition
    gives the best macro AUC of the bag's mean; the best bag over all steps is kept. Its first
    step is the best single run, so the result never scores below it."""
    counts, total = np.zeros(len(probs)), np.zeros_like(probs[0])
    best_counts, best = None, -np.inf
    for step in range(1, steps + 1):
        scores = [macro_auc(y, (total + p) / step) for p in probs]
        if np.isnan(scores).all():  # no film or no class with both labels: no later step can change that
            raise KitError(_unscored(y))
        pick = int(np.nanargmax(scores))
        counts[pick] += 1
        total = total + probs[pick]
        if scores[pick] > best:
            best, best_counts = scores[pick], counts.copy()
    return best_counts / best_counts.sum(), float(best)


def _unscored(y) -> str:
    if not len(y):
        return ("no val film has probabilities in every run's reports/val_predictions.csv (the soup leaves a "
                "film it could not read empty), so no blend weights can be chosen: rerun those runs' --stage "
                "soup with the val images readable")
    return (f"no class has both positive and negative films among the {len(y)} val films every run read, so no "
            f"blend weights can be chosen: blend runs made with a larger --val-frac")
