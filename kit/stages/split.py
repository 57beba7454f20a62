"""Split stage: train/val/test grouped by patient and stratified by label.

Each patient goes whole to one split: patients are taken largest first (ties in seeded
random order) and each goes to the split that is furthest below its target, measured on
this patient's labels and on image count. It is the greedy of scikit-learn's
StratifiedGroupKFold, aimed at three splits of given fractions instead of K equal folds:
that makes the fractions exact and costs O(patients), where StratifiedGroupKFold's
per-fold Python search takes minutes on a 100k-image dataset.
"""
import numpy as np
import pandas as pd

from kit import layout
from kit.config import Config
from kit.data import synthetic
from kit.errors import KitError
from kit.io import write_csv
from kit.pipeline import Stamp, stamped

FEW_IMAGES = 10


def assign(keys, groups, fracs: dict, seed: int) -> np.ndarray:
    """Split name per row ("train" or a key of `fracs`), whole groups, label mix close to the whole."""
    names = ["train"] + [n for n, f in fracs.items() if f > 0]
    share = np.array([1 - sum(fracs.values())] + [fracs[n] for n in names[1:]])
    _, group_of = np.unique(groups, return_inverse=True)
    _, key_of = np.unique(keys, return_inverse=True)
    counts = np.zeros((group_of.max() + 1, key_of.max() + 1))
    np.add.at(counts, (group_of, key_of), 1)
    order = np.random.default_rng(seed).permutation(len(counts))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    label_target = share[:, None] * counts.sum(axis=0)
    size_target = share * counts.sum()
    label_alloc, size_alloc = np.zeros_like(label_target), np.zeros_like(size_target)
    split_of_group = np.empty(len(counts), dtype=int)
    for g in order:
        c = counts[g]
        label_need = ((label_target - label_alloc) / np.maximum(label_target, 1e-9)) @ c / c.sum()
        size_need = (size_target - size_alloc) / np.maximum(size_target, 1e-9)
        s = int(np.argmax(label_need + size_need))
        split_of_group[g] = s
        label_alloc[s] += c
        size_alloc[s] += c.sum()
    return np.array(names, dtype=object)[split_of_group[group_of]]


def strat_keys(df: pd.DataFrame, classes) -> np.ndarray:
    """One label per image: its class, or in multi-label mode its rarest positive class."""
    targets = df[classes].to_numpy()
    rarity = targets.sum(axis=0).argsort()
    ordered = targets[:, rarity]
    first = ordered.argmax(axis=1)
    return np.where(ordered.any(axis=1), np.array(classes)[rarity][first], "(none)")


def patient_groups(df: pd.DataFrame) -> np.ndarray:
    missing = df["patient_id"] == ""
    if missing.all():
        print("[split] warning: the dataset has no patient ids, so images are split one by one; "
              "images of one patient may land in two splits")
    elif missing.any():
        print(f"[split] warning: {int(missing.sum())} images have no patient id; each is its own group")
    return layout.patient_keys(df)


def check_enough(df: pd.DataFrame, classes, groups, n_splits: int):
    for c in classes:
        n = len(set(groups[df[c].to_numpy() == 1]))
        if n < n_splits:
            raise KitError(f"class {c!r} has {n} patient(s): too few to put one in each of "
                           f"{n_splits} splits; drop it from --classes or add data")


def check_disjoint(parts: dict):
    owners = pd.concat([pd.DataFrame({"group": pd.unique(part["_group"]), "split": name})
                        for name, part in parts.items()], ignore_index=True)
    shared = owners[owners["group"].duplicated(keep=False)]
    if len(shared):
        g = shared["group"].iloc[0]
        first, then = shared.loc[shared["group"] == g, "split"].iloc[:2]
        raise KitError(f"internal error: {g} is in both {first} and {then}; the split is not written")


def summary(parts: dict, classes) -> pd.DataFrame:
    rows = []
    for name, part in parts.items():
        for c in classes + ["all"]:
            sel = part if c == "all" else part[part[c] == 1]
            real = sel[sel["source"] == "real"]
            rows.append({"split": name, "class": c, "images": len(sel), "real": len(real),
                         "synthetic": len(sel) - len(real), "patients": real["_group"].nunique(),
                         "share": round(len(sel) / max(len(part), 1), 4)})
    return pd.DataFrame(rows)


def split_seed(cfg) -> int:
    """--split-seed, or --seed where it is not set."""
    return cfg.seed if cfg.split_seed < 0 else cfg.split_seed


def synthetic_settings(cfg) -> dict:
    return {k: getattr(cfg, k) for k in synthetic.SETTINGS}


def warn_unused_caps(cfg):
    """The caps were set, but there are no synthetic images for them to cap."""
    defaults = Config()
    unused = [f"--{k.replace('_', '-')}" for k in ("synthetic_max_ratio", "synthetic_classes")
              if getattr(cfg, k) != getattr(defaults, k)]
    if unused:
        print(f"[split] warning: {' and '.join(unused)} do nothing without --synthetic-dir")


def stamp(cfg) -> Stamp:
    settings = {k: getattr(cfg, k) for k in ("val_frac", "test_frac", "split")} | {"seed": split_seed(cfg)}
    return Stamp({**settings, **synthetic_settings(cfg)},
                 [layout.manifest_csv(cfg.work), *synthetic.source_files(cfg.synthetic_dir)],
                 [layout.split_csv(cfg.work, s) for s in layout.SPLITS + ("summary",)]
                 # the stored synthetic images: a new machine's shards hold only the real ones
                 + ([layout.dataset_dir(cfg.work) / synthetic.FOLDER] if cfg.synthetic_dir else []))


@stamped("split", stamp)
def run(cfg):
    df = layout.read_table(layout.manifest_csv(cfg.work), "separate")
    df = df[df["status"] == "ok"].reset_index(drop=True)
    classes = layout.class_columns(df)
    groups = patient_groups(df)
    keys = strat_keys(df, classes)
    if cfg.split == "official":
        if "official_split" not in df.columns or (df["official_split"] == "").all():
            raise KitError("--split official needs a dataset with an official test list "
                           "(NIH's test_list.txt); use --split stratified")
        split = np.where(df["official_split"] == "test", "test", "train").astype(object)
        rest = split == "train"
        share = cfg.val_frac / max(rest.mean(), 1e-9)
        check_enough(df[rest], classes, groups[rest], 2)
        split[rest] = assign(keys[rest], groups[rest], {"val": share}, split_seed(cfg))
    else:
        fracs = {"test": cfg.test_frac, "val": cfg.val_frac}
        check_enough(df, classes, groups, 1 + sum(f > 0 for f in fracs.values()))
        split = assign(keys, groups, fracs, split_seed(cfg))
    df["_group"] = groups
    df.insert(df.columns.get_loc(classes[0]), "source", "real")
    parts = {name: df[split == name] for name in layout.SPLITS}
    check_disjoint(parts)
    if cfg.synthetic_dir:
        parts["train"] = synthetic.mix(parts["train"], classes, pd.concat([df["image_id"], df["patient_id"]]),
                                       cfg.work, cfg.resize, cfg.workers, cfg.seed, **synthetic_settings(cfg))
    else:
        warn_unused_caps(cfg)
    table = summary(parts, classes)
    for name, part in parts.items():
        write_csv(part.drop(columns="_group"), layout.split_csv(cfg.work, name))
    write_csv(table, layout.split_csv(cfg.work, "summary"))
    report(table, classes)


def report(table: pd.DataFrame, classes):
    images = table.pivot(index="class", columns="split", values="real").reindex(
        index=classes + ["all"], columns=list(layout.SPLITS))
    if table["synthetic"].any():
        images["train synthetic"] = table[table["split"] == "train"].set_index("class")["synthetic"]
    patients = table[table["class"] == "all"].set_index("split")["patients"]
    print(images.to_string())
    print("[split] patients: " + ", ".join(f"{s} {patients[s]}" for s in layout.SPLITS))
    used = table.loc[(table["class"] == "all") & (table["images"] > 0), "split"]  # no test split: no warning
    few = table[(table["class"] != "all") & (table["real"] < FEW_IMAGES) & table["split"].isin(used)]
    for row in few.to_dict("records"):
        print(f"[split] warning: {row['split']} has only {row['real']} image(s) of {row['class']}; "
              f"its metrics for that class will be noisy")
