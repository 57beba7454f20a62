"""Where am I: Kaggle, Colab or a local machine; where the data is; which GPUs there are."""
import importlib.util
import os
from pathlib import Path

from kit.errors import KitError

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
COLAB_WORK = Path("/content/xray-kit")


def platform() -> str:
    # Kaggle's image is built on Colab's, so google.colab may import there too: test Kaggle first.
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") and KAGGLE_WORKING.is_dir():
        return "kaggle"
    if importlib.util.find_spec("google") and importlib.util.find_spec("google.colab"):
        return "colab"
    return "local"


def default_work_dir(where: str) -> Path:
    return {"kaggle": KAGGLE_WORKING, "colab": COLAB_WORK}.get(where, Path("work"))


def data_roots(where: str) -> list:
    """Folders searched for a dataset when --data-dir is not given."""
    if where == "kaggle":
        return [KAGGLE_INPUT]
    if where == "colab":
        return [Path("/content/data"), Path("/content")]
    return [Path("data")]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def ensure_writable(folder: Path):
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise KitError(f"work dir {folder} is not writable ({e.strerror}); "
                       f"pass a writable folder with --work-dir") from e


def gpus() -> list:
    """(name, total memory in GiB) of each visible CUDA device; torch is imported only here."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory / 2**30)
            for i in range(torch.cuda.device_count())]
