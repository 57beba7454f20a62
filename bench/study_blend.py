"""Answers per study and blends of runs, measured on generated competition-shaped data where
they can make a difference: faint findings that show on only some of a study's films.

The data: Grand X-Ray Slam's layout (train1.csv with every real column, the 14 findings,
frontal and lateral films named `<patient>_<study>_<view>.jpg`, a sample submission and its
test1/ folder), several films per study, labels per study (from its report), each finding drawn
faint on about half of the study's films. Three runs of the kit share one split (--split-seed)
and differ in loss (focal+BCE, ASL, BCE) and, unless --seeds names one, in seed; each decides its
study pool on val; a fourth work dir blends them.
Reported: per film against pooled macro AUC (val, and the held-out test split), each run's
macro AUC against the blend's on val and on the held-out test split.

    python -m bench.study_blend                      # about 15 minutes on 2 CPU cores
    python -m bench.study_blend --patients 40 --epochs 1
    python -m bench.study_blend --seeds 1,1,1             # the losses alone, on one seed
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/study_blend.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
import pandas as pd

from bench.common import describe, machine
from kit import layout
from kit.data import demo, studies
from kit.data.demo import HEIGHT, WIDTH
from kit.data.images import encode_jpeg
from kit.data.sources import gxs
from kit.models.ensemble import blend
from kit.reports.metrics import macro_auc

ROOT = Path(__file__).resolve().parent.parent
TARGETS = list(demo.PROPORTIONS)
OTHERS = [f for f in gxs.FINDINGS if f not in TARGETS and f != "No Finding"]  # a faint mark each
LOSSES = ("focal_bce", "asl", "bce")
# the demo's CPU-sized recipe, written out so the runs do not take the demo's own data
RECIPE = ["--dataset", "gxs", "--resize", "128", "--model", "levit_128s", "--img-size", "112", "--pretrained",
          "none", "--batch-size", "16", "--effective-batch", "16", "--lr", "5e-4", "--layer-decay", "1.0",
          "--warmup-epochs", "0.5", "--drop-path", "0", "--aug", "light", "--bootstrap", "200", "--compile", "off"]


def faint_film(findings, rng, lateral, alpha, show):
    """A demo film whose findings are blended in at `alpha`, each on this film with chance `show`."""
    body = demo._body(rng)
    if lateral:
        body = cv2.resize(cv2.rotate(body, cv2.ROTATE_90_CLOCKWISE), (WIDTH, HEIGHT))
    drawn = body.copy()
    for f in findings:
        if rng.random() < show:
            demo._draw(drawn, f, rng)
    return np.clip((1 - alpha) * body + alpha * drawn, 0, 255).astype(np.uint8)


def generate(root: Path, patients, seed, alpha, show, test_patients):
    """train1.csv + train1/, sample_submission_1.csv + test1/ (labels kept in test_truth.csv)."""
    rng = np.random.default_rng(seed)
    train, test, truth, marked = [], [], [], 0
    for p in range(patients + test_patients):
        for s in range(int(rng.integers(1, 3))):
            k = rng.random()
            findings = [] if k < 0.3 else list(rng.choice(TARGETS, 1 + int(k > 0.8), replace=False))
            marked += 1
            if marked % 2:  # in turn, so that every class of the sample has patients in each split
                findings.append(OTHERS[marked // 2 % len(OTHERS)])
            for v in range(int(rng.integers(2, 5))):
                lateral = v == 1
                name = f"{p:05d}_{s + 1:03d}_{v + 1:03d}.jpg"
                img = faint_film(findings, rng, lateral, alpha, show)
                labels = {f: int(f in findings) for f in gxs.FINDINGS}
                labels["No Finding"] = int(not findings)
                folder = "train1" if p < patients else "test1"
                (root / folder).mkdir(parents=True, exist_ok=True)
                (root / folder / name).write_bytes(encode_jpeg(img))
                if p < patients:
                    train.append({"Image_name": name, "Patient_ID": f"{p:05d}", "Study": f"{s + 1:03d}",
                                  "Sex": rng.choice(["M", "F"]), "Age": int(rng.integers(20, 90)),
                                  "ViewCategory": "Lateral" if lateral else "Frontal",
                                  "ViewPosition": "Lateral" if lateral else rng.choice(["AP", "PA"]), **labels})
                else:
                    test.append({"Image_name": name, **{c: 0.5 for c in gxs.FINDINGS}})
                    truth.append({"Image_name": name, **labels})
    pd.DataFrame(test).to_csv(root / "sample_submission_1.csv", index=False)
    pd.DataFrame(truth).to_csv(root / "test_truth.csv", index=False)
    pd.DataFrame(train).to_csv(root / "train1.csv", index=False)


def kit(*args):
    subprocess.run([sys.executable, str(ROOT / "run.py"), *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


def run_answers(work):
    """(val labels, val answers, held-out test labels, per-film test probs, test study keys, method)."""
    decision = json.loads(layout.study_pool_json(work).read_text())
    val = pd.read_csv(layout.val_predictions_csv(work), dtype={"image_id": str})
    test = pd.read_csv(layout.reports_dir(work) / "test_predictions.csv", dtype={"image_id": str})
    split, classes = layout.read_split(work, "test")
    test = test.set_index("image_id").loc[split["image_id"]].reset_index()
    prob = layout.prob_columns(classes)
    return (val[classes].to_numpy(), val[prob].to_numpy(), test[classes].to_numpy(), test[prob].to_numpy(),
            studies.table_keys(split), decision)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "xray-kit-study-blend"),
                    help="data and work dirs (reused when present)")
    ap.add_argument("--patients", type=int, default=260, help="patients of train1.csv")
    ap.add_argument("--competition-patients", type=int, default=20, help="patients of the sample submission")
    ap.add_argument("--alpha", type=float, default=0.3, help="how strongly a finding is drawn (1: the demo's)")
    ap.add_argument("--show", type=float, default=0.5, help="chance that a finding shows on one film of its study")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0, help="the data's seed")
    ap.add_argument("--seeds", default="1,2,3", help="the three runs' seeds, in the order of their losses "
                    + ", ".join(LOSSES))
    args = ap.parse_args(argv)
    seeds = args.seeds.split(",")
    if len(seeds) != len(LOSSES):
        ap.error(f"--seeds takes {len(LOSSES)} seeds, one a loss, as 1,1,1")
    runs = [(f"seed {seed}, {loss}", ["--seed", seed, "--loss", loss]) for seed, loss in zip(seeds, LOSSES)]
    out = Path(args.out).resolve()
    data = out / "data"
    m = machine(gpus=False)
    start = time.perf_counter()
    if not (data / "train1.csv").exists():
        generate(data, args.patients, args.seed, args.alpha, args.show, args.competition_patients)
    works = []
    for i, (name, flags) in enumerate(runs):
        work = out / f"run{i + 1}"
        kit("--task", "competition", "--data-dir", str(data), "--work-dir", str(work), "--split-seed", "0",
            "--val-frac", "0.25", "--test-frac", "0.25", "--epochs", str(args.epochs), *RECIPE, *flags)
        works.append(work)
    kit("--stage", "blend", "--runs", *map(str, works), "--work-dir", str(out / "blend"))
    weights = pd.read_csv(out / "blend" / "reports" / "blend.csv").query("kind == 'run'")["weight"].to_numpy()

    rows, val_answers, test_answers = [], [], []
    for (name, _), work in zip(runs, works):
        y_val, p_val, y_test, p_test, keys, decision = run_answers(work)
        answered = studies.pool(p_test, keys, decision["method"])
        val_answers.append(p_val)
        test_answers.append(answered)
        rows.append(dict(run=name, study_pool=decision["method"], val_per_film=decision["val_macro_auc"]["none"],
                         val_mean=decision["val_macro_auc"]["mean"], val_max=decision["val_macro_auc"]["max"],
                         test_per_film=macro_auc(y_test, p_test),
                         test_mean=macro_auc(y_test, studies.pool(p_test, keys, "mean")),
                         test_max=macro_auc(y_test, studies.pool(p_test, keys, "max")),
                         val_answer=macro_auc(y_val, p_val), test_answer=macro_auc(y_test, answered),
                         constant_share=decision["constant_share"]))
    rows.append(dict(run="blend " + " ".join(f"{w:.2f}" for w in weights),
                     val_answer=macro_auc(y_val, blend(val_answers, weights)),
                     test_answer=macro_auc(y_test, blend(test_answers, weights))))
    table = pd.DataFrame(rows)
    print(f"{describe(m)}; {len(pd.read_csv(data / 'train1.csv'))} labelled films, findings at alpha "
          f"{args.alpha} on {args.show:.0%} of a study's films, {args.epochs} epochs, "
          f"{time.perf_counter() - start:.0f} s")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(json.dumps(dict(bench="study_blend", machine=m, rows=table.to_dict("records"),
                          alpha=args.alpha, show=args.show, epochs=args.epochs, seeds=seeds)))


if __name__ == "__main__":
    main()
