from pathlib import Path

import pandas as pd
import pytest

from fake_data import chexpert_dataset, gxs_dataset, jpeg, nih_dataset
from kit.data import sources, studies
from kit.data.sources import chexpert, gxs, nih
from kit.errors import KitError


def read(path, cfg):
    adapter, csv_path = sources.locate(cfg.dataset, cfg.csv, cfg.data_dir, [])
    return sources.read(adapter, csv_path, **{k: getattr(cfg, k) for k in adapter.OPTIONS})


def test_gxs_table(tmp_path, cfg):
    gxs_dataset(tmp_path, [("a.jpg", "P1", "PA", ["Cardiomegaly"]),
                           ("b.jpg", "P1", "Lateral", ["Pneumothorax", "Support Devices"]),
                           ("c.jpg", "P2", "AP", ["No Finding"])])
    t = read(tmp_path, cfg(data_dir=str(tmp_path)))
    assert list(t.columns[:4]) == ["image_id", "path", "patient_id", "view"]
    assert sources.finding_columns(t) == list(gxs.FINDINGS)
    assert t["view"].tolist() == ["PA", "LATERAL", "AP"]
    assert t["patient_id"].tolist() == ["P1", "P1", "P2"]
    assert t["study_id"].tolist() == ["s", "s", "s"]  # the Study column, read as written
    assert all(Path(p).is_file() for p in t["path"])
    assert t.loc[1, ["Pneumothorax", "Support Devices", "Cardiomegaly"]].tolist() == [1, 1, 0]


def test_gxs_blank_view_and_study_are_empty_on_every_pandas(tmp_path, cfg):
    csv = gxs_dataset(tmp_path, [("a.jpg", "P1", "PA", []), ("b.jpg", "P1", "AP", []), ("c.jpg", "P2", "AP", [])])
    df = pd.read_csv(csv, dtype=str)
    df.loc[0, "ViewPosition"] = df.loc[[0, 1], "Study"] = None
    df.to_csv(csv, index=False)
    t = read(tmp_path, cfg(data_dir=str(tmp_path)))
    assert t["view"].tolist() == ["", "AP", "AP"] and t["study_id"].tolist() == ["", "", "s"]
    keys = studies.table_keys(t.assign(study_id=[None, None, "s"]))  # as a split reads back
    assert keys.tolist() == ["film:a.jpg", "film:b.jpg", "study:P2/s"]  # no study: each film its own


@pytest.mark.parametrize("value", ["yes", "2", "-1"])
def test_gxs_labels_other_than_0_1_are_refused_not_dropped(tmp_path, cfg, value):
    csv_path = gxs_dataset(tmp_path, [("a.jpg", "P1", "PA", ["Cardiomegaly"]), ("b.jpg", "P2", "PA", ["Edema"])])
    df = pd.read_csv(csv_path, dtype=str)
    df.loc[1, "Cardiomegaly"] = value
    df.to_csv(csv_path, index=False)
    with pytest.raises(KitError, match=rf"label column\(s\) 'Cardiomegaly' hold values other than 0/1 "
                                       rf"\(in 'Cardiomegaly': {value}\); labels must be 1, 0 or empty$"):
        read(tmp_path, cfg(data_dir=str(tmp_path)))


def test_a_csv_saved_with_a_byte_order_mark_is_found_and_read(tmp_path, cfg):
    csv_path = gxs_dataset(tmp_path, [("a.jpg", "P1", "PA", ["Cardiomegaly"])])
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())  # as Excel saves "CSV UTF-8"
    assert read(tmp_path, cfg(data_dir=str(tmp_path)))["image_id"].tolist() == ["a.jpg"]


@pytest.mark.parametrize("content", ["", "image,patient\na.jpg,P1\n"])
def test_the_named_dataset_with_a_broken_header_is_named_not_reported_missing(tmp_path, cfg, content):
    (tmp_path / "train1.csv").write_text(content)
    with pytest.raises(KitError, match=r"train1.csv has no 'Image_name' column in its first line .*--dataset gxs"):
        read(tmp_path, cfg(data_dir=str(tmp_path), dataset="gxs"))


def test_gxs_missing_column_is_named(tmp_path, cfg):
    csv_path = gxs_dataset(tmp_path, [("a.jpg", "P1", "PA", ["Cardiomegaly"])])
    pd.read_csv(csv_path).drop(columns="Patient_ID").to_csv(csv_path, index=False)
    with pytest.raises(KitError, match="lacks column.*'Patient_ID'.*columns found: Image_name"):
        read(tmp_path, cfg(data_dir=str(tmp_path)))


def test_nih_pipes_trailing_column_nested_folders_rgba(tmp_path, cfg):
    nih_dataset(tmp_path, [("1_000.png", "1", "PA", "Cardiomegaly|Effusion", 1, False),
                           ("1_001.png", "1", "AP", "No Finding", 2, True),
                           ("2_000.png", "2", "PA", "Pleural_Thickening", 12, False)])
    (tmp_path / "test_list.txt").write_text("2_000.png\n")
    t = read(tmp_path, cfg(data_dir=str(tmp_path)))
    findings = sources.finding_columns(t)
    assert findings == list(nih.FINDINGS)
    assert not any(c.startswith("Unnamed") for c in t.columns)
    expected = pd.Series(["Cardiomegaly|Effusion", "No Finding", "Pleural_Thickening"]).str.get_dummies("|")
    for col in expected:
        assert t[col].tolist() == expected[col].tolist()
    assert t[findings].to_numpy().sum() == 4
    assert t["official_split"].tolist() == ["train", "train", "test"]
    assert [Path(p).parent.parent.name for p in t["path"]] == ["images_001", "images_002", "images_012"]


def test_chexpert_uncertain_empty_and_patient_from_path(tmp_path, cfg):
    rows = [(1, 1, "frontal", "AP", {"Cardiomegaly": 1, "Pneumothorax": -1}),
            (1, 2, "lateral", "", {"Cardiomegaly": 1}),
            (2, 1, "frontal", "PA", {"Lung Opacity": None, "Edema": -1}),
            (3, 1, "frontal", "PA", {"Pleural Effusion": 1.0})]
    chexpert_dataset(tmp_path, rows, valid_rows=[(9, 1, "frontal", "AP", {"Support Devices": 1})])
    zero = read(tmp_path, cfg(data_dir=str(tmp_path)))
    assert zero["patient_id"].tolist() == ["patient00001", "patient00001", "patient00002",
                                           "patient00003", "patient00009"]
    assert zero["view"].tolist() == ["AP", "LATERAL", "PA", "PA", "AP"]
    assert zero["study_id"].tolist() == ["study1", "study2", "study1", "study1", "study1"]
    assert zero["Pneumothorax"].tolist() == [0, 0, 0, 0, 0]
    assert zero["Lung Opacity"].tolist() == [0] * 5
    assert all(Path(p).is_file() for p in zero["path"])
    one = read(tmp_path, cfg(data_dir=str(tmp_path), uncertain="one"))
    assert one["Pneumothorax"].tolist() == [1, 0, 0, 0, 0]
    assert one["Edema"].tolist() == [0, 0, 1, 0, 0]
    dropped = read(tmp_path, cfg(data_dir=str(tmp_path), uncertain="drop"))
    # only an uncertain *target* drops the image: Pneumothorax is one, Edema is not
    assert dropped["patient_id"].tolist() == ["patient00001", "patient00002", "patient00003", "patient00009"]


def test_csv_with_label_columns_and_with_a_labels_column(tmp_path, cfg):
    for i in range(3):
        jpeg(tmp_path / "img" / f"{i}.jpg")
    pd.DataFrame({"file": [f"img/{i}.jpg" for i in range(3)], "pid": ["a", "a", "b"],
                  "A": [1, 0, 0], "B": [0, 1, 1], "tags": ["A", "B | A", ""]}).to_csv(tmp_path / "m.csv", index=False)
    by_cols = read(tmp_path, cfg(csv=str(tmp_path / "m.csv"), image_col="file", patient_col="pid", label_cols="A,B"))
    assert by_cols[["A", "B"]].to_numpy().tolist() == [[1, 0], [0, 1], [0, 1]]
    assert by_cols["patient_id"].tolist() == ["a", "a", "b"]
    assert all(Path(p).is_file() for p in by_cols["path"])
    by_names = read(tmp_path, cfg(csv=str(tmp_path / "m.csv"), image_col="file", labels_col="tags"))
    assert by_names[["A", "B"]].to_numpy().tolist() == [[1, 0], [1, 1], [0, 0]]
    pd.read_csv(tmp_path / "m.csv").assign(tags=["A", "B | a", "b"]).to_csv(tmp_path / "m.csv", index=False)
    folded = read(tmp_path, cfg(csv=str(tmp_path / "m.csv"), image_col="file", labels_col="tags"))
    assert folded[["A", "B"]].to_numpy().tolist() == [[1, 0], [1, 1], [0, 1]]  # one finding however written
    assert (by_names["patient_id"] == "").all()
    with pytest.raises(KitError, match="values other than 0/1"):
        read(tmp_path, cfg(csv=str(tmp_path / "m.csv"), image_col="file", label_cols="tags"))


def test_paths_under_a_root_match_pathlib_and_keep_absolute_names(tmp_path):
    names = pd.Series(["a.jpg", "sub/b.png", str(tmp_path / "elsewhere" / "c.jpg"), "d e.jpg"])
    got = sources.common.paths_under(tmp_path / "root", names)
    assert got.tolist() == [str(tmp_path / "root" / n) for n in names]  # pathlib: an absolute name wins


@pytest.mark.parametrize("requested,expected", [
    ("pleural_thickening, EFFUSION", ["Pleural_Thickening", "Effusion"]),
    ("all", [f for f in nih.FINDINGS if f != "No Finding"]),
    ("", list(nih.DEFAULT_CLASSES)),
])
def test_class_names_fold_case_and_underscores(requested, expected):
    assert sources.resolve_classes(requested, list(nih.FINDINGS), nih.DEFAULT_CLASSES) == expected


def test_unknown_and_too_few_classes_are_clear_errors():
    with pytest.raises(KitError, match="'Pneumonitis' not in this dataset; available: Atelectasis"):
        sources.resolve_classes("Cardiomegaly,Pneumonitis", list(nih.FINDINGS), ())
    with pytest.raises(KitError, match="at least 2 target classes"):
        sources.resolve_classes("Cardiomegaly", list(nih.FINDINGS), ())


@pytest.mark.parametrize("where", ["grand-xray-slam-division-a",
                                   "competitions/grand-xray-slam-division-a",
                                   "datasets/someone/nih-chest-xrays"])
def test_discovery_in_kaggle_input_layouts(tmp_path, where):
    root = tmp_path / "input"
    if "nih" in where:
        nih_dataset(root / where / "data", [("1_000.png", "1", "PA", "Effusion", 1, False)])
        expected = nih
    else:
        gxs_dataset(root / where, [("a.jpg", "P1", "PA", ["Cardiomegaly"])], images=False)
        expected = gxs
    pd.DataFrame({"Path": [], "x": []}).to_csv(tmp_path / "input" / "train.csv", index=False)
    adapter, path = sources.discover([root], "auto")
    assert adapter is expected and path.is_file()


def test_chexpert_is_told_apart_from_any_train_csv(tmp_path):
    pd.DataFrame({"id": [1]}).to_csv(tmp_path / "train.csv", index=False)
    assert sources.discover([tmp_path], "auto") == (None, None)
    chexpert_dataset(tmp_path / "cx", [(1, 1, "frontal", "AP", {"Cardiomegaly": 1})])
    assert sources.discover([tmp_path], "auto")[0] is chexpert


def test_nothing_found_says_where_it_looked(tmp_path, cfg):
    with pytest.raises(KitError, match=f"no dataset found .*under {tmp_path}.*--data-dir"):
        sources.locate("auto", "", str(tmp_path), [])
    with pytest.raises(KitError, match="--dataset csv needs --csv"):
        sources.locate("csv", "", "", [])



def test_repeated_image_ids_keep_their_first_row(tmp_path, cfg, capsys):
    gxs_dataset(tmp_path, [("a.jpg", "P1", "PA", ["Cardiomegaly"]), ("a.jpg", "P1", "PA", ["Pneumothorax"]),
                           ("b.jpg", "P2", "PA", ["Pneumothorax"])])
    t = read(tmp_path, cfg(data_dir=str(tmp_path)))
    assert t["image_id"].tolist() == ["a.jpg", "b.jpg"] and t["Cardiomegaly"].tolist() == [1, 0]
    assert "1 rows repeat an image id (first: a.jpg)" in capsys.readouterr().out
