import numpy as np
import pandas as pd
import pytest

from fake_data import chexpert_dataset, gxs_dataset
from kit import layout
from kit.data.sources import gxs
from kit.errors import KitError
from kit.stages import metadata

CLASSES = ["Pneumothorax", "Cardiomegaly", "Lung Opacity", "Pleural Effusion", "Support Devices"]


def random_table(seed, n=400):
    """A canonical table with random multi-finding rows, views and patients."""
    rng = np.random.default_rng(seed)
    findings = (rng.random((n, len(gxs.FINDINGS))) < 0.12).astype(int)
    t = pd.DataFrame(findings, columns=list(gxs.FINDINGS))
    t.insert(0, "image_id", [f"i{k}" for k in range(n)])
    t.insert(1, "path", "")
    t.insert(2, "patient_id", [f"p{k}" for k in rng.integers(0, n // 3, n)])
    t.insert(3, "view", rng.choice(["AP", "PA", "LATERAL"], n))
    return t


@pytest.mark.parametrize("seed", range(5))
def test_single_label_rule_matches_an_independent_pandas_expression(seed):
    t = random_table(seed)
    out = metadata.select(t, CLASSES, list(gxs.FINDINGS), "single", 0.0, 0)
    findings = t[list(gxs.FINDINGS)]
    oracle = t[(findings.sum(axis=1) == 1) & (t[CLASSES].sum(axis=1) == 1)]
    assert out["image_id"].tolist() == oracle["image_id"].tolist()
    assert out["label"].tolist() == oracle[CLASSES].idxmax(axis=1).tolist()
    assert (out[CLASSES].sum(axis=1) == 1).all()


@pytest.mark.parametrize("seed", range(5))
def test_multi_label_rule_and_negatives(seed):
    t = random_table(seed)
    out = metadata.select(t, CLASSES, list(gxs.FINDINGS), "multi", 0.0, 0)
    oracle = t[t[CLASSES].any(axis=1)]
    assert out["image_id"].tolist() == oracle["image_id"].tolist()
    assert out["label"].tolist() == oracle[CLASSES].apply(lambda r: "|".join(r.index[r == 1]), axis=1).tolist()
    with_neg = metadata.select(t, CLASSES, list(gxs.FINDINGS), "multi", 0.5, seed)
    n_neg = int((t[CLASSES].sum(axis=1) == 0).sum())
    assert len(with_neg) == len(oracle) + round(0.5 * n_neg)
    assert set(oracle["image_id"]) <= set(with_neg["image_id"])
    assert (with_neg.loc[with_neg["label"] == "", CLASSES] == 0).all().all()


@pytest.mark.parametrize("columns", [2, 8, 9, 17])
def test_joined_names_match_a_join_per_row_over_byte_boundaries(columns):
    rng = np.random.default_rng(columns)
    names = [f"Finding {k}" for k in range(columns)]
    rows = (rng.random((3000, columns)) < 0.3).astype(int)
    rows[:50] = 0
    expected = ["|".join(n for n, v in zip(names, row) if v) for row in rows.tolist()]
    assert metadata.joined_names(rows, names).tolist() == expected
    assert metadata.joined_names(rows[:0], names).tolist() == []


def test_view_filter():
    t = random_table(0)
    assert set(metadata.filter_views(t, "AP,PA")["view"]) == {"AP", "PA"}
    assert set(metadata.filter_views(t, "pa")["view"]) == {"PA"}
    assert len(metadata.filter_views(t, "all")) == len(t)
    with pytest.raises(KitError, match="no image has view.*views present"):
        metadata.filter_views(t, "LL")


def test_stage_writes_filtered_table_and_distribution(tmp_path, cfg):
    rows = [(f"{k}.jpg", f"P{k // 2}", "PA", [CLASSES[k % 3]]) for k in range(12)]
    rows += [("lat.jpg", "P99", "Lateral", ["Cardiomegaly"]), ("two.jpg", "P98", "AP", ["Cardiomegaly", "Edema"])]
    gxs_dataset(tmp_path / "data", rows, images=False)
    c = cfg(data_dir=str(tmp_path / "data"), classes="pneumothorax,cardiomegaly,lung_opacity")
    metadata.run(c)
    out = layout.read_table(layout.filtered_csv(c.work), "metadata")
    assert len(out) == 12 and layout.class_columns(out) == CLASSES[:3]
    dist = pd.read_csv(c.work / "class_distribution.csv")
    assert dist["images"].tolist() == [4, 4, 4] and dist["patients"].tolist() == [4, 4, 4]
    png = (c.work / "class_distribution.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_a_companion_file_that_appears_later_redoes_the_stage(tmp_path, cfg, capsys):
    """CheXpert's valid.csv, read beside train.csv when there: added later, its rows come in."""
    rows = [(k, 1, "frontal", "PA", {c: int(k % 3 == i) for i, c in enumerate(CLASSES[:3])}) for k in range(1, 10)]
    chexpert_dataset(tmp_path / "data", rows)
    c = cfg(data_dir=str(tmp_path / "data"), dataset="chexpert", classes=",".join(CLASSES[:3]))
    metadata.run(c)
    assert len(layout.read_table(layout.filtered_csv(c.work), "metadata")) == 9
    chexpert_dataset(tmp_path / "data", rows, valid_rows=[(20, 1, "frontal", "AP", {CLASSES[0]: 1})])
    metadata.run(c)
    assert "up to date" not in capsys.readouterr().out
    assert len(layout.read_table(layout.filtered_csv(c.work), "metadata")) == 10


def test_empty_result_is_a_clear_error(tmp_path, cfg):
    gxs_dataset(tmp_path, [("a.jpg", "P1", "PA", ["Cardiomegaly", "Edema"])], images=False)
    with pytest.raises(KitError, match="no image left after filtering.*--label-mode multi"):
        metadata.run(cfg(data_dir=str(tmp_path)))
