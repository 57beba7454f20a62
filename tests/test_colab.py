"""Colab, faked with its google.colab module and /content's folders in tmp: the time limit, the output
budget, the work dir on Drive and the stored images on local disk, as run_config.json records them."""
import importlib.machinery
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import shutil
import sys
import tarfile
import types
import zipfile

import nbformat
import pandas as pd
import pytest

from conftest import ROOT
from fake_data import gxs_dataset, jpeg
from kit import cli, env
from kit.config import Config
from kit.config.flags import parse_config
from kit.data import shards
from kit.kaggle import download, remote_zip
from kit.training import session
from test_download import range_server
from test_kaggle_versions import fake_colab

CLASSES = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


@pytest.fixture
def colab(tmp_path, monkeypatch):
    """A Colab machine: google.colab importable, /content's folders under tmp_path (Drive not mounted)."""
    module = types.ModuleType("google.colab")
    module.__spec__ = importlib.machinery.ModuleSpec("google.colab", None)
    if importlib.util.find_spec("google") is None:
        google = types.ModuleType("google")
        google.__spec__ = importlib.machinery.ModuleSpec("google", None, is_package=True)
        monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", module)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    content = tmp_path / "content"
    monkeypatch.setattr(env, "COLAB_WORK", content / "xray-kit")
    monkeypatch.setattr(env, "COLAB_DRIVE", content / "drive" / "MyDrive")
    monkeypatch.setattr(env, "COLAB_SCRATCH", content / "xray-kit-local")
    assert env.platform() == "colab"
    return content


def dataset(root, n=30):
    rows = [(f"{k}.jpg", f"P{k}", ["PA", "AP"][k % 2], [CLASSES[k % 5]] if k % 7 else []) for k in range(n)]
    return gxs_dataset(root, rows)


def test_auto_settings_resolve_to_colabs_own(colab):
    cfg = cli.resolve(Config())
    assert (cfg.time_limit, cfg.output_budget) == (session.COLAB_TIME_LIMIT, session.COLAB_OUTPUT_BUDGET)
    assert session.time_limit(cfg.time_limit) == 11 * 3600
    assert session.output_budget(cfg.output_budget) == 15e9
    assert cfg.work == colab / "xray-kit"  # Drive not mounted: the session's disk
    (colab / "drive" / "MyDrive").mkdir(parents=True)
    assert cli.resolve(Config()).work == colab / "drive" / "MyDrive" / "xray-kit"
    chosen = cli.resolve(Config(time_limit="5h", output_budget="none", work_dir=str(colab / "w")))
    assert (chosen.time_limit, chosen.output_budget, chosen.work) == ("5h", "none", colab / "w")


def test_work_on_drive_and_images_on_local_disk_as_run_config_records(colab, tmp_path, capsys):
    drive = colab / "drive" / "MyDrive"
    drive.mkdir(parents=True)
    data = dataset(tmp_path / "data").parent
    assert cli.main(["--data-dir", str(data), "--workers", "1", "--stage", "metadata"]) == 0
    assert cli.main(["--data-dir", str(data), "--workers", "1", "--stage", "separate"]) == 0
    work = drive / "xray-kit"
    saved = json.loads((work / "run_config.json").read_text())
    local = colab / "xray-kit-local" / work.relative_to(work.anchor) / "dataset"
    assert saved["platform"] == "colab" and saved["work_dir"] == str(work)
    assert (saved["time_limit"], saved["output_budget"]) == ("11h", "15GB")
    assert saved["stored_images"] == str(local)
    stored = sorted(p.name for p in (local / "images").iterdir())
    assert stored and len(stored) == len(pd.read_csv(local / "manifest.csv"))
    assert not list(work.rglob("*.jpg"))  # no film on Drive
    assert "time limit: 11h | output budget: 15GB" in capsys.readouterr().out


def test_the_time_up_message_says_how_to_continue_on_colab(colab):
    cfg = cli.resolve(Config())
    message = str(session.time_up(cfg.time_limit, cfg.work, "now"))
    assert "run the notebook's cells again: the work dir on Drive is kept" in message


def test_the_output_budget_warns_against_drives_free_quota(colab, capsys):
    import torch

    cfg = cli.resolve(Config(work_dir=str(colab / "w"), epochs=3))
    cfg.work.mkdir(parents=True)
    model = torch.nn.Linear(1000, 1000)  # 4 MB of weights

    def keep_all(history):
        return {h["epoch"] for h in history}

    session.warn_output_budget(cfg.output_budget, cfg.work, cfg.epochs, model, keep_all)
    assert capsys.readouterr().out == ""
    with open(cfg.work / "shards.tar", "wb") as f:  # sparse: 15 GB that take no disk
        f.truncate(15 * 10**9)
    session.warn_output_budget(cfg.output_budget, cfg.work, cfg.epochs, model, keep_all)
    assert "the work dir would hold about 15.0 GB, more than --output-budget 15GB" in capsys.readouterr().out


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A competition archive on a loopback server as --download reads it (test films, sample submission)."""
    src = tmp_path / "src"
    gxs_dataset(src, [(f"{k}.jpg", f"P{k}", ["PA", "AP"][k % 2], [CLASSES[k % 5]] if k % 7 else [])
                      for k in range(24)])
    (src / "sample_submission_1.csv").write_text("Image_name," + ",".join(CLASSES) + "\nt0.jpg" + ",0.5" * 5 + "\n")
    jpeg(src / "test1" / "t0.jpg", 130, 110, seed=7)
    blob = io.BytesIO()
    with zipfile.ZipFile(blob, "w") as z:
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            z.write(f, f.relative_to(src).as_posix())
    monkeypatch.setattr(remote_zip, "WINDOW", 8192)
    monkeypatch.setattr(download, "kaggle_api", lambda action: object())
    with range_server(blob.getvalue()) as (url, asked):
        monkeypatch.setattr(download, "archive_url", lambda api, kind, name: url)
        yield src, asked


def files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_new_machine_restores_the_stored_images_and_skips_to_training(colab, served, capsys, monkeypatch):
    src, asked = served
    (colab / "drive" / "MyDrive").mkdir(parents=True)
    data, local, work = colab / "data" / "gxs", colab / "xray-kit-local", colab / "drive" / "MyDrive" / "xray-kit"
    argv = ["--task", "competition", "--download", "--data-dir", str(data), "--resize", "64", "--workers", "1"]
    for stage in ("metadata", "separate", "split"):
        assert cli.main([*argv, "--stage", stage]) == 0
    stored, downloaded = files(local), files(data)
    assert sorted(p.name for p in (work / "shards").iterdir()) == [
        "download-000.tar", "download.json", "stored-000.tar", "stored.json"]
    films = {f for f in downloaded if f.startswith("train")} - {"train1.csv"}
    assert len(films) == 24 and "test1/t0.jpg" in downloaded

    shutil.rmtree(data)  # a new session: /content wiped, Drive kept
    shutil.rmtree(local)
    capsys.readouterr()
    asked.clear()
    for stage in ("metadata", "separate", "split"):
        assert cli.main([*argv, "--stage", stage]) == 0
        assert f"[{stage}] up to date, skipped" in capsys.readouterr().out
    assert asked == []  # not a byte of the archive
    assert files(local) == stored
    assert files(data) == {f: b for f, b in downloaded.items() if f not in films}  # the films are in stored

    assert cli.main([*argv, "--stage", "separate", "--force"]) == 0  # needs the films: only they come again
    out = capsys.readouterr().out
    assert "[download] 24 films are not in" in out and "24 of them wanted; 0 already here, 24 to fetch" in out
    assert files(data) == downloaded and files(local) == stored


class Killed(BaseException):
    """A kill: nothing catches it."""


def test_a_restore_killed_while_writing_the_last_file_is_redone(tmp_path, monkeypatch):
    folder, work = tmp_path / "local", tmp_path / "work"
    (folder / "sub").mkdir(parents=True)
    for k in range(4):
        (folder / "sub" / f"{k}.bin").write_bytes(bytes([k]) * 3000)
    (folder / "manifest.csv").write_text("file,status\n" + "x.jpg,ok\n" * 500)
    monkeypatch.setattr(shards, "SHARD_BYTES", 5000)  # several shards; the last file in the last one
    shards.keep(work, "stored", folder, last="manifest.csv")
    kept = files(folder)
    shutil.rmtree(folder)

    makefile = tarfile.TarFile.makefile

    def killed_midway(tar, member, target):  # half of manifest.csv's bytes written, then killed
        if "manifest.csv" in os.path.basename(target):
            with open(target, "wb") as f:
                f.write(tar.extractfile(member).read(member.size // 2))
            raise Killed
        makefile(tar, member, target)

    monkeypatch.setattr(tarfile.TarFile, "makefile", killed_midway)
    with pytest.raises(Killed):
        shards.restore(work, "stored")
    assert not (folder / "manifest.csv").exists()  # not taken for a complete restore
    stale = folder / ".manifest.csv.x.tmp"  # what a kill -9 leaves: a temporary file from before this run
    stale.write_text("file,status\n")
    os.utime(stale, (0, 0))
    monkeypatch.setattr(tarfile.TarFile, "makefile", makefile)
    assert shards.restore(work, "stored") == folder.resolve()
    assert files(folder) == kept


def test_stamps_compare_content_not_times(tmp_path, capsys):
    data = dataset(tmp_path / "data").parent
    argv = ["--data-dir", str(data), "--work-dir", str(tmp_path / "w"), "--workers", "1", "--stage", "metadata"]
    assert cli.main(argv) == 0
    csv = data / "train1.csv"
    text = csv.read_text()
    csv.unlink()
    csv.write_text(text)  # extracted again: a new time, the same bytes
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "[metadata] up to date, skipped" in capsys.readouterr().out
    csv.write_text(text.replace("PA", "AP", 1))  # other bytes, of the same size
    assert cli.main(argv) == 0
    assert "up to date" not in capsys.readouterr().out


NOTEBOOK = ROOT / "notebooks" / "colab.ipynb"


def code_cells():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    return [c.source for c in notebook.cells if c.cell_type == "code"]


def test_the_notebook_is_valid_and_its_commands_are_the_kits(colab):
    cells = code_cells()
    order = ["nvidia-smi", "git clone", "drive.mount", "userdata.get", "run.py --task competition",
             "run.py --stage submit"]
    assert [next(i for i, c in enumerate(cells) if step in c) for step in order] == list(range(len(order)))
    commands = [line.strip()[1:] for c in cells for line in c.splitlines() if line.strip().startswith("!python")]
    assert len(commands) == 2
    (colab / "drive" / "MyDrive").mkdir(parents=True)  # cell 3 mounted Drive
    for command in commands:
        python, script, *argv = shlex.split(command)
        assert (python, script) == ("python", "run.py")
        cfg = cli.resolve(parse_config(argv))
        assert cfg.work == colab / "drive" / "MyDrive" / "xray-kit" and cfg.time_limit == "11h"
    assert "(https://colab.research.google.com/github/" in (ROOT / "README.md").read_text()
    assert "/blob/main/notebooks/colab.ipynb)" in (ROOT / "README.md").read_text()


def test_the_notebook_keeps_colabs_torch():
    pattern = next(re.search(r"grep -v -E '(.+?)' requirements.txt", c) for c in code_cells() if "grep -v" in c)
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    kept = [line for line in lines if not re.search(pattern.group(1), line)]
    assert set(lines) - set(kept) == {"torch", "torchvision"}


def run_cell(marker, namespace):
    source = next(c for c in code_cells() if marker in c)
    exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    return namespace


def test_the_notebook_stops_in_one_line_without_a_gpu(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 9, "", "no devices"))
    with pytest.raises(SystemExit, match=r"^No GPU: choose Runtime > Change runtime type > T4 GPU"):
        run_cell("nvidia-smi", {})


@pytest.mark.parametrize("secrets, message", [
    ({}, r"^No Kaggle token: generate one at kaggle.com > Settings > API"),
    ({"KAGGLE_API_TOKEN": "unshared"}, r"^The secret KAGGLE_API_TOKEN is not shared with this notebook: .* "
                                       r"Notebook access"),
    ({"KAGGLE_API_TOKEN": "t0ken"}, None),
])
def test_the_notebooks_credentials_cell(colab, monkeypatch, secrets, message):
    def get(userdata, name):
        if secrets.get(name) == "unshared":
            raise userdata.NotebookAccessError(name)
        if name not in secrets:
            raise userdata.SecretNotFoundError(name)
        return secrets[name]
    fake_colab(monkeypatch, get)
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.setenv(name, "before")  # recorded: the cell's own setting is undone after the test
        monkeypatch.delenv(name)
    if message:
        with pytest.raises(SystemExit, match=message):
            run_cell("userdata.get", {})
    else:
        run_cell("userdata.get", {})
        assert os.environ["KAGGLE_API_TOKEN"] == "t0ken" and "KAGGLE_KEY" not in os.environ
