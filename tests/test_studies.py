"""Answers per study: pooling, the val decision, study keys from tables and test file names."""
import contextlib
import io

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from kit.config import Config
from kit.data import studies

CLASSES = ["Edema", "Pneumothorax"]


def _studies(rng, n_studies=120, films=3, noise=1.0, constant=True):
    """Val films of `n_studies` studies; each film's probability is its label plus its own noise."""
    keys = np.repeat([f"study:p{i}/s1" for i in range(n_studies)], films)
    labels = rng.random((n_studies, len(CLASSES))) < 0.4
    y = np.repeat(labels, films, axis=0).astype(int)
    if not constant:  # each film read on its own: a third of the films flip a label
        flip = rng.random(y.shape) < 0.33
        y = np.where(flip, 1 - y, y)
    p = 1 / (1 + np.exp(-(2 * y - 1 + noise * rng.standard_normal(y.shape))))
    return y, p, keys


@pytest.mark.parametrize("how", ["mean", "max"])
def test_pool_is_the_study_groupby(how):
    rng = np.random.default_rng(0)
    probs = rng.random((30, 2))
    probs[[4, 11]] = np.nan  # unreadable films take no part and stay unanswered
    keys = rng.choice(["a", "b", "c", "d", "e"], 30)
    frame = pd.DataFrame(probs, columns=["x", "y"]).assign(key=keys)
    per_study = frame.groupby("key")[["x", "y"]].agg(how)
    want = per_study.loc[keys].to_numpy().copy()
    want[[4, 11]] = np.nan
    np.testing.assert_allclose(studies.pool(probs, keys, how), want)
    np.testing.assert_array_equal(studies.pool(probs, keys, "none"), probs)


def test_auto_pools_when_the_films_of_a_study_share_their_evidence():
    y, p, keys = _studies(np.random.default_rng(1))
    decision = studies.decide("auto", y, p, keys, share=1.0)
    auc = decision["val_macro_auc"]
    per_film = np.mean([roc_auc_score(y[:, k], p[:, k]) for k in range(2)])
    assert auc["none"] == pytest.approx(per_film)
    assert decision["method"] in studies.METHODS and auc[decision["method"]] > auc["none"] + 0.02
    assert decision["method"] == max(studies.METHODS, key=auc.get)


def test_auto_answers_per_film_where_pooling_loses_or_labels_differ():
    y, p, keys = _studies(np.random.default_rng(2), noise=0.3, constant=False)
    lost = studies.decide("auto", y, p, keys, share=1.0)
    assert lost["method"] == "none" and lost["val_macro_auc"]["none"] > lost["val_macro_auc"]["mean"]
    y, p, keys = _studies(np.random.default_rng(1))
    differ = studies.decide("auto", y, p, keys, share=0.6)
    assert differ["method"] == "none" and "60.0% of training studies constant" in differ["reason"]
    assert studies.decide("max", y, p, keys, share=0.6)["method"] == "max"  # asked for: done


def test_constant_share_counts_the_studies_of_several_films():
    df = pd.DataFrame({"image_id": list("abcdefg"), "patient_id": ["1", "1", "2", "2", "2", "3", "4"],
                       "study_id": ["s", "s", "s", "s", "s", "s", ""], "Edema": [1, 1, 0, 0, 1, 1, 0],
                       "Pneumothorax": [0, 0, 1, 1, 1, 0, 0]})
    share, multi = studies.constant_share(df, CLASSES)
    assert (share, multi) == (0.5, 2)  # patient 1's study agrees, patient 2's does not; 3 and 4 have one film
    keys = studies.table_keys(df)
    assert keys[0] == keys[1] != keys[2] and keys[6] == "film:g"


def test_test_names_give_studies_and_names_without_one_fall_back_per_film(tmp_path):
    names = ["00012_002_001.jpg", "00012_002_002.jpg", "00012_003_001.jpg", "odd.jpg"]
    keys = studies.name_keys(names)
    assert keys[0] == keys[1] != keys[2] and keys[3] == "film:odd"
    probs = np.array([[0.2], [0.6], [0.9], [0.1]])
    cfg = Config(study_pool="mean", work_dir=str(tmp_path))
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        pooled = studies.for_test(cfg.study_pool, cfg.work, names, probs)
    np.testing.assert_allclose(pooled.ravel(), [0.4, 0.4, 0.9, 0.1])
    assert "mean over 3 studies of 4 films" in printed.getvalue()
    plain = ["demo_00001.jpg", "demo_00002.jpg"]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        same = studies.for_test(cfg.study_pool, cfg.work, plain, probs[:2])
    np.testing.assert_array_equal(same, probs[:2])
    lines = printed.getvalue().splitlines()
    assert len(lines) == 1 and "per film, the test names carry no study" in lines[0]
