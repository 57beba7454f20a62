"""The run log: <work>/logs/<stage>-<time>.log holds what a run printed on stdout and stderr, line by
line even when the run is killed, a terminal's progress bar as periodic lines, and one file per
run under torchrun."""
import io
import os
import re
import signal
import subprocess
import sys

from conftest import ROOT, run_kit
from kit import runlog
from kit.config import Config
from kit.progress import progress


def logs(work) -> list:
    return sorted((work / "logs").glob("*.log"))


def test_the_log_holds_what_the_run_printed_and_its_error(tmp_path):
    work = tmp_path / "w"
    done = run_kit("--stage", "split", "--work-dir", work)  # split before separate: an error
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "run --stage separate first" in done.stderr
    assert "xray kit on a local machine" in done.stdout
    [log] = logs(work)
    assert log.name.startswith("split-") and log.read_text() == done.stdout + done.stderr


def test_a_killed_run_keeps_every_line_it_printed(tmp_path):
    work = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "--demo", "--epochs", "1", "--workers", "1",
                             "--work-dir", str(work)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    printed = []
    for line in proc.stdout:
        printed.append(line.rstrip("\n"))
        if line.startswith("[split] done"):
            proc.send_signal(signal.SIGKILL)  # no chance to flush or close anything
            break
    proc.wait(timeout=60)
    assert printed[-1].startswith("[split] done") and any("[separate]" in p for p in printed)
    [log] = logs(work)
    lines = iter(log.read_text().splitlines())
    assert all(p in lines for p in printed)  # every printed line, in order


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminals_progress_bar_becomes_periodic_lines(tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)  # tqdm draws on stderr
    runlog.start(tmp_path, "train")
    try:
        assert sum(1 for _ in progress(range(50), total=50, desc="[train] epoch 1", unit="batch")) == 50
        print("after the bar")
    finally:
        runlog.stop()
    assert sys.stdout is terminal and "\r" in terminal.getvalue()  # the bar was drawn, then handed back
    [log] = logs(tmp_path)
    lines = log.read_text().splitlines()
    assert "\r" not in log.read_text()
    counts = [line.split()[3] for line in lines if re.match(r"\[train\] epoch 1: \d+/50 \(", line)]
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # not a terminal: progress prints plain lines
    list(progress(range(50), total=50, desc="[train] epoch 1", unit="batch"))
    assert counts == [line.split()[3] for line in sys.stdout.getvalue().splitlines()] and len(counts) >= 8
    assert "50/50" in lines[-2] and lines[-1] == "after the bar"  # the bar's last state, once


def test_under_torchrun_rank_0_appends_to_the_log_of_the_process_that_started_it(tmp_path, monkeypatch):
    cfg = Config(work_dir=str(tmp_path), stage="train")
    started = tmp_path / "logs" / "train-20260101-120000.log"
    started.parent.mkdir()
    started.write_text("[train] 2 GPUs: training data-parallel\n")
    monkeypatch.setenv(runlog.LOG_ENV, f"{os.getppid()}:{started}")  # what the relaunching process set
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        runlog.start(cfg.work, cfg.stage)
        print(f"rank {rank} prints")
        runlog.stop()
    assert logs(tmp_path) == [started]
    assert started.read_text() == "[train] 2 GPUs: training data-parallel\nrank 0 prints\n"
    assert os.environ[runlog.LOG_ENV] == f"{os.getppid()}:{started}"  # the parent's, left to it
