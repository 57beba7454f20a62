"""A class-conditional diffusion model of grey chest films in pixel space, built from Hugging Face
diffusers' pieces: its UNet2DModel, DDPM noise schedule for training, DPM-Solver++ for
sampling, and EMAModel for the averaged weights that sample.

Only the generate stage imports this module (and so diffusers): the classifier's stages run
without it.

Position in training (kit.training.loop.Position) is (epochs done, batches of this epoch done, updates
done). The batch order is a function of (seed, epoch) and each update's noise and timesteps of
(seed, update), so a run resumed from `state_dict()` continues exactly where it was.
"""
import math

import numpy as np
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.optimization import get_constant_schedule_with_warmup
from diffusers.training_utils import EMAModel

from kit.models.precision import grad_scaler
from kit.training.loop import Position

TRAIN_TIMESTEPS = 1000
# the cosine schedule: at 64-256 px the linear one spends its last steps on near-pure noise
BETA_SCHEDULE = "squaredcos_cap_v2"
LOWEST_SIDE = 16  # the UNet halves the image down to this side, where it attends
WIDTHS = (1, 2, 2, 4, 4)  # channels of each resolution level, as multiples of --gen-width
WARMUP_UPDATES = 50
CLIP_GRAD = 1.0
EMA_DECAY = 0.9999  # the ceiling; EMAModel's warmup ramps up to it (0.99 at 1,000 updates)


def build(num_classes: int, size: int, width: int) -> UNet2DModel:
    """A UNet on 1-channel images of `size`, conditioned on the class through an embedding added to
    its timestep embedding; levels down to 16 px, self-attention at the lowest."""
    levels = int(math.log2(size // LOWEST_SIDE)) + 1
    channels = tuple(width * m for m in WIDTHS[:levels])
    return UNet2DModel(
        sample_size=size, in_channels=1, out_channels=1, block_out_channels=channels, layers_per_block=2,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        num_class_embeds=num_classes, norm_num_groups=min(32, width), attention_head_dim=min(64, channels[-1]))


def noise_schedule(target: str = "epsilon") -> DDPMScheduler:
    """`target`: what the UNet predicts, diffusers' prediction_type (epsilon, sample or v_prediction)."""
    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE, prediction_type=target)


def _generator(*entropy) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W] -> float [N, 1, H, W] in [-1, 1]."""
    return images.float().div(127.5).sub(1).unsqueeze(1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].cpu().numpy()


class Training(Position):
    """The model, its EMA, AdamW, the warmup schedule and the gradient scaler, with the position."""

    IN_EPOCH = "batches"

    def __init__(self, model, lr, seed, device, dtype, state=None, target="epsilon"):
        self.model, self.seed, self.device, self.dtype, self.target = model.to(device), seed, device, dtype, target
        self.schedule = noise_schedule(target)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        self.lr = get_constant_schedule_with_warmup(self.optimizer, WARMUP_UPDATES)  # epochs can be added later
        self.scaler = grad_scaler(dtype, device)
        self.ema = EMAModel(model.parameters(), decay=EMA_DECAY, use_ema_warmup=True)
        self.start_position()
        if state:
            self.load_state_dict(state)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "lr": self.lr.state_dict(),
                "scaler": self.scaler.state_dict(), **self.position()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.ema.to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr.load_state_dict(state["lr"])
        if state["scaler"]:  # empty when saved without float16 scaling
            self.scaler.load_state_dict(state["scaler"])
        self.load_position(state)

    def epoch_order(self, n: int) -> np.ndarray:
        return np.random.default_rng((self.seed, self.epoch)).permutation(n)

    def update(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimizer update on uint8 images [B, H, W] of classes `labels`: predict the noise
        added at a random timestep (the DDPM objective), or the clean image or the velocity as
        `target` says; the loss."""
        rng = _generator(self.seed, self.updates)
        x0 = to_model_range(images)
        noise = torch.randn(x0.shape, generator=rng)
        t = torch.randint(0, TRAIN_TIMESTEPS, (len(x0),), generator=rng)
        noisy = self.schedule.add_noise(x0, noise, t)
        wanted = (noise if self.target == "epsilon" else x0 if self.target == "sample"
                  else self.schedule.get_velocity(x0, noise, t))
        noisy, wanted, t, labels = (v.to(self.device, non_blocking=True) for v in (noisy, wanted, t, labels))
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            predicted = self.model(noisy, t, class_labels=labels).sample
        loss = torch.nn.functional.mse_loss(predicted.float(), wanted)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_GRAD)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr.step()
        self.ema.step(self.model.parameters())
        self.updates += 1
        self.batches += 1
        value = loss.item()
        self.add_loss(value)
        return value

    def ema_model(self) -> UNet2DModel:
        """A copy of the model holding the EMA weights (the ones that sample)."""
        model = UNet2DModel.from_config(self.model.config).to(self.device)
        self.ema.copy_to(model.parameters())
        return model.eval()


def weights(model: UNet2DModel, classes, size: int, epoch: int, target: str) -> dict:
    """The EMA model as a file: `UNet2DModel.from_config(config)` then `load_state_dict(state_dict)`
    restores it with diffusers alone; `classes[k]` is class label k; noise_schedule's
    prediction_type is what it predicts."""
    return {"state_dict": model.state_dict(), "config": _plain(model.config), "arch": type(model).__name__,
            "classes": list(classes), "img_size": size, "epoch": epoch,
            "noise_schedule": _plain(noise_schedule(target).config)}


def _plain(config) -> dict:
    """A diffusers config as builtins only (tuples to lists): what torch.load(weights_only) reads."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(config).items()}


def load(file: dict) -> UNet2DModel:
    model = UNet2DModel.from_config(file["config"])
    model.load_state_dict(file["state_dict"])
    return model.eval()


def image_seed(seed: int, label: int, index: int) -> torch.Generator:
    """The starting noise of image `index` of class `label`: the same whatever batch it is drawn
    in, so an interrupted sampling run resumes with the images it would have made."""
    return _generator(seed, 1 + label, index)


def sample(model, labels, generators, steps: int, device, dtype, target="epsilon") -> np.ndarray:
    """uint8 images [N, size, size] of classes `labels`, each from its own generator's noise,
    denoised in `steps` DPM-Solver++ steps by a model predicting `target`."""
    sampler = DPMSolverMultistepScheduler.from_config(noise_schedule(target).config)
    sampler.set_timesteps(steps, device=device)
    size = model.config.sample_size
    x = torch.stack([torch.randn((1, size, size), generator=g) for g in generators]).to(device)
    x = x * sampler.init_noise_sigma
    labels = torch.as_tensor(labels, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for t in sampler.timesteps:
            out = model(sampler.scale_model_input(x, t), t, class_labels=labels).sample
            x = sampler.step(out.float(), t, x).prev_sample
    return to_uint8(x)
