"""--download on a loopback server that serves byte ranges at a set rate, as Kaggle's storage does.

The archive: the demo dataset in Grand X-Ray Slam's layout (train1.csv, train1/, test1/, the sample
submission) with every film replaced by a generated full-size one. Three measurements:

  overlap    the whole archive into a folder, films shrunk to 512: the kit's stream (each round of
             films shrunk by the workers while the next is fetched) against the previous loop
             (fetch a round, shrink it, fetch the next), kept below; the same round size on both
  smoke      --smoke --download, metadata and separate: the kit (the CSVs, the sample's test films,
             then the slice's training films by range requests) against fetching the whole
             archive first, as --smoke did before
  reconnect  metadata, separate and split again on a new machine (data folder and stored images
             removed, work dir kept): with the work dir's shards against without them (the archive
             streamed again, the images stored again)

    python -m bench.download [--rate 40] [--workers 2] [--round 64]
"""
import argparse
import http.server
import io
import mmap
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from contextlib import contextmanager, redirect_stdout
from unittest import mock
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/download.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench import common
from kit import cli
from kit.data import demo, images, smoke
from kit.kaggle import download


@contextmanager
def range_server(path: Path, rate: float):
    """`path` served with byte ranges at `rate` bytes/s (all connections together); yields (url, sent),
    sent[0] counting the bytes of the bodies."""
    sent, lock = [0], threading.Lock()
    with open(path, "rb") as f:
        blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    due = [0.0]  # when the bytes sent so far are due at `rate`: no credit builds up while idle

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            first, _, last = self.headers["Range"].removeprefix("bytes=").partition("-")
            start, end = (len(blob) - int(last), len(blob)) if first == "" else (int(first), int(last) + 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(blob)}")
            self.send_header("Content-Length", str(end - start))
            self.end_headers()
            for at in range(start, end, 1 << 16):
                chunk = blob[at:min(end, at + (1 << 16))]
                with lock:
                    due[0] = max(due[0], time.perf_counter()) + len(chunk) / rate
                    sent[0] += len(chunk)
                    wait = due[0] - time.perf_counter()
                time.sleep(max(0.0, wait))
                self.wfile.write(chunk)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/archive.zip", sent
    finally:
        server.shutdown()
        server.server_close()
        blob.close()


def archive(folder: Path, height: int, width: int) -> Path:
    """The demo dataset with full-size films, zipped as Kaggle zips it (films stored, CSVs deflated)."""
    src = folder / "src"
    demo.generate(src)
    films = sorted(src.rglob("*.jpg"))
    rng = np.random.default_rng(0)
    grain = np.rint(rng.normal(0, common.GRAIN, (height, width))).astype(np.int16)
    for path in films:
        path.write_bytes(images.encode_jpeg(common.film(height, width, rng, grain)))
    out = folder / "archive.zip"
    with zipfile.ZipFile(out, "w") as z:
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            z.write(f, f.relative_to(src).as_posix(), zipfile.ZIP_STORED if f.suffix == ".jpg" else zipfile.ZIP_DEFLATED)
    return out


# the previous loop --------------------------------------------------------------------------

def previous_stream(url_source, folder: Path, resize: int, workers: int):
    archive_ = zipfile.ZipFile(download.RangeFile(url_source))
    with archive_:
        members = sorted((m for m in archive_.infolist() if not m.is_dir()), key=lambda m: m.header_offset)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as scratch:
            films = []
            for k, member in enumerate(members):
                dst = folder / member.filename
                if dst.suffix.lower() in images.JPEG_SUFFIXES:
                    films.append((download._extract(archive_, member, Path(scratch) / f"{k}{dst.suffix}"), dst))
                    if len(films) == download.FILMS_A_ROUND:
                        _store(films, resize, workers)
                else:
                    download._extract(archive_, member, dst)
            _store(films, resize, workers)


def _store(films: list, resize: int, workers: int):
    jobs = [(str(src), str(dst)) for src, dst in films]
    images.store_all(jobs, resize, workers, desc=None)
    for src, _ in films:
        src.unlink(missing_ok=True)
    films.clear()


# the measurements ---------------------------------------------------------------------------

def timed(run) -> float:
    start = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        run()
    return time.perf_counter() - start


def served(path, rate):
    @contextmanager
    def server():
        with range_server(path, rate) as (url, sent), \
                mock.patch.object(download, "archive_url", lambda api, kind, name: url):
            yield sent
    return server


def overlap(server, folder, workers):
    out = {}
    for name, stream in (("kit", download.stream), ("previous", previous_stream)):
        target = folder / f"overlap-{name}"
        target.mkdir()
        with server() as sent:
            out[name] = timed(lambda: stream(lambda: download.archive_url(None, None, None), target, 512, workers))
            out[name + "_mb"] = sent[0] / 1e6
        shutil.rmtree(target)
    return out


def kit_run(folder, *args):
    argv = ["--task", "competition", "--download", "--data-dir", str(folder / "data"), "--work-dir",
            str(folder / "work"), "--dataset-dir", str(folder / "stored"), *args]
    for stage in ("metadata", "separate", "split")[:3 if "--smoke" not in args else 2]:
        assert cli.main([*argv, "--stage", stage]) == 0, stage


def smoke_fetch(server, folder, workers):
    out = {}
    for name in ("kit", "previous"):
        run = folder / f"smoke-{name}"
        with server() as sent:
            def both():
                if name == "previous":  # the whole archive first, as --smoke --download did
                    (run / "data").mkdir(parents=True)
                    download.stream(lambda: download.archive_url(None, None, None), run / "data", 512, workers)
                    (run / "data" / download.MARKER).write_text('{"complete": true, "slice": false}')
                kit_run(run, "--smoke", "--workers", str(workers))
            out[name] = timed(both)
            out[name + "_mb"] = sent[0] / 1e6
        shutil.rmtree(run)
    return out


def reconnect(server, folder, workers):
    out = {}
    for name, shards in (("kit", "on"), ("previous", "off")):
        run = folder / f"reconnect-{name}"
        args = ("--keep-shards", shards, "--workers", str(workers))
        with server():
            timed(lambda: kit_run(run, *args))
        shutil.rmtree(run / "data")  # a new machine: the local disk wiped, the work dir kept
        shutil.rmtree(run / "stored")
        with server() as sent:
            out[name] = timed(lambda: kit_run(run, *args))
            out[name + "_mb"] = sent[0] / 1e6
        out[name + "_shards_mb"] = sum(p.stat().st_size for p in (run / "work").rglob("*.tar")) / 1e6
        shutil.rmtree(run)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=40, help="the server's rate in MB/s")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--round", type=int, default=64, help="films a round (the kit's: 256)")
    p.add_argument("--smoke-images", type=int, default=40, help="a smoke slice's images (the kit's: 400 of "
                                                                "Grand X-Ray Slam's 107,000)")
    p.add_argument("--size", default="2500x2000", help="films' height x width")
    args = p.parse_args(argv)
    height, width = map(int, args.size.split("x"))
    mach = common.machine(gpus=False)
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(smoke, "IMAGES", args.smoke_images), \
            mock.patch.multiple(download, FILMS_A_ROUND=args.round, kaggle_api=lambda action: None):
        tmp = Path(tmp)
        path = archive(tmp, height, width)
        server = served(path, args.rate * 1e6)
        figures = {"archive_mb": path.stat().st_size / 1e6, "rate_mb_s": args.rate, "workers": args.workers,
                   "round": args.round, "overlap": overlap(server, tmp, args.workers),
                   "smoke": smoke_fetch(server, tmp, args.workers), "reconnect": reconnect(server, tmp, args.workers)}
    rows = [dict(what=k, kit=v["kit"], previous=v["previous"], ratio=v["previous"] / v["kit"],
                 kit_mb=v["kit_mb"], previous_mb=v["previous_mb"]) for k, v in figures.items() if isinstance(v, dict)]
    common.print_table(f"--download, {figures['archive_mb']:.0f} MB archive at {args.rate:g} MB/s, "
                       f"{args.workers} workers ({common.describe(mach)})", rows,
                       [("what", "measured"), ("kit", "kit s"), ("previous", "previous s"), ("ratio", "ratio"),
                        ("kit_mb", "kit MB fetched"), ("previous_mb", "previous MB fetched")])
    common.emit("download", common.round_floats(figures), mach)


if __name__ == "__main__":
    main()
