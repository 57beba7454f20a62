"""The kit's table work at Grand X-Ray Slam's scale against its previous per-row code.

On a generated train1.csv of every real column (Image_name, Patient_ID, Study, Sex, Age,
ViewCategory, ViewPosition, the 14 findings; laterals, multi-finding and all-negative rows),
in the competition task's settings (multi-label, every view, every negative kept):

  metadata   the adapter's load, the view filter and the selection with its label column
  separate   the stored file names, the job list and the status column (no image is copied)
  split      patient groups, stratification keys, the checks and the assignment
  predict    the index of a folder of empty files named like test films, and the lookup of
             every sample submission id in it

The baseline is the kit's code before its per-row loops were replaced, kept below; both sides
run on the same inputs, take turns within each repetition, and must give the same results.

    python -m bench.scale [--rows 200000] [--test-films 46000] [--repeats 3]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath

if __package__ in (None, ""):  # run as a script: python bench/scale.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from bench import common
from kit import layout
from kit.config import Config
from kit.data import sources
from kit.data.competition import IMAGE_SUFFIXES, index_images, locate
from kit.data.images import stored_names
from kit.data.sources import gxs
from kit.stages import metadata, split

FRACS = {"test": 0.0, "val": 0.05}  # the competition task's
RESULTS = [("written", 0.9), ("skipped", 0.08), ("missing", 0.01), ("unreadable", 0.01)]


# the previous per-row code ------------------------------------------------------------------

def baseline_select(table, classes, findings, mode, keep_negatives, seed):
    targets = table[classes].to_numpy()
    n_targets = targets.sum(axis=1)
    if mode == "single":
        keep = (table[findings].to_numpy().sum(axis=1) == 1) & (n_targets == 1)
    else:
        keep = n_targets >= 1
        negatives = np.flatnonzero(n_targets == 0)
        rng = np.random.default_rng(seed)
        chosen = rng.choice(negatives, size=int(round(keep_negatives * len(negatives))), replace=False)
        keep[chosen] = True
    names = np.array(classes, dtype=object)
    label = ["|".join(names[row.astype(bool)]) for row in targets[keep]]
    out = table.loc[keep, [c for c in layout.META_COLUMNS if c in table.columns] + list(classes)].copy()
    out.insert(out.columns.get_loc("path") + 1, "label", label)
    return out.reset_index(drop=True)


def baseline_stored_name(image_id, resize):
    parts = [p for p in PurePosixPath(image_id.replace("\\", "/")).parts if p not in ("/", "..", ".")]
    name = PurePosixPath(*parts)
    return str(name.with_suffix(".jpg") if resize else name)


def baseline_plan(df, work, resize, results):
    df["file"] = ["images/" + baseline_stored_name(i, resize) for i in df["image_id"]]
    if df["file"].duplicated().any():
        raise RuntimeError("duplicate stored names")
    folder = layout.dataset_dir(work)
    jobs = [(p, str(folder / f)) for p, f in zip(df["path"], df["file"])]
    df["status"] = ["ok" if s in ("written", "skipped") else s for s in results]
    return jobs


def baseline_check_disjoint(parts):
    seen = {}
    for name, part in parts.items():
        for g in set(part["_group"]):
            if g in seen:
                raise RuntimeError(f"{g} is in both {seen[g]} and {name}")
            seen[g] = name


def baseline_index(folder):
    index = {}
    for dirpath, _, files in os.walk(folder):
        for name in sorted(files):
            path = Path(dirpath) / name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                for key in (path.relative_to(folder).as_posix(), name, path.stem):
                    index.setdefault(key, path)
    return index


def baseline_locate(index, ids, folder):
    return [index.get(i, folder / i) for i in ids], sum(i in index for i in ids)


# the kit ------------------------------------------------------------------------------------

def kit_plan(df, work, resize, results):
    df["file"] = "images/" + stored_names(df["image_id"], resize)
    if df["file"].duplicated().any():
        raise RuntimeError("duplicate stored names")
    jobs = list(zip(df["path"], layout.image_paths(work, df["file"])))
    df["status"] = pd.Series(results, index=df.index, dtype=object).replace({"written": "ok", "skipped": "ok"})
    return jobs


def split_table(manifest, classes, check_disjoint):
    """The split stage's work on a manifest, up to the written tables."""
    df = manifest[manifest["status"] == "ok"].reset_index(drop=True)
    groups = split.patient_groups(df)
    keys = split.strat_keys(df, classes)
    split.check_enough(df, classes, groups, 1 + sum(f > 0 for f in FRACS.values()))
    names = split.assign(keys, groups, FRACS, seed=0)
    df["_group"] = groups
    check_disjoint({name: df[names == name] for name in layout.SPLITS})
    return names


# inputs -------------------------------------------------------------------------------------

def write_train_csv(path, rows, seed=0) -> pd.DataFrame:
    """A train1.csv of `rows` images: 1-6 images per patient, a quarter of them laterals, about
    12% prevalence per finding, No Finding on part of the all-negative rows."""
    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(rows), rng.integers(1, 7, rows))[:rows]
    findings = (rng.random((rows, len(gxs.FINDINGS))) < 0.12).astype(int)
    no_finding = gxs.FINDINGS.index("No Finding")
    findings[:, no_finding] = (findings.sum(axis=1) == 0) & (rng.random(rows) < 0.6)
    lateral = rng.random(rows) < 0.25
    df = pd.DataFrame({"Image_name": [f"train_{i:06d}.jpg" for i in range(rows)],
                       "Patient_ID": [f"P{p:06d}" for p in patient], "Study": [f"S{i:06d}" for i in range(rows)],
                       "Sex": rng.choice(["M", "F"], rows), "Age": rng.integers(18, 95, rows),
                       "ViewCategory": np.where(lateral, "Lateral", "Frontal"),
                       "ViewPosition": np.where(lateral, "Lateral", rng.choice(["AP", "PA"], rows))})
    df[list(gxs.FINDINGS)] = findings
    df.to_csv(path, index=False)
    return df


def write_test_films(folder, n) -> list:
    """n empty files named like test films; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"test_{i:05d}.jpg" for i in range(n)]
    for name in names:
        open(folder / name, "wb").close()
    return names


# measuring ----------------------------------------------------------------------------------

def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(steps, repeats) -> dict:
    """{step: {side: [seconds per repetition]}}; the two sides of a step take turns and must agree."""
    seconds = {step: {"kit": [], "baseline": []} for step in steps}
    for _ in range(repeats):
        for step, (kit, baseline, same) in steps.items():
            t_kit, out_kit = timed(kit)
            t_base, out_base = timed(baseline)
            if not same(out_kit, out_base):
                raise RuntimeError(f"{step}: the kit and the baseline give different results")
            seconds[step]["kit"].append(t_kit)
            seconds[step]["baseline"].append(t_base)
    return seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the generated train1.csv")
    ap.add_argument("--test-films", type=int, default=46_000, help="empty test films to index")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    mach = common.machine(gpus=False)
    cfg = Config(task="competition", label_mode="multi", views="all", keep_negatives=1.0)
    classes = list(gxs.FINDINGS)

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        csv = tmp / "train1.csv"
        write_train_csv(csv, args.rows)
        ids = write_test_films(tmp / "test1", args.test_films)
        print(f"bench.scale | {common.describe(mach)} | {args.rows} generated train1.csv rows, "
              f"{args.test_films} empty test films ({time.perf_counter() - start:.0f} s to write)")

        def table_work(select):
            table = sources.read(gxs, csv)
            framed = metadata.filter_views(table, cfg.views)
            return select(framed, classes, list(gxs.FINDINGS), cfg.label_mode, cfg.keep_negatives, cfg.seed)

        filtered = table_work(metadata.select)
        rng = np.random.default_rng(1)
        results = tuple(rng.choice([s for s, _ in RESULTS], len(filtered), p=[p for _, p in RESULTS]))
        manifest = filtered.copy()
        kit_plan(manifest, tmp, cfg.resize, results)
        folder = tmp / "test1"
        steps = {
            "metadata": (lambda: table_work(metadata.select), lambda: table_work(baseline_select),
                         lambda a, b: a.equals(b)),
            "separate": (lambda: kit_plan(filtered.copy(), tmp, cfg.resize, results),
                         lambda: baseline_plan(filtered.copy(), tmp, cfg.resize, results),
                         lambda a, b: a == b),
            "split": (lambda: split_table(manifest, classes, split.check_disjoint),
                      lambda: split_table(manifest, classes, baseline_check_disjoint),
                      lambda a, b: (a == b).all()),
            "predict": (lambda: locate(index_images(folder), ids, folder),
                        lambda: baseline_locate(baseline_index(folder), ids, folder),
                        lambda a, b: a[1] == b[1] and a[0] == list(map(str, b[0]))),
        }
        seconds = measure(steps, args.repeats)

    rows, figures = [], {"kit": {}, "baseline": {}, "ratio": {}}
    sizes = {"metadata": args.rows, "separate": len(filtered), "split": int((manifest["status"] == "ok").sum()),
             "predict": args.test_films}
    for step, sides in seconds.items():
        k, b = common.median(sides["kit"]), common.median(sides["baseline"])
        rows.append({"step": step, "items": sizes[step], "kit": k, "baseline": b, "ratio": b / k})
        figures["kit"][step], figures["baseline"][step], figures["ratio"][step] = k, b, b / k
    common.print_table(f"seconds, median of {args.repeats} (ratio: baseline / kit)", rows,
                       [("step", "step"), ("items", "rows or files"), ("kit", "kit s"),
                        ("baseline", "per-row baseline s"), ("ratio", "ratio")])
    common.emit("scale", common.round_floats({
        "rows": args.rows, "test_films": args.test_films, "repeats": args.repeats, "items": sizes,
        **figures}), mach)


if __name__ == "__main__":
    main()
