"""The one-file kernel: it runs with no kit/ beside it, the same sources give the same bytes,
the arguments after -- are checked and baked in, and the real kaggle CLI takes its folder."""
import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, one_error
from kaggle_server import kaggle_server, subprocess_env  # noqa: F401 (a fixture)
from kit import cli, pipeline
from kit.kaggle import bundle, kaggle_meta


def bundled(tmp_path, *kernel_args):
    out = tmp_path / "dist"
    assert cli.main(["--stage", "bundle", "--out", str(out), "--work-dir", str(tmp_path / "w"),
                     "--", *kernel_args]) == 0
    return out


def clean_env(tmp_path, **extra):
    """No PYTHONPATH, no Kaggle variables, HOME and the temporary folder inside tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "PYTHON", "XRAY_KIT"))}
    return {**env, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"), **extra}


def test_the_kernel_runs_alone_in_an_empty_folder(tmp_path):
    """Bundle, copy only kernel.py into an empty folder, run it with nothing of the kit on sys.path:
    the competition task on the demo data, from metadata to submission (one epoch: the demo's own
    test trains six)."""
    alone = tmp_path / "kaggle"
    alone.mkdir()
    (tmp_path / "tmp").mkdir()
    env = clean_env(tmp_path)
    # -I: neither the script's folder nor PYTHONPATH nor the user's site is on sys.path
    no_kit = subprocess.run([sys.executable, "-I", "-c", "import kit"], cwd=alone, env=env, capture_output=True)
    assert no_kit.returncode != 0 and b"No module named 'kit'" in no_kit.stderr
    kernel = bundled(tmp_path, "--demo", "--task", "competition", "--epochs", "1", "--workers", "2") / "kernel.py"
    shutil.copy(kernel, alone)
    done = subprocess.run([sys.executable, "-I", "kernel.py"], cwd=alone, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for stage in (s.name for s in pipeline.PIPELINE):
        assert f"[{stage}] {'skipped: no test split' if stage == 'evaluate' else 'done in'}" in done.stdout
    work = alone / "work"
    assert (work / "eva_x_final_soup.pth").is_file()
    submission = pd.read_csv(work / "submission.csv")
    expected = pd.read_csv(work / "demo_data" / "sample_submission_1.csv")
    assert submission.columns.tolist() == expected.columns.tolist()
    assert submission.Image_name.tolist() == expected.Image_name.tolist()
    unpacked = list((tmp_path / "tmp").glob("xray-kit-*"))  # unpacked once, into the temporary folder
    assert len(unpacked) == 1 and (unpacked[0] / "kit" / "cli.py").is_file()


def test_the_same_sources_give_the_same_bytes(tmp_path):
    copy = tmp_path / "copy"
    for rel in bundle.sources():
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, copy / rel)  # new files: other times, same contents
        os.utime(copy / rel, (1e9, 1e9))
    assert bundle.archive(copy) == bundle.archive(ROOT)
    assert bundle.kernel_source(["--stage", "all"], copy) == bundle.kernel_source(["--stage", "all"])
    first, second = bundled(tmp_path / "a", "--epochs", "6"), bundled(tmp_path / "b", "--epochs", "6")
    for name in ("kernel.py", kaggle_meta.FILE):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    (copy / "kit" / "cli.py").write_text((copy / "kit" / "cli.py").read_text() + "\n")
    assert bundle.archive(copy) != bundle.archive(ROOT)


def test_everything_after_double_dash_becomes_the_kernels_arguments(tmp_path):
    out = bundled(tmp_path, "--stage", "all", "--epochs", "6", "--classes", "Cardiomegaly,Pneumothorax")
    text = (out / "kernel.py").read_text()
    assert "ARGS = ['--stage', 'all', '--epochs', '6', '--classes', 'Cardiomegaly,Pneumothorax']" in text
    meta = json.loads((out / kaggle_meta.FILE).read_text())
    template = json.loads((ROOT / kaggle_meta.FILE).read_text())
    assert meta == {**template, "code_file": "kernel.py"}
    assert cli.parse_config(["--stage", "bundle", "--", "--demo"]).kernel_args == "--demo"


def test_kernel_arguments_given_as_one_flag_with_an_open_quote_are_one_line(tmp_path, capsys):
    argv = ["--stage", "bundle", "--out", str(tmp_path / "dist"), "--kernel-args=--epochs '6"]
    assert one_error(capsys, argv) == "error: kernel arguments: No closing quotation; fix the quoting after --"
    assert not (tmp_path / "dist").exists()


@pytest.mark.parametrize("args, message", [
    (["--stage", "al"], r"kernel arguments: argument --stage: invalid choice: 'al'"),
    (["--epochs", "six"], r"kernel arguments: --epochs 'six': pass a positive whole number or auto"),
    (["--stagee", "all"], r"unknown kernel argument\(s\) --stagee"),
    (["--stage", "push"], r"a kernel cannot run --stage push"),
])
def test_bad_kernel_arguments_are_refused_before_anything_is_written(tmp_path, capsys, args, message):
    out = tmp_path / "dist"
    assert cli.main(["--stage", "bundle", "--out", str(out), "--work-dir", str(tmp_path / "w"), "--", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not out.exists()


def test_a_broken_template_is_refused_at_bundle_time(tmp_path, capsys):
    template = tmp_path / kaggle_meta.FILE
    template.write_text(json.dumps({**json.loads((ROOT / kaggle_meta.FILE).read_text()), "title": "eva"}))
    argv = ["--stage", "bundle", "--kernel-metadata", str(template), "--out", str(tmp_path / "dist"),
            "--work-dir", str(tmp_path / "w")]
    assert cli.main(argv) == 2
    assert "title 'eva' has fewer than 5 characters" in capsys.readouterr().err
    assert not (tmp_path / "dist").exists()


WEIGHTS = "timm/eva02/pytorch/base/1"  # a model source in the form Kaggle's Add Input gives


def own_template(tmp_path, **changes):
    """The template with a user's id, the pretrained weights attached and `changes`."""
    meta = {**json.loads((ROOT / kaggle_meta.FILE).read_text()), "id": "someone/xray-kit-eva-x",
            "model_sources": [WEIGHTS], **changes}
    path = tmp_path / kaggle_meta.FILE
    path.write_text(json.dumps(meta))
    return path


def test_push_without_credentials_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    for name in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    argv = ["--stage", "push", "--out", str(tmp_path / "dist"), "--work-dir", str(tmp_path / "w")]
    assert cli.main([*argv, "--kernel-metadata", str(own_template(tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"error: --stage push needs Kaggle credentials and found none", err[0])
    assert cli.main([*argv, "--", "--pretrained", "none"]) == 2  # the template as it is: its id names no user
    assert "id still starts with YOUR_KAGGLE_USERNAME" in capsys.readouterr().err


# (kernel arguments, change to a metadata that attaches the weights, what push refuses);
# the template as shipped attaches no weights
PREFLIGHT = [
    ([], {"model_sources": []}, r"trains from pretrained weights \(--pretrained auto\) with the internet off and "
                                r"kernel-metadata.json attaches no model_sources or dataset_sources; attach"),
    (["--pretrained", "/kaggle/input/w/model.safetensors"], {"model_sources": []},
     r"trains from pretrained weights \(--pretrained /kaggle/input/w/model.safetensors\)"),
    (["--task", "competition"], {"competition_sources": []},
     r"runs --task competition and kernel-metadata.json's competition_sources is empty; add "
     r'"grand-xray-slam-division-a"'),
    (["--resume", "auto"], {}, r"runs --resume auto and kernel-metadata.json has no kernel_sources to resume "
                               r'from; add "someone/xray-kit-eva-x"'),
    (["--resume", "auto", "--task", "competition"], {"competition_sources": [], "model_sources": []},
     r"trains from pretrained weights .*; also the kernel runs --task competition .*; also the kernel runs "
     r"--resume auto"),
    # what passes
    (["--task", "competition", "--resume", "auto"], {"kernel_sources": ["someone/xray-kit-eva-x"]}, None),
    ([], {"model_sources": [], "dataset_sources": ["someone/eva02-base-448-weights"]}, None),
    ([], {"model_sources": [], "enable_internet": True}, None),  # timm fetches the weights itself
    (["--pretrained", "none"], {"model_sources": []}, None),
    (["--stage", "metadata"], {"model_sources": []}, None),  # loads no model
    (["--demo", "--task", "competition"], {"model_sources": [], "competition_sources": []}, None),
]


@pytest.mark.parametrize("args, change, refused", PREFLIGHT)
def test_push_refuses_a_kernel_its_metadata_leaves_without_what_it_needs(tmp_path, capsys, monkeypatch, args,
                                                                       change, refused):
    """With the kaggle CLI offline: a refusal is one line before anything is written; what passes
    gets as far as the network."""
    from kit import env

    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    monkeypatch.setattr(env, "reachable", lambda host, port=443, timeout=2.0: False)
    out = tmp_path / "dist"
    argv = ["--stage", "push", "--out", str(out), "--work-dir", str(tmp_path / "w"),
            "--kernel-metadata", str(own_template(tmp_path, **change)), "--", *args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    if refused:
        assert re.match(r"^error: the kernel " + refused, err[0]), err
        assert not out.exists()
    else:
        assert err == ["error: --stage push: cannot reach api.kaggle.com (no network?); run it where the "
                       "internet works"]
        assert (out / "kernel.py").is_file()


def test_bundle_warns_of_what_push_refuses_and_writes_the_bundle(tmp_path, capsys):
    out = bundled(tmp_path, "--task", "competition", "--resume", "auto")  # the template: no weights, no kernel
    lines = capsys.readouterr().out.splitlines()
    warned = [line for line in lines if line.startswith("warning: the kernel ")]
    assert len(warned) == 2 and "pretrained weights" in warned[0] and "--resume auto" in warned[1], lines
    assert (out / "kernel.py").is_file()


@pytest.mark.parametrize("answer, expected", [
    (dict(error="Competition grand-xray-slam-division-a: you must accept the rules"),
     r"^error: Kaggle refused the push: Competition grand-xray-slam-division-a: you must accept the rules"),
    (dict(invalidCompetitionSources=["grand-xray-slam-division-a"]),
     r"^error: Kaggle pushed https://k/v without its competition sources \['grand-xray-slam-division-a'\]"),
    (dict(invalidModelSources=[WEIGHTS]), r"^error: Kaggle pushed https://k/v without its model sources "
                                         r"\['timm/eva02/pytorch/base/1'\]"),
    (dict(invalidDatasetSources=["someone/w"], invalidKernelSources=["someone/xray-kit-old"]),
     r"without its dataset sources \['someone/w'\], kernel sources \['someone/xray-kit-old'\]"),
    (dict(), None)])
def test_push_fails_when_kaggle_refuses_or_drops_a_data_source(tmp_path, capsys, kaggle_server, answer, expected):
    """Kaggle's answer to the kaggle package's own push; the kaggle CLI prints these and exits 0,
    the kit's push is an error for each."""
    kaggle_server.answers["SaveKernel"] = {"url": "https://k/v", "versionNumber": 3, **answer}
    argv = ["--stage", "push", "--out", str(tmp_path / "dist"), "--work-dir", str(tmp_path / "w"),
            "--kernel-metadata", str(own_template(tmp_path)), "--", "--stage", "all", "--epochs", "3"]
    assert cli.main(argv) == (2 if expected else 0)
    assert len(kaggle_server.calls("SaveKernel")) == 1
    captured = capsys.readouterr()
    if expected:
        assert re.search(expected, captured.err.strip()), captured.err
    else:
        assert "[push] version 3 is running: https://k/v" in captured.out
    assert "push it: python run.py --stage push -- --stage all --epochs 3" in captured.out  # the args kept


def test_a_kernel_cannot_download(tmp_path, capsys):
    assert cli.main(["--stage", "bundle", "--out", str(tmp_path / "dist"), "--work-dir", str(tmp_path / "w"),
                     "--", "--stage", "all", "--download"]) == 2
    assert "a kernel cannot --download" in capsys.readouterr().err


def test_the_kaggle_cli_pushes_the_bundle_by_hand(tmp_path, kaggle_server):
    """`kaggle kernels push -p dist/kaggle`, the README's way by hand, in its own process: Kaggle
    receives the bundled kernel.py with the bundle's metadata."""
    out = bundled(tmp_path, "--stage", "all")
    meta = json.loads((out / kaggle_meta.FILE).read_text())
    (out / kaggle_meta.FILE).write_text(json.dumps({**meta, "id": "someone/xray-kit-eva-x"}))
    done = subprocess.run([sys.executable, "-m", "kaggle", "kernels", "push", "-p", str(out)],
                          env=subprocess_env(kaggle_server, clean_env(tmp_path)), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "Kernel version 1 successfully pushed" in done.stdout, done.stdout + done.stderr
    [sent] = kaggle_server.calls("SaveKernel")
    assert sent["text"] == (out / "kernel.py").read_text()
    assert (sent["slug"], sent["competitionDataSources"], sent["enableInternet"]) == (
        "someone/xray-kit-eva-x", meta["competition_sources"], meta["enable_internet"])
