"""Each benchmark's smallest configuration runs through its own code and ends with its JSON
line; the figures themselves are not judged (timings belong to the benches, not to tests)."""
import contextlib
import io
import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT
from bench import bootstrap, generate, loader, predict, scale, separate, train_step

SMALLEST = {
    separate: ["--images", "2", "--height", "300", "--width", "240", "--workers", "1", "--repeats", "1",
               "--resize", "64", "--psnr-images", "2"],
    loader: ["--images", "4", "--workers", "0", "--repeats", "1", "--batch", "2", "--img-size", "28",
             "--resize", "32"],
    train_step: ["--img-size", "28", "--batch-sizes", "2", "--grad-checkpointing", "off", "--updates", "1",
                 "--repeats", "1"],
    predict: ["--images", "2", "--height", "120", "--width", "100", "--img-size", "28", "--batch-sizes", "",
              "--workers", "", "--repeats", "1"],
    bootstrap: ["--images", "300", "--classes", "3", "--resamples", "20", "--repeats", "1"],
    scale: ["--rows", "400", "--test-films", "30", "--repeats", "1"],
    generate: ["--size", "32", "--width", "8", "--batch", "2", "--sample-batch", "2", "--steps", "2",
               "--updates", "1", "--repeats", "1"],
}


@pytest.fixture(scope="module")
def figures():
    """bench -> its JSON line, each bench run once for all the tests of this module."""
    done = {}

    def run(bench):
        if bench not in done:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                bench.main(SMALLEST[bench])
            done[bench] = json.loads(out.getvalue().strip().splitlines()[-1])
        return done[bench]
    return run


def rates(figures) -> list:
    """Every images/s figure of a bench's JSON line."""
    if figures["bench"] in ("separate", "loader", "bootstrap"):
        return [v for side in ("kit", "notebook") for v in figures[side].values()]
    if figures["bench"] == "generate":
        return [r for key, values in figures.items() if key.endswith("img_s") for r in values]
    if figures["bench"] == "scale":  # seconds: the rates' inverses
        return [1 / v for side in ("kit", "baseline") for v in figures[side].values()]
    return [r["images_per_s"] for r in figures["rows"]]


@pytest.mark.parametrize("bench", list(SMALLEST), ids=lambda m: m.__name__)
def test_each_bench_runs_its_smallest_configuration_and_ends_with_its_json_line(bench, figures):
    line = figures(bench)
    assert line["bench"] == bench.__name__.split(".")[-1]
    assert line["machine"]["cpus"] >= 1
    assert rates(line) and all(r > 0 and math.isfinite(r) for r in rates(line))


def test_separate_reports_the_quality_of_both_sides_against_a_careful_resize(figures):
    psnr = figures(separate)["psnr_db"]
    assert psnr["kit"] > 35 and psnr["notebook"] > 30  # a broken resize lands far below 30 dB


def test_scale_times_each_step_on_both_sides_after_checking_they_agree(figures):
    line = figures(scale)
    steps = {"metadata", "separate", "split", "predict"}
    assert set(line["kit"]) == set(line["baseline"]) == set(line["ratio"]) == steps
    assert line["items"]["metadata"] == 400 and line["items"]["predict"] == 30


def test_loader_measures_the_validation_input_too():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        loader.main(SMALLEST[loader] + ["--pipeline", "validation"])
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["pipeline"] == "validation" and all(r > 0 and math.isfinite(r) for r in rates(line))


def test_train_step_marks_the_kits_default_and_compares_it_with_the_best(figures):
    line = figures(train_step)
    assert line["default"]["default"] and line["default"]["batch"] == 32  # --batch-size auto on CPU
    assert {r["batch"] for r in line["rows"]} == {2, 32}
    assert max(r["vs_best"] for r in line["rows"]) == 1.0


def test_a_bench_runs_as_a_script_too():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "separate.py"), "--help"], cwd=ROOT / "bench",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--workers" in done.stdout
