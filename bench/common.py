"""What every benchmark shares: the machine's description, generated films, medians over
repeated timings, the printed table and the closing JSON line."""
import json
import os
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from kit import env
from kit.data import demo
from kit.data.images import encode_jpeg

FILM_SHAPE = (2500, 2000)  # height, width of a digitized chest film
GRAIN = 6.0  # standard deviation of the film grain in grey levels: it sets the JPEG size


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(gpus=True) -> dict:
    """CPU model and count, the GPUs (torch is imported only when gpus is asked for), and the
    load average at the start: other work on the machine shows up in every figure."""
    return {"cpu": cpu_model(), "cpus": env.cpu_count(),
            "gpus": [name for name, _ in env.gpus()] if gpus else [],
            "load_1min": round(os.getloadavg()[0], 2)}


def describe(m: dict) -> str:
    gpus = ", ".join(m["gpus"]) or "no GPU"
    return f"{m['cpus']} x {m['cpu']}, {gpus}, load average {m['load_1min']}"


# generated inputs -------------------------------------------------------------------------

def film(height, width, rng, grain) -> np.ndarray:
    """A synthetic chest film (the demo's drawing of one finding) at full size, with grain so
    that it compresses like a real one."""
    finding = str(rng.choice(list(demo.PROPORTIONS)))
    small = demo.film([finding], rng)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    shift = rng.integers(0, grain.shape[0]), rng.integers(0, grain.shape[1])
    return cv2.add(img, np.roll(grain, shift, axis=(0, 1)), dtype=cv2.CV_8U)


def write_films(folder, n, height, width, seed=0, channels=1, grain=GRAIN) -> list:
    """n JPEG films (quality 95, 1 or 3 channels of grey) under `folder`; their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grain = cv2.GaussianBlur(rng.normal(0, grain, (height, width)).astype(np.float32), (0, 0), 0.7)
    grain = np.rint(grain).astype(np.int16)
    paths = []
    for i in range(n):
        img = film(height, width, rng, grain)
        if channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        path = folder / f"film_{i:05d}.jpg"
        path.write_bytes(encode_jpeg(img))
        paths.append(path)
    return paths


# timing ------------------------------------------------------------------------------------

def rates(run, items, repeats, warmup=0) -> list:
    """items/s of each of `repeats` calls of run() (after `warmup` untimed calls)."""
    for _ in range(warmup):
        run()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        out.append(items / (time.perf_counter() - start))
    return out


def median(values):
    return statistics.median(values) if values else float("nan")


def int_list(text) -> list:
    return [int(v) for v in str(text).split(",") if v.strip()]


# output ------------------------------------------------------------------------------------

def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def print_table(title, rows, columns):
    """rows: dicts; columns: (key, header) pairs, in order."""
    cells = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for (_, h), w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def emit(name, figures, mach):
    """The closing line: one JSON object with the bench's figures."""
    print(json.dumps({"bench": name, **figures, "machine": mach}, default=_plain))


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def round_floats(value, digits=3):
    """Figures fit for a JSON line: floats to `digits` significant digits, NaN to None."""
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(v, digits) for v in value]
    if isinstance(value, float):
        return None if value != value else float(f"{value:.{digits}g}")
    return value
