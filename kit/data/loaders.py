"""Images in, batches out: decoding, the Dataset, the epoch sampler, the DataLoader and the
device-side conversion to the model's input.

Images travel as uint8 single-channel tensors; they become 3-channel normalized floats only on
the device (`to_input`): worker memory and host-to-device copies are 12 times smaller.
"""
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kit.data.augment import augment, resize
from kit.data.images import load_gray
from kit.errors import KitError

MAX_WORKERS = 8
MAX_REPLACEMENTS = 20
_reported = set()  # unreadable files already logged by this process


class XrayDataset(Dataset):
    """Items: (image uint8 [1,S,S], target float32 [C] (empty without targets), index, ok).

    Training (`aug` strong, light or none) draws each image's augmentation from a generator
    seeded by (seed, epoch, index), so the stream is the same whatever the workers, ranks or
    restarts; index the dataset with (index, epoch) to pick the epoch. An unreadable training
    image is logged and replaced by another sample, never learned as a blank one with its
    labels. Evaluation (`aug` None) resizes each image plainly; an unreadable one gives a blank
    image and ok=False, so predictions keep their rows. `shorter_side` reads files that
    the separate stage did not store (a competition's test films) the way it stores them:
    decoded at reduced size where the JPEG allows, then area-averaged to that shorter side."""

    def __init__(self, paths, targets, img_size, aug=None, seed=0, shorter_side=0, hflip=0.0):
        self.paths = [str(p) for p in paths]
        self.targets = None if targets is None else np.asarray(targets, dtype=np.float32)
        self.img_size, self.aug, self.seed, self.shorter_side = img_size, aug, seed, shorter_side
        self.hflip = hflip

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if self.aug is None:
            img = load_gray(self.paths[index], self.shorter_side)
            ok = img is not None
            img = resize(img, self.img_size) if ok else np.zeros((self.img_size,) * 2, np.uint8)
        else:
            rng = np.random.default_rng((self.seed, epoch, index))
            index, img = self._readable(index, rng)
            img = resize(img, self.img_size) if self.aug == "none" else augment(img, self.img_size, rng, self.aug, self.hflip)
            ok = True
        target = self.targets[index] if self.targets is not None else np.zeros(0, np.float32)
        return torch.from_numpy(np.ascontiguousarray(img))[None], torch.from_numpy(target), index, ok

    def _readable(self, index, rng):
        for _ in range(MAX_REPLACEMENTS):
            img = load_gray(self.paths[index], self.shorter_side)
            if img is not None:
                return index, img
            if self.paths[index] not in _reported:
                _reported.add(self.paths[index])
                print(f"warning: unreadable image {self.paths[index]}, replaced by another sample",
                      flush=True)
            index = int(rng.integers(len(self.paths)))
        raise KitError(f"{MAX_REPLACEMENTS} unreadable images in a row (last {self.paths[index]}); "
                       f"check the stored images and rerun --stage separate --force")


class EpochSampler(Sampler):
    """The training order: a seeded permutation per epoch, cut to whole optimizer updates.

    Yields (index, epoch) keys. `start` skips the samples of updates already done (resume, or
    an update redone after an out-of-memory error); ranks take interleaved shares, so a global
    batch is the same set of images whatever the number of processes."""

    def __init__(self, n, samples_per_epoch, seed=0, rank=0, world=1):
        self.n, self.samples_per_epoch, self.seed = n, samples_per_epoch, seed
        self.rank, self.world = rank, world
        self.epoch, self.start = 0, 0

    def set_position(self, epoch, start):
        self.epoch, self.start = epoch, start

    def _order(self):
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
        return order[self.start:self.samples_per_epoch][self.rank::self.world]

    def __iter__(self):
        return ((int(i), self.epoch) for i in self._order())

    def __len__(self):
        return (self.samples_per_epoch - self.start) // self.world


def worker_count(requested, world=1):
    """Loader processes per rank: the requested number, capped, shared between ranks. None
    without a GPU: there the model's threads take every core, decoding is a few percent of
    the work, and processes competing with those threads slow them down many times over."""
    if not torch.cuda.is_available():
        return 0
    return max(0, min(requested, MAX_WORKERS) // world)


def make_loader(dataset, batch_size, shuffle, workers, seed=0, drop_last=False, sampler=None):
    if workers:
        # Parallelism comes from the worker processes, not from OpenCV's thread pool. A pool alive
        # in this process when it forks is inherited without its threads, and a worker then hangs
        # in its first OpenCV call: shut the pool down before the fork; the workers inherit that.
        cv2.setNumThreads(0)
    generator = torch.Generator().manual_seed(seed) if shuffle and sampler is None else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        generator=generator, num_workers=workers, pin_memory=torch.cuda.is_available(),
        drop_last=drop_last, persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def to_input(images, mean, std, device):
    """uint8 [B,1,H,W] -> normalized float [B,3,H,W] on `device` (the channel is broadcast)."""
    x = images.to(device, non_blocking=True).float().div_(255)
    # lists are copied to the device and wait for it; tensors already there are used as they are
    mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (x - mean) / std
