"""Metrics against scikit-learn on fixed arrays, and the bootstrap's invariants."""
import warnings

import numpy as np
import pytest
from sklearn.metrics import (average_precision_score, balanced_accuracy_score, confusion_matrix,
                             f1_score, roc_auc_score)

from kit.reports import metrics


@pytest.fixture(scope="module")
def arrays():
    """400 images, 4 classes with tied scores; the last class has no positive."""
    rng = np.random.default_rng(7)
    y = (rng.random((400, 4)) < [0.3, 0.15, 0.05, 0.0]).astype(int)
    p = np.round(np.clip(0.35 * y + rng.random((400, 4)) * 0.8, 0, 1), 2)
    return y, p


def test_per_class_auc_ap_and_micro_match_sklearn(arrays):
    y, p = arrays
    auc = metrics.auc_per_class(y, p)
    ap = metrics.average_precision_per_class(y, p)
    for k in range(3):
        assert auc[k] == pytest.approx(roc_auc_score(y[:, k], p[:, k]))
        assert ap[k] == pytest.approx(average_precision_score(y[:, k], p[:, k]))
    assert np.isnan(auc[3]) and np.isnan(ap[3])
    assert metrics.macro_auc(y, p) == pytest.approx(np.mean(auc[:3]))
    assert metrics.micro_auc(y, p) == pytest.approx(roc_auc_score(y, p, average="micro"))


def test_weighted_auc_equals_sklearn_with_sample_weights_and_ties(arrays):
    y, p = arrays
    w = np.random.default_rng(2).integers(0, 4, size=(5, len(y))).astype(float)
    for k in range(3):
        order, group, last = metrics._tie_groups(p[:, k])
        got = metrics._weighted_auc(w[:, order], y[order, k].astype(float), group, last)
        for row, weights in zip(got, w):
            assert row == pytest.approx(roc_auc_score(y[:, k], p[:, k], sample_weight=weights), abs=1e-12)
    order, group, last = metrics._tie_groups(p[:, 3])
    assert np.isnan(metrics._weighted_auc(w[:, order], y[order, 3].astype(float), group, last)).all()


def test_each_bootstrap_draw_is_sklearns_auc_of_that_resampled_test_set(arrays):
    y, p = arrays
    p_other = np.round(p[::-1], 1)
    draws = metrics.bootstrap_auc_draws(y, [p, p_other], resamples=20, seed=5, chunk=20)
    idx = np.random.default_rng(5).integers(0, len(y), size=(20, len(y)))  # the same draws
    for t, table in enumerate([p, p_other]):
        for r in range(20):
            for k in range(3):
                yk = y[idx[r], k]
                want = roc_auc_score(yk, table[idx[r], k]) if 0 < yk.sum() < len(yk) else np.nan
                np.testing.assert_allclose(draws[t, r, k], want, atol=1e-12)
    assert np.isnan(draws[:, :, 3]).all()


def test_youden_threshold_maximizes_j_over_every_cut(arrays):
    y, p = arrays
    thr = metrics.youden_thresholds(y, p)
    sens, spec = metrics.sensitivity_specificity(y, p, thr)
    for k in range(3):
        cuts = np.unique(p[:, k])
        called = p[:, k][None, :] >= cuts[:, None]
        pos = y[:, k].astype(bool)
        j = (called & pos).sum(1) / pos.sum() + (~called & ~pos).sum(1) / (~pos).sum() - 1
        assert sens[k] + spec[k] - 1 == pytest.approx(j.max())
        assert thr[k] in cuts
    assert np.isnan(thr[3]) and np.isnan(sens[3]) and np.isnan(spec[3])


def test_bootstrap_interval_holds_estimate_and_is_seeded(arrays):
    y, p = arrays
    per_class, macro, used = metrics.bootstrap_auc(y, p, resamples=300, seed=3)
    auc = metrics.auc_per_class(y, p)
    for k in range(3):
        lo, hi = per_class[k]
        assert lo < auc[k] < hi and hi - lo < 0.5
    assert macro[0] < metrics.macro_auc(y, p) < macro[1]
    assert np.isnan(per_class[3]).all() and used[3] == 0 and used[-1] <= used[:3].min()
    again = metrics.bootstrap_auc(y, p, resamples=300, seed=3)
    for a, b in zip((per_class, macro, used), again):
        np.testing.assert_array_equal(a, b)
    other = metrics.bootstrap_auc(y, p, resamples=300, seed=4)
    assert not np.array_equal(per_class[:3], other[0][:3])


def test_bootstrap_interval_narrows_with_more_images():
    rng = np.random.default_rng(0)

    def width(n):
        y = (rng.random((n, 1)) < 0.3).astype(int)
        p = 0.3 * y + rng.random((n, 1))
        lo, hi = metrics.bootstrap_auc(y, p, resamples=200, seed=0)[0][0]
        return hi - lo

    assert width(2000) < width(100)


def test_a_cluster_draw_takes_every_image_of_each_drawn_patient():
    rng = np.random.default_rng(1)
    patients = np.repeat([f"p{i:02d}" for i in range(30)], rng.integers(1, 5, 30))
    y = (rng.random((len(patients), 2)) < [0.4, 0.2]).astype(int)
    p = np.round(rng.random(y.shape) + 0.3 * y, 1)
    draws = metrics.bootstrap_auc_draws(y, [p], resamples=15, seed=2, groups=patients, chunk=15)[0]
    keys = np.unique(patients)  # the draws index the sorted patient keys
    for r, picked in enumerate(np.random.default_rng(2).integers(0, len(keys), size=(15, len(keys)))):
        rows = np.concatenate([np.flatnonzero(patients == keys[i]) for i in picked])
        for k in range(2):
            yk = y[rows, k]
            want = roc_auc_score(yk, p[rows, k]) if 0 < yk.sum() < len(yk) else np.nan
            np.testing.assert_allclose(draws[r, k], want, atol=1e-12)


def test_patient_intervals_are_wider_than_image_intervals_when_a_patients_films_agree():
    """Four copies of each patient's film add no information: resampling patients gives the
    interval of one film per patient, resampling images one about half as wide."""
    rng = np.random.default_rng(3)
    y1 = (rng.random((60, 1)) < 0.4).astype(int)
    p1 = 0.4 * y1 + rng.random((60, 1))
    y, p, patients = np.repeat(y1, 4, axis=0), np.repeat(p1, 4, axis=0), np.repeat(np.arange(60), 4)

    def width(**kw):
        lo, hi = metrics.bootstrap_auc(kw.pop("y", y), kw.pop("p", p), 500, seed=0, **kw)[0][0]
        return hi - lo

    one_film = width(y=y1, p=p1)
    assert width(groups=patients) == pytest.approx(one_film, abs=1e-12)
    assert width() < 0.6 * one_film


def test_the_macro_interval_uses_only_draws_that_score_every_class():
    """A class with 2 positives in 40 images is missing from many draws; averaging the others
    alone in those draws would mix macro AUCs of different classes."""
    rng = np.random.default_rng(4)
    y = np.zeros((40, 2), int)
    y[:16, 0], y[[0, 20], 1] = 1, 1
    p = np.column_stack([0.5 * y[:, 0] + rng.random(40), 0.2 * y[:, 1] + rng.random(40)])
    draws = metrics.bootstrap_auc_draws(y, [p], 400, seed=0)[0]
    complete = np.isfinite(draws).all(axis=1)
    assert 0.1 < 1 - complete.mean() < 0.9  # the rare class is missing from some draws
    _, macro, used = metrics.bootstrap_auc(y, p, 400, seed=0)
    np.testing.assert_allclose(macro, np.percentile(draws[complete].mean(axis=1), [2.5, 97.5]))
    assert used.tolist() == [400, complete.sum(), complete.sum()]


def test_single_label_report_matches_sklearn():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 200)
    y = np.eye(3, dtype=int)[truth]
    p = rng.random((200, 3)) + 0.4 * y
    pred = p.argmax(1)
    report = metrics.single_label_report(y, p)
    assert report["accuracy"] == pytest.approx((pred == truth).mean())
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, pred))
    assert report["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    assert report["confusion_matrix"] == confusion_matrix(truth, pred).tolist()


def test_balanced_accuracy_with_a_predicted_class_the_truth_lacks_matches_sklearn_silently():
    truth = np.array([0, 0, 1, 1, 1, 0])
    y = np.eye(3, dtype=int)[truth]
    p = np.eye(3)[[0, 2, 1, 2, 1, 0]]  # class 2 is predicted, never true
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = metrics.single_label_report(y, p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = balanced_accuracy_score(truth, p.argmax(1))
    assert report["balanced_accuracy"] == pytest.approx(expected) == pytest.approx((2 / 3 + 2 / 3) / 2)
