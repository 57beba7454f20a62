"""The run log: everything a run prints, on stdout and stderr, also goes to
<work>/logs/<stage or all>-<start time>.log, so that a Kaggle kernel's output and a Colab Drive
folder keep it after the session.

A log is the one file not written atomically: it is flushed line by line, so a killed run keeps
every line it printed. A terminal's redrawn progress bar (carriage returns) is kept as its last
state; kit.progress adds its periodic lines. A process the run starts (torchrun's rank 0)
appends to the same log, which it finds in the environment; torchrun's other ranks write none.
"""
import os
import sys
import time

from kit import layout

LOG_ENV = "XRAY_KIT_LOG"  # "<pid>:<path>": the log of the process that began the run

_file = None
_streams = None  # sys.stdout and sys.stderr as they were before the log started


class _Tee:
    """A text stream that also writes each finished line to the log."""

    def __init__(self, stream):
        self._stream, self._pending = stream, ""

    def write(self, text):
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:  # to the log first: whatever was shown is in the log
            _file.write(_last_state(line) + "\n")
        self._pending = _last_state(self._pending)  # a bar's redraws replace each other
        return self._stream.write(text)

    def finish(self):
        if self._pending:
            _file.write(self._pending + "\n")

    def __getattr__(self, name):  # isatty, fileno, encoding, flush, ...: the stream's own
        return getattr(self._stream, name)


def _last_state(line) -> str:
    """What a terminal shows of a line that carriage returns redrew."""
    return line.rstrip("\r").rpartition("\r")[2]


def start(work, stage):
    """From now until `stop`, copy what this process prints to the log of --stage `stage` in `work`."""
    global _file, _streams
    if _file is not None or os.environ.get("RANK", "0") != "0":
        return  # a run inside this one (the synthetic demo's) keeps its log; other ranks write none
    owner, _, path = os.environ.get(LOG_ENV, "").partition(":")
    if not path or owner == str(os.getpid()):
        path = layout.run_log(work, stage, time.localtime())
        os.environ[LOG_ENV] = f"{os.getpid()}:{path}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _file = open(path, "a", encoding="utf-8", buffering=1)  # line-buffered: flushed at every line
    _streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(sys.stdout), _Tee(sys.stderr)


def note(line):
    """A line for the log only (the terminal shows it another way)."""
    if _file is not None:
        _file.write(line + "\n")


def stop():
    """The run is over: close its log, and hand it to no process started later."""
    global _file
    if _file is None:
        return
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, _Tee):
            stream.finish()
    sys.stdout, sys.stderr = _streams
    _file.close()
    _file = None
    if os.environ.get(LOG_ENV, "").partition(":")[0] == str(os.getpid()):
        del os.environ[LOG_ENV]
