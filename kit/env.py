"""Where am I: Kaggle, Colab or a local machine; where the data is; which GPUs there are."""
import collections
import importlib.metadata
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from kit.errors import KitError

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
# on the session's disk but outside /kaggle/working: not the kernel's output, gone with the session
KAGGLE_SCRATCH = Path("/kaggle/tmp/xray-kit")
COLAB_WORK = Path("/content/xray-kit")
# where drive.mount("/content/drive") puts the user's Drive: the work dir goes there, to outlive the session
COLAB_DRIVE = Path("/content/drive/MyDrive")
# local disk (about 100 GB, wiped with the session): the stored images, never 100k small files on Drive
COLAB_SCRATCH = Path("/content/xray-kit-local")
PLACES = {"kaggle": "Kaggle", "colab": "Google Colab", "local": "a local machine"}
HF_ENDPOINT = "https://huggingface.co"


def platform() -> str:
    # Kaggle's image is built on Colab's, so google.colab may import there too: test Kaggle first.
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") and KAGGLE_WORKING.is_dir():
        return "kaggle"
    if importlib.util.find_spec("google") and importlib.util.find_spec("google.colab"):
        return "colab"
    return "local"


def default_work_dir(where: str) -> Path:
    if where == "colab" and COLAB_DRIVE.is_dir():
        return COLAB_DRIVE / "xray-kit"
    return {"kaggle": KAGGLE_WORKING, "colab": COLAB_WORK}.get(where, Path("work"))


def scratch_dir(where: str) -> "Path | None":
    """Where --dataset-dir auto stores the images outside the work dir; None: in the work dir."""
    return {"kaggle": KAGGLE_SCRATCH, "colab": COLAB_SCRATCH}.get(where)


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
    if folder.exists() and not folder.is_dir():
        raise KitError(f"work dir {folder} is a file; pass a folder with --work-dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # a unique name: several ranks of one run probe the same folder at once
        with tempfile.TemporaryFile(dir=folder):
            pass
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


def reachable(host, port=443, timeout=2.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_reachable() -> bool:
    """Whether the Hugging Face hub answers. When it does not, HF_HUB_OFFLINE=1 is set, so that
    huggingface_hub (which reads it once, when timm imports it) never waits on a timeout; call
    this before timm is imported. An HF_HUB_OFFLINE set by the user is obeyed."""
    if os.environ.get("HF_HUB_OFFLINE"):
        return os.environ["HF_HUB_OFFLINE"].strip().lower() not in ("1", "true", "yes", "on")
    if reachable(urlparse(os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).hostname):
        os.environ["HF_HUB_OFFLINE"] = "0"  # decided: the facts block shows it, no second check
        return True
    os.environ["HF_HUB_OFFLINE"] = "1"
    return False


def _version(package) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def facts(torch_loaded: bool, work, data_dir, time_limit, output_budget, stage) -> str:
    """A short block on where the run of --stage `stage` is: platform, versions, the JPEG decoder,
    GPUs (only once torch is imported anyway: data stages start without it), CPUs, folders, free
    disk and limits."""
    turbo = _version("simplejpeg")
    jpeg = "OpenCV (simplejpeg not installed)" if turbo == "not installed" else f"simplejpeg {turbo}"
    lines = [f"xray kit on {PLACES[platform()]} | Python {sys.version.split()[0]} | torch {_version('torch')} "
             f"| timm {_version('timm')} | JPEG decoder: {jpeg}"]
    if torch_loaded:
        import torch

        counts = collections.Counter((name, round(mem, 1)) for name, mem in gpus())
        shown = ", ".join(f"{n} x {name} ({mem} GiB)" for (name, mem), n in counts.items())
        lines.append(f"  CUDA {torch.version.cuda or 'none'} | GPUs: {shown or 'none, training on the CPU'}")
    data = data_dir or "searched for under " + ", ".join(map(str, data_roots(platform())))
    free = shutil.disk_usage(work).free / 1e9
    hub = {None: "not asked (no stage needs it)", "1": "offline (HF_HUB_OFFLINE=1)"}.get(
        os.environ.get("HF_HUB_OFFLINE"), "online")
    lines += [f"  {cpu_count()} CPUs | data: {data} | work dir: {work} ({free:.1f} GB free)",
              f"  time limit: {time_limit} | output budget: {output_budget} | Hugging Face hub: {hub} "
              f"| stages: {stage}"]
    return "\n".join(lines)
