"""Fast grayscale decoding and shrinking of X-ray files.

A chest film is 2000-3000 px a side and training wants about 512: libjpeg-turbo can decode
straight at 1/2, 1/4 or 1/8 of the size, which skips most of the inverse DCT work; the
factor is picked from the file header. simplejpeg (libjpeg-turbo's own API) decodes to the
same pixels as OpenCV in 22-31% less time at full size; where it is not installed, OpenCV
decodes.

`store_one` is the separate stage's unit of work.
"""
import contextlib
import multiprocessing
import os
import shutil
import sys
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from kit.errors import KitError
from kit.io import atomic_path
from kit.progress import progress

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}  # what the kit reads as an image

try:
    import simplejpeg
except ImportError:
    simplejpeg = None

REDUCED = {8: cv2.IMREAD_REDUCED_GRAYSCALE_8, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
           2: cv2.IMREAD_REDUCED_GRAYSCALE_2}
JPEG_SUFFIXES = {".jpg", ".jpeg"}
JPEG_QUALITY = 95
JPEG_END = b"\xff\xd9"


def header_size(path) -> tuple:
    """(width, height) from the file header alone, without decoding pixels."""
    with Image.open(path) as im:
        return im.size


def reduction(size, short_side: int) -> int:
    """The largest of 8, 4 and 2 that a JPEG of `size` can be decoded divided by while its
    shorter side stays at least `short_side`; 1 when none can. Powers of two only: libjpeg's
    other eighths (3/8 of 2000x2500) scale with cruder transforms that cost 1.4 dB stored."""
    for factor in REDUCED:
        if short_side and min(size) // factor >= short_side:
            return factor
    return 1


def decode_flag(path, short_side: int) -> int:
    """The cheapest OpenCV flag whose output is still at least `short_side` on its shorter side."""
    if short_side and Path(path).suffix.lower() in JPEG_SUFFIXES:
        return REDUCED.get(reduction(header_size(path), short_side), cv2.IMREAD_GRAYSCALE)
    return cv2.IMREAD_GRAYSCALE


def to_uint8(img: np.ndarray) -> np.ndarray:
    """16-bit films (some PNG and DICOM exports) scaled to 8 bits over their own range; floating
    point images in [0, 1] (some generators' output) as 0-255."""
    if img.dtype == np.uint8:
        return img
    lo, hi = float(img.min()), float(img.max())
    if img.dtype.kind == "f" and 0 <= lo and hi <= 1:
        return np.rint(img * 255).astype(np.uint8)
    return ((img.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1.0))).astype(np.uint8)


def load_gray(path, short_side: int = 0):
    """uint8 grayscale image with its shorter side `short_side` (never upscaled; 0: as stored).

    None when the file is missing or cannot be decoded.
    """
    img = turbo_decode(path, short_side) if Path(path).suffix.lower() in JPEG_SUFFIXES else None
    if img is None:
        img = opencv_decode(path, short_side)
    if img is None:
        return None
    img = to_uint8(img)
    return shrink(img, short_side) if short_side else img


def turbo_decode(path, short_side: int):
    """The JPEG decoded by simplejpeg at the reduction OpenCV would use, to the same pixels; None
    without simplejpeg, or for files it refuses (damaged or truncated data, which OpenCV then
    decodes as far as it can)."""
    if simplejpeg is None:
        return None
    try:
        data = Path(path).read_bytes()
        sizes = {}
        if short_side:  # a stored image (training, validation) is decoded whole: no header read
            height, width = simplejpeg.decode_jpeg_header(data)[:2]
            factor = reduction((width, height), short_side)
            # simplejpeg takes the smallest eighth that meets these sizes: here, 1/factor
            sizes = dict(min_height=-(-height // factor), min_width=-(-width // factor))
        return simplejpeg.decode_jpeg(data, colorspace="GRAY", **sizes)[..., 0]
    except (OSError, ValueError):
        return None


def opencv_decode(path, short_side: int):
    try:
        flag = decode_flag(path, short_side)
    except (OSError, SyntaxError, ValueError):
        return None
    if flag == cv2.IMREAD_GRAYSCALE and Path(path).suffix.lower() not in JPEG_SUFFIXES:
        flag = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_GRAYSCALE
    return cv2.imread(str(path), flag)


def shrink(img: np.ndarray, short_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    ratio = min(h, w) / short_side
    if ratio <= 1:
        return img
    return area_resize(img, (max(1, round(w / ratio)), max(1, round(h / ratio))))


def area_resize(img: np.ndarray, size) -> np.ndarray:
    """Area-average `img` down to size (width, height).

    OpenCV's INTER_AREA takes its slow general path when the factor is not a whole number, as
    it is after a reduced-size decode (1000x1250 -> 512x640: 2.9 ms). A bilinear resize to k
    times `size` and an exact k x k box average take 0.9 ms and stay within 1-5 dB of it
    (54-58 dB against 59 dB), far above the 47-48 dB of the JPEG store that follows. k is the
    whole part of the ratio on each axis, plus one where the bilinear step would otherwise
    shrink by more than 1.2x: beyond that it aliases more than a slight enlargement blurs.

    OpenCV's box is fast only for 2x2; a bilinear resize to exactly half a side averages each
    pair of pixels, the same box, and is fast for 1x2 too (640x512 -> 448x448: 0.2 against
    1.0 ms)."""
    kx, ky = _whole_factor(img.shape[1] / size[0]), _whole_factor(img.shape[0] / size[1])
    mid = (size[0] * kx, size[1] * ky)
    if mid != (img.shape[1], img.shape[0]):
        img = cv2.resize(img, mid, interpolation=cv2.INTER_LINEAR)
    if mid == size:
        return img
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR if max(kx, ky) <= 2 else cv2.INTER_AREA)


def _whole_factor(ratio: float) -> int:
    k = max(1, int(ratio))
    return k + 1 if ratio / k > 1.2 else k


def encode_jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def single_threaded():
    """Pool-worker initializer: parallelism comes from the processes, not inside OpenCV."""
    cv2.setNumThreads(1)


def _complete(dst: Path, src: Path, resize: int) -> bool:
    """A file renamed into place is whole; check cheaply against a damaged disk all the same."""
    try:
        size = dst.stat().st_size
        if not resize:
            return size == src.stat().st_size
        with open(dst, "rb") as f:
            f.seek(-2, os.SEEK_END)
            return f.read(2) == JPEG_END
    except OSError:
        return False


def store_one(job, resize: int):
    """Store one image (src, dst) with its shorter side `resize` (0: copy the file as it is);
    returns (status, bytes read, bytes written), status one of written, skipped, missing, unreadable."""
    src, dst = Path(job[0]), Path(job[1])
    if dst.exists() and _complete(dst, src, resize):
        return "skipped", 0, dst.stat().st_size
    if not src.is_file():
        return "missing", 0, 0
    img = load_gray(src, resize)
    if img is None:
        return "unreadable", src.stat().st_size, 0
    with atomic_path(dst) as tmp:
        if resize and not _stored_already(src, resize):
            tmp.write_bytes(encode_jpeg(img))
        else:
            shutil.copyfile(src, tmp)
    return "written", src.stat().st_size, dst.stat().st_size


def _stored_already(src: Path, resize: int) -> bool:
    """A grayscale JPEG of shorter side `resize`, as --download stores films: copied, since
    encoding it again would only lose quality."""
    if src.suffix.lower() not in JPEG_SUFFIXES:
        return False
    with Image.open(src) as im:
        return im.mode == "L" and min(im.size) == resize


def stored_names(image_ids: pd.Series, resize: int) -> pd.Series:
    """Per id, a relative file name under images/ that mirrors it and cannot escape the folder:
    backslashes read as /, the parts "", "." and ".." dropped, and when resizing the suffix (as
    pathlib reads it: the last dot of the name, not its first character) replaced by .jpg.
    String operations on the column, where a path object per id costs seconds at 200k ids."""
    names = (image_ids.astype(str).str.replace("\\", "/", regex=False)
             .str.replace(r"(?:^|/)\.\.?(?=/|\Z)", "", regex=True)
             .str.replace(r"/+", "/", regex=True).str.strip("/"))
    empty = names == ""
    if empty.any():
        raise KitError(f"image id {image_ids[empty].iloc[0]!r} names no file once its '.', '..' and '/' "
                       f"parts are dropped; give each image a file name in the CSV")
    if resize:
        names = names.str.replace(r"(?<=[^/])\.[^./]+\Z", "", regex=True) + ".jpg"
    return names


def store_all(jobs, resize: int, workers: int, desc: "str | None" = "[separate]"):
    """Results of store_one for every job, in job order, using `workers` processes;
    progress shown under `desc` (None: none, the caller shows its own).

    On Linux the workers are forked: they start in milliseconds with everything imported,
    where a forkserver or spawned pool takes 0.4-0.7 s to import OpenCV again. A forked child
    inherits OpenCV's thread pool without its threads and hangs if it touches the pool, even to
    resize it: the parent turns OpenCV's threading off for the fork, so the children run
    OpenCV sequentially and never call into the pool."""
    work = partial(store_one, resize=resize)
    shown = partial(progress, total=len(jobs), desc=desc) if desc else iter
    if workers <= 1:
        return list(shown(map(work, jobs)))
    with worker_pool(workers) as pool:
        return list(shown(pool.imap(work, jobs, chunksize=chunk_size(len(jobs), workers))))


def chunk_size(jobs: int, workers: int) -> int:
    return max(1, min(64, jobs // (workers * 8)))


@contextlib.contextmanager
def worker_pool(workers: int):
    """A pool of `workers` processes for store_one."""
    fork = sys.platform.startswith("linux")
    threads = cv2.getNumThreads()
    if fork:
        cv2.setNumThreads(0)
    try:
        with multiprocessing.get_context("fork" if fork else None).Pool(
                workers, initializer=None if fork else single_threaded) as pool:
            yield pool
    finally:
        cv2.setNumThreads(threads)
