"""Settings that take a word (auto, all, none) or a number, parsed once when the config is
resolved: a malformed one is one error line before the first stage, not after hours of data
stages; the library functions read the parsed values (and parse again what a caller in code
passes as text, with the same functions).
"""
import re

from kit.errors import KitError

DURATION_UNITS = {"h": 3600, "m": 60, "s": 1}
SIZE_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12}


def count(text, flag: str, words=("auto",)) -> "int | str":
    """A positive whole number, or one of `words` (lower case)."""
    t = str(text).strip().lower()
    if t in words:
        return t
    try:
        value = int(t)
    except ValueError:
        value = 0
    if value < 1:
        raise KitError(f"{flag} {text!r}: pass {', '.join(('a positive whole number',) + tuple(words[:-1]))} "
                       f"or {words[-1]}")
    return value


def parse_duration(text) -> "float | None":
    """Seconds of '11h30m', '90m', '600s' or '600'; None for 'none' or 0."""
    t = str(text).strip().lower()
    if t in ("none", "0", ""):
        return None
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise KitError(f"--time-limit {text!r}: pass a duration such as 11h30m, 90m or 600s, or none")
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


def parse_size(text) -> "float | None":
    """Bytes of '19GB', '500MB', '1.5T'; None for 'none' or 0."""
    t = str(text).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", t)
    if t in ("none", "0", ""):
        return None
    if not match or match[2] not in SIZE_UNITS:
        raise KitError(f"--output-budget {text!r}: pass a size such as 19GB or 500MB, or none")
    return float(match[1]) * SIZE_UNITS[match[2]]


def parse_epochs(spec: str, total_epochs: int) -> list:
    """Epochs named by --soup-epochs: "5,6", or "lastN" for the last N of a `total_epochs` run
    (all of them when the run is shorter, so the default suits a quick 1-epoch try)."""
    spec = spec.strip().lower()
    last = re.fullmatch(r"last(\d+)", spec)
    if last:
        n = int(last.group(1))
        if n < 1:
            raise KitError(f"--soup-epochs {spec}: average at least one epoch, e.g. last1")
        return list(range(max(1, total_epochs - n + 1), total_epochs + 1))
    try:
        epochs = sorted({int(e) for e in spec.split(",") if e.strip()})
    except ValueError:
        epochs = []
    if not epochs or min(epochs) < 1:
        raise KitError(f"--soup-epochs {spec!r} is not a list of epochs: pass e.g. 5,6 or last2")
    return epochs


def soup_needs(spec: str) -> int:
    """The fewest epochs a run needs for the soup --soup-epochs names."""
    return len(parse_epochs(spec, 10**6)) if spec.strip().lower().startswith("last") else max(parse_epochs(spec, 1))


def resolve(cfg):
    """Parse every such setting of `cfg` in place (the numbers become ints), refusing a bad one.
    Runs after the time limit is resolved: --epochs auto needs one to fit the schedule to."""
    if (cfg.synthetic or cfg.stage == "synthetic-demo") and not cfg.demo:
        raise KitError("--synthetic makes demo synthetic images and goes with --demo; mix in your own with "
                       "--synthetic-dir DIR")
    if cfg.synthetic and cfg.stage == "all":
        cfg.stage = "synthetic-demo"  # the study's runs, their generator and their comparison
    cfg.epochs = count(cfg.epochs, "--epochs")
    if cfg.epochs == "auto" and parse_duration(cfg.time_limit) is None:
        raise KitError("--epochs auto fits the schedule to the time limit, and this run has none; pass "
                       "--time-limit (e.g. 11h30m) or a number of epochs")
    cfg.batch_size = count(cfg.batch_size, "--batch-size")
    cfg.accum = count(cfg.accum, "--accum")
    cfg.keep_epochs = count(cfg.keep_epochs, "--keep-epochs", ("auto", "all"))
    if cfg.tta and cfg.aug == "none" and not cfg.hflip:
        raise KitError("--tta averages views that training made, and --aug none with no --hflip made none; "
                       "drop --tta, or train with --aug light")
    least = soup_needs(cfg.soup_epochs)
    if 0 < cfg.max_epochs < least:
        raise KitError(f"--max-epochs {cfg.max_epochs} is fewer than the {least} epochs --soup-epochs "
                       f"{cfg.soup_epochs} averages; raise it or average fewer")
    for name in ("val_frac", "test_frac"):
        if not 0 <= getattr(cfg, name) < 1:
            raise KitError(f"--{name.replace('_', '-')} {getattr(cfg, name)} must be in [0, 1)")
    if cfg.val_frac + cfg.test_frac >= 1:
        raise KitError("--val-frac plus --test-frac leave nothing to train on; lower them")
