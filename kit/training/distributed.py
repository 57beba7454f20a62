"""Data-parallel training with torch.distributed: one process per GPU, started by torchrun
(by the user, or by the train stage relaunching itself), gloo on CPU, nccl on GPUs.

Multi-node runs use torchrun's usual flags (--nnodes, --node-rank, --rdzv-endpoint); nothing
here depends on being on one machine.
"""
import dataclasses
import json
import os
import subprocess
import sys

import torch
import torch.distributed as dist

from kit import ROOT, layout
from kit.config import Config
from kit.errors import KitError

RUN_PY = ROOT / "run.py"


@dataclasses.dataclass
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def should_relaunch(ddp) -> bool:
    """--ddp `ddp`: train under torchrun here (auto, outside torchrun, with several GPUs)."""
    return ddp == "auto" and not under_torchrun() and torch.cuda.device_count() > 1


def relaunch_command(cfg, nproc, **changes) -> list:  # cfg: the whole config goes to the processes
    """torchrun running this same training, every setting passed on explicitly."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            str(RUN_PY), *config_flags(cfg, stage="train", demo=False, **changes)]


def launch(command) -> int:
    with subprocess.Popen(command) as proc:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # torchrun has it too and passes it on: let the processes save
            proc.wait()
            raise


def relaunch(cfg):  # cfg: the whole config goes to the processes
    """Train under torchrun, one process per GPU; out of memory on any GPU, all of them start
    again from the last saved state at the smaller batch it chose (the same effective batch)."""
    nproc = torch.cuda.device_count()
    print(f"[train] {nproc} GPUs: training data-parallel, one process each (torchrun, DDP)", flush=True)
    smaller, changes = layout.batch_back_off(cfg.work), {}
    smaller.unlink(missing_ok=True)
    while (code := launch(relaunch_command(cfg, nproc, **changes))) and smaller.exists():
        batch = json.loads(smaller.read_text())
        smaller.unlink()
        print(f"[train] out of GPU memory: every process restarts from the last saved state at batch "
              f"{batch['batch']} x {batch['accum']} accumulation steps per GPU (same effective batch)", flush=True)
        changes = dict(batch_size=str(batch["batch"]), accum=str(batch["accum"]))
    if code:
        raise KitError(f"data-parallel training stopped (exit code {code}, see above); rerun to "
                       f"resume, or --ddp off to train on one GPU")


def config_flags(cfg, **changes) -> list:  # cfg: the whole config, as flags
    """Command-line flags that rebuild `cfg` (with `changes`) in another process."""
    flags = []
    for f in dataclasses.fields(Config):
        value = changes.get(f.name, getattr(cfg, f.name))
        name = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(name if value else "--no-" + name[2:])
        elif isinstance(value, (tuple, list)):  # a flag of several values
            flags += [name, *map(str, value)] if value else []
        else:
            flags.append(f"{name}={value}")  # '=' keeps a value that starts with '-' a value
    return flags


def setup() -> World:
    """The process's place: rank and device (one GPU per process under torchrun)."""
    if not under_torchrun():
        return World(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if torch.cuda.is_available():
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return World(dist.get_rank(), dist.get_world_size(), device)


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()


def gather(obj, world) -> list:
    """Every rank's `obj`, in rank order (a list of one without torch.distributed)."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def reduced(value: torch.Tensor, world, op="sum") -> torch.Tensor:
    """A tensor combined over ranks: their sum, "max" or "min" (itself without torch.distributed)."""
    if world.size > 1:
        value = value.clone()
        dist.all_reduce(value, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                                   "min": dist.ReduceOp.MIN}[op])
    return value


def mean(value: torch.Tensor, world) -> torch.Tensor:
    """The mean of a tensor over ranks."""
    return reduced(value, world) / world.size
