"""Metadata stage: keep the frontal images of the target classes -> filtered.csv.

single label mode (the study's rule): an image is kept when exactly one finding of the
whole dataset is positive (No Finding counts as one) and that finding is a target class.
multi label mode: kept when any target is positive; other findings are ignored.
"""
import numpy as np
import pandas as pd

from kit import env, layout
from kit.config import predict_kwargs
from kit.data import competition, smoke, sources, synthetic
from kit.errors import KitError
from kit.io import write_csv
from kit.pipeline import Stamp, stamped

SETTINGS = ("dataset", "data_dir", "csv", "image_col", "patient_col", "label_cols", "labels_col",
            "labels_sep", "view_col", "image_root", "classes", "label_mode", "views",
            "keep_negatives", "uncertain", "seed", "synthetic_dir", "synthetic_classes", "task",
            "predict_csv", "smoke")


def filter_views(table: pd.DataFrame, views: str) -> pd.DataFrame:
    if views.strip().lower() == "all":
        return table
    if (table["view"] == "").all():
        print("[metadata] the dataset records no view position: --views ignored")
        return table
    wanted = {v.strip().upper() for v in views.split(",") if v.strip()}
    kept = table[table["view"].isin(wanted)]
    if kept.empty:
        raise KitError(f"no image has view {sorted(wanted)}; views present: "
                       f"{sorted(table['view'].unique())}; choose with --views (or --views all)")
    return kept


def joined_names(rows, names) -> np.ndarray:
    """Per row of 0/1 entries, the names of its set entries joined by "|". Joined once per
    distinct row (a few thousand at most), where joining per image costs seconds at 200k rows."""
    rows = np.asarray(rows).astype(bool)
    packed = np.packbits(rows, axis=1)
    codes = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    names = np.array(names, dtype=object)
    return np.array(["|".join(names[rows[i]]) for i in first], dtype=object)[inverse.ravel()]


def select(table: pd.DataFrame, classes, findings, mode: str, keep_negatives: float, seed: int):
    """Rows kept under the label mode, with a `label` column naming their target(s)."""
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
    label = joined_names(targets[keep], classes)
    out = table.loc[keep, [c for c in layout.META_COLUMNS if c in table.columns] + list(classes)].copy()
    out.insert(out.columns.get_loc("path") + 1, "label", label)
    return out.reset_index(drop=True)


def distribution(df: pd.DataFrame, classes) -> pd.DataFrame:
    rows = [{"class": c,
             "images": int(df[c].sum()),
             "patients": int(df.loc[df[c] == 1, "patient_id"].replace("", np.nan).nunique())}
            for c in classes]
    dist = pd.DataFrame(rows)
    dist["share"] = (dist["images"] / len(df)).round(4)
    return dist


def print_distribution(dist: pd.DataFrame, total: int):
    print(dist.to_string(index=False, formatters={"share": "{:.1%}".format}))
    smallest = dist["images"].min()
    ratio = dist["images"].max() / smallest if smallest else float("inf")
    print(f"[metadata] {total} images, imbalance ratio largest/smallest {ratio:.1f}")


def competition_classes(cfg, sample, findings, csv_path) -> list:
    """The classes the competition scores: the sample submission's columns in its order, under
    the training CSV's names."""
    asked = competition.sample_classes(sample)
    missing = competition.unknown_classes(asked, findings)
    if missing:
        raise KitError(f"{sample.name} scores {', '.join(missing)}, which {csv_path.name} has no column for "
                       f"(its findings: {', '.join(findings)}); pass the sample submission of the same "
                       f"competition (--predict-csv)")
    classes = [findings[k] for k in competition.match_classes(asked, findings)]
    if cfg.classes and not competition.same_classes(sources.resolve_classes(cfg.classes, findings, classes), classes):
        raise KitError(f"--classes {cfg.classes} disagrees with {sample.name}, which scores {', '.join(asked)}; "
                       f"the competition task trains on what it scores: drop --classes, or use --task study")
    return classes


def _sample(cfg):
    """The competition task's sample submission: it names the classes."""
    if cfg.task != "competition":
        return None
    sample, _ = competition.find_inputs(**predict_kwargs(cfg))
    if sample is None:
        raise KitError("--task competition takes its classes from the competition's sample submission "
                       f"({' or '.join(competition.SAMPLE_NAMES)}), and none was found under the data folder; "
                       f"pass it with --predict-csv")
    return sample


def stamp(cfg) -> Stamp:
    adapter, csv_path = sources.locate(cfg.dataset, cfg.csv, cfg.data_dir, env.data_roots(env.platform()))
    sample = _sample(cfg)
    return Stamp({k: getattr(cfg, k) for k in SETTINGS},
                 [csv_path, *(csv_path.with_name(n) for n in adapter.COMPANIONS), *([sample] if sample else []),
                  *synthetic.source_files(cfg.synthetic_dir)],
                 [layout.filtered_csv(cfg.work), layout.class_distribution(cfg.work)], (adapter, csv_path, sample))


@stamped("metadata", stamp)
def run(cfg, found):
    adapter, csv_path, sample = found  # the dataset's reader, its CSV and the competition's sample
    print(f"[metadata] dataset {adapter.NAME}: {csv_path}")
    table = sources.read(adapter, csv_path, **{k: getattr(cfg, k) for k in adapter.OPTIONS})
    findings = sources.finding_columns(table)
    if sample:
        classes = competition_classes(cfg, sample, findings, csv_path)
        print(f"[metadata] competition task: the {len(classes)} classes {sample.name} scores")
    else:
        defaults = adapter.DEFAULT_CLASSES or [f for f in findings if sources.normalize_name(f) != "no finding"]
        classes = sources.resolve_classes(cfg.classes, findings, defaults)
    clash = set(classes) & set(layout.META_COLUMNS)
    if clash:
        raise KitError(f"class name(s) {sorted(clash)} clash with the kit's own columns; rename them in the CSV")
    framed = filter_views(table, cfg.views)
    filtered = select(framed, classes, findings, cfg.label_mode, cfg.keep_negatives, cfg.seed)
    if filtered.empty:
        raise KitError(f"no image left after filtering {len(framed)} images ({cfg.label_mode} label mode, "
                       f"classes {', '.join(classes)}); try --label-mode multi or other --classes")
    print(f"[metadata] {len(table)} rows -> {len(framed)} with views {cfg.views} -> "
          f"{len(filtered)} kept ({cfg.label_mode} label mode)")
    if cfg.smoke:
        filtered = smoke.take(filtered, classes, cfg.seed)
        print(f"[metadata] smoke run: {len(filtered)} images of {filtered['patient_id'].nunique()} patients")
    dist = distribution(filtered, classes)
    if cfg.synthetic_dir:  # found, before the split caps them per class
        dist["synthetic"] = synthetic.found_per_class(cfg.synthetic_dir, cfg.synthetic_classes, classes)
    print_distribution(dist, len(filtered))
    write_csv(filtered, layout.filtered_csv(cfg.work))
    write_csv(dist, layout.class_distribution(cfg.work))
    from kit.reports import plots

    plots.class_distribution(dist, layout.class_distribution(cfg.work, ".png"))
