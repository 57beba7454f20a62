"""NIH ChestX-ray14 (Kaggle dataset nih-chest-xrays/data).

Data_Entry_2017.csv has pipe-separated `Finding Labels` over 14 findings and No Finding
(on Kaggle also an empty trailing column); the PNGs are spread over images_001/images/ ...
images_012/images/; train_val_list.txt and test_list.txt give the official split.
"""
import os
from pathlib import Path

from kit.data.sources.common import paths_under, read_csv_checked

NAME = "nih"
MARKERS = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
SIGNATURE = "Finding Labels"
FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
            "Fibrosis", "Hernia", "Infiltration", "Mass", "No Finding", "Nodule",
            "Pleural_Thickening", "Pneumonia", "Pneumothorax")
REQUIRED = ("Image Index", "Finding Labels", "Patient ID", "View Position")
DEFAULT_CLASSES = ("Pneumothorax", "Cardiomegaly", "Effusion", "Infiltration", "Atelectasis")
OPTIONS = ()  # the settings `load` takes
COMPANIONS = ("test_list.txt",)  # read beside the CSV when there: the official test list


def _image_index(root: Path) -> dict:
    """Image file name -> path, wherever under the dataset folder the PNG lies (strings: 112k
    Path objects cost seconds)."""
    return {name: os.path.join(folder, name)
            for folder, _, names in os.walk(root) for name in names if name.endswith(".png")}


def _official_split(root: Path, image_ids):
    test_list = root / "test_list.txt"
    if not test_list.exists():
        return None
    test = set(test_list.read_text().split())
    return ["test" if i in test else "train" for i in image_ids]


def load(csv_path: Path):
    df = read_csv_checked(csv_path, REQUIRED, dtype={"Image Index": str, "Patient ID": str})
    root = csv_path.parent
    index = _image_index(root)
    labels = df["Finding Labels"].fillna("No Finding").str.replace(r"\s*\|\s*", "|", regex=True).str.strip()
    onehot = labels.str.get_dummies(sep="|")
    unknown = sorted(set(onehot.columns) - set(FINDINGS))
    table = onehot.reindex(columns=list(FINDINGS), fill_value=0)
    if unknown:
        print(f"[metadata] warning: ignoring labels not in ChestX-ray14's list: {', '.join(unknown)}")
    ids = df["Image Index"]
    table.insert(0, "image_id", ids)
    table.insert(1, "path", ids.map(index).fillna(paths_under(root / "images", ids)))
    table.insert(2, "patient_id", df["Patient ID"])
    table.insert(3, "view", df["View Position"])
    official = _official_split(root, ids)
    if official is not None:
        table["official_split"] = official
    return table
