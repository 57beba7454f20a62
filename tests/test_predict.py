"""The predict stage: a submission shaped like the sample, the same probabilities as evaluate,
and every row accounted for when images are bad."""
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from eval_fixtures import CLASSES, evaluated_run, plain_timm_probs

from kit import layout
from kit.config import predict_kwargs
from kit.data import competition, images
from kit.data.images import area_resize
from kit.errors import KitError
from kit.io import write_json
from kit.stages import predict


@pytest.fixture
def run(tmp_path_factory):
    cfg, _ = evaluated_run(tmp_path_factory)
    test, _ = layout.read_split(cfg.work, "test")
    return cfg, test


def _own_work(cfg, tmp_path):
    """Point cfg at a copy of the shared run's work dir, without its submission."""
    shutil.copytree(cfg.work, tmp_path / "work")
    cfg.work_dir = str(tmp_path / "work")
    layout.submission_csv(cfg.work).unlink(missing_ok=True)


def _sample(path, ids, columns):
    pd.DataFrame({"Image_name": ids, **{c: 0.5 for c in columns}}).to_csv(path, index=False)
    return path


def test_submission_follows_the_sample_and_matches_evaluate(run, tmp_path, capsys):
    cfg, test = run
    asked = ["pneumothorax", "Cardiomegaly", "pleural_effusion"]  # another order and spelling
    ids = list(reversed(test["image_id"]))
    cfg.predict_csv = str(_sample(tmp_path / "sample_submission.csv", ids, asked))
    cfg.predict_dir = str(layout.dataset_dir(cfg.work) / "images")
    predict.run(cfg)
    sub = pd.read_csv(layout.submission_csv(cfg.work))
    assert list(sub.columns) == ["Image_name", *asked] and sub["Image_name"].tolist() == ids
    evaluated = pd.read_csv(layout.reports_dir(cfg.work) / "test_predictions.csv").set_index("image_id")
    for col, cls in zip(asked, ["Pneumothorax", "Cardiomegaly", "Pleural Effusion"]):
        np.testing.assert_allclose(sub[col], evaluated.loc[ids, f"prob_{cls}"], atol=1e-6)
    assert "images/s" in capsys.readouterr().out


def test_a_class_the_model_does_not_know_stops_listing_both(run, tmp_path):
    cfg, test = run
    cfg.predict_csv = str(_sample(tmp_path / "s.csv", test["image_id"], ["Cardiomegaly", "Edema"]))
    cfg.predict_dir = str(layout.dataset_dir(cfg.work) / "images")
    with pytest.raises(KitError, match=r"asks for .*Edema.* model knows .*Pleural Effusion.*unknown: Edema"):
        predict.run(cfg)


@pytest.fixture
def bad_folder(run, tmp_path):
    """Four test images, one corrupt, plus a sample row naming an image that is not there."""
    cfg, test = run
    folder = tmp_path / "test1"
    folder.mkdir()
    for file in test["file"][:4]:
        shutil.copy(layout.image_path(cfg.work, file), folder)
    (folder / test["image_id"][1]).write_bytes(b"\xff\xd8 broken")
    ids = list(test["image_id"][:4]) + ["absent.jpg"]
    cfg.predict_csv = str(_sample(tmp_path / "sample_submission_1.csv", ids, CLASSES))
    _own_work(cfg, tmp_path)
    return cfg, ids


def test_unreadable_images_fail_by_default_keeping_the_rest(bad_folder):
    cfg, ids = bad_folder
    earlier = layout.submission_csv(cfg.work)
    earlier.write_text("Image_name\nfrom_an_earlier_run.jpg\n")
    with pytest.raises(KitError, match=r"2 of 5 images could not be predicted.*not written \(the earlier "
                                       r"one is now submission_previous.csv\).*--on-missing fill"):
        predict.run(cfg)
    assert not earlier.exists()
    assert "from_an_earlier_run" in (cfg.work / "submission_previous.csv").read_text()
    partial = pd.read_csv(cfg.work / "submission_partial.csv")
    assert partial["Image_name"].tolist() == [ids[0], ids[2], ids[3]]
    listed = pd.read_csv(cfg.work / "reports" / "predict_unreadable.csv")
    assert listed["Image_name"].tolist() == [ids[1], "absent.jpg"]
    assert listed["problem"].tolist() == ["cannot be decoded as an image", "missing"]


def test_on_missing_fill_writes_every_row_with_the_real_training_prevalence(bad_folder, capsys):
    cfg, ids = bad_folder
    with pytest.raises(KitError):
        predict.run(cfg)  # --on-missing fail: a partial file
    real, _ = layout.read_split(cfg.work, "train")
    synthetic = real.assign(**{c: int(c == CLASSES[0]) for c in CLASSES}, source="synthetic")
    pd.concat([real.assign(source="real"), synthetic]).to_csv(layout.split_csv(cfg.work, "train"), index=False)
    cfg.on_missing = "fill"
    predict.run(cfg)
    assert not (cfg.work / "submission_partial.csv").exists()  # no stale file beside the whole one
    sub = pd.read_csv(layout.submission_csv(cfg.work))
    assert sub["Image_name"].tolist() == ids and not sub[CLASSES].isna().any().any()
    for row in (1, 4):
        np.testing.assert_allclose(sub.loc[row, CLASSES], real[CLASSES].mean())
    out = capsys.readouterr().out
    assert "warning: 2 of 5 images could not be predicted" in out and "training prevalence" in out


def test_an_image_replaced_in_place_is_predicted_again(bad_folder, capsys):
    cfg, ids = bad_folder
    cfg.on_missing = "fill"
    predict.run(cfg)
    first = pd.read_csv(layout.submission_csv(cfg.work))
    predict.run(cfg)
    assert "up to date" in capsys.readouterr().out
    folder = Path(cfg.predict_csv).parent / "test1"
    shutil.copy(folder / ids[0], folder / ids[2])  # the folder's own time does not change
    predict.run(cfg)
    assert "up to date" not in capsys.readouterr().out
    again = pd.read_csv(layout.submission_csv(cfg.work))
    np.testing.assert_allclose(again.loc[2, CLASSES], first.loc[0, CLASSES])
    assert not np.allclose(first.loc[2, CLASSES], first.loc[0, CLASSES])


def test_an_id_repeated_in_the_sample_is_warned_about_and_kept(run, tmp_path, capsys):
    cfg, test = run
    ids = [*test["image_id"][:3], test["image_id"][0]]
    cfg.predict_csv = str(_sample(tmp_path / "sample.csv", ids, CLASSES))
    cfg.predict_dir = str(layout.dataset_dir(cfg.work) / "images")
    _own_work(cfg, tmp_path)
    predict.run(cfg)
    sub = pd.read_csv(layout.submission_csv(cfg.work))
    assert sub["Image_name"].tolist() == ids
    np.testing.assert_allclose(sub.loc[3, CLASSES], sub.loc[0, CLASSES])
    assert f"warning: 1 ids appear more than once in {cfg.predict_csv} (first: {ids[0]})" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", "Image_name,Cardiomegaly\nb\xe9b\xe9.jpg,0.5\n".encode("latin-1")])
def test_an_unreadable_sample_submission_is_named(run, tmp_path, content):
    cfg, _ = run
    (tmp_path / "sample.csv").write_bytes(content)
    cfg.predict_csv = str(tmp_path / "sample.csv")
    cfg.predict_dir = str(layout.dataset_dir(cfg.work) / "images")
    with pytest.raises(KitError, match=r"cannot read .*sample.csv: .*; check the file is a sample submission"):
        predict.run(cfg)


def test_folder_without_sample_predicts_every_image(run, tmp_path):
    cfg, test = run
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for file in test["file"][:3]:
        shutil.copy(layout.image_path(cfg.work, file), folder / "sub")
    (folder / "notes.txt").write_text("not an image")
    cfg.predict_dir, cfg.predict_csv = str(folder), ""
    _own_work(cfg, tmp_path)
    predict.run(cfg)
    sub = pd.read_csv(layout.submission_csv(cfg.work))
    assert list(sub.columns) == ["image", *CLASSES]
    assert sub["image"].tolist() == sorted(f"sub/{n}" for n in test["image_id"][:3])


def test_competition_layout_is_found_without_flags(cfg, tmp_path):
    c = cfg(data_dir=str(tmp_path / "data"))
    (tmp_path / "data" / "comp" / "test1").mkdir(parents=True)
    assert competition.find_inputs(**predict_kwargs(c)) == (None, None)
    sample = _sample(tmp_path / "data" / "comp" / "sample_submission_1.csv", ["a.jpg"], CLASSES)
    assert competition.find_inputs(**predict_kwargs(c)) == (sample, tmp_path / "data" / "comp" / "test1")
    c.predict_csv = str(tmp_path / "missing.csv")
    with pytest.raises(KitError, match="--predict-csv .*missing.csv not found"):
        competition.find_inputs(**predict_kwargs(c))


def test_a_folder_without_the_named_images_stops_before_predicting(run, tmp_path):
    cfg, test = run
    cfg.predict_csv = str(_sample(tmp_path / "s.csv", test["image_id"], CLASSES))
    cfg.predict_dir = str(tmp_path)
    with pytest.raises(KitError, match=r"none of the 24 images .*first: test_000.jpg.*--predict-dir"):
        predict.run(cfg)


def test_full_size_films_are_read_the_way_the_training_images_were_stored(run, tmp_path):
    """A competition's films are not stored by the separate stage: predict shrinks them as it
    would have (reduced-size decode, area average to the stored side), so a film scores like
    plain OpenCV's reduced decode and area resize through plain timm (within 0.005: the kit's
    faster area average; a bilinear or nearest-neighbour read of the film is 0.02-0.04 off),
    and like the stored copy the separate stage makes of it, up to that copy's JPEG re-encoding."""
    cfg, test = run
    _own_work(cfg, tmp_path)
    films, copies = tmp_path / "films", tmp_path / "copies"
    films.mkdir()
    ids = list(test["image_id"][:6])
    for name, file in zip(ids, test["file"]):
        small = cv2.imread(str(layout.image_path(cfg.work, file)), cv2.IMREAD_GRAYSCALE)
        film = cv2.resize(small, (1100, 1400), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(films / name), film, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert images.store_one((films / name, copies / name), 300)[0] == "written"
    write_json({"resize": 300}, layout.dataset_settings(cfg.work))
    assert layout.stored_resize(cfg.work, 512) == 300

    def predicted(folder):
        cfg.predict_csv, cfg.predict_dir, cfg.force = "", str(folder), True
        predict.run(cfg)
        return pd.read_csv(layout.submission_csv(cfg.work)).set_index("image").loc[ids, CLASSES].to_numpy()

    from_films, from_copies = predicted(films), predicted(copies)
    weights = layout.soup_weights(cfg.work)
    np.testing.assert_allclose(from_films, plain_timm_probs(weights, plain_opencv(films, ids, 300)), atol=5e-3)
    np.testing.assert_allclose(from_films, from_copies, atol=0.01)

    write_json({"resize": 16}, layout.dataset_settings(cfg.work))  # below the model's 32 px input
    np.testing.assert_allclose(predicted(films), plain_timm_probs(weights, plain_opencv(films, ids, 32)), atol=5e-3)


def plain_opencv(folder, ids, shorter_side):
    """Each film decoded by OpenCV at the largest of 1/8, 1/4, 1/2 that keeps `shorter_side`,
    area-averaged to that shorter side, then to the model's 32 x 32."""
    out = []
    for name in ids:
        h, w = cv2.imread(str(folder / name), cv2.IMREAD_GRAYSCALE).shape
        factor = next((f for f in (8, 4, 2) if min(h, w) // f >= shorter_side), 1)
        flag = {8: cv2.IMREAD_REDUCED_GRAYSCALE_8, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 1: cv2.IMREAD_GRAYSCALE}[factor]
        img = cv2.imread(str(folder / name), flag)
        scale = shorter_side / min(img.shape)
        img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        out.append(cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA))
    return out


def test_tta_averages_each_film_with_its_mirror_image_when_training_flipped(run, tmp_path):
    cfg, test = run
    _own_work(cfg, tmp_path)
    ids = list(test["image_id"][:8])
    cfg.predict_csv = str(_sample(tmp_path / "sample.csv", ids, CLASSES))
    cfg.predict_dir, cfg.tta, cfg.hflip = str(layout.dataset_dir(cfg.work) / "images"), True, 0.5
    predict.run(cfg)
    got = pd.read_csv(layout.submission_csv(cfg.work))[CLASSES].to_numpy()
    grays = [area_resize(cv2.imread(str(layout.image_path(cfg.work, f)), cv2.IMREAD_GRAYSCALE), (32, 32))
             for f in test["file"][:8]]  # the kit's resize, checked against an exact area average in test_separate
    weights = layout.soup_weights(cfg.work)
    plain, flipped = plain_timm_probs(weights, grays), plain_timm_probs(weights, grays, flip=True)
    np.testing.assert_allclose(got, (plain + flipped) / 2, atol=1e-5)
    assert not np.allclose(got, plain, atol=1e-4)


def index_per_file(folder: Path) -> dict:
    """The image index written with a Path per file: every image by relative path, name and stem."""
    index = {}
    for dirpath, _, files in os.walk(folder):
        for name in sorted(files):
            path = Path(dirpath) / name
            if path.suffix.lower() in competition.IMAGE_SUFFIXES:
                for key in (path.relative_to(folder).as_posix(), name, path.stem):
                    index.setdefault(key, str(path))
    return index


def test_the_image_index_matches_a_path_per_file_and_locates_ids(tmp_path):
    folder = tmp_path / "test1"
    names = ["b.jpg", "a.JPG", "a.png", "a.jpg.png", "x.y.jpeg", ".jpg", "..jpg", "noext", "c.jpg.",
             "notes.txt", "s.TIFF", "sub/a.jpg", "sub/b.bmp", "sub/deeper/b.jpg", "sub/deeper/z.png",
             "other.d/q.Png", "other.d/q"]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    index = competition.index_images(folder)
    assert index == index_per_file(folder) and len(index) > 20
    assert competition.relative_ids(index, folder) == sorted(
        {Path(p).relative_to(folder).as_posix() for p in index.values()})
    ids = ["sub/deeper/b.jpg", "a", "missing.jpg", "q", "/abs/gone.jpg", "a"]
    paths, found = competition.locate(index, ids, folder)
    assert paths == [index.get(i, str(folder / i)) for i in ids] and found == 4
    assert competition.index_images(tmp_path / "empty") == {} and competition.locate({}, [], folder) == ([], 0)
    for sub in ("zz", "aa", "mm", "bb"):  # one name in several folders: the first in sorted order, on any disk
        (tmp_path / "twice" / sub).mkdir(parents=True)
        (tmp_path / "twice" / sub / "x.jpg").write_bytes(b"")
    assert competition.index_images(tmp_path / "twice")["x.jpg"] == str(tmp_path / "twice" / "aa" / "x.jpg")
