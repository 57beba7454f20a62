import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from kit import cli, layout
from kit.errors import KitError
from kit.stages import compare

CLASSES = ["A", "B", "C"]


def predictions(n=240, signal=1.0, seed=0):
    """A test_predictions.csv table: single-label targets, scores that separate them by `signal`."""
    rng = np.random.default_rng(0)
    y = np.eye(3, dtype=int)[rng.integers(0, 3, n)]
    p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + np.random.default_rng(seed).normal(size=y.shape))))
    table = pd.DataFrame({"image_id": [f"img{i}.jpg" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)]})
    table[CLASSES] = y
    table[[f"prob_{c}" for c in CLASSES]] = p
    return table


def save(table, work):
    path = layout.reports_dir(work) / "test_predictions.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return work


def run_compare(cfg, tmp_path, a, b, **kw):
    c = cfg(stage="compare", runs=(str(save(a, tmp_path / "a")), str(save(b, tmp_path / "b"))), **kw)
    compare.run(c)
    return pd.read_csv(layout.reports_dir(c.work) / "compare.csv").set_index("class")


def test_a_clearly_better_run_is_called_better_and_aucs_match_sklearn(cfg, tmp_path, capsys):
    a, b = predictions(signal=0.3, seed=1), predictions(signal=2.0, seed=2)
    table = run_compare(cfg, tmp_path, a.sample(frac=1, random_state=0), b, bootstrap=300)
    for c in CLASSES:
        assert table.loc[c, "auc_a"] == pytest.approx(roc_auc_score(a[c], a[f"prob_{c}"]))
        assert table.loc[c, "auc_b"] == pytest.approx(roc_auc_score(b[c], b[f"prob_{c}"]))
    assert (table["verdict"] == "better").all() and (table["ci_low"] > 0).all()
    assert table.loc["macro", "p_value"] < 0.01
    assert (table.loc[CLASSES, "sens_b"] > table.loc[CLASSES, "sens_a"]).all()
    assert (layout.reports_dir(cfg().work) / "compare.png").stat().st_size > 0
    assert "macro: B better than A" in capsys.readouterr().out


def test_identical_runs_show_no_difference(cfg, tmp_path):
    a = predictions(signal=1.0, seed=3)
    table = run_compare(cfg, tmp_path, a, a, bootstrap=100)
    assert (table["auc_diff"] == 0).all() and (table["verdict"] == "no clear difference").all()
    assert (table["p_value"] == 1).all() and (table["ci_low"] == 0).all() and (table["ci_high"] == 0).all()


def test_paired_bootstrap_is_reproducible_and_its_intervals_match_a_plain_loop():
    a, b = predictions(n=80, signal=0.5, seed=4), predictions(n=80, signal=0.8, seed=5)
    y, p_a, p_b, groups = compare.paired(a, CLASSES, b, CLASSES)
    assert groups.tolist() == ("patient:" + a["patient_id"]).tolist()
    first = compare.paired_bootstrap(y, p_a, p_b, resamples=40, seed=7)
    again = compare.paired_bootstrap(y, p_a, p_b, resamples=40, seed=7)
    other = compare.paired_bootstrap(y, p_a, p_b, resamples=40, seed=8)
    assert all(np.array_equal(x, z, equal_nan=True) for x, z in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    # oracle: the same draws of images, each scored by scikit-learn
    idx = np.random.default_rng(7).integers(0, len(y), size=(40, len(y)))
    diffs = np.array([[roc_auc_score(y[i, k], p_b[i, k]) - roc_auc_score(y[i, k], p_a[i, k]) for k in range(3)]
                      for i in idx])
    assert np.allclose(first[0][:3], np.percentile(diffs, [2.5, 97.5], axis=0).T)
    macro = diffs.mean(axis=1)
    assert np.allclose(first[0][3], np.percentile(macro, [2.5, 97.5]))


def delong_p(y, a, b):
    """DeLong's test of two correlated AUCs (DeLong et al., 1988): a two-sided p-value from the
    structural components' covariance, no resampling."""
    pos, neg = y == 1, y == 0

    def components(s):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        return psi.mean(), psi.mean(1), psi.mean(0)
    (auc_a, v10a, v01a), (auc_b, v10b, v01b) = components(a), components(b)
    s10, s01 = np.cov(np.vstack([v10a, v10b])), np.cov(np.vstack([v01a, v01b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / pos.sum() + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / neg.sum()
    return 2 * norm.sf(abs(auc_b - auc_a) / np.sqrt(var))


@pytest.mark.parametrize("signals, seeds", [((0.5, 0.6), (4, 5)), ((0.6, 0.6), (3, 4))])
def test_paired_bootstrap_p_values_agree_with_delongs_test(signals, seeds):
    """Two estimates of one p-value by different methods: on 600 images they agree to a few
    hundredths (a one-sided p, or one without the factor 2, would be off by about half)."""
    a, b = (predictions(n=600, signal=s, seed=seed) for s, seed in zip(signals, seeds))
    y, p_a, p_b, _ = compare.paired(a, CLASSES, b, CLASSES)
    _, p_value = compare.paired_bootstrap(y, p_a, p_b, resamples=4000, seed=0)
    expected = [delong_p(y[:, k], p_a[:, k], p_b[:, k]) for k in range(3)]
    assert max(expected) > 0.15  # p-values in the range where the two methods are compared
    np.testing.assert_allclose(p_value[:3], expected, atol=0.04)


def test_draws_without_a_difference_count_half_to_each_side_of_zero():
    """195 draws favour B, 5 show none (one of them by a rounding error of -1e-16): B is
    better with p = 2 * (2.5 + 1) / 201, not 2 * (5 + 1) / 201 as if all five favoured A."""
    diffs = np.array([0.0] * 4 + [-1.1e-16] + [0.01] * 195)
    assert compare.two_sided_p(diffs) == pytest.approx(7 / 201)
    assert compare.two_sided_p(-diffs) == pytest.approx(7 / 201)
    assert compare.two_sided_p(np.zeros(50)) == 1.0


def test_the_macro_row_has_no_positives_count(cfg, tmp_path):
    table = run_compare(cfg, tmp_path, predictions(seed=1), predictions(seed=2), bootstrap=50)
    assert table.loc[CLASSES, "positives"].tolist() == predictions()[CLASSES].sum().tolist()
    assert pd.isna(table.loc["macro", "positives"])


def test_sensitivity_at_specificity_against_brute_force():
    t = predictions(n=150, signal=1.0, seed=6)
    y, p = t[CLASSES].to_numpy(), t[[f"prob_{c}" for c in CLASSES]].to_numpy()
    got = compare.sensitivity_at_specificity(y, p, 0.9)
    for k in range(3):
        best = 0.0
        for thr in np.unique(p[:, k]):
            called = p[:, k] >= thr
            if (~called & (y[:, k] == 0)).sum() / (y[:, k] == 0).sum() >= 0.9:
                best = max(best, (called & (y[:, k] == 1)).sum() / y[:, k].sum())
        assert got[k] == pytest.approx(best)


def test_compare_refuses_runs_tested_on_different_images(cfg, tmp_path):
    a = predictions(seed=1)
    with pytest.raises(KitError, match=r"the test sets differ \(0 images only in A: ; 1 only in B: extra.jpg\)"):
        b = pd.concat([a, a.iloc[[0]].assign(image_id="extra.jpg")])
        run_compare(cfg, tmp_path, a, b)
    with pytest.raises(KitError, match=r"the test sets differ \(1 images only in A: img5.jpg"):
        run_compare(cfg, tmp_path, a, a.drop(index=5))
    relabelled = a.copy()
    relabelled.loc[3, CLASSES] = 1 - relabelled.loc[3, CLASSES]
    with pytest.raises(KitError, match="1 test images have other labels in B"):
        run_compare(cfg, tmp_path, a, relabelled)
    with pytest.raises(KitError, match="predict different classes"):
        run_compare(cfg, tmp_path, a, a.drop(columns=["C", "prob_C"]))
    with pytest.raises(KitError, match="needs --runs WORK_A WORK_B"):
        compare.run(cfg(stage="compare"))
    with pytest.raises(KitError, match="run --stage evaluate with --work-dir"):
        compare.run(cfg(stage="compare", runs=(str(tmp_path / "a"), str(tmp_path / "none"))))


def test_runs_flag_takes_two_work_dirs(cfg):
    assert list(cli.parse_config(["--stage", "compare", "--runs", "w1", "w2"]).runs) == ["w1", "w2"]
    for given in (["w1"], ["w1", "w2", "w3"]):  # the flag takes one or more (blend's); compare wants two
        runs = cli.parse_config(["--stage", "compare", "--runs", *given]).runs
        with pytest.raises(KitError, match="needs --runs WORK_A WORK_B"):
            compare.run(cfg(stage="compare", runs=tuple(runs)))
