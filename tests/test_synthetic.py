import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit import layout
from kit.data import synthetic
from kit.data.images import load_gray
from kit.errors import KitError
from kit.models.model import checkpoint_dict, create_model, norm_stats, save_weights
from kit.stages import split, synth_quality

CLASSES = ["A", "B", "C"]


def manifest(n_patients=60, seed=0):
    """Real images (never read by the split): class A common, C rare."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for i in range(rng.integers(1, 4)):
            y = np.eye(3, dtype=int)[rng.choice(3, p=[0.6, 0.25, 0.15])]
            rows.append({"image_id": f"p{p}_{i}.jpg", "patient_id": f"p{p}", "view": "PA", "path": "",
                         "label": "", "file": f"images/p{p}_{i}.jpg", "status": "ok", **dict(zip(CLASSES, y))})
    return pd.DataFrame(rows)


def synthetic_folder(root, counts, bad=()):
    """root/<class>/NNN.png per class; `bad` names files holding no image."""
    for c, n in counts.items():
        for k in range(n):
            path = root / c / f"{k:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.random.default_rng(k).integers(0, 256, (40, 48), dtype=np.uint8))
    for name in bad:
        (root / name).write_text("not an image")
    return root


def store_real_images(work, files, seed=1):
    """Blurred noise at each stored image's path, as the separate stage would have left them."""
    rng = np.random.default_rng(seed)
    for f in files:
        path = layout.image_path(work, f)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.GaussianBlur(rng.integers(0, 256, (32, 32), dtype=np.uint8), (0, 0), 1.5))


def run_split(make_cfg, df, **kw):
    c = make_cfg(resize=32, **kw)
    layout.manifest_csv(c.work).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(layout.manifest_csv(c.work), index=False)
    split.run(c)
    return c, {s: layout.read_split(c.work, s)[0] for s in layout.SPLITS}


def test_synthetic_rows_go_to_train_only_capped_with_unique_ids(cfg, tmp_path, capsys):
    df = manifest()
    folder = synthetic_folder(tmp_path / "syn", {"A": 40, "B": 5, "C": 4}, bad=["A/bad.png", "B/bad.png"])
    _, base = run_split(cfg, df, work_dir=str(tmp_path / "real"))
    c, parts = run_split(cfg, df, work_dir=str(tmp_path / "mixed"), synthetic_dir=str(folder),
                         synthetic_max_ratio=0.5)
    out = capsys.readouterr().out
    assert "synthetic file(s) could not be read and were skipped" in out and "B/bad.png (unreadable)" in out

    # val and test untouched, the real part of train untouched
    for s in ("val", "test"):
        assert parts[s]["image_id"].tolist() == base[s]["image_id"].tolist()
        assert (parts[s]["source"] == "real").all()
    train = parts["train"]
    real, syn = train[train.source == "real"], train[train.source == "synthetic"]
    assert real["image_id"].tolist() == base["train"]["image_id"].tolist()

    # the cap: at most ratio x the class's real train images; filled where enough are readable
    # (a bad file chosen in A gives its place to another)
    cap = np.floor(0.5 * real[CLASSES].sum()).astype(int)
    available = {"A": 40, "B": 5, "C": 4}  # readable ones
    for k in CLASSES:
        assert syn[k].sum() == min(cap[k], available[k])
    assert not syn["path"].str.endswith("bad.png").any()

    # ids: unique everywhere, never a real image or patient id, each its own patient
    every = pd.concat(parts.values())
    assert not every["image_id"].duplicated().any()
    real_ids = set(df["image_id"]) | set(df["patient_id"])
    assert not (set(syn["image_id"]) | set(syn["patient_id"])) & real_ids
    assert not syn["patient_id"].duplicated().any()

    # stored like real images: readable from the file entry, shrunk to --resize
    for f in syn["file"]:
        img = load_gray(layout.image_path(c.work, f))
        assert img is not None and min(img.shape) == 32

    # a new machine restores the real stored images only (kept before the split): the split stores these again
    shutil.rmtree(layout.dataset_dir(c.work) / synthetic.FOLDER)
    split.run(c)
    assert all(layout.image_path(c.work, f).is_file() for f in syn["file"])

    summary = pd.read_csv(layout.split_csv(c.work, "summary")).set_index(["split", "class"])
    for k in CLASSES:
        assert summary.loc[("train", k), "synthetic"] == syn[k].sum()
        assert summary.loc[("train", k), "real"] == real[k].sum()
        assert summary.loc[("val", k), "synthetic"] == 0


def test_synthetic_classes_limits_which_classes_take_them(cfg, tmp_path):
    folder = synthetic_folder(tmp_path / "syn", {"A": 5, "C": 5})
    _, parts = run_split(cfg, manifest(), synthetic_dir=str(folder), synthetic_classes="c")
    syn = parts["train"][parts["train"].source == "synthetic"]
    assert len(syn) == 5 and (syn["C"] == 1).all()


def test_a_csv_in_either_form_lists_the_same_images(cfg, tmp_path):
    folder = synthetic_folder(tmp_path / "syn", {"A": 2, "C": 3})
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    labels = [n.split("/")[0] for n in names]
    pd.DataFrame({"path": names, "label": labels}).to_csv(folder / "by_label.csv", index=False)
    pd.DataFrame({"path": names, "seed": range(5), "A": [int(lab == "A") for lab in labels],
                  "C": [int(lab == "C") for lab in labels]}).to_csv(folder / "by_column.csv", index=False)
    # the reference: the files written above, by name, with their folder's class
    expected = pd.DataFrame({"name": names, **{k: [int(lab == k) for lab in labels] for k in CLASSES}})
    for source in (folder, folder / "by_label.csv", folder / "by_column.csv"):
        got = synthetic.listing(str(source), CLASSES)
        got = got.assign(name=[str(n) for n in got["name"]]).sort_values("name").reset_index(drop=True)
        assert got["name"].tolist() == names, source
        assert got[CLASSES].to_numpy().tolist() == expected[CLASSES].to_numpy().tolist(), source
        assert [Path(p) for p in got["path"]] == [folder / n for n in names], source


def test_a_synthetic_image_of_another_class_is_a_clear_error(cfg, tmp_path):
    folder = synthetic_folder(tmp_path / "syn", {"A": 2, "Pneumonia": 1})
    with pytest.raises(KitError, match=r"class 'Pneumonia', not a target class \(A, B, C\)"):
        run_split(cfg, manifest(), synthetic_dir=str(folder))
    pd.DataFrame({"path": ["A/000.png"], "label": ["Pneumonia"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(KitError, match="'Pneumonia', not a target class"):
        synthetic.listing(str(tmp_path / "s.csv"), CLASSES)
    with pytest.raises(KitError, match=r"^--synthetic-classes names 'Pneumonia', not a target class \(A, B, C\)$"):
        synthetic.taking_classes("A,Pneumonia", CLASSES)


def test_label_lists_with_spaces_and_other_case_keep_every_label(cfg, tmp_path):
    synthetic_folder(tmp_path, {"A": 3})  # the files the CSV names
    labels = ["A | c", "a", "C|A"]  # the spellings a hand-written CSV has
    pd.DataFrame({"path": [f"A/{k:03d}.png" for k in range(3)], "label": labels}).to_csv(tmp_path / "s.csv", index=False)
    got = synthetic.listing(str(tmp_path / "s.csv"), CLASSES)
    assert got[CLASSES].to_numpy().tolist() == [[1, 0, 1], [1, 0, 0], [1, 0, 1]]


def test_agreement_calls_a_scarce_class_at_its_val_threshold_not_by_argmax():
    """Synthetic C images score C 0.3 and the common A 0.6: an argmax never calls them C, the
    threshold evaluate picks on val (where C positives score 0.3, negatives 0.1) always does."""
    val_c = np.array([1, 1, 0, 0, 0, 0])
    images = pd.DataFrame({"source": ["real"] * 6 + ["synthetic"] * 3, "split": ["val"] * 6 + ["train"] * 3,
                           "A": list(1 - val_c) + [0] * 3, "B": 0, "C": list(val_c) + [1] * 3})
    probs = np.column_stack([np.full(9, 0.6), np.full(9, 0.05), np.r_[np.where(val_c, 0.3, 0.1), [0.3] * 3]])
    thresholds = synth_quality.val_thresholds(images, CLASSES, probs)
    assert thresholds[2] == pytest.approx(0.3)
    assert synth_quality.agreement(probs, np.arange(6, 9), 2, thresholds[2]) == pytest.approx((1.0, 0.3))
    assert (probs[6:].argmax(axis=1) == 2).mean() == 0  # what the argmax rule gave


def test_caps_without_synthetic_images_are_warned_about(cfg, capsys):
    run_split(cfg, manifest(), synthetic_classes="C", synthetic_max_ratio=0.5)
    assert ("[split] warning: --synthetic-max-ratio and --synthetic-classes do nothing without --synthetic-dir"
            in capsys.readouterr().out)


def test_ids_avoid_any_real_id_prefix():
    assert synthetic.id_prefix(pd.Series(["p1", "x"])) == "synthetic/"
    assert synthetic.id_prefix(pd.Series(["synthetic/1", "_synthetic/2"])) == "__synthetic/"


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), single=st.booleans())
def test_within_cap_never_exceeds_a_class_room(seed, single):
    rng = np.random.default_rng(seed)
    targets = np.eye(4, dtype=int)[rng.integers(0, 4, 50)]
    if not single:
        targets |= rng.random((50, 4)) < 0.2
    room = rng.integers(0, 15, 4)
    taken = synthetic.within_cap(targets, room, rng.permutation(50))
    assert (targets[taken].sum(axis=0) <= room).all()
    if single:  # one class each: every class fills up to its room or its supply
        assert (targets[taken].sum(axis=0) == np.minimum(room, targets.sum(axis=0))).all()


def test_synth_quality_flags_a_planted_copy_of_a_real_train_image(cfg, tmp_path, capsys):
    df = manifest(n_patients=30)
    _, probe = run_split(cfg, df, work_dir=str(tmp_path / "probe"))
    copied = probe["train"][probe["train"]["C"] == 1].iloc[0]
    work = tmp_path / "run"
    store_real_images(work, df["file"])
    folder = synthetic_folder(tmp_path / "syn", {"A": 6, "C": 6})
    cv2.imwrite(str(folder / "C" / "copy.png"), load_gray(layout.image_path(work, copied["file"])))
    c, parts = run_split(cfg, df, work_dir=str(work), synthetic_dir=str(folder), pretrained="none", workers=0)
    assert (parts["train"]["path"] == str(folder / "C" / "copy.png")).any()
    model = create_model("test_vit", len(CLASSES), 32)
    save_weights(checkpoint_dict(model.state_dict(), arch="test_vit", classes=CLASSES, img_size=32,
                                 mean=norm_stats(model)[0], std=norm_stats(model)[1], epoch=1, metric=0.5),
                 layout.soup_weights(work))

    synth_quality.run(c)
    reports = layout.reports_dir(work)
    nearest = pd.read_csv(reports / "synthetic_nearest.csv", keep_default_na=False)
    planted = nearest["image_id"].str.endswith("C/copy.png")
    assert planted.sum() == 1 and nearest.loc[planted, "near_copy"].all()
    assert nearest.loc[planted, "nearest_image_id"].item() == copied["image_id"]
    assert not nearest.loc[~planted, "near_copy"].any()
    quality = pd.read_csv(reports / "synthetic_quality.csv").set_index("class")
    assert sorted(quality.index) == ["A", "C"] and (quality["features"] == "model").all()
    assert quality.loc["C", "near_copies"] == 1 and quality.loc["A", "near_copies"] == 0
    assert (quality["frechet"] >= 0).all() and quality["frechet_real_split_half"].notna().all()
    assert quality["agreement"].between(0, 1).all()
    assert (reports / "synthetic_grid.png").stat().st_size > 0
    assert "1 near-copies" in capsys.readouterr().out


def test_synthetic_flag_without_demo_is_a_one_line_error(tmp_path, capsys):
    from kit import cli

    assert cli.main(["--synthetic", "--work-dir", str(tmp_path / "w")]) == 2
    assert "--synthetic makes demo synthetic images and goes with --demo" in capsys.readouterr().err


def test_the_synthetic_demo_runs_the_whole_study_with_the_demo_model(tmp_path, kit_cli):
    """`--demo --synthetic`, one epoch a run and of the generator, 2 sampling steps: both runs,
    the generator's images of the rarest classes, the judge (the demo's LeViT, whose head is a
    distilled pair) and the comparison, with their reports."""
    done = kit_cli("--demo", "--synthetic", "--epochs", "1", "--gen-epochs", "1", "--gen-steps", "2",
                   "--workers", "2", "--work-dir", tmp_path / "w")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    work = tmp_path / "w"
    generated = pd.read_csv(layout.generated_manifest(work))
    assert sorted(generated["label"].unique()) == ["Cardiomegaly", "Pneumothorax"]
    mixed = layout.read_split(work / "synthetic", "train")[0]
    assert (mixed["source"] == "synthetic").sum() == len(generated)
    quality = pd.read_csv(work / "synthetic" / "reports" / "synthetic_quality.csv")
    assert sorted(quality["class"]) == ["Cardiomegaly", "Pneumothorax"]
    assert quality[["frechet", "precision", "recall", "agreement"]].notna().all().all()
    assert (work / "synthetic" / "reports" / "synthetic_grid.png").is_file()
    compared = pd.read_csv(work / "reports" / "compare.csv")
    assert len(compared) >= 5 and compared["auc_a"].between(0, 1).all() and compared["auc_b"].between(0, 1).all()
