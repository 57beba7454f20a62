"""Dataset formats. Each adapter turns one dataset's files into the canonical table:

    image_id, path, patient_id, view, <one 0/1 int column per finding, original names>

plus, where a dataset has one, `official_split` (train/test) and `study_id` (the patient's visit). Every quirk of a format is
resolved inside its adapter; nothing downstream knows which dataset it came from.
"""
from pathlib import Path

import pandas as pd

from kit.data.sources import chexpert, csvtable, gxs, nih
from kit.data.sources.common import finding_columns, normalize_name, resolve_classes
from kit.errors import KitError

__all__ = ["ADAPTERS", "discover", "finding_columns", "locate", "read", "normalize_name", "resolve_classes"]

ADAPTERS = {m.NAME: m for m in (gxs, nih, chexpert, csvtable)}
SEARCH_DEPTH = 4


def _header(path: Path) -> list:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:  # Excel writes a BOM
        return [c.strip().strip('"') for c in f.readline().split(",")]


def _candidates(root: Path, name: str):
    for depth in range(SEARCH_DEPTH + 1):
        yield from sorted(root.glob("*/" * depth + name))


def discover(roots, dataset: str):
    """First (adapter, metadata CSV) found under `roots`, searching shallow folders first."""
    adapters = [ADAPTERS[dataset]] if dataset != "auto" else list(ADAPTERS.values())
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        for adapter in adapters:
            for marker in adapter.MARKERS:
                for path in _candidates(root, marker):
                    if adapter.SIGNATURE in _header(path):
                        return adapter, path
    return None, None


def locate(dataset, csv, data_dir, roots):
    """(adapter, metadata CSV) that --dataset, --csv and --data-dir (empty: search `roots`) point
    at; a clear error when there is none."""
    if dataset == "csv" or csv:
        if not csv:
            raise KitError("--dataset csv needs --csv PATH (and --image-col, --label-cols or --labels-col)")
        if not Path(csv).is_file():
            raise KitError(f"--csv {csv} does not exist; pass the path of your metadata CSV")
        return csvtable, Path(csv)
    if data_dir and not Path(data_dir).is_dir():
        found = "is a file" if Path(data_dir).exists() else "does not exist"
        raise KitError(f"--data-dir {data_dir} {found}; pass the folder holding the dataset")
    search = [Path(data_dir)] if data_dir else list(roots)
    adapter, path = discover(search, dataset)
    if adapter is None and dataset != "auto":
        wanted = ADAPTERS[dataset]
        near = next((p for root in search if Path(root).is_dir() for m in wanted.MARKERS
                     for p in _candidates(Path(root), m)), None)
        if near:
            raise KitError(f"{near} has no {wanted.SIGNATURE!r} column in its first line "
                           f"({','.join(_header(near))[:120] or 'an empty file'}); check that it is the "
                           f"--dataset {dataset} metadata CSV, whole")
    if adapter is None:
        looked = ", ".join(str(p) for p in search)
        names = ", ".join(m for a in ADAPTERS.values() for m in a.MARKERS)
        raise KitError(f"no dataset found (looked for {names} under {looked}); "
                       f"pass the dataset folder with --data-dir, or run --demo to try the kit")
    return adapter, path


def read(adapter, path, **options):
    """The canonical table of one dataset, with ids as strings and findings as 0/1 ints;
    `options`: the settings of the adapter's OPTIONS."""
    table = adapter.load(path, **options)
    table["image_id"] = table["image_id"].astype(str)
    table["patient_id"] = table["patient_id"].fillna("").astype(str)
    # a blank is "" on every pandas (astype(str) makes NaN "nan" on pandas 2); views compare in capitals
    table["view"] = table["view"].fillna("").astype(str).str.strip().str.upper()
    if "study_id" in table.columns:
        table["study_id"] = table["study_id"].fillna("").astype(str).str.strip()
    findings = finding_columns(table)
    labels = table[findings].apply(pd.to_numeric, errors="coerce").where(table[findings].notna(), 0)
    bad = [c for c in findings if not labels[c].isin([0, 1]).all()]
    if bad:
        found = pd.unique(table.loc[~labels[bad[0]].isin([0, 1]), bad[0]])[:3]
        raise KitError(f"{Path(path).name}: label column(s) {', '.join(map(repr, bad))} hold values other than "
                       f"0/1 (in {bad[0]!r}: {', '.join(map(str, found))}); labels must be 1, 0 or empty"
                       + ("; a column of class names goes to --labels-col" if adapter is csvtable else ""))
    table[findings] = labels.astype(int)
    duplicated = table["image_id"].duplicated()
    if duplicated.any():
        print(f"[metadata] warning: {int(duplicated.sum())} rows repeat an image id "
              f"(first: {table.loc[duplicated, 'image_id'].iloc[0]}); the first row of each is kept")
        table = table[~duplicated].reset_index(drop=True)
    return table
