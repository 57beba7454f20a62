"""--download: credentials found where the kaggle package and Colab keep them, one-line errors
without them or without a network, a skip when the data is there, a check after fetching."""
import importlib.machinery
import os
import re
import sys
import types
from pathlib import Path

import pytest
import requests

from fake_data import gxs_dataset
from kit import cli, download, env
from kit.config import Config
from kit.errors import KitError

ROWS = [(f"{k}.jpg", f"P{k}", "PA", [["Cardiomegaly", "Pneumothorax", "Lung Opacity"][k % 3]]) for k in range(30)]


@pytest.fixture(autouse=True)
def no_credentials(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setattr(env, "platform", lambda: "local")


def one_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


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
    download.fetch(cfg)
    assert cfg.data_dir == str(Path("data") / "grand-xray-slam-division-a")
    assert "grand-xray-slam-division-a is already in" in capsys.readouterr().out


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


class FakeApi:
    """The two kaggle calls --download makes; `write` puts the 'downloaded' files in place."""

    def __init__(self, write=None, error=None):
        self.write, self.error, self.calls = write, error, []

    def competition_download_files(self, name, path, quiet, unzip):
        self.calls.append(("competition", name, unzip))
        if self.error:
            raise self.error
        if self.write:
            self.write(path)

    def dataset_download_files(self, name, path, quiet, unzip):
        self.calls.append(("dataset", name, unzip))


def test_a_fetched_dataset_is_checked_and_becomes_the_data_dir(tmp_path, monkeypatch):
    api = FakeApi(write=lambda path: gxs_dataset(tmp_path / "d", ROWS, images=False))
    monkeypatch.setattr(download, "kaggle_api", lambda action: api)
    cfg = Config(download=True, data_dir=str(tmp_path / "d"))
    download.fetch(cfg)
    assert api.calls == [("competition", "grand-xray-slam-division-a", True)]
    assert cfg.data_dir == str(tmp_path / "d")
    download.fetch(cfg)  # there now: no second download
    assert len(api.calls) == 1

    empty = FakeApi()
    monkeypatch.setattr(download, "kaggle_api", lambda action: empty)
    with pytest.raises(KitError, match=r"found no Data_Entry_2017.csv or Data_Entry_2017_v2020.csv in it"):
        download.fetch(Config(download=True, dataset="nih", data_dir=str(tmp_path / "n")))
    assert empty.calls == [("dataset", "nih-chest-xrays/data", True)]


def test_kaggle_refusals_are_one_line_with_their_fix(tmp_path, monkeypatch):
    response = requests.Response()
    response.status_code = 403
    api = FakeApi(error=requests.HTTPError("403 Client Error", response=response))
    monkeypatch.setattr(download, "kaggle_api", lambda action: api)
    with pytest.raises(KitError, match=r"accept its rules at https://www.kaggle.com/competitions/"
                                       r"grand-xray-slam-division-a/rules"):
        download.fetch(Config(download=True, data_dir=str(tmp_path / "d")))


@pytest.mark.parametrize("where, dataset, message", [
    ("local", "chexpert", r"--download knows --dataset gxs .* put the chexpert dataset in --data-dir yourself"),
    ("kaggle", "auto", r"--download on Kaggle: attach the data instead"),
])
def test_what_download_cannot_do(monkeypatch, where, dataset, message):
    monkeypatch.setattr(env, "platform", lambda: where)
    with pytest.raises(KitError, match=message):
        download.fetch(Config(download=True, dataset=dataset))


def test_the_default_folder_is_under_the_platforms_data_root(monkeypatch):
    monkeypatch.setattr(env, "platform", lambda: "colab")
    assert str(download.target(Config(), "nih-chest-xrays/data")) == "/content/data/nih-chest-xrays-data"
