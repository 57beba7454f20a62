"""synth-quality stage: the synthetic images mixed into train.csv against the real ones, per
class -> reports/synthetic_quality.csv, synthetic_nearest.csv and synthetic_grid.png.

The judge is a model trained on real images only: --weights (say a real-only run's soup), else
this run's soup, which saw the synthetic images in training (a warning says so). Features are
its penultimate layer and, when pretrained weights are on this machine, the pretrained
backbone's. Per class and feature space: the Frechet distance of synthetic to real train
features beside the real split-half distance (the noise floor), k-NN precision and recall,
and each synthetic image's nearest real image (train, val or test) with its distance relative
to the real images' own nearest-neighbour distances; a near-copy of a val or test image would
leak the test set into training. In the model's space: the share of synthetic images of a class
that the judge calls that class (at the threshold evaluate chose on val), beside the same share
on real test images.
"""
import numpy as np
import pandas as pd
from scipy.special import expit

from kit import env, layout
from kit.config import scorer_kwargs
from kit.data.images import load_gray
from kit.errors import KitError
from kit.io import write_csv
from kit.models import eva_x, inference
from kit.models.inference import check_classes, device
from kit.models.model import create_model, load_model, norm_stats, read_weights
from kit.pipeline import Stamp, stamped
from kit.reports import fidelity, metrics, plots

OUTPUTS = ("synthetic_quality.csv", "synthetic_nearest.csv", "synthetic_grid.png")
GRID_COLUMNS = 8
SHOWN = 5


def images_table(work):
    """(every image of the three splits with a `split` column, classes)."""
    parts = []
    for name in layout.SPLITS:
        df, classes = layout.read_split(work, name)
        parts.append(df.assign(split=name))
    table = pd.concat(parts, ignore_index=True)
    if "source" not in table.columns or not (table["source"] == "synthetic").any():
        raise KitError(f"{layout.split_csv(work, 'train')} holds no synthetic image: rerun --stage split "
                       f"with --synthetic-dir DIR (then train) in this work dir")
    return table, classes


def pretrained_backbone(cfg, ckpt):
    """The judge's architecture with its pretrained weights, or None when there are none here."""
    if cfg.pretrained == "none":
        print("[synth-quality] no pretrained backbone features: --pretrained none")
        return None
    roots = env.data_roots(env.platform()) + ([cfg.data_dir] if cfg.data_dir else [])
    try:
        return create_model(eva_x.kit_name(ckpt["arch"], ckpt.get("model_kwargs")), len(ckpt["classes"]),
                            ckpt["img_size"], pretrained=cfg.pretrained, search_roots=roots)
    except KitError as e:
        print(f"[synth-quality] no pretrained backbone features: {e}")
        return None


def embed(cfg, ckpt, paths):
    """({feature space: [N, D]}, judge probabilities [N, C], ok [N])."""
    on = device()
    loading = {k: v for k, v in scorer_kwargs(cfg).items() if k not in ("tta", "hflip")}  # features: one view
    feats, logits, ok = inference.extract(load_model(ckpt, on), paths, ckpt["img_size"], ckpt["mean"],
                                         ckpt["std"], on, "[synth-quality] trained model", **loading)
    spaces = {"model": feats}
    backbone = pretrained_backbone(cfg, ckpt)
    if backbone is not None:
        mean, std = norm_stats(backbone)
        spaces["backbone"], _, ok_backbone = inference.extract(backbone.to(on).eval(), paths, ckpt["img_size"],
                                                              mean, std, on, "[synth-quality] backbone", **loading)
        ok &= ok_backbone
    return spaces, expit(logits), ok


def val_thresholds(images, classes, probs) -> np.ndarray:
    """Per class, the threshold evaluate uses (Youden's J on real val images): a class is
    called where its probability reaches it, in either label mode. An argmax would never call
    a scarce class while a common one scores higher."""
    val = ((images["source"] != "synthetic") & (images["split"] == "val")).to_numpy()
    return metrics.youden_thresholds(images.loc[val, classes].to_numpy(), probs[val])


def agreement(probs, rows, k, threshold):
    """(share of `rows` the judge calls class k, mean probability of k) - NaN without rows."""
    if not len(rows):
        return float("nan"), float("nan")
    p = probs[rows, k]
    return float((p >= threshold).mean()), float(p.mean())


def judge_class(images, k, c, spaces, probs, threshold, cfg):
    """(quality rows, nearest-real rows) of class c, one quality row per feature space."""
    synthetic = (images["source"] == "synthetic").to_numpy()
    positive = (images[c] == 1).to_numpy()
    split = images["split"].to_numpy()
    fake_rows = np.flatnonzero(synthetic & positive)
    reference = np.flatnonzero(~synthetic)
    train_rows = np.flatnonzero(~synthetic & positive & (split == "train"))
    quality, nearest = [], []
    for space, x in spaces.items():
        fake, real = x[fake_rows], x[train_rows]
        precision, recall = fidelity.precision_recall(real, fake)
        scale_rows = np.searchsorted(reference, train_rows)  # the class's train images among all real ones
        index, distance, ratio, _ = fidelity.nearest_real(fake, x[reference], scale_rows)
        neighbour = reference[index]
        copy = ratio < cfg.near_copy
        row = {"class": c, "features": space, "real_train_images": len(train_rows),
               "synthetic_images": len(fake_rows), "frechet": fidelity.frechet_distance(real, fake),
               "frechet_real_split_half": fidelity.split_half_frechet(real, cfg.seed),
               "precision": precision, "recall": recall, "nn_ratio_min": float(ratio.min()),
               "nn_ratio_median": float(np.median(ratio)), "near_copies": int(copy.sum()),
               "near_copies_of_val_test": int((copy & (split[neighbour] != "train")).sum())}
        if space == "model":
            test_rows = np.flatnonzero(~synthetic & positive & (split == "test"))
            row["agreement"], row["agreement_confidence"] = agreement(probs, fake_rows, k, threshold)
            row["agreement_real_test"], _ = agreement(probs, test_rows, k, threshold)
        quality.append(row)
        nearest.append(pd.DataFrame({
            "class": c, "features": space, "image_id": images["image_id"].to_numpy()[fake_rows],
            "file": images["file"].to_numpy()[fake_rows],
            "nearest_image_id": images["image_id"].to_numpy()[neighbour],
            "nearest_split": split[neighbour], "nearest_file": images["file"].to_numpy()[neighbour],
            "distance": distance, "ratio": ratio, "near_copy": copy}))
    return quality, nearest


def grid_pairs(work, nearest: pd.DataFrame) -> dict:
    """Per class, the closest synthetic-real pairs in the model's feature space, as images."""
    def image(file):
        return load_gray(layout.image_path(work, file))

    pairs = {}
    for c, rows in nearest[nearest["features"] == "model"].groupby("class", sort=False):
        pairs[c] = [(image(r.file), image(r.nearest_file), r.nearest_split, r.ratio, r.near_copy)
                    for r in rows.nsmallest(GRID_COLUMNS, "ratio").itertuples()]
    return pairs


def stamp(cfg) -> Stamp:
    weights = layout.weights_path(cfg.work, cfg.weights)
    return Stamp(dict(weights=str(weights), seed=cfg.seed, near_copy=cfg.near_copy, pretrained=cfg.pretrained,
                      amp=cfg.amp),
                 [weights, *(layout.split_csv(cfg.work, s) for s in layout.SPLITS)],
                 [layout.reports_dir(cfg.work) / n for n in OUTPUTS])


@stamped("synth-quality", stamp)
def run(cfg):
    work, reports = cfg.work, layout.reports_dir(cfg.work)
    weights = layout.weights_path(cfg.work, cfg.weights)
    outputs = [reports / n for n in OUTPUTS]
    images, classes = images_table(work)
    ckpt = read_weights(weights)
    check_classes(ckpt, classes, "train")
    if not cfg.weights:
        print(f"[synth-quality] warning: the judge is this run's soup, trained with these synthetic images, "
              f"so it favours them; pass --weights <real-only run>/{layout.soup_weights(work).name}")
    spaces, probs, ok = embed(cfg, ckpt, layout.image_paths(work, images["file"]))
    if not ok.all():
        print(f"[synth-quality] warning: {int((~ok).sum())} images could not be read and are left out: "
              + ", ".join(images.loc[~ok, "file"].head(SHOWN)))
    images = images[ok].reset_index(drop=True)
    spaces, probs = {s: x[ok] for s, x in spaces.items()}, probs[ok]

    quality, nearest = [], []
    thresholds = val_thresholds(images, classes, probs)
    for k, c in enumerate(classes):
        if ((images["source"] == "synthetic") & (images[c] == 1)).any():
            rows, pairs = judge_class(images, k, c, spaces, probs, thresholds[k], cfg)
            quality += rows
            nearest += pairs
    table = pd.DataFrame(quality)
    nearest = pd.concat(nearest, ignore_index=True).sort_values(["features", "ratio"], kind="stable")
    write_csv(table, outputs[0])
    write_csv(nearest, outputs[1])
    plots.synthetic_grid(grid_pairs(work, nearest), outputs[2])
    _print(table, nearest, weights, cfg.near_copy, reports)


def _print(table, nearest, weights, near_copy, reports):
    print(f"[synth-quality] judge {weights}; feature spaces: {', '.join(table['features'].unique())}")
    shown = table.drop(columns=["real_train_images", "near_copies_of_val_test"]).rename(
        columns={"frechet_real_split_half": "frechet_floor", "synthetic_images": "synthetic"})
    print(shown.to_string(index=False, float_format="{:.3f}".format, na_rep="-"))
    copies = nearest[nearest["near_copy"]]
    if len(copies):
        listed = ", ".join(f"{r.image_id} ~ {r.nearest_image_id} ({r.nearest_split}, {r.features} "
                           f"ratio {r.ratio:.3f})" for r in copies.head(SHOWN).itertuples())
        print(f"[synth-quality] warning: {len(copies)} near-copies (nearest real image closer than "
              f"{near_copy:g} of the usual real-to-real distance): {listed}")
    leaks = copies[copies["nearest_split"] != "train"]
    if len(leaks):
        print(f"[synth-quality] warning: {len(leaks)} synthetic images are near-copies of val or test "
              f"images: they leak held-out images into training, so a comparison on this test set is "
              f"optimistic")
    print(f"  reports in {reports}")
