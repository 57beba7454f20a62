"""The separate stage against the usual notebook copy loop, on generated full-size films.

Kit: `images.store_all` (reduced-size grayscale decode, area shrink to --resize on the
shorter side, grayscale JPEG quality 95, forked workers). Notebook: PIL open, convert to RGB,
resize to 600x600, save JPEG quality 95, with a multiprocessing pool of the same size. Both
sides read the same files, take turns within each repetition and use one core per worker
(OpenCV's own threads are off in this process). Quality: PSNR of each side's stored image
against an area-averaged resize of the fully decoded film, at that side's output size.

    python -m bench.separate [--images 200] [--workers 1,2] [--repeats 3]
"""
import argparse
import contextlib
import io
import multiprocessing
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/separate.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
from PIL import Image

from bench import common
from kit import env
from kit.config import Config
from kit.data.images import store_all

NOTEBOOK_SIZE = 600
NOTEBOOK_QUALITY = 95


def notebook_store(job, size=NOTEBOOK_SIZE):
    """The notebook's copy of one image."""
    src, dst = job
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im.convert("RGB").resize((size, size)).save(dst, quality=NOTEBOOK_QUALITY)


def notebook_store_all(jobs, workers):
    with multiprocessing.Pool(workers) as pool:
        for _ in pool.imap(notebook_store, jobs):
            pass


def kit_store_all(jobs, resize, workers):
    with contextlib.redirect_stdout(io.StringIO()):  # the stage's progress lines
        results = store_all(jobs, resize, workers)
    bad = [job[0] for job, r in zip(jobs, results) if r[0] != "written"]
    if bad:
        raise RuntimeError(f"the separate stage did not write {len(bad)} images, first {bad[0]}")


def psnr(img, reference) -> float:
    mse = np.mean((img.astype(np.float64) - reference) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def reference(src, shape) -> np.ndarray:
    """A careful resize: full decode, area average in floating point."""
    full = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    return cv2.resize(full, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def quality(jobs) -> float:
    """Median PSNR (dB) of the stored images of `jobs` against the reference resize."""
    values = []
    for src, dst in jobs:
        out = cv2.imread(str(dst), cv2.IMREAD_GRAYSCALE)
        values.append(psnr(out, reference(src, out.shape)))
    return common.median(values)


def measure(sources, out_root, workers, repeats, resize):
    """(kit images/s per repetition, notebook images/s per repetition, last outputs of each)."""
    kit, notebook = [], []
    for rep in range(repeats):
        for side, store, rates in (("kit", partial(kit_store_all, resize=resize), kit),
                                   ("notebook", notebook_store_all, notebook)):
            folder = out_root / side
            shutil.rmtree(folder, ignore_errors=True)
            jobs = [(str(p), str(folder / p.name)) for p in sources]
            start = time.perf_counter()
            store(jobs, workers=workers)
            rates.append(len(jobs) / (time.perf_counter() - start))
    outputs = {side: [(str(p), str(out_root / side / p.name)) for p in sources] for side in ("kit", "notebook")}
    return kit, notebook, outputs


def main(argv=None):
    cores = env.cpu_count()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--height", type=int, default=common.FILM_SHAPE[0])
    ap.add_argument("--width", type=int, default=common.FILM_SHAPE[1])
    ap.add_argument("--channels", type=int, default=1, choices=(1, 3), help="channels of the source JPEGs")
    ap.add_argument("--workers", default=",".join(map(str, sorted({1, cores}))), help="comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resize", type=int, default=Config().resize, help="the kit's stored shorter side")
    ap.add_argument("--psnr-images", type=int, default=20, help="images whose PSNR is computed")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    mach = common.machine(gpus=False)

    with tempfile.TemporaryDirectory(prefix="bench-separate-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        sources = common.write_films(tmp / "src", args.images, args.height, args.width, channels=args.channels)
        mib = sum(p.stat().st_size for p in sources) / len(sources) / 2**20
        print(f"bench.separate | {common.describe(mach)} | {len(sources)} generated {args.height}x{args.width} "
              f"{'grey' if args.channels == 1 else 'RGB'} JPEGs, {mib:.2f} MiB each "
              f"({time.perf_counter() - start:.0f} s to write)")
        rows, figures = [], {"kit": {}, "notebook": {}, "ratio": {}}
        for w in common.int_list(args.workers):
            kit, notebook, outputs = measure(sources, tmp / "out", w, args.repeats, args.resize)
            k, n = common.median(kit), common.median(notebook)
            rows.append({"workers": w, "kit": k, "notebook": n, "ratio": k / n,
                         "kit_w": k / w, "notebook_w": n / w})
            figures["kit"][w], figures["notebook"][w], figures["ratio"][w] = k, n, k / n
        sample = slice(0, args.psnr_images)
        figures["psnr_db"] = {"kit": quality(outputs["kit"][sample]),
                              "notebook": quality(outputs["notebook"][sample])}
        kit_mib = np.mean([Path(d).stat().st_size for _, d in outputs["kit"]]) / 2**20

    common.print_table(
        f"images/s, median of {args.repeats} (kit: grey JPEG, shorter side {args.resize}; "
        f"notebook: RGB JPEG {NOTEBOOK_SIZE}x{NOTEBOOK_SIZE})",
        rows, [("workers", "workers"), ("kit", "kit img/s"), ("notebook", "notebook img/s"),
               ("ratio", "ratio"), ("kit_w", "kit img/s/worker"), ("notebook_w", "notebook img/s/worker")])
    print(f"\nPSNR against a full-decode area resize: kit {figures['psnr_db']['kit']:.1f} dB, "
          f"notebook {figures['psnr_db']['notebook']:.1f} dB (median of {args.psnr_images} images); "
          f"kit stores {kit_mib:.3f} MiB per image")
    common.emit("separate", common.round_floats({
        "images": args.images, "source": f"{args.height}x{args.width}x{args.channels} JPEG q95",
        "source_mib": mib, "resize": args.resize, "repeats": args.repeats, **figures,
        "kit_mib": kit_mib}), mach)


if __name__ == "__main__":
    main()
