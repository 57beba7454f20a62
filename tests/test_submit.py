"""--stage submit: the message made from the run's own files, each refusal as one line with exit 2
(no credentials, no network, rules not accepted, no submission.csv, no competition named), and
--from-kernel fetching only what submitting reads from a kernel's output."""
import json
import os
import re

import pandas as pd
import pytest

from conftest import ROOT, one_error
from kit import cli, env, layout
from kit.kaggle import kaggle_meta
from kaggle_server import kaggle_server  # noqa: F401 (a fixture)
from kit.stages import submit

COMPETITION = "grand-xray-slam-division-a"
HISTORY = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.4, 0.3, 0.25],
                        "val_macro_auc": [0.71, 0.7844, 0.80119]})
# a kernel's output: what submit fetches (the first four) and what it must leave on Kaggle
OUTPUT = {"submission.csv": "Image_name,Atelectasis\na.jpg,0.25\n", "history.csv": HISTORY.to_csv(index=False),
          "reports/submission.json": "", "logs/all-20260101-120000.log": "[train] done\n",
          "checkpoints/last.pth": "x", "checkpoints/epoch_03.pth": "x", "dataset/images/a.jpg": "x",
          "eva_x_final_soup.pth": "x", "reports/test_metrics.json": "{}", "smoke/submission.csv": "x"}
REPORT = dict(interim=True, weights="checkpoints/interim.pth", trained="epoch 3 of 6", rows=1, filled=0,
              smoke=False, task="competition", model="eva02_base_patch14_448.mim_in22k_ft_in1k", epochs=6)
MESSAGE = ("xray kit competition: eva02_base_patch14_448.mim_in22k_ft_in1k, 6 epochs, val macro AUC 0.8012 "
           "(epoch 3), interim, epoch 3 of 6")


@pytest.fixture(autouse=True)
def dummy_credentials(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)


def finished_run(work, **report):
    """The files a competition run leaves for submit."""
    for name in ("submission.csv", "history.csv"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(OUTPUT[name])
    layout.reports_dir(work).mkdir(exist_ok=True)
    layout.submission_report(work).write_text(json.dumps({**REPORT, **report}))


def kernel_output(server, **changes):
    """The kernel's output on Kaggle's side: its files, with a finished run's report, and its log."""
    files = {**OUTPUT, "reports/submission.json": json.dumps(REPORT), **changes}
    server.output = {name: text.encode() for name, text in files.items() if text is not None}
    server.log = "the kernel's log\n"


def submitted(server) -> list:
    """(file sent, description, competition) of each submission Kaggle received."""
    return [(server.uploads["submission.csv"].decode(), c["submissionDescription"], c["competitionName"])
            for c in server.calls("CreateSubmission")]


def test_the_message_describes_the_run_that_made_the_submission(tmp_path):
    finished_run(tmp_path)
    assert submit.description(tmp_path) == MESSAGE
    finished_run(tmp_path, interim=False, trained="the finished run")
    assert submit.description(tmp_path).endswith("val macro AUC 0.8012 (epoch 3), final")


def test_submit_sends_the_work_dirs_submission_with_its_message(tmp_path, capsys, kaggle_server):
    finished_run(tmp_path / "w")
    assert cli.main(["--stage", "submit", "--work-dir", str(tmp_path / "w")]) == 0
    # the competition from the template's competition_sources
    assert submitted(kaggle_server) == [(OUTPUT["submission.csv"], MESSAGE, COMPETITION)]
    assert f"Successfully submitted to {COMPETITION} (submission 42" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    ([], r"^error: .*/w/submission.csv not found: run --stage predict first"),
    (["--smoke"], r"^error: .*/w/smoke/submission.csv not found"),  # a smoke run's own submission
])
def test_without_a_submission_it_says_to_run_predict(tmp_path, capsys, argv, message):
    assert re.match(message, one_error(capsys, ["--stage", "submit", "--work-dir", str(tmp_path / "w"), *argv]))


@pytest.mark.parametrize("sources, message", [
    ([], r"competition_sources lists none; name the competition with --competition SLUG"),
    (["grand-xray-slam-division-a", "grand-xray-slam-division-b"],
     r"competition_sources lists grand-xray-slam-division-a, grand-xray-slam-division-b; name the competition"),
])
def test_the_competition_comes_from_the_metadata_or_the_flag(tmp_path, capsys, kaggle_server, sources, message):
    finished_run(tmp_path / "w")
    meta = tmp_path / kaggle_meta.FILE
    template = json.loads((ROOT / kaggle_meta.FILE).read_text())
    meta.write_text(json.dumps({**template, "competition_sources": sources}))
    argv = ["--stage", "submit", "--work-dir", str(tmp_path / "w"), "--kernel-metadata", str(meta)]
    assert re.search(message, one_error(capsys, argv))
    assert kaggle_server.requests == []  # refused before anything was sent
    assert cli.main([*argv, "--competition", "grand-xray-slam-division-b"]) == 0
    assert submitted(kaggle_server)[0][2] == "grand-xray-slam-division-b"


def test_no_credentials_one_line(tmp_path, capsys, monkeypatch):
    finished_run(tmp_path / "w")
    monkeypatch.delenv("KAGGLE_USERNAME")
    assert re.match(r"error: --stage submit needs Kaggle credentials and found none",
                    one_error(capsys, ["--stage", "submit", "--work-dir", str(tmp_path / "w")]))


@pytest.mark.parametrize("from_kernel", [[], ["--from-kernel", "someone/xray-kit-eva-x"]])
def test_no_network_one_line_before_the_kaggle_package_is_asked(tmp_path, capsys, monkeypatch, from_kernel):
    finished_run(tmp_path / "w")
    monkeypatch.setattr(env, "reachable", lambda host, port=443, timeout=2.0: False)
    line = one_error(capsys, ["--stage", "submit", "--work-dir", str(tmp_path / "w"), *from_kernel])
    assert re.match(r"error: --stage submit( --from-kernel)?: cannot reach api.kaggle.com \(no network\?\)", line)
    assert not (tmp_path / "w" / "kernel_output").exists()


@pytest.mark.parametrize("from_kernel", [[], ["--from-kernel", "someone/xray-kit-eva-x"]])
def test_a_connection_that_fails_past_the_check_is_one_line(tmp_path, capsys, kaggle_server, from_kernel):
    """The kit's reachability check passes, then Kaggle's API stops answering: the kaggle
    package's own competition_submit and kernels_output fail in one line."""
    finished_run(tmp_path / "w")
    kaggle_server.stop()
    line = one_error(capsys, ["--stage", "submit", "--work-dir", str(tmp_path / "w"), *from_kernel])
    assert re.match(r"error: (--stage submit to grand-xray-slam-division-a|--from-kernel someone/xray-kit-eva-x): "
                    r"the connection to Kaggle failed \(ConnectionError\); rerun where the internet works$", line), line


@pytest.mark.parametrize("status, message", [
    (403, r"access denied: accept the competition's rules at "
          r"https://www.kaggle.com/competitions/grand-xray-slam-division-a/rules, then rerun"),
    (404, r"not found; check the name"),
])
def test_kaggles_refusals_are_one_line_with_their_fix(tmp_path, capsys, kaggle_server, status, message):
    finished_run(tmp_path / "w")
    kaggle_server.refuse["StartSubmissionUpload"] = status
    line = one_error(capsys, ["--stage", "submit", "--work-dir", str(tmp_path / "w")])
    assert re.match(r"error: --stage submit to grand-xray-slam-division-a: " + message, line), line


def test_from_kernel_fetches_only_what_submit_reads_and_submits_it(tmp_path, capsys, kaggle_server):
    kernel_output(kaggle_server)
    work = tmp_path / "w"
    assert cli.main(["--stage", "submit", "--work-dir", str(work), "--from-kernel", "someone/xray-kit-eva-x"]) == 0
    fetched = work / "kernel_output" / "xray-kit-eva-x"
    assert sorted(p.relative_to(fetched).as_posix() for p in fetched.rglob("*") if p.is_file()) == [
        "history.csv", "logs/all-20260101-120000.log", "reports/submission.json", "submission.csv",
        "xray-kit-eva-x.log"]  # no checkpoints, images or weights: kilobytes
    assert submitted(kaggle_server) == [(OUTPUT["submission.csv"], MESSAGE, COMPETITION)]
    assert not (work / "submission.csv").exists()  # the work dir's own run is left alone


def test_a_kernel_output_without_a_submission_points_to_its_log(tmp_path, capsys, kaggle_server):
    kernel_output(kaggle_server, **{"submission.csv": None})
    line = one_error(capsys, ["--stage", "submit", "--work-dir", str(tmp_path / "w"),
                              "--from-kernel", "someone/xray-kit-eva-x"])
    assert re.match(r"error: someone/xray-kit-eva-x's output has no submission.csv: its run did not reach "
                    r"predict; read its log in .*kernel_output/xray-kit-eva-x", line), line


@pytest.mark.parametrize("kernel, message", [
    ("someone", r"--from-kernel 'someone' is not of the form owner/kernel-slug"),
    ("someone/xray", r"--from-kernel slug 'xray' is shorter than 5 characters"),
])
def test_a_malformed_kernel_is_refused_before_the_network(tmp_path, capsys, kernel, message):
    assert re.match("error: " + message, one_error(capsys, ["--stage", "submit", "--work-dir", str(tmp_path / "w"),
                                                            "--from-kernel", kernel]))
