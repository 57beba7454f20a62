"""Submit stage: <work>/submission.csv to the competition with the kaggle package's API, described
by the run that made it: task, model, epochs, the last epoch's val macro AUC, final, interim or
fallback.

`--from-kernel OWNER/SLUG` first fetches from a finished kernel's output what that takes (its
submission.csv, reports/submission.json, history.csv and logs: kilobytes, not the gigabytes of
checkpoints and images in /kaggle/working) with the kernel's log into <work>/kernel_output/SLUG,
then submits from there: one command from a kernel to the leaderboard, through the same checks.
The competition is --competition, else the one kernel-metadata.json attaches.
"""
import json

import pandas as pd

from kit import layout
from kit.errors import KitError
from kit.kaggle import kaggle_meta
from kit.kaggle.download import kaggle_api, kaggle_errors

# what competition_submit answers when the file's upload failed (its text in kaggle 2.0 and later)
UPLOAD_FAILED = "Could not submit to competition"
# the part of a kernel's output that submitting and describing the submission read
FETCHED = r"^(submission\.csv|history\.csv|reports/submission\.json|logs/.*\.log)$"


def competition(cfg) -> str:
    return cfg.competition or kaggle_meta.competition(kaggle_meta.read(kaggle_meta.template(cfg.kernel_metadata)))


def description(work) -> str:
    """'xray kit competition: MODEL, 6 epochs, val macro AUC 0.8712 (epoch 6), final'."""
    report_path, history_path = layout.submission_report(work), layout.history_csv(work)
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    parts = []
    if "model" in report:
        parts += [report["model"], f"{report['epochs']} epoch{'s' * (report['epochs'] != 1)}"]
    if history_path.is_file():
        last = pd.read_csv(history_path).iloc[-1]
        parts.append(f"val macro AUC {last['val_macro_auc']:.4f} (epoch {int(last['epoch'])})")
    kind = report.get("kind") or ("interim" if report.get("interim") else "final" if "interim" in report else None)
    if kind:
        parts.append(kind if kind == "final" else f"{kind}, {report['trained']}")
    if report.get("smoke"):
        parts.append("--smoke")
    task = f" {report['task']}" if "task" in report else ""
    return f"xray kit{task}: {', '.join(parts) or 'submission'}"


def fetch(api, kernel, folder):
    """The part of `kernel`'s output that submit reads, and its log, into `folder`."""
    print(f"[submit] kaggle kernels output {kernel} -> {folder}", flush=True)
    files, token = [], None
    with kaggle_errors(f"--from-kernel {kernel}", f"access denied: is {kernel} yours or public?"):
        while True:  # kaggle 2.0 lists one page of output files (20) and the next one's token
            page, token = api.kernels_output(kernel, str(folder), file_pattern=FETCHED, force=True, page_token=token)
            files += page
            if not token:
                break
    print(f"[submit] fetched {len(files)} files: {', '.join(sorted(str(f) for f in files))}")


def run(cfg):
    name = competition(cfg)  # before the network: a missing name is this machine's problem
    api = None
    if cfg.from_kernel:
        kaggle_meta.check_kernel_ref("--from-kernel", cfg.from_kernel)
        api = kaggle_api("--stage submit --from-kernel")
        work = layout.kernel_output(cfg.work, cfg.from_kernel)
        fetch(api, cfg.from_kernel, work)
    else:
        work = cfg.work
    csv = layout.submission_csv(work)
    if not csv.is_file():
        raise KitError(f"{cfg.from_kernel}'s output has no submission.csv: its run did not reach predict; read "
                       f"its log in {work}, then push again" if cfg.from_kernel else
                       f"{csv} not found: run --stage predict first (--task competition ends --stage all with it)")
    message = description(work)
    api = api or kaggle_api("--stage submit")
    print(f"[submit] {csv} to {name}: {message}", flush=True)
    rules = f"https://www.kaggle.com/competitions/{name}/rules"
    with kaggle_errors(f"--stage submit to {name}", f"access denied: accept the competition's rules at {rules}, "
                                                    f"then rerun"):
        result = api.competition_submit(str(csv), message, name, quiet=True)
    # the answer is read only with what every kaggle 2.x has: 2.0.x lacks the constant of this text
    answer = getattr(result, "message", "") or "submitted"
    if answer == UPLOAD_FAILED:
        raise KitError(f"--stage submit to {name}: the upload of {csv} failed; rerun")
    print(f"[submit] {answer} (submission {getattr(result, 'ref', '') or 'made'}; its score, and whether it "
          f"went through before submitting again: kaggle competitions submissions {name})")
