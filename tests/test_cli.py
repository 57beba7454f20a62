import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from fake_data import gxs_dataset
from kit import cli, layout
from kit.config import Config

CLASSES = ["Pneumothorax", "Cardiomegaly", "Lung Opacity", "Pleural Effusion", "Support Devices"]


def dataset(root, n=40):
    rows = [(f"{k}.jpg", f"P{k}", "PA", [CLASSES[k % 5]]) for k in range(n)]
    return gxs_dataset(root, rows)


def fails(capsys, argv, pattern):
    """run.py fails with exit 2 and exactly one line on stderr matching `pattern`."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(pattern, err[0]), err[0]


def test_help_names_every_setting_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for field in Config.__dataclass_fields__:
        assert "--" + field.replace("_", "-") in out
    assert "(default: 0.15)" in out and "(default: 512)" in out
    assert "(default: )" not in out and "(default: ())" not in out  # nothing to show: nothing shown
    assert "./work elsewhere)\n" in out  # a help that names its default gets no second one


def test_bad_inputs_are_one_line_errors_with_a_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    work = ["--work-dir", str(tmp_path / "w")]
    fails(capsys, ["--stage", "metadata", *work], r"no dataset found .*data.*--data-dir")
    dataset(tmp_path / "d")
    data = ["--data-dir", str(tmp_path / "d"), *work, "--stage", "metadata"]
    fails(capsys, [*data, "--classes", "Cardiomegaly,Pneumonitis"], r"'Pneumonitis' not in this dataset; available: ")
    fails(capsys, [*data, "--classes", "Cardiomegaly"], r"at least 2 target classes")
    fails(capsys, [*data, "--views", "LL"], r"no image has view \['LL'\]")
    (tmp_path / "file").write_text("")
    fails(capsys, [*data[:2], "--work-dir", str(tmp_path / "file" / "w")], r"is not writable.*--work-dir")
    fails(capsys, ["--stage", "split", *work], r"manifest.csv not found: run --stage separate first")
    csv_path = tmp_path / "d" / "train1.csv"
    pd.read_csv(csv_path).drop(columns="ViewPosition").to_csv(csv_path, index=False)
    fails(capsys, data, r"train1.csv lacks column\(s\) 'ViewPosition'; columns found: Image_name")
    assert not (tmp_path / "w" / "filtered.csv").exists()


def out_and_in(wanted: str, kind) -> tuple:
    """(values just outside the range that `wanted` states, values on its edges), read from the
    words the error shows."""
    step = 1 if kind is int else 0.5
    if m := re.fullmatch(r"at least (\S+)", wanted):
        low = kind(m[1])
        return [low - step], [low]
    if m := re.fullmatch(r"above (\S+)", wanted):
        low = kind(m[1])
        return [low, low - step], [low + step]
    if m := re.fullmatch(r"((?:\S+, )*\S+) or (\S+)", wanted):  # one of a few values
        allowed = [kind(v) for v in m[1].split(", ")] + [kind(m[2])]
        return [allowed[0] - step, allowed[-1] + step], allowed
    m = re.fullmatch(r"from (\S+) to (\S+)", wanted)
    low, high = kind(m[1]), kind(m[2])
    return [low - step, high + step], [low, high]


CHECKED = [f for f in dataclasses.fields(Config) if f.metadata["check"]]


@pytest.mark.parametrize("field", CHECKED, ids=[f.name for f in CHECKED])
def test_numbers_out_of_range_are_refused_in_one_line(capsys, field):
    flag, kind, wanted = "--" + field.name.replace("_", "-"), field.type, field.metadata["check"][1]
    assert kind in (int, float)
    outside, edges = out_and_in(wanted, kind)
    for value in outside:
        with pytest.raises(SystemExit) as done:
            cli.main([flag, str(value)])
        err = capsys.readouterr().err.strip().splitlines()
        assert done.value.code == 2 and len(err) == 1, err
        assert err[0] == f"error: argument {flag}: {value} is out of range (it must be {wanted}); " \
                         f"run.py --help lists every flag"
    for value in edges:
        assert getattr(cli.parse_config([flag, str(value)]), field.name) == value


def test_every_default_is_in_its_range():
    checked = [f for f in dataclasses.fields(Config) if f.metadata["check"]]
    assert len(checked) > 15 and all(f.metadata["check"][0](f.default) for f in checked)


def test_a_class_too_rare_for_three_splits(tmp_path, capsys):
    rows = [(f"{k}.jpg", f"P{k}", "PA", [CLASSES[k % 4]]) for k in range(40)]
    rows += [("r1.jpg", "R1", "PA", ["Support Devices"]), ("r2.jpg", "R1", "PA", ["Support Devices"])]
    gxs_dataset(tmp_path / "d", rows)
    argv = ["--data-dir", str(tmp_path / "d"), "--work-dir", str(tmp_path / "w"), "--stage"]
    for stage in ("metadata", "separate"):
        assert cli.main(argv + [stage]) == 0
    fails(capsys, argv + ["split"], r"class 'Support Devices' has 1 patient\(s\): too few to put one in each of 3")


def test_a_file_where_a_folder_belongs_and_the_reverse_are_named(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    work = ["--work-dir", str(tmp_path / "w")]
    fails(capsys, ["--data-dir", str(tmp_path / "file"), *work, "--stage", "metadata"],
          r"--data-dir .*file is a file; pass the folder holding the dataset")
    fails(capsys, ["--work-dir", str(tmp_path / "file"), "--stage", "metadata"], r"work dir .*file is a file")
    fails(capsys, ["--weights", str(tmp_path), *work, "--stage", "evaluate"], r"--weights .* is a folder; pass a")
    torch.save({"model": {}, "ema": {}, "optimizer": {}}, tmp_path / "last.pth")
    fails(capsys, ["--weights", str(tmp_path / "last.pth"), *work, "--stage", "predict", "--predict-dir",
                   str(tmp_path)], r"last.pth is a training state, not weights; point --weights at the soup")
    pd.DataFrame({"file": ["a.jpg"], "A": [1], "B": [0]}).to_csv(tmp_path / "m.csv", index=False)
    fails(capsys, ["--csv", str(tmp_path / "m.csv"), "--label-cols", "A,B", *work, "--stage", "metadata"],
          r"m.csv lacks column\(s\) 'image' \(--image-col\); columns found: file, A, B")
    fails(capsys, ["--resume", str(tmp_path / "nowhere"), *work, "--stage", "train"],
          r"--resume .*nowhere does not exist")


FULL_DEVICE, REFUSING = Path("/dev/full"), Path("/sys/fs")  # sysfs refuses new files even to root


def refuses_writes(folder) -> bool:
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except PermissionError:
        return True
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return False


@pytest.mark.skipif(not FULL_DEVICE.exists(), reason="no /dev/full on this system")
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    real_to_csv = pd.DataFrame.to_csv

    def onto_full_device(self, path=None, *args, **kwargs):  # the metadata table's bytes go to /dev/full
        if Path(str(path)).name.startswith(".filtered.csv."):
            path = FULL_DEVICE
        return real_to_csv(self, path, *args, **kwargs)
    monkeypatch.setattr(pd.DataFrame, "to_csv", onto_full_device)
    dataset(tmp_path / "d")
    fails(capsys, ["--data-dir", str(tmp_path / "d"), "--work-dir", str(tmp_path / "w"), "--stage", "metadata"],
          rf"^error: No space left on device: {re.escape(str(tmp_path / 'w' / 'filtered.csv'))}; check that "
          rf"path's permissions and the free disk space, then rerun")
    assert not list((tmp_path / "w").glob("*filtered.csv*"))


@pytest.mark.skipif(not refuses_writes(REFUSING), reason=f"{REFUSING} takes new files here")
def test_a_forbidden_path_is_one_line_naming_it(tmp_path, capsys):
    argv = ["--data-dir", str(tmp_path / "d"), "--work-dir", str(tmp_path / "w"), "--stage"]
    dataset(tmp_path / "d")
    fails(capsys, [*argv[:2], "--work-dir", str(REFUSING / "xray-kit"), "--stage", "metadata"],
          rf"^error: work dir {REFUSING / 'xray-kit'} is not writable \(.+\); pass a writable folder with --work-dir")
    for stage in ("metadata", "separate"):
        assert cli.main(argv + [stage]) == 0
    (tmp_path / "w" / "splits").symlink_to(REFUSING)  # a folder of the work dir the machine refuses
    # named by the temporary file the write begins with, in the refused folder
    fails(capsys, argv + ["split"], rf"^error: Permission denied: {re.escape(str(tmp_path / 'w' / 'splits'))}/"
                                    rf"\.train\.csv\.\S+; check that path's permissions")


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--stage", "metadata", "--debug", "--work-dir", str(tmp_path / "w")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_resolved_config_and_skip_on_rerun(tmp_path, capsys):
    dataset(tmp_path / "d")
    argv = ["--data-dir", str(tmp_path / "d"), "--work-dir", str(tmp_path / "w"), "--workers", "1"]
    for stage in ("metadata", "separate", "split"):
        assert cli.main(argv + ["--stage", stage]) == 0
    saved = json.loads((tmp_path / "w" / "run_config.json").read_text())
    assert saved["workers"] == 1 and saved["lr"] == 3e-4 and saved["stage"] == "split"
    capsys.readouterr()
    for stage in ("metadata", "separate", "split"):
        assert cli.main(argv + ["--stage", stage]) == 0
        assert f"[{stage}] up to date, skipped" in capsys.readouterr().out
    assert cli.main(argv + ["--stage", "split", "--seed", "3"]) == 0
    assert "up to date" not in capsys.readouterr().out
    assert cli.main(argv + ["--stage", "metadata", "--force"]) == 0
    assert "up to date" not in capsys.readouterr().out


def test_a_named_sample_submission_asking_for_other_classes_stops_the_run_before_training(tmp_path, capsys):
    """Found by itself, such a sample only skips predict (test_competition); named, it is an error."""
    root = dataset(tmp_path / "d").parent
    (root / "test1").mkdir()
    pd.DataFrame({"Image_name": ["t.jpg"], "No Finding": [0.5], **{c: [0.5] for c in CLASSES}}).to_csv(
        root / "sample_submission_1.csv", index=False)
    argv = ["--data-dir", str(root), "--work-dir", str(tmp_path / "w"), "--stage", "all",
            "--predict-csv", str(root / "sample_submission_1.csv")]
    fails(capsys, argv, r"the submission asks for classes .*unknown: No Finding\); train on what the "
                        r"competition scores with --task competition")
    assert (tmp_path / "w" / "filtered.csv").exists() and not (tmp_path / "w" / "dataset").exists()


def test_a_real_process_exits_2_without_traceback(tmp_path, kit_cli):
    result = kit_cli("--stage", "metadata", "--work-dir", tmp_path / "w", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no dataset found") and "Traceback" not in result.stderr


def test_a_run_clears_the_temporary_files_a_killed_run_left(tmp_path):
    root = dataset(tmp_path / "d").parent
    left = [tmp_path / "w" / ".filtered.csv.k1.tmp", tmp_path / "w" / "reports" / ".roc_curves.png.k2.tmp"]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        os.utime(path, (0, 0))  # written by an earlier process
    assert cli.main(["--data-dir", str(root), "--work-dir", str(tmp_path / "w"), "--stage", "metadata"]) == 0
    assert not any(p.exists() for p in left)


@pytest.mark.parametrize("flag, value, pattern", [
    ("--keep-epochs", "x", r"--keep-epochs 'x': pass a positive whole number, auto or all"),
    ("--batch-size", "0", r"--batch-size '0': pass a positive whole number or auto"),
    ("--soup-epochs", "last0", r"--soup-epochs last0: average at least one epoch"),
    ("--time-limit", "soon", r"--time-limit 'soon': pass a duration"),
    ("--aug", "none --tta", r"--tta averages views that training made, and --aug none with no --hflip made none"),
])
def test_a_malformed_setting_stops_the_run_before_its_first_stage(tmp_path, capsys, flag, value, pattern):
    root = dataset(tmp_path / "d").parent
    work = tmp_path / "w"
    fails(capsys, ["--data-dir", str(root), "--work-dir", str(work), flag, *value.split()], pattern)
    assert not layout.filtered_csv(work).exists()
