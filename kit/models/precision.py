"""Mixed precision: which autocast dtype a device gets, and the gradient scaler it needs."""
import torch

from kit.errors import KitError


def autocast_dtype(amp: str, device) -> "torch.dtype | None":
    """auto: bfloat16 on GPUs with native support (Ampere and newer), float16 on older ones
    (T4, P100), None (full precision) on CPU."""
    device = torch.device(device)
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp == "fp16":
            raise KitError("--amp fp16 needs a GPU; use --amp auto or off on CPU")
        return torch.bfloat16 if amp == "bf16" else None
    # is_bf16_supported() also says yes for emulated bf16 (T4), which is slower than fp16.
    native_bf16 = torch.cuda.get_device_capability(device) >= (8, 0)
    if amp == "bf16" and not native_bf16:
        raise KitError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no native bfloat16; "
                       f"use --amp auto (float16 with scaling)")
    if amp == "fp16" or (amp == "auto" and not native_bf16):
        return torch.float16
    return torch.bfloat16


class Autocast(torch.nn.Module):
    """`model` under autocast from within its own forward. DataParallel runs each replica in a
    thread and passes on only whether autocast is on, not its dtype
    (torch/nn/parallel/parallel_apply.py): a bf16 model would run in CUDA's default, fp16."""

    def __init__(self, model, dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x):
        with torch.autocast(x.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.model(x)


def grad_scaler(dtype, device) -> torch.amp.GradScaler:
    """float16 needs loss scaling against underflow; bfloat16 and float32 do not."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=dtype == torch.float16)


def allow_tf32():
    """TF32 matmuls on Ampere+: float32 speed close to bf16, precision ample for training."""
    torch.set_float32_matmul_precision("high")
