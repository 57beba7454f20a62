"""Blend stage: weights chosen on the runs' shared val films, applied to their submissions."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from kit import cli, layout
from kit.errors import KitError
from kit.io import write_csv
from kit.stages import blend

CLASSES = ["Edema", "Pneumothorax", "No Finding"]
VAL, TEST = 240, 50


def _labels(rng, n):
    return (rng.random((n, len(CLASSES))) < 0.3).astype(int)


def save_run(work, y_val, noise, rng, test_ids=None, val_ids=None, columns=None):
    """A finished run's val answers and submission: probabilities of the labels seen through
    `noise` (infinite: a run that learned nothing)."""
    def probs(y):
        signal = 0.0 if np.isinf(noise) else 1.0
        scale = 1.0 if np.isinf(noise) else noise
        return 1 / (1 + np.exp(-(signal * (2 * y - 1) + scale * rng.standard_normal(y.shape))))

    ids = val_ids or [f"v{i:04d}" for i in range(len(y_val))]
    val = pd.DataFrame({"image_id": ids, "patient_id": [f"p{i // 2}" for i in range(len(y_val))],
                        "study": [f"film:{i}" for i in ids]})
    val[CLASSES] = y_val
    val[[f"prob_{c}" for c in CLASSES]] = probs(y_val)
    write_csv(val, layout.val_predictions_csv(work))
    sub = pd.DataFrame({"Image_name": test_ids or [f"t{i:04d}.jpg" for i in range(TEST)]})
    sub[columns or CLASSES] = probs(_labels(rng, len(sub)))
    write_csv(sub, layout.submission_csv(work))
    return str(work)


def _macro(y, p):
    return np.mean([roc_auc_score(y[:, k], p[:, k]) for k in range(y.shape[1])])


def test_blend_weights_are_applied_to_val_and_test_as_numpy_averages(cfg, tmp_path):
    rng = np.random.default_rng(0)
    y = _labels(rng, VAL)
    runs = [save_run(tmp_path / name, y, noise, rng) for name, noise in (("a", 1.0), ("b", 1.5), ("c", np.inf))]
    c = cfg(stage="blend", runs=tuple(runs))
    blend.run(c)
    table = pd.read_csv(layout.reports_dir(c.work) / "blend.csv")
    members = table[table["kind"] == "run"]
    weights = members["weight"].to_numpy()
    assert weights.sum() == pytest.approx(1.0) and members["run"].tolist() == runs

    vals = [pd.read_csv(layout.val_predictions_csv(r))[[f"prob_{k}" for k in CLASSES]].to_numpy() for r in runs]
    tests = [pd.read_csv(layout.submission_csv(r))[CLASSES].to_numpy() for r in runs]
    chosen = table[table["kind"] == "blend"].iloc[0]
    assert chosen["val_macro_auc"] == pytest.approx(_macro(y, np.average(vals, axis=0, weights=weights)))
    for row, p in zip(members.itertuples(), vals):
        assert row.val_macro_auc == pytest.approx(_macro(y, p))
    assert chosen["val_macro_auc"] >= members["val_macro_auc"].max() - 1e-12
    submission = pd.read_csv(layout.submission_csv(c.work))
    assert submission.columns.tolist() == ["Image_name", *CLASSES]
    np.testing.assert_allclose(submission[CLASSES].to_numpy(), np.average(tests, axis=0, weights=weights))

    # the run that learned nothing is left out, and the selection beats equal weights
    assert chosen["run"] == "forward selection" and weights[2] == 0
    equal = table[table["run"] == "equal weights"].iloc[0]
    assert equal["val_macro_auc"] == pytest.approx(_macro(y, np.mean(vals, axis=0)))
    assert chosen["val_macro_auc"] > equal["val_macro_auc"]


def test_blend_refuses_runs_that_answer_other_films_or_columns(cfg, tmp_path):
    rng = np.random.default_rng(1)
    y = _labels(rng, VAL)
    a = save_run(tmp_path / "a", y, 1.0, rng)
    other_val = save_run(tmp_path / "b", y, 1.0, rng, val_ids=[f"w{i:04d}" for i in range(VAL)])
    with pytest.raises(KitError, match=r"answer different val films .*--split-seed") as err:
        blend.run(cfg(stage="blend", runs=(a, other_val)))
    assert "\n" not in str(err.value)
    other_test = save_run(tmp_path / "c", y, 1.0, rng, test_ids=[f"x{i}.jpg" for i in range(TEST)])
    with pytest.raises(KitError, match="answer different test films"):
        blend.run(cfg(stage="blend", runs=(a, other_test)))
    other_columns = save_run(tmp_path / "d", y, 1.0, rng, columns=CLASSES[::-1])
    with pytest.raises(KitError, match="submission.csv has columns"):
        blend.run(cfg(stage="blend", runs=(a, other_columns)))
    with pytest.raises(KitError, match=r"blend needs --runs W1 W2"):
        blend.run(cfg(stage="blend", runs=(a,)))
    with pytest.raises(KitError, match=r"reports/val_predictions.csv not found: finish that run"):
        blend.run(cfg(stage="blend", runs=(a, str(tmp_path / "unfinished"))))


def _unread(run, rows):
    """The soup could not read these val films: their probabilities are NaN (empty in the csv)."""
    path = layout.val_predictions_csv(run)
    val = pd.read_csv(path, dtype={"image_id": str, "patient_id": str})
    val.loc[rows, [f"prob_{c}" for c in CLASSES]] = np.nan
    write_csv(val, path)


def test_blend_leaves_out_val_films_a_run_could_not_read_and_keeps_ids_verbatim(cfg, tmp_path, capsys):
    rng = np.random.default_rng(2)
    y = _labels(rng, VAL)
    ids = [f"{i:04d}" for i in range(TEST)]  # a number to pandas unless read as text
    runs = [save_run(tmp_path / name, y, 1.0, rng, test_ids=ids) for name in "ab"]
    _unread(runs[0], list(range(10)))
    c = cfg(stage="blend", runs=tuple(runs))
    blend.run(c)
    assert "[blend] 230 shared val films" in capsys.readouterr().out
    table = pd.read_csv(layout.reports_dir(c.work) / "blend.csv")
    vals = [pd.read_csv(layout.val_predictions_csv(r))[[f"prob_{k}" for k in CLASSES]].to_numpy()[10:]
            for r in runs]
    equal = table[table["run"] == "equal weights"].iloc[0]
    assert equal["val_macro_auc"] == pytest.approx(_macro(y[10:], np.mean(vals, axis=0)))
    assert pd.read_csv(layout.submission_csv(c.work), dtype=str)["Image_name"].tolist() == ids


def test_blend_without_a_scorable_val_film_is_one_line(cfg, tmp_path):
    rng = np.random.default_rng(3)
    y = _labels(rng, VAL)
    a, b = (save_run(tmp_path / name, y, 1.0, rng) for name in "ab")
    _unread(a, slice(None))
    with pytest.raises(KitError, match=r"no val film has probabilities in every run's .*--stage soup") as err:
        blend.run(cfg(stage="blend", runs=(a, b)))
    assert "\n" not in str(err.value)
    one_label = [save_run(tmp_path / name, np.zeros_like(y), 1.0, rng) for name in "cd"]
    with pytest.raises(KitError, match=r"no class has both positive and negative films among the 240 val films "
                                       r".*--val-frac") as err:
        blend.run(cfg(stage="blend", runs=tuple(one_label)))
    assert "\n" not in str(err.value)


def test_runs_flag_takes_two_or_more_work_dirs():
    assert list(cli.parse_config(["--stage", "blend", "--runs", "w1", "w2", "w3"]).runs) == ["w1", "w2", "w3"]
