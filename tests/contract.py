"""What a stage really reads and writes, to hold against its row of the stage table.

Python's audit events see every file opened through Python (pandas, torch, numpy, json, the
JPEG decoder), every folder listed, and every file renamed onto, removed or made: each is put
down to the stage whose hook (`run`, `check`, `skipped`, `finish`) is running, and named by the
artifact whose file or folder holds it. The work directory's other files (the settings, the
stamps, the logs) belong to no artifact and are not checked; what OpenCV's own code or a forked
worker process opens goes unheard."""
import contextlib
import os
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from kit import layout

HOOKS = ("run", "check", "skipped", "finish")
_recorders = []  # an audit hook stays for the life of the process: it idles while this is empty


def _heard(event, args):
    if _recorders:
        _recorders[-1].heard(event, args)


sys.addaudithook(_heard)


def _absolute(path) -> str:
    return os.path.abspath(os.fsdecode(path))


class Accesses:
    """Absolute paths each stage read and wrote, and its hooks in the order they were called."""

    def __init__(self):
        self.stage = None
        self.reads, self.writes = defaultdict(set), defaultdict(set)
        self.calls = []  # (stage, hook)

    def heard(self, event, args):
        if self.stage is None:
            return
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = args
            write = any(c in mode for c in "wax+") if isinstance(mode, str) else flags & os.O_ACCMODE != os.O_RDONLY
            (self.writes if write else self.reads)[self.stage].add(_absolute(path))
        elif event in ("os.listdir", "os.scandir") and not isinstance(args[0], int):
            self.reads[self.stage].add(_absolute(args[0] or "."))
        elif event == "os.rename":  # os.replace too: an atomic write lands under its final name
            self.writes[self.stage].add(_absolute(args[1]))
        elif event in ("os.remove", "os.rmdir", "os.mkdir"):
            self.writes[self.stage].add(_absolute(args[0]))

    def during(self, name, hook):
        def attributed(*args, **kwargs):
            self.calls.append((name, hook.__name__))
            outer, self.stage = self.stage, name
            try:
                return hook(*args, **kwargs)
            finally:
                self.stage = outer
        return attributed


@contextlib.contextmanager
def record(stages):
    """Accesses of `stages` (rows of the stage table) while the block runs them."""
    accesses = Accesses()
    with pytest.MonkeyPatch.context() as patch:
        for stage in stages:
            module = stage.load()
            for hook in HOOKS:
                if hasattr(module, hook):
                    patch.setattr(module, hook, accesses.during(stage.name, getattr(module, hook)))
        _recorders.append(accesses)
        try:
            yield accesses
        finally:
            _recorders.remove(accesses)


def areas(work, **inputs) -> list:
    """(name, file or folder) of every artifact of `work` (a folder below the work dir holds the
    artifact whose marker it holds: dataset/, splits/), and of the data folder's `inputs` (each
    a path or a list of them)."""
    found = []
    for name, marker in layout.ARTIFACTS.items():
        path = Path(_absolute(marker(work)))
        found.append((name, path.parent if path.parent != Path(_absolute(work)) else path))
    for name, paths in inputs.items():
        found += [(name, Path(_absolute(p))) for p in (paths if isinstance(paths, list) else [paths])]
    return found


def owners(paths, where: list) -> set:
    """The names in `where` whose file or folder holds each of `paths` (the innermost one)."""
    named = set()
    for path in paths:
        holders = [(len(str(area)), name) for name, area in where
                   if path == str(area) or path.startswith(str(area) + os.sep)]
        if holders:
            named.add(max(holders)[1])
    return named


def undeclared(stage, accesses: Accesses, where: list) -> list:
    """What `stage` really did that its row does not say: reads of artifacts it neither declares
    nor writes itself (a rerun resumes from its own outputs), inputs of the data folder it does
    not declare, writes it does not declare or declares and never makes."""
    reads, writes = owners(accesses.reads[stage.name], where), owners(accesses.writes[stage.name], where)
    declared = set(stage.writes)
    return ([f"{stage.name} reads {name}, which its row does not declare"
             for name in sorted(reads - set(stage.reads) - declared - set(stage.inputs))]
            + [f"{stage.name} writes {name}, which its row does not declare" for name in sorted(writes - declared)]
            + [f"{stage.name} never writes {name}, which its row declares" for name in sorted(declared - writes)])
