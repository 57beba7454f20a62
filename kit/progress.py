"""Progress that suits where it is shown: a tqdm bar on a terminal, a few plain lines in a log.

Kaggle cuts a kernel's log at 1 MiB, so a redrawn bar there is both noise and a risk. On a
terminal the plain lines still go to the run's log file (kit.runlog), which keeps only a bar's
last state.
"""
import sys
import time

from tqdm import tqdm

from kit import runlog

LOG_EVERY = 0.1


def progress(iterable, total: int, desc: str, unit: str = "img", status=None):
    """Iterate `iterable`, reporting progress the way the output stream can show it.

    status: optional callable giving a short text to show beside the count (a running loss)."""
    bar = tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True) if sys.stdout.isatty() else None
    start, next_mark = time.perf_counter(), LOG_EVERY
    for i, item in enumerate(iterable if bar is None else bar, 1):
        yield item
        if bar is not None and status:
            bar.set_postfix_str(status(), refresh=False)
        if total and i / total >= next_mark and i < total:
            rate = i / max(time.perf_counter() - start, 1e-9)
            extra = f", {status()}" if status else ""
            line = f"{desc}: {i}/{total} ({i / total:.0%}, {rate:.1f} {unit}/s{extra})"
            if bar is None:
                print(line, flush=True)
            else:
                runlog.note(line)
            next_mark = (int(i / total / LOG_EVERY) + 1) * LOG_EVERY
