"""Training augmentation of uint8 grayscale images, fast enough to never starve a GPU.

Geometry is one composed affine warp straight to the output size (resize, rotation, scale,
translation and flip in a single pass); brightness, contrast and gamma are one 256-entry
lookup table. Everything stays uint8 until the device.
"""
import cv2
import numpy as np

from kit.data.images import area_resize

# no flip in either: a chest film's left and right differ (heart, stomach bubble, devices), so a
# flip makes films no patient has; --hflip asks for it
STRENGTH = {
    "strong": dict(rotate=15.0, scale=(0.8, 1.2), shift=0.1, brightness=0.2,
                   contrast=0.2, gamma=(0.8, 1.25), clahe=0.3, dropout=0.2),
    "light": dict(rotate=5.0, scale=(0.9, 1.1), shift=0.05, brightness=0.1,
                  contrast=0.1, gamma=(1.0, 1.0), clahe=0.0, dropout=0.0),
}
CLAHE_CLIP, CLAHE_TILES = 2.0, (8, 8)
DROPOUT_HOLES, DROPOUT_SIZE = (1, 4), (0.05, 0.15)  # holes per image, side as a fraction of it


def resize(img, size):
    """Validation and inference: an area-averaged resize (see images.area_resize)."""
    return area_resize(img, (size, size))


def augment(img, size, rng, strength="strong", hflip=0.0):
    p = dict(STRENGTH[strength], flip=hflip)
    out = cv2.warpAffine(img, affine_matrix(img.shape, size, rng, p), (size, size),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if rng.random() < p["clahe"]:
        out = cv2.createCLAHE(CLAHE_CLIP, CLAHE_TILES).apply(out)
    out = cv2.LUT(out, tone_table(rng, p))
    if rng.random() < p["dropout"]:
        coarse_dropout(out, rng)
    return out


def affine_matrix(shape, size, rng, p):
    """2x3 matrix mapping the source image onto a size x size output: resize, then flip,
    rotate and scale about the centre, then shift."""
    h, w = shape[:2]
    to_size = np.array([[size / w, 0, 0.5 * size / w - 0.5], [0, size / h, 0.5 * size / h - 0.5], [0, 0, 1]])
    flip = np.eye(3)
    if rng.random() < p["flip"]:
        flip[0] = [-1, 0, size - 1]
    centre = (size - 1) / 2
    rotate = np.vstack([cv2.getRotationMatrix2D((centre, centre), rng.uniform(-p["rotate"], p["rotate"]),
                                                rng.uniform(*p["scale"])), [0, 0, 1]])
    rotate[:2, 2] += rng.uniform(-p["shift"], p["shift"], size=2) * size
    return (rotate @ flip @ to_size)[:2]


def tone_table(rng, p):
    """Lookup table for gamma, then contrast about mid-grey, then brightness."""
    gamma = np.exp(rng.uniform(*np.log(p["gamma"])))
    contrast = rng.uniform(1 - p["contrast"], 1 + p["contrast"])
    brightness = rng.uniform(-p["brightness"], p["brightness"])
    x = np.arange(256) / 255.0
    y = (x ** gamma - 0.5) * contrast + 0.5 + brightness
    return np.clip(np.rint(y * 255), 0, 255).astype(np.uint8)


def coarse_dropout(img, rng):
    """Black out a few small squares, in place."""
    size = img.shape[0]
    for _ in range(rng.integers(DROPOUT_HOLES[0], DROPOUT_HOLES[1] + 1)):
        side = max(1, int(rng.uniform(*DROPOUT_SIZE) * size))
        y, x = rng.integers(0, size - side + 1, size=2)
        img[y:y + side, x:x + side] = 0
