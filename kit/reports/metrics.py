"""Classification metrics on (n_images, n_classes) arrays of 0/1 targets and probabilities."""
import warnings

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix, f1_score, roc_auc_score,
                             roc_curve)

LEVEL = 0.95  # every interval's confidence: evaluate's, the val report's, compare's


def json_number(x):
    """`x` for a JSON report: rounded to 6 places, None (null) where it is not a number (JSON has no NaN)."""
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def _has_both(y) -> bool:
    return 0 < y.sum() < len(y)


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


def micro_auc(y_true, y_prob) -> float:
    """ROC AUC of all (image, class) pairs pooled."""
    y_true, y_prob = np.asarray(y_true).ravel(), np.asarray(y_prob).ravel()
    return float(roc_auc_score(y_true, y_prob)) if _has_both(y_true) else float("nan")


def average_precision_per_class(y_true, y_prob) -> np.ndarray:
    """Area under each class's precision-recall curve; NaN for a class with no positive."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)
    return np.array([average_precision_score(y_true[:, k], y_prob[:, k]) if y_true[:, k].any()
                     else np.nan for k in range(y_true.shape[1])])


def youden_thresholds(y_true, y_prob) -> np.ndarray:
    """Per class, the probability threshold maximizing sensitivity + specificity - 1."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)
    out = np.full(y_true.shape[1], np.nan)
    for k in range(y_true.shape[1]):
        if _has_both(y_true[:, k]):
            fpr, tpr, thr = roc_curve(y_true[:, k], y_prob[:, k])
            # thr[0] is roc_curve's +inf "predict nothing" point: not a usable threshold.
            best = 1 + int(np.argmax(tpr[1:] - fpr[1:]))
            out[k] = thr[best]
    return out


def sensitivity_specificity(y_true, y_prob, thresholds):
    """(sensitivity, specificity) per class when `prob >= threshold` is called positive."""
    y_true = np.asarray(y_true).astype(bool)
    called = np.asarray(y_prob) >= np.asarray(thresholds)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = (called & y_true).sum(0) / y_true.sum(0)
        spec = (~called & ~y_true).sum(0) / (~y_true).sum(0)
    undefined = ~np.isfinite(np.asarray(thresholds, dtype=float))
    sens[undefined], spec[undefined] = np.nan, np.nan
    return sens, spec


def _tie_groups(scores):
    """(order sorting `scores`, tie group of each sorted position, last position of each group)."""
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    first = np.r_[True, ranked[1:] != ranked[:-1]]
    return order, np.cumsum(first) - 1, np.r_[np.flatnonzero(first)[1:] - 1, len(ranked) - 1]


def _weighted_auc(weights, y_sorted, group, last):
    """ROC AUC for each row of `weights` [draws, n], the images' multiplicities in score order
    (`_tie_groups`): each positive counts the negatives below it and half of those tied with it,
    the Mann-Whitney U statistic. NaN where a row has no positive or no negative.

    A bootstrap draw then costs cumulative sums, not a sort of the resampled scores.
    """
    pos, neg = weights * y_sorted, weights * (1 - y_sorted)
    upto = np.cumsum(neg, axis=1)[:, last]  # negatives up to the end of each tie group
    below = np.c_[np.zeros(len(weights)), upto[:, :-1]]
    beaten = (below + 0.5 * (upto - below))[:, group]
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * beaten).sum(1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def bootstrap_auc_draws(y_true, y_probs, resamples=1000, seed=0, groups=None, chunk=100) -> np.ndarray:
    """Each class's AUC on resampled test sets, for each probability table of `y_probs`:
    [len(y_probs), resamples, C]. Every table is scored on the same draws, so the differences
    between tables are paired. NaN where a draw holds no positive or no negative of a class.

    `groups` (a key per image, such as its patient) makes it a cluster bootstrap: a draw
    resamples groups with replacement and takes every image of each drawn group, because
    films of one patient are not independent; without it every image is a group of its own.
    """
    y_true = np.asarray(y_true, dtype=float)
    y_probs = [np.asarray(p, dtype=float) for p in y_probs]
    n, n_classes = y_true.shape
    if groups is None:
        group_of, n_groups = np.arange(n), n
    else:
        keys, group_of = np.unique(np.asarray(groups), return_inverse=True)
        n_groups = len(keys)
    sorted_scores = []  # per table, per class: sorted once for every draw
    for p in y_probs:
        per_class = []
        for k in range(n_classes):
            order, tie_group, last = _tie_groups(p[:, k])
            per_class.append((group_of[order], y_true[order, k], tie_group, last))
        sorted_scores.append(per_class)
    rng = np.random.default_rng(seed)
    aucs = np.empty((len(y_probs), resamples, n_classes))
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n_groups, size=(min(chunk, resamples - start), n_groups))
        draws = len(idx)
        # how often each draw picked each group
        picks = np.bincount((idx + n_groups * np.arange(draws)[:, None]).ravel(),
                            minlength=draws * n_groups).reshape(draws, n_groups).astype(float)
        for t, table in enumerate(sorted_scores):
            for k, (groups_sorted, y_sorted, tie_group, last) in enumerate(table):
                aucs[t, start:start + draws, k] = _weighted_auc(picks[:, groups_sorted], y_sorted, tie_group, last)
    return aucs


def macro_of_draws(aucs, scored) -> np.ndarray:
    """Each draw's mean AUC over the classes `scored` on the whole test set; NaN for a draw that
    lacks one of them, so that every macro figure averages the same classes."""
    aucs = aucs[:, scored]
    if not aucs.shape[1]:
        return np.full(len(aucs), np.nan)
    return np.where(np.isfinite(aucs).all(axis=1), aucs.mean(axis=1), np.nan)


def bootstrap_auc(y_true, y_prob, resamples=1000, seed=0, level=0.95, groups=None):
    """Percentile bootstrap confidence intervals of each class's AUC and of the macro AUC.

    Each draw resamples the test set once for every class (by `groups`, see
    `bootstrap_auc_draws`). A class's interval uses the draws that hold both of its labels; the
    macro's, the draws that hold both labels of every class the test set scores. Returns
    (per_class [C, 2], macro [2], draws used per class and for the macro [C + 1]).
    """
    aucs = bootstrap_auc_draws(y_true, [y_prob], resamples, seed, groups)[0]
    macro = macro_of_draws(aucs, np.isfinite(auc_per_class(y_true, y_prob)))
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    with warnings.catch_warnings():  # all-NaN columns: a class no draw can score
        warnings.simplefilter("ignore", RuntimeWarning)
        per_class = np.nanpercentile(aucs, tails, axis=0).T
        macro_ci = np.nanpercentile(macro, tails)
    used = np.append(np.isfinite(aucs).sum(axis=0), np.isfinite(macro).sum())
    return per_class, macro_ci, used


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def single_label_decision(y_prob, thresholds=None) -> np.ndarray:
    """The class each image is called: the one furthest above its own threshold in log-odds,
    logit(p) - logit(threshold), with thresholds chosen on val. Independent sigmoids are not
    calibrated against each other, so a plain argmax calls the commonest class; the thresholds
    put every class on its own scale. Without thresholds: the argmax."""
    scores = logit(y_prob)
    if thresholds is not None:
        scores = scores - logit(np.nan_to_num(thresholds, nan=0.5))
    return scores.argmax(1)


def single_label_report(y_true, y_prob, thresholds=None) -> dict:
    """Metrics of the called class (`single_label_decision`) when each image has exactly one
    target class."""
    truth, pred = np.asarray(y_true).argmax(1), single_label_decision(y_prob, thresholds)
    labels = np.arange(np.asarray(y_true).shape[1])
    counts = confusion_matrix(truth, pred, labels=labels)
    support = counts.sum(1)
    # balanced_accuracy_score's mean recall over the classes present, without its warning when
    # the model predicts a class the split lacks
    recall = np.diag(counts)[support > 0] / support[support > 0]
    return dict(
        accuracy=float(accuracy_score(truth, pred)),
        balanced_accuracy=float(recall.mean()),
        macro_f1=float(f1_score(truth, pred, labels=labels, average="macro", zero_division=0)),
        confusion_matrix=counts.tolist(),
    )
