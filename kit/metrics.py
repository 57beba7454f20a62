"""Classification metrics on (n_images, n_classes) arrays of 0/1 targets and probabilities."""
import numpy as np
from sklearn.metrics import roc_auc_score


def auc_per_class(y_true, y_prob) -> np.ndarray:
    """ROC AUC of each class; NaN for a class whose targets are all one value."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)
    out = np.full(y_true.shape[1], np.nan)
    for k in range(y_true.shape[1]):
        if 0 < y_true[:, k].sum() < len(y_true):
            out[k] = roc_auc_score(y_true[:, k], y_prob[:, k])
    return out


def macro_auc(y_true, y_prob) -> float:
    aucs = auc_per_class(y_true, y_prob)
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
