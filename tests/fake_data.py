"""Small datasets written in each real dataset's on-disk layout, for the tests."""
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from kit.data.sources import chexpert, gxs

GXS_META = ["Image_name", "Patient_ID", "Study", "Sex", "Age", "ViewCategory", "ViewPosition"]


def jpeg(path: Path, h=120, w=100, value=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w), dtype=np.uint8) if value is None else np.full((h, w), value, np.uint8)
    cv2.imwrite(str(path), img)
    return img


def gxs_dataset(root: Path, rows, images=True) -> Path:
    """rows: (name, patient, view position, [findings]). Writes train1.csv and train1/."""
    records = []
    for name, patient, position, findings in rows:
        rec = {"Image_name": name, "Patient_ID": patient, "Study": "s", "Sex": "F", "Age": 50,
               "ViewCategory": "Lateral" if position == "Lateral" else "Frontal", "ViewPosition": position}
        rec.update({f: int(f in findings) for f in gxs.FINDINGS})
        records.append(rec)
        if images:
            jpeg(root / "train1" / name)
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(records).to_csv(root / "train1.csv", index=False)
    return root / "train1.csv"


def nih_dataset(root: Path, rows, trailing_column=True) -> Path:
    """rows: (image index, patient id, view, 'A|B' labels, folder number, rgba)."""
    records = []
    for name, patient, view, labels, folder, rgba in rows:
        records.append({"Image Index": name, "Finding Labels": labels, "Follow-up #": 0,
                        "Patient ID": patient, "Patient Age": 40, "Patient Gender": "M",
                        "View Position": view, "OriginalImage[Width": 64, "Height]": 64,
                        "OriginalImagePixelSpacing[x": 0.14, "y]": 0.14})
        path = root / f"images_{folder:03d}" / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img = np.random.default_rng(0).integers(0, 256, (64, 64, 4 if rgba else 1), dtype=np.uint8)
        cv2.imwrite(str(path), img if rgba else img[..., 0])
    df = pd.DataFrame(records)
    if trailing_column:
        df["Unnamed: 11"] = ""
    root.mkdir(parents=True, exist_ok=True)
    text = df.to_csv(index=False)
    if trailing_column:  # Kaggle's file ends each line with a comma and names no 12th column
        text = text.replace(",Unnamed: 11", ",")
    (root / "Data_Entry_2017.csv").write_text(text)
    return root / "Data_Entry_2017.csv"


def chexpert_dataset(root: Path, rows, valid_rows=()) -> Path:
    """rows: (patient number, study, 'frontal'|'lateral', 'AP'|'PA'|'', {finding: 1|0|-1|None})."""
    base = root / "CheXpert-v1.0-small"

    def table(items, part):
        records = []
        for i, (patient, study, view, position, labels) in enumerate(items):
            rel = f"CheXpert-v1.0-small/{part}/patient{patient:05d}/study{study}/view{i}_{view}.jpg"
            jpeg(root / rel)
            rec = {"Path": rel, "Sex": "Male", "Age": 60, "Frontal/Lateral": view.capitalize(),
                   "AP/PA": position}
            rec.update({f: labels.get(f) for f in chexpert.FINDINGS})
            records.append(rec)
        return pd.DataFrame(records, columns=["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *chexpert.FINDINGS])

    base.mkdir(parents=True, exist_ok=True)
    table(rows, "train").to_csv(base / "train.csv", index=False)
    if valid_rows:
        table(valid_rows, "valid").to_csv(base / "valid.csv", index=False)
    return base / "train.csv"
