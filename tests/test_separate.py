import shutil
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pandas as pd
import pytest

from fake_data import jpeg
from kit import layout
from kit.data import images
from kit.errors import KitError
from kit.stages import separate

ROOT = Path(__file__).resolve().parents[1]


def filtered(cfg, tmp_path, n=6, h=300, w=200):
    """A filtered.csv of n JPEGs (h x w) plus one missing and one corrupt image."""
    rows = []
    for k in range(n):
        jpeg(tmp_path / "src" / f"img{k}.jpg", h, w, seed=k)
        rows.append((f"img{k}.jpg", str(tmp_path / "src" / f"img{k}.jpg")))
    rows.append(("gone.jpg", str(tmp_path / "src" / "gone.jpg")))
    (tmp_path / "src" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    rows.append(("bad.jpg", str(tmp_path / "src" / "bad.jpg")))
    df = pd.DataFrame({"image_id": [r[0] for r in rows], "patient_id": "p", "view": "PA",
                       "path": [r[1] for r in rows], "label": "A", "A": 1, "B": 0})
    cfg.work.mkdir(parents=True, exist_ok=True)
    df.to_csv(layout.filtered_csv(cfg.work), index=False)


def test_missing_and_corrupt_are_recorded_and_the_rest_stored(tmp_path, cfg, capsys):
    c = cfg(resize=64)
    filtered(c, tmp_path)
    separate.run(c)
    m = layout.read_table(layout.manifest_csv(c.work), "separate")
    assert m.set_index("image_id")["status"].to_dict() == {
        **{f"img{k}.jpg": "ok" for k in range(6)}, "gone.jpg": "missing", "bad.jpg": "unreadable"}
    for f in m.loc[m["status"] == "ok", "file"]:
        img = cv2.imread(str(layout.image_path(c.work, f)), cv2.IMREAD_UNCHANGED)
        assert img.ndim == 2 and min(img.shape) == 64 and img.shape == (96, 64)  # aspect 3:2 kept
    assert "6 written, 0 skipped (already there), 1 missing, 1 unreadable" in capsys.readouterr().out


@pytest.mark.parametrize("resize", [64, 0])
def test_written_files_are_as_readable_as_any_the_user_creates(tmp_path, cfg, resize):
    """Temporary files are private (0600); once renamed into place they take the umask's mode."""
    c = cfg(resize=resize)
    filtered(c, tmp_path)
    separate.run(c)
    (tmp_path / "plain").write_text("")
    plain = (tmp_path / "plain").stat().st_mode & 0o777
    stored = layout.image_path(c.work, layout.read_table(layout.manifest_csv(c.work), "separate")["file"][0])
    assert {p.stat().st_mode & 0o777 for p in (stored, layout.manifest_csv(c.work))} == {plain}


def test_restart_skips_done_images_and_redoes_a_damaged_one(tmp_path, cfg, capsys):
    c = cfg(resize=64)
    filtered(c, tmp_path)
    separate.run(c)
    m = layout.read_table(layout.manifest_csv(c.work), "separate")
    damaged = layout.image_path(c.work, m["file"][0])
    damaged.write_bytes(damaged.read_bytes()[:100])  # as if the disk lost the tail
    capsys.readouterr()
    separate.run(cfg(resize=64, force=True))
    assert "1 written, 5 skipped (already there)" in capsys.readouterr().out
    assert cv2.imread(str(damaged)) is not None
    separate.run(c)
    assert "[separate] up to date, skipped" in capsys.readouterr().out


def test_a_changed_resize_restores_every_image(tmp_path, cfg):
    filtered(cfg(resize=64), tmp_path)
    separate.run(cfg(resize=64))
    separate.run(cfg(resize=80))
    m = layout.read_table(layout.manifest_csv(cfg().work), "separate")
    assert {min(cv2.imread(str(layout.image_path(cfg().work, f)), 0).shape) for f in m.loc[m.status == "ok", "file"]} == {80}


def test_resize_zero_copies_bytes_and_never_upscales(tmp_path, cfg):
    c = cfg(resize=0)
    filtered(c, tmp_path, n=2)
    separate.run(c)
    m = layout.read_table(layout.manifest_csv(c.work), "separate")
    assert layout.image_path(c.work, m["file"][0]).read_bytes() == (tmp_path / "src" / "img0.jpg").read_bytes()
    small = images.load_gray(tmp_path / "src" / "img0.jpg", 1000)
    assert small.shape == (300, 200)


@pytest.mark.parametrize("size,short,flag", [((2000, 2500), 512, cv2.IMREAD_REDUCED_GRAYSCALE_2),
                                             ((2048, 2500), 512, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                                             ((4100, 4100), 512, cv2.IMREAD_REDUCED_GRAYSCALE_8),
                                             ((1000, 1000), 512, cv2.IMREAD_GRAYSCALE)])
def test_reduced_decode_is_used_only_when_it_stays_above_the_target(tmp_path, size, short, flag):
    path = tmp_path / "x.jpg"
    cv2.imwrite(str(path), np.zeros((size[1], size[0]), np.uint8))
    assert images.decode_flag(path, short) == flag


def film_like(h, w, seed=0):
    """Smooth anatomy-like shading plus grain, the content the shrink must keep."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.uniform(40, 220, (12, 10)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(base + rng.normal(0, 6, (h, w)), 0, 255).astype(np.uint8)


@pytest.fixture(params=["simplejpeg", "opencv"])
def decoder(request, monkeypatch):
    """Both JPEG decoders: simplejpeg where installed, OpenCV where it is not (Kaggle's image)."""
    if request.param == "opencv":
        monkeypatch.setattr(images, "simplejpeg", None)
    else:
        assert images.simplejpeg is not None, "simplejpeg is in requirements.txt"
    return request.param


def test_reduced_decode_matches_a_full_decode_resize(tmp_path, decoder):
    img = film_like(2400, 2000)
    cv2.imwrite(str(tmp_path / "x.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    fast = images.load_gray(tmp_path / "x.jpg", 512).astype(float)
    full = cv2.imread(str(tmp_path / "x.jpg"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    reference = cv2.resize(full, (512, 614), interpolation=cv2.INTER_AREA).astype(float)
    assert fast.shape == reference.shape
    assert 10 * np.log10(255**2 / np.mean((fast - reference) ** 2)) > 48


@pytest.mark.parametrize("short,flag", [(0, cv2.IMREAD_GRAYSCALE), (600, cv2.IMREAD_REDUCED_GRAYSCALE_2),
                                        (300, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                                        (150, cv2.IMREAD_REDUCED_GRAYSCALE_8)])
def test_both_decoders_give_opencvs_pixels_at_each_reduction(tmp_path, decoder, short, flag):
    grey = film_like(1500, 1200)
    cv2.imwrite(str(tmp_path / "x.jpg"), grey, [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(str(tmp_path / "rgb.jpg"), np.dstack([grey, cv2.add(grey, 10), cv2.subtract(grey, 10)]))
    data = (tmp_path / "x.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    for name in ("x.jpg", "rgb.jpg", "cut.jpg"):
        expected = cv2.imread(str(tmp_path / name), flag)
        expected = images.shrink(expected, short) if short else expected
        assert np.array_equal(images.load_gray(tmp_path / name, short), expected), name


@pytest.mark.parametrize("shape,size", [((640 * r, 512 * r), (512, 640))
                                        for r in (1.05, 1.19, 1.21, 1.5, 1.95, 2.5, 3.3)]
                         + [((640 * 1.95, 512 * 1.14), (512, 640))]
                         # validation and inference: a stored image to the model's square input
                         + [((640, 512), (s, s)) for s in (448, 384, 224)])
def test_area_resize_stays_close_to_an_exact_area_average(shape, size):
    img = film_like(round(shape[0]), round(shape[1]))
    out = images.area_resize(img, size)
    reference = cv2.resize(img.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    assert out.shape == size[::-1] and out.dtype == np.uint8
    assert 10 * np.log10(255**2 / np.mean((out - reference.astype(np.float64)) ** 2)) > 50


@pytest.mark.parametrize("factor", [2, 3])
def test_area_resize_by_a_whole_factor_is_opencv_area(factor):
    img = film_like(640 * factor, 512 * factor)
    exact = cv2.resize(img, (512, 640), interpolation=cv2.INTER_AREA)
    assert np.array_equal(images.area_resize(img, (512, 640)), exact)


def test_sixteen_bit_and_rgba_png_decode_to_8_bit_gray(tmp_path):
    ramp = np.tile(np.linspace(1000, 5000, 64).astype(np.uint16), (64, 1))
    cv2.imwrite(str(tmp_path / "d.png"), ramp)
    gray = images.load_gray(tmp_path / "d.png")
    assert gray.dtype == np.uint8 and gray.min() == 0 and gray.max() == 255
    cv2.imwrite(str(tmp_path / "rgba.png"), np.full((8, 8, 4), 100, np.uint8))
    assert images.load_gray(tmp_path / "rgba.png").shape == (8, 8)
    unit = np.tile(np.linspace(0.2, 0.8, 64, dtype=np.float32), (64, 1))  # a generator's [0, 1] output
    cv2.imwrite(str(tmp_path / "f.tiff"), unit)
    assert np.array_equal(images.load_gray(tmp_path / "f.tiff"), np.rint(unit * 255).astype(np.uint8))


def test_several_workers_give_the_same_files(tmp_path, cfg):
    one, two = cfg(resize=64, work_dir=str(tmp_path / "w1")), cfg(resize=64, work_dir=str(tmp_path / "w2"), workers=2)
    filtered(one, tmp_path)
    filtered(two, tmp_path)
    separate.run(one)
    separate.run(two)
    m = layout.read_table(layout.manifest_csv(one.work), "separate")
    for f in m.loc[m.status == "ok", "file"]:
        assert layout.image_path(one.work, f).read_bytes() == layout.image_path(two.work, f).read_bytes()


def test_workers_forked_while_opencv_threads_run_do_not_hang(tmp_path):
    """A process that has used OpenCV's thread pool (as training and tests do) then stores
    with a pool of workers: the workers must finish, in a subprocess bounded by a timeout."""
    for k in range(4):
        jpeg(tmp_path / f"img{k}.jpg", 300, 200, seed=k)
    script = textwrap.dedent(f"""
        import cv2, numpy as np
        from kit.data import images
        cv2.setNumThreads(2)
        cv2.GaussianBlur(np.zeros((3000, 3000), np.uint8), (0, 0), 5)
        jobs = [(f"{tmp_path}/img{{k}}.jpg", f"{tmp_path}/out/img{{k}}.jpg") for k in range(4)]
        print([r[0] for r in images.store_all(jobs, 64, 2)], cv2.getNumThreads())
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "['written', 'written', 'written', 'written'] 2"


def stored_name_per_id(image_id: str, resize: int) -> str:
    """The stored name's rule written with pathlib, one id at a time (a leading '//', which pathlib
    keeps as a root, is dropped like '/')."""
    parts = [p for p in PurePosixPath(image_id.replace("\\", "/")).parts if p not in ("/", "//", "..", ".")]
    name = PurePosixPath(*parts)
    return str(name.with_suffix(".jpg") if resize else name)


TRICKY_IDS = ["a/../b.png", "./x.jpeg", "C:\\dir\\y.JPG", "noext", "dir.d/noext", "a.b.c.png", "x.tar.gz",
              "x.", "a..", "...", "..jpg", ".bashrc", "a/.hidden", "a//b/./c.PNG", "a/b/", "//net/x.png",
              "../../etc/x.png", "/abs/CheXpert/p1/view1.jpg", "p1/s1/view1_frontal.jpg", "x.png\n"]


@pytest.mark.parametrize("resize", [0, 512])
def test_stored_names_follow_the_per_id_rule_and_cannot_escape_the_images_folder(resize):
    names = images.stored_names(pd.Series(TRICKY_IDS), resize)
    assert names.tolist() == [stored_name_per_id(i, resize) for i in TRICKY_IDS]
    assert not names.str.contains(r"(?:^|/)\.\.?(?:/|$)|^/|\\\\").any()
    assert images.stored_names(pd.Series(["../../etc/x.png"]), 512).tolist() == ["etc/x.jpg"]


def test_an_id_that_names_no_file_is_a_clear_error():
    with pytest.raises(KitError, match="names no file"):
        images.stored_names(pd.Series(["a.png", "./.."]), 512)


def test_image_paths_are_each_stored_images_path_as_a_string(tmp_path):
    files = pd.Series(["images/a.jpg", "images/p1/s1/view1.jpg", "synthetic/C/x.jpg"], index=[5, 3, 9])
    assert layout.image_paths(tmp_path / "work", files) == [str(layout.image_path(tmp_path / "work", f)) for f in files]
    assert layout.image_paths(tmp_path, files[:0]) == []


@pytest.fixture
def kaggle(tmp_path, monkeypatch):
    """A Kaggle machine as tests/test_env.py fakes one, with the scratch root under tmp_path too."""
    from kit import env

    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    for name in ("KAGGLE_INPUT", "KAGGLE_WORKING", "KAGGLE_SCRATCH"):
        folder = tmp_path / "kaggle" / name.lower()
        folder.mkdir(parents=True)
        monkeypatch.setattr(env, name, folder)
    return env


def test_on_kaggle_the_images_go_to_scratch_and_a_wiped_scratch_is_rebuilt(tmp_path, cfg, kaggle, capsys):
    from kit.stages import split

    c = cfg(resize=64, work_dir=str(kaggle.KAGGLE_WORKING), val_frac=0.2, test_frac=0.2)
    filtered(c, tmp_path, n=12)
    df = pd.read_csv(layout.filtered_csv(c.work))
    df["patient_id"] = [f"p{k}" for k in range(len(df))]
    df["B"] = np.arange(len(df)) % 2
    df["A"] = 1 - df["B"]
    df.to_csv(layout.filtered_csv(c.work), index=False)
    separate.run(c)
    split.run(c)
    folder = kaggle.KAGGLE_SCRATCH / kaggle.KAGGLE_WORKING.relative_to("/") / "dataset"
    assert layout.dataset_dir(c.work) == folder and len(list((folder / "images").glob("*.jpg"))) == 12
    stored = [p.relative_to(c.work) for p in c.work.rglob("*") if p.is_file()]
    assert not [p for p in stored if p.suffix == ".jpg"] and Path("dataset_location.json") in stored
    train_df, _ = layout.read_split(c.work, "train")
    assert all(layout.image_path(c.work, f).is_file() for f in train_df.file)

    shutil.rmtree(kaggle.KAGGLE_SCRATCH)  # a new session: the work dir was kept, the scratch was not
    with pytest.raises(KitError, match=r"stored images in .* are gone .* run --stage separate"):
        layout.read_split(c.work, "train")
    capsys.readouterr()
    separate.run(c)
    split.run(c)
    assert "12 written, 0 skipped" in capsys.readouterr().out
    again, _ = layout.read_split(c.work, "train")
    assert again.file.tolist() == train_df.file.tolist()
    assert all(layout.image_path(c.work, f).is_file() for f in again.file)


def test_dataset_dir_elsewhere_is_local_unless_asked(tmp_path, cfg, monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    c = cfg(resize=64)
    filtered(c, tmp_path)
    separate.run(c)
    assert layout.dataset_dir(c.work) == c.work / "dataset" and not (c.work / "dataset_location.json").exists()
    chosen = cfg(resize=64, dataset_dir=str(tmp_path / "elsewhere"))
    separate.run(chosen)  # another folder is another setting: stored again there
    assert layout.dataset_dir(c.work) == tmp_path / "elsewhere"
    assert (tmp_path / "elsewhere" / "manifest.csv").is_file()
    separate.run(c)  # and back
    assert layout.dataset_dir(c.work) == c.work / "dataset"
