import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit import layout
from kit.errors import KitError
from kit.stages import split

CLASSES = ["A", "B", "C", "D"]


def manifest(seed, n_patients=300, multi=False, weights=(0.45, 0.3, 0.15, 0.1), no_ids=False):
    """A manifest of 1-5 images per patient; a patient's images mostly share a class."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        base = rng.choice(len(CLASSES), p=weights)
        for i in range(rng.integers(1, 6)):
            y = np.zeros(len(CLASSES), int)
            y[base if rng.random() < 0.8 else rng.choice(len(CLASSES), p=weights)] = 1
            if multi and rng.random() < 0.3:
                y[rng.integers(len(CLASSES))] = 1
            rows.append({"image_id": f"p{p}_{i}", "patient_id": "" if no_ids else f"p{p}", "view": "PA",
                         "path": "", "label": "", "file": f"images/p{p}_{i}.jpg", "status": "ok",
                         **dict(zip(CLASSES, y))})
    df = pd.DataFrame(rows)
    df.loc[df.sample(frac=0.02, random_state=seed).index, "status"] = "missing"
    return df


def run_split(cfg, df, **kw):
    c = cfg(**kw)
    c.work.mkdir(parents=True, exist_ok=True)
    df.to_csv(layout.manifest_csv(c.work).parent.mkdir(parents=True, exist_ok=True) or layout.manifest_csv(c.work),
              index=False)
    split.run(c)
    return {s: layout.read_split(c.work, s)[0] for s in layout.SPLITS}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), multi=st.booleans(),
       val=st.sampled_from([0.1, 0.15, 0.2]), test=st.sampled_from([0.1, 0.15, 0.25]))
def test_split_invariants(cfg, seed, multi, val, test):
    df = manifest(seed, multi=multi)
    parts = run_split(cfg, df, val_frac=val, test_frac=test, seed=seed, force=True)
    ok = df[df.status == "ok"]
    # every usable image in exactly one split, missing ones in none
    ids = pd.concat([p["image_id"] for p in parts.values()])
    assert sorted(ids) == sorted(ok["image_id"]) and not ids.duplicated().any()
    # no patient in two splits
    patients = [set(p["patient_id"]) for p in parts.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    # fractions and per-class shares close to the asked-for ones
    for name, frac in (("val", val), ("test", test)):
        assert abs(len(parts[name]) / len(ok) - frac) < 0.05
        for c in CLASSES:
            share = parts[name][c].sum() / ok[c].sum()
            assert abs(share - frac) < 0.12, (name, c, share)


def test_deterministic_for_a_seed_and_different_across_seeds(cfg, tmp_path):
    df = manifest(1)
    a = run_split(cfg, df, seed=7, work_dir=str(tmp_path / "a"))
    b = run_split(cfg, df, seed=7, work_dir=str(tmp_path / "b"))
    c = run_split(cfg, df, seed=8, work_dir=str(tmp_path / "c"))
    assert all(a[s]["image_id"].tolist() == b[s]["image_id"].tolist() for s in layout.SPLITS)
    assert a["test"]["image_id"].tolist() != c["test"]["image_id"].tolist()


def test_split_seed_alone_decides_the_split(cfg, tmp_path):
    """Runs of other --seed values share their split when they share --split-seed (a blend's need)."""
    df = manifest(1)
    a = run_split(cfg, df, seed=1, split_seed=7, work_dir=str(tmp_path / "a"))
    b = run_split(cfg, df, seed=2, split_seed=7, work_dir=str(tmp_path / "b"))
    c = run_split(cfg, df, seed=7, work_dir=str(tmp_path / "c"))
    d = run_split(cfg, df, seed=1, work_dir=str(tmp_path / "d"))
    for s in layout.SPLITS:
        assert a[s]["image_id"].tolist() == b[s]["image_id"].tolist() == c[s]["image_id"].tolist()
    assert a["val"]["image_id"].tolist() != d["val"]["image_id"].tolist()


def worst_spread(df, assignment, classes=CLASSES, frac=0.2):
    """The largest gap between a class's share in val or test and the asked-for fraction."""
    return max(abs(df.loc[assignment == s, c].sum() / df[c].sum() - frac) for s in ("val", "test") for c in classes)


def chance_split(df, rng, fracs=(("test", 0.2), ("val", 0.2))):
    """Whole patients in random order, cut where the images reach each fraction."""
    patients = rng.permutation(df["patient_id"].unique())
    sizes = df.groupby("patient_id").size()[patients].cumsum() / len(df)
    split_of = pd.Series("train", index=patients, dtype=object)
    low = 0.0
    for name, frac in fracs:
        split_of[(sizes > low) & (sizes <= low + frac)] = name
        low += frac
    return split_of[df["patient_id"]].to_numpy()


def test_rare_class_spread_better_than_chance_and_as_well_as_sklearn():
    from sklearn.model_selection import StratifiedGroupKFold

    df = manifest(11, n_patients=400)
    keys, groups = split.strat_keys(df, CLASSES), df["patient_id"].to_numpy()
    ours = split.assign(keys, groups, {"test": 0.2, "val": 0.2}, seed=0)
    folds = np.empty(len(df), int)
    for k, (_, idx) in enumerate(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(df, keys, groups)):
        folds[idx] = k
    theirs = np.where(folds == 0, "test", np.where(folds == 1, "val", "train"))
    rng = np.random.default_rng(0)
    chance = [worst_spread(df, chance_split(df, rng)) for _ in range(100)]
    assert worst_spread(df, ours) < np.percentile(chance, 5)  # better than 95 of 100 random patient splits
    assert worst_spread(df, ours) <= worst_spread(df, theirs) + 0.02


def test_multi_label_images_are_stratified_by_their_rarest_class():
    """D is rare and always comes with the common A: stratified by its first class an image of D
    counts as A, and D's share of val and test drifts; by its rarest, D is spread like the rest."""
    df = manifest(12, n_patients=400, multi=True, weights=(0.5, 0.3, 0.2, 0.0))
    counts = df[CLASSES].sum()
    rarest = df[CLASSES].apply(lambda row: min((c for c in CLASSES if row[c]), key=counts.get, default="(none)"),
                               axis=1)
    assert split.strat_keys(df, CLASSES).tolist() == rarest.tolist()
    rng = np.random.default_rng(1)
    carriers = rng.choice(df.index[df["A"] == 1], 60, replace=False)
    df.loc[carriers, "D"] = 1
    keys, groups = split.strat_keys(df, CLASSES), df["patient_id"].to_numpy()
    first = df[CLASSES].idxmax(axis=1).to_numpy()  # the first positive class
    assert (keys[carriers] == "D").all() and (first[carriers] == "A").all()
    fracs = {"test": 0.2, "val": 0.2}
    by_rarest = [worst_spread(df, split.assign(keys, groups, fracs, seed), ["D"]) for seed in range(5)]
    by_first = [worst_spread(df, split.assign(first, groups, fracs, seed), ["D"]) for seed in range(5)]
    assert np.mean(by_rarest) < np.mean(by_first) / 2 and max(by_rarest) < 0.06


def test_summary_counts_match_the_split_files(cfg):
    parts = run_split(cfg, manifest(3))
    summary = pd.read_csv(layout.split_csv(cfg().work, "summary"))
    for row in summary.to_dict("records"):
        part = parts[row["split"]]
        sel = part if row["class"] == "all" else part[part[row["class"]] == 1]
        assert row["images"] == len(sel) and row["patients"] == sel["patient_id"].nunique()


def test_without_patient_ids_it_warns_and_splits_per_image(cfg, capsys):
    df = manifest(4, no_ids=True)
    parts = run_split(cfg, df)
    assert "no patient ids, so images are split one by one" in capsys.readouterr().out
    ids = pd.concat([p["image_id"] for p in parts.values()])
    assert sorted(ids) == sorted(df.loc[df.status == "ok", "image_id"]) and not ids.duplicated().any()
    # the hidden patient of each image (p12_3: patient 12): some have images in two splits
    split_of = pd.concat([p.assign(split=name) for name, p in parts.items()])
    hidden = split_of["image_id"].str.split("_").str[0]
    assert (split_of.groupby(hidden)["split"].nunique() > 1).sum() > 20
    summary = pd.read_csv(layout.split_csv(cfg().work, "summary"))
    every = summary[summary["class"] == "all"]
    assert (every["patients"] == every["images"]).all()  # every image a patient of its own


def test_a_class_with_fewer_than_10_images_in_a_split_is_warned_about(cfg, capsys):
    df = manifest(8, n_patients=150, weights=(0.5, 0.3, 0.17, 0.03))
    parts = run_split(cfg, df)
    printed = capsys.readouterr().out
    few = [(name, c, int(p[c].sum())) for name, p in parts.items() for c in CLASSES if p[c].sum() < 10]
    assert few and all(p[c].sum() >= 10 for p in parts.values() for c in CLASSES[:2])
    warned = re.findall(r"\[split\] warning: (\w+) has only (\d+) image\(s\) of (\w+)", printed)
    assert sorted((name, c, int(n)) for name, n, c in warned) == sorted(few)


def test_official_test_list_is_the_test_set(cfg):
    df = manifest(5)
    df["official_split"] = np.where(df["patient_id"].str[1:].astype(int) % 5 == 0, "test", "train")
    parts = run_split(cfg, df, split="official")
    ok = df[df.status == "ok"]
    assert sorted(parts["test"]["image_id"]) == sorted(ok.loc[ok.official_split == "test", "image_id"])
    assert not set(parts["val"]["patient_id"]) & set(parts["train"]["patient_id"])
    assert abs(len(parts["val"]) / len(ok) - 0.15) < 0.05


def test_a_class_with_too_few_patients_is_a_clear_error(cfg):
    df = manifest(6)
    rare = df[df["D"] == 1]["patient_id"].unique()[2:]
    df.loc[df.patient_id.isin(rare), "D"] = 0
    df = df[df[CLASSES].sum(axis=1) > 0]
    with pytest.raises(KitError, match="class 'D' has 2 patient.*too few to put one in each of 3 splits"):
        run_split(cfg, df)


def test_official_split_needs_an_official_list(cfg):
    with pytest.raises(KitError, match="--split official needs"):
        run_split(cfg, manifest(7), split="official")


def test_a_patient_in_two_splits_stops_the_split():
    def parts(**groups):
        return {name: pd.DataFrame({"_group": g}, dtype=object) for name, g in groups.items()}
    split.check_disjoint(parts(train=["p1", "p2", "p2"], val=["p3"], test=[]))
    with pytest.raises(KitError, match="internal error: p2 is in both train and test"):
        split.check_disjoint(parts(train=["p1", "p2"], val=["p3"], test=["p2", "p4"]))
