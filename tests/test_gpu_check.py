"""The GPU check's arithmetic: the table of GPUs, the T4 x2 estimate and the rows that carry it.
(The check itself needs a GPU; `bash bench/gpu_check.sh --cpu-smoke` runs its code on a CPU.)"""
from datetime import datetime, timezone

import pytest

from bench import gpu_check, gpus


@pytest.mark.parametrize("name, pattern", [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200"), ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB"),
    ("NVIDIA A100-PCIE-40GB", "A100"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40S"), ("Tesla T4", "T4"),
])
def test_a_device_name_finds_its_own_row_not_the_name_it_extends(name, pattern):
    assert gpus.lookup(name) is dict(gpus.GPUS)[pattern]


def test_a_card_outside_the_table_has_no_row():
    assert gpus.lookup("CPU AMD EPYC") is None


def test_every_card_with_bf16_runs_fp16_at_the_same_tensor_rate():
    for _, gpu in gpus.GPUS:
        assert "fp16" in gpu.tflops and gpu.bandwidth_gbs > 0
        if "bf16" in gpu.tflops:
            assert gpu.tflops["bf16"] == gpu.tflops["fp16"]


def test_the_estimate_scales_by_the_larger_ratio_for_its_slow_bound_and_the_smaller_for_its_fast():
    # a card 10x the T4's fp16 TFLOPS and 4x its bandwidth, measured at 500 training and
    # 1,200 forward images/s; two T4s at 90% of linear for training, linear for predict
    est = gpus.t4_estimate(500, 1200, compute_ratio=10, bandwidth_ratio=4, gpus=2, scaling=0.9)
    slow, fast = est["slow"], est["fast"]
    assert slow["train_img_s"] == pytest.approx(2 * 0.9 * 500 / 10)  # 90 img/s
    assert fast["train_img_s"] == pytest.approx(2 * 0.9 * 500 / 4)  # 225 img/s
    seconds = gpus.SESSION_HOURS * 3600
    assert slow["epochs_per_session"] == pytest.approx(90 * seconds / 107_374)
    assert fast["epochs_per_session"] == pytest.approx(225 * seconds / 107_374)
    assert slow["predict_min"] == pytest.approx(46_233 / (2 * 1200 / 10) / 60)
    assert fast["predict_min"] == pytest.approx(46_233 / (2 * 1200 / 4) / 60)


def test_the_t4_measured_against_itself_gives_its_own_rate_times_its_gpus():
    ratios = gpus.ratios_to_t4(gpus.T4)
    assert ratios == (1.0, 1.0)
    est = gpus.t4_estimate(30, 90, *ratios, gpus=2, scaling=1.0)
    assert est["slow"] == est["fast"]
    assert est["slow"]["train_img_s"] == 60
    # 60 img/s for 12 h over 107,374 films; 46,233 films at 180 img/s
    assert est["slow"]["epochs_per_session"] == pytest.approx(60 * 43_200 / 107_374)
    assert est["slow"]["predict_min"] == pytest.approx(46_233 / 180 / 60)


def test_the_h100s_ratios_to_the_t4_come_from_the_datasheets():
    compute, bandwidth = gpus.ratios_to_t4(gpus.lookup("NVIDIA H100 80GB HBM3"))
    assert compute == pytest.approx(989 / 65) and bandwidth == pytest.approx(3350 / 320)


def _rows(arch, fp16_train, fp16_forward):
    modes = {m.name: m for m in gpu_check.MODES}
    fp16 = modes["fp16 eager, T4 attention"]
    return ([{"what": f"train {arch}", "model": arch, "mode": modes["bf16 eager"], "value": 9 * fp16_train},
             {"what": f"train {arch}", "model": arch, "mode": fp16, "value": fp16_train}],
            [{"what": f"model alone {arch}", "model": arch, "value": 9 * fp16_forward},
             {"what": f"model alone {arch}", "model": arch, "value": fp16_forward, "t4_forward": True}])


def test_the_check_estimates_each_model_from_its_fp16_rows_with_the_cards_ratios():
    train_a, forward_a = _rows("a", 200, 600)
    train_b, forward_b = _rows("b", 100, 300)
    rows = gpu_check.t4_rows("NVIDIA H100 PCIe", train_a + train_b, forward_a + forward_b)
    compute, bandwidth = gpus.ratios_to_t4(gpus.lookup("NVIDIA H100 PCIe"))
    for arch, train, forward in (("a", 200, 600), ("b", 100, 300)):
        mine = [r for r in rows if r["what"].startswith(f"T4 x2 estimate {arch},")]
        expected = gpus.t4_estimate(train, forward, compute, bandwidth)["slow"]
        assert [r["value"] for r in mine] == [expected["train_img_s"], expected["epochs_per_session"],
                                              expected["predict_min"]]
        assert [r["unit"] for r in mine] == ["img/s", "epochs", "min"]


def test_the_check_says_why_there_is_no_estimate():
    train, forward = _rows("a", 200, 600)
    (row,) = gpu_check.t4_rows("CPU AMD EPYC", train, forward)
    assert "not in bench/gpus.py's table" in row["note"] and "value" not in row
    (row,) = gpu_check.t4_rows("NVIDIA L4", train[:1], forward)
    assert "no fp16 row" in row["note"]


def test_results_are_named_with_the_card_and_the_time(tmp_path):
    path = gpu_check.result_path(tmp_path, "NVIDIA H100 80GB HBM3", datetime(2026, 12, 7, 1, 30, tzinfo=timezone.utc))
    assert path == tmp_path / "NVIDIA-H100-80GB-HBM3_2026-12-07T0130Z.txt"
