"""--download: credentials found where the kaggle package and Colab keep them, one-line errors
without them or without a network, a skip when the data is there, a check after fetching."""
import importlib.machinery
import json
import os
import re
import sys
import types
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from fake_data import gxs_dataset, jpeg
from kaggle_server import kaggle_server, range_server  # noqa: F401 (a fixture)
from conftest import one_error
from kit import cli, env
from kit.config import Config, download_kwargs
from kit.data import images, smoke, sources
from kit.errors import KitError
from kit.kaggle import download, remote_zip

ROWS = [(f"{k}.jpg", f"P{k}", "PA", [["Cardiomegaly", "Pneumothorax", "Lung Opacity"][k % 3]]) for k in range(30)]


@pytest.fixture(autouse=True)
def no_credentials(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setattr(env, "platform", lambda: "local")


def test_without_credentials_one_line_and_exit_2(tmp_path, capsys):
    argv = ["--download", "--stage", "metadata", "--data-dir", str(tmp_path / "d"), "--work-dir", str(tmp_path / "w")]
    assert re.match(r"error: --download needs Kaggle credentials and found none: .*kaggle.json.*KAGGLE_KEY",
                    one_error(capsys, argv))
    assert not (tmp_path / "d").exists()


def test_without_network_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    monkeypatch.setattr(env, "reachable", lambda host, port=443, timeout=2.0: False)
    argv = ["--download", "--stage", "metadata", "--data-dir", str(tmp_path / "d"), "--work-dir", str(tmp_path / "w")]
    assert "cannot reach api.kaggle.com" in one_error(capsys, argv)


def test_data_already_there_is_used_without_credentials(tmp_path, capsys, monkeypatch):
    gxs_dataset(tmp_path / "data" / "grand-xray-slam-division-a", ROWS, images=False)
    monkeypatch.chdir(tmp_path)  # the default data root is ./data
    cfg = Config(download=True)
    assert download.fetch(**download_kwargs(cfg)) == str(Path("data") / "grand-xray-slam-division-a")
    assert "grand-xray-slam-division-a is already in" in capsys.readouterr().out
    marker = Path("data") / "grand-xray-slam-division-a" / download.MARKER
    marker.write_text(json.dumps({"resize": cfg.resize // 2, "complete": True}))  # fetched at half the size
    with pytest.raises(KitError, match=rf"holds films shrunk to {cfg.resize // 2} px by an earlier --download; "
                                       rf"pass --resize {cfg.resize // 2}, or remove that folder"):
        download.fetch(**download_kwargs(cfg))
    assert download.fetch(**download_kwargs(Config(download=True, resize=cfg.resize // 2)))


def test_credentials_are_found_where_the_kaggle_package_looks(tmp_path, monkeypatch):
    assert download.credentials() is None
    config = tmp_path / "config"
    config.mkdir()
    (config / "kaggle.json").write_text('{"username": "someone", "key": "k"}')
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config))
    assert download.credentials() == str(config / "kaggle.json")
    monkeypatch.delenv("KAGGLE_CONFIG_DIR")
    xdg = tmp_path / "home" / ".config" / "kaggle"  # Linux, without ~/.kaggle
    xdg.mkdir(parents=True)
    (xdg / "kaggle.json").write_text("{}")
    assert download.credentials() == str(xdg / "kaggle.json")
    (tmp_path / "home" / ".kaggle").mkdir()
    (tmp_path / "home" / ".kaggle" / "access_token").write_text("token")
    assert download.credentials().endswith(".kaggle/access_token")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "token")
    assert download.credentials() == "KAGGLE_API_TOKEN"


def test_colab_secrets_become_the_environment(monkeypatch):
    secrets = {"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": "k"}
    for name in secrets:  # recorded by monkeypatch, so the tests after this one get them back as they were
        monkeypatch.setenv(name, "before")
        monkeypatch.delenv(name)

    def get(name):
        if name not in secrets:
            raise KeyError(name)  # Colab's SecretNotFoundError in real life
        return secrets[name]

    colab = types.ModuleType("google.colab")
    colab.__spec__ = importlib.machinery.ModuleSpec("google.colab", None)
    colab.userdata = types.SimpleNamespace(get=get)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", colab.userdata)
    monkeypatch.setattr(env, "platform", lambda: "colab")
    assert download.credentials() == "Colab secrets"
    assert os.environ["KAGGLE_USERNAME"] == "someone" and os.environ["KAGGLE_KEY"] == "k"


def test_a_fetched_folder_without_the_dataset_is_refused(tmp_path, kaggle_server, small_requests):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("README.txt", "not the dataset")
    with range_server(path.read_bytes()) as (url, _):
        with pytest.raises(KitError, match=r"found no train1.csv or train2.csv in it"):
            fetch_from(url, kaggle_server, tmp_path / "d")


@pytest.mark.parametrize("where, dataset, message", [
    ("local", "chexpert", r"--download knows --dataset gxs .* put the chexpert dataset in --data-dir yourself"),
    ("kaggle", "auto", r"--download on Kaggle: attach the data instead"),
])
def test_what_download_cannot_do(monkeypatch, where, dataset, message):
    monkeypatch.setattr(env, "platform", lambda: where)
    with pytest.raises(KitError, match=message):
        download.fetch(**download_kwargs(Config(download=True, dataset=dataset)))


def test_the_default_folder_is_under_the_platforms_data_root(monkeypatch):
    monkeypatch.setattr(env, "platform", lambda: "colab")
    assert str(download.target("", "nih-chest-xrays/data")) == "/content/data/nih-chest-xrays-data"


@pytest.fixture
def archive(tmp_path):
    """A Grand X-Ray Slam-shaped competition zip: CSVs deflated, 120x100 films stored as they are."""
    src = tmp_path / "src"
    gxs_dataset(src, ROWS)
    (src / "sample_submission_1.csv").write_text("Image_name,Cardiomegaly\nt0.jpg,0.5\n")
    jpeg(src / "test1" / "t0.jpg", 130, 110, seed=7)
    path = tmp_path / "archive.zip"
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(src).as_posix(),
                        zipfile.ZIP_STORED if f.suffix == ".jpg" else zipfile.ZIP_DEFLATED)
    return src, path.read_bytes()


@pytest.fixture
def small_requests(monkeypatch):
    monkeypatch.setattr(remote_zip, "WINDOW", 8192)  # many requests over a small archive
    monkeypatch.setattr(remote_zip, "RETRY_PAUSE", 0)


def fetch_from(url, kaggle_server, data_dir):
    """--download through the kaggle package's own client: Kaggle's answer redirects to `url`."""
    kaggle_server.archive_url = url
    cfg = Config(download=True, data_dir=str(data_dir), resize=64, workers=2)
    cfg.data_dir = download.fetch(**download_kwargs(cfg))
    return cfg


def test_the_archive_streams_into_shrunk_films_through_a_dropped_connection(
        tmp_path, kaggle_server, capsys, archive, small_requests):
    src, blob = archive
    with range_server(blob, drop={3, 7}) as (url, asked):
        cfg = fetch_from(url, kaggle_server, tmp_path / "d")
    out = capsys.readouterr().out
    assert out.count("connection lost at byte") == 2 and "33 files" in out
    assert sources.discover([Path(cfg.data_dir)], "gxs")[1] == tmp_path / "d" / "train1.csv"
    got = {p.relative_to(tmp_path / "d") for p in (tmp_path / "d").rglob("*") if p.is_file()}
    assert got == {p.relative_to(src) for p in src.rglob("*") if p.is_file()} | {Path(download.MARKER)}
    for name in ("train1.csv", "sample_submission_1.csv"):
        assert (tmp_path / "d" / name).read_bytes() == (src / name).read_bytes()
    for film in src.rglob("*.jpg"):  # what the separate stage would store from the original
        expected = tmp_path / "expected" / film.name
        images.store_one((film, expected), 64)
        stored = tmp_path / "d" / film.relative_to(src)
        assert stored.read_bytes() == expected.read_bytes()
        again = tmp_path / "again" / film.name  # and the separate stage copies it, not encoding it again
        assert images.store_one((stored, again), 64)[0] == "written"
        assert again.read_bytes() == stored.read_bytes()
    # streamed: each byte asked for once, but for the end record, a drop's lost half and the rest
    assert sum(len(range_bytes(r, len(blob))) for r in asked) < 1.1 * len(blob)


def range_bytes(header, size):
    first, _, last = header.removeprefix("bytes=").partition("-")
    return range(size - int(last), size) if first == "" else range(int(first), int(last) + 1)


def test_a_fetch_cut_off_continues_where_it_stopped(tmp_path, kaggle_server, capsys, archive, small_requests):
    src, blob = archive
    with range_server(blob, fail_after=6) as (url, _):
        with pytest.raises(KitError, match=r"the connection to Kaggle failed .*rerun"):
            fetch_from(url, kaggle_server, tmp_path / "d")
    marker = json.loads((tmp_path / "d" / download.MARKER).read_text())
    assert marker == {"archive": "grand-xray-slam-division-a", "resize": 64, "slice": False, "complete": False}
    kept = {p for p in (tmp_path / "d").rglob("*") if p.is_file() and p.name != download.MARKER}
    assert 0 < len(kept) < 33 and not list((tmp_path / "d").glob(".download-*"))
    before = {p: p.stat().st_mtime_ns for p in kept}
    capsys.readouterr()
    with range_server(blob) as (url, _):
        fetch_from(url, kaggle_server, tmp_path / "d")
    out = capsys.readouterr().out
    assert "(continuing)" in out and f"{len(kept)} already here, {33 - len(kept)} to fetch" in out
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # not fetched again
    assert len([p for p in (tmp_path / "d").rglob("*") if p.is_file()]) == 34
    assert json.loads((tmp_path / "d" / download.MARKER).read_text())["complete"] is True
    with range_server(blob) as (url, asked):
        fetch_from(url, kaggle_server, tmp_path / "d")
    assert asked == [] and "is already in" in capsys.readouterr().out


def test_a_smoke_download_fetches_only_the_films_of_its_slice(tmp_path, monkeypatch, capsys, archive, small_requests):
    src, blob = archive
    monkeypatch.setattr(smoke, "IMAGES", 6)
    monkeypatch.setattr(smoke, "PATIENTS_PER_CLASS", 1)
    monkeypatch.setattr(download, "kaggle_api", lambda action: object())
    data, work = tmp_path / "d", tmp_path / "w"
    argv = ["--download", "--task", "competition", "--data-dir", str(data), "--work-dir", str(work),
            "--resize", "64", "--workers", "2"]
    with range_server(blob) as (url, asked):
        monkeypatch.setattr(download, "archive_url", lambda api, kind, name: url)
        for stage in ("metadata", "separate"):
            assert cli.main([*argv, "--smoke", "--stage", stage]) == 0
        filtered = pd.read_csv(work / "smoke" / "filtered.csv")
        films = {p.relative_to(data).as_posix() for p in data.rglob("*.jpg")}
        slice_films = {Path(p).relative_to(data).as_posix() for p in filtered["path"]}
        assert 6 <= len(slice_films) < len(ROWS)
        assert films == slice_films | {"test1/t0.jpg"}  # and the sample submission's test film
        assert json.loads((data / download.MARKER).read_text())["slice"] is True
        fetched = sum(len(range_bytes(r, len(blob))) for r in asked)
        films_left = sum(f.stat().st_size for f in src.rglob("*.jpg") if f.relative_to(src).as_posix() not in films)
        # the archive but the films left out, and little more: each wanted film is one request
        assert fetched < 1.25 * (len(blob) - films_left)
        capsys.readouterr()
        assert cli.main([*argv, "--stage", "metadata"]) == 0  # a real run: the rest of the films
        assert f"{len(slice_films) + 3} already here, {len(ROWS) - len(slice_films)} to fetch" in capsys.readouterr().out
    assert {p.relative_to(data) for p in data.rglob("*") if p.is_file()} == (
        {p.relative_to(src) for p in src.rglob("*") if p.is_file()} | {Path(download.MARKER)})
