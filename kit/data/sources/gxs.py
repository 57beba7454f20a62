"""Grand X-Ray Slam (Kaggle competitions grand-xray-slam-division-a and -b).

train1.csv (division b: train2.csv) holds Image_name, Patient_ID, Study, Sex, Age,
ViewCategory, ViewPosition, then 14 0/1 finding columns; the JPEGs sit in train1/ beside it.
"""
from pathlib import Path

from kit.data.sources.common import STUDY_CLASSES, paths_under, read_csv_checked

NAME = "gxs"
MARKERS = ("train1.csv", "train2.csv")
SIGNATURE = "Image_name"
FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
            "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
            "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices")
REQUIRED = ("Image_name", "Patient_ID", "ViewCategory", "ViewPosition") + FINDINGS
DEFAULT_CLASSES = STUDY_CLASSES
OPTIONS = ()  # the settings `load` takes
COMPANIONS = ()  # files read beside the CSV


def load(csv_path: Path):
    df = read_csv_checked(csv_path, REQUIRED, dtype={"Image_name": str, "Patient_ID": str})
    image_dir = csv_path.parent / csv_path.stem
    table = df[list(FINDINGS)].copy()
    table.insert(0, "image_id", df["Image_name"])
    table.insert(1, "path", paths_under(image_dir, df["Image_name"]))
    table.insert(2, "patient_id", df["Patient_ID"])
    lateral = df["ViewCategory"].astype(str).str.strip().str.lower() == "lateral"
    table.insert(3, "view", df["ViewPosition"].where(~lateral, "LATERAL"))
    if "Study" in df.columns:  # the films of one visit, labelled from its one report; blank: none
        table.insert(4, "study_id", df["Study"])
    return table
