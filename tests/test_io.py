"""Atomic writes: a failed write names its file and leaves nothing under the final name; a killed
run's temporary files are cleared by the next run."""
import errno
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kit import io

FULL_DEVICE = Path("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
needs_full_device = pytest.mark.skipif(not FULL_DEVICE.exists(), reason="no /dev/full on this system")


@needs_full_device
def test_a_write_failing_on_a_full_disk_names_the_file_and_leaves_none(tmp_path):
    target = tmp_path / "history.csv"
    with pytest.raises(OSError) as failed:
        with io.atomic_path(target):
            with open(FULL_DEVICE, "wb") as f:  # the error of close() names no file
                f.write(b"epoch,loss\n")
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


@needs_full_device
@pytest.mark.parametrize("free,code", [(10 << 20, errno.ENOSPC), (100 << 30, errno.EIO)])
def test_torchs_own_error_for_a_failed_write_becomes_an_os_error(tmp_path, monkeypatch, free, code):
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, FULL_DEVICE))  # torch's real error
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=free))
    with pytest.raises(OSError) as failed:
        io.save_torch({"w": torch.zeros(100_000)}, tmp_path / "last.pth")
    assert failed.value.errno == code and failed.value.filename == str(tmp_path / "last.pth")
    assert list(tmp_path.iterdir()) == []


def test_other_torch_errors_are_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    def broken(obj, f):
        raise RuntimeError("cannot pickle 'generator' object")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_torch({}, tmp_path / "last.pth")


def test_partial_writes_of_an_earlier_process_are_removed_anywhere_below(tmp_path):
    old = [tmp_path / ".last.pth.a1b2.tmp", tmp_path / "dataset" / "images" / ".x.jpg.c3d4.tmp"]
    fresh = tmp_path / "reports" / ".roc.png.e5f6.tmp"  # a write of this process, still going
    kept = [tmp_path / "notes.tmp", tmp_path / "dataset" / "images" / "x.jpg", fresh]
    for path in old + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    for path in old + kept[:2]:
        os.utime(path, (io.STARTED - 60, io.STARTED - 60))
    assert io.remove_partial_writes(tmp_path) == 2
    assert not any(p.exists() for p in old) and all(p.exists() for p in kept)
