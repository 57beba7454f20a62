import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kit.config import Config  # noqa: E402  (needs ROOT on the path)

# pytest-xdist's workers share the cores: each worker's torch, and each run.py it starts, takes its
# share of threads rather than all of them, which would make the workers wait on each other
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _threads = max(1, (os.cpu_count() or 1) // _workers)
    torch.set_num_threads(_threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))


@pytest.fixture
def cfg(tmp_path):
    """A Config writing under tmp_path, one worker, with the recipe's defaults otherwise."""
    def make(**overrides):
        overrides.setdefault("work_dir", str(tmp_path / "work"))
        overrides.setdefault("workers", 1)
        return Config(**overrides)
    return make


def run_kit(*args, cwd=None, env=None, timeout=600):
    """run.py in a subprocess, the way a user starts it."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("KAGGLE_KERNEL_RUN_TYPE", None)
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *map(str, args)], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def kit_cli():
    return run_kit


def one_error(capsys, argv) -> str:
    """run.py's main refusing `argv` with exit 2 and one `error:` line, the line."""
    from kit import cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def no_run(monkeypatch):
    """No run's clock before the test, and none left behind for the tests after it."""
    from kit.training import session

    monkeypatch.delenv(session.SESSION_ENV, raising=False)
    monkeypatch.setattr(session, "_deadline", None)
    yield
    session.end()
