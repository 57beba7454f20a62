"""Grand X-Ray Slam (Kaggle competitions grand-xray-slam-division-a and -b).

train1.csv (division b: train2.csv) holds Image_name, Patient_ID, Study, Sex, Age,
ViewCategory, ViewPosition, then 14 0/1 finding columns; the JPEGs sit in train1/ beside it.
"""
from pathlib import Path

from kit.sources.common import STUDY_CLASSES, read_csv_checked

NAME = "gxs"
MARKERS = ("train1.csv", "train2.csv")
SIGNATURE = "Image_name"
FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
            "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
            "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices")
REQUIRED = ("Image_name", "Patient_ID", "ViewCategory", "ViewPosition") + FINDINGS
DEFAULT_CLASSES = STUDY_CLASSES


def _view(category, position) -> str:
    if str(category).strip().lower() == "lateral":
        return "LATERAL"
    return str(position).strip().upper()


def load(csv_path: Path, cfg):
    df = read_csv_checked(csv_path, REQUIRED, dtype={"Image_name": str, "Patient_ID": str})
    image_dir = csv_path.parent / csv_path.stem
    table = df[list(FINDINGS)].copy()
    table.insert(0, "image_id", df["Image_name"])
    table.insert(1, "path", [str(image_dir / n) for n in df["Image_name"]])
    table.insert(2, "patient_id", df["Patient_ID"])
    table.insert(3, "view", [_view(c, p) for c, p in zip(df["ViewCategory"], df["ViewPosition"])])
    return table
