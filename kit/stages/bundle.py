"""Bundle stage: dist/kaggle/kernel.py (the whole kit in one file) and its kernel-metadata.json,
ready for `kaggle kernels push -p dist/kaggle`.

`python run.py --stage bundle -- --stage all --epochs 6`: everything after `--` becomes the
kernel's own arguments (a script kernel gets no command line). They and the metadata are
checked here, so that a mistake shows now rather than after an upload and a queue; what the run
needs and the metadata does not attach (kaggle_meta.preflight) is a warning here and an error
for push.
"""
import argparse
import shlex
from pathlib import Path

from kit import bundle, kaggle_meta
from kit.config import apply_defaults
from kit.errors import KitError
from kit.io import write_json, write_text

DEFAULT_OUT = Path("dist") / "kaggle"
CODE_FILE = "kernel.py"
NOT_IN_A_KERNEL = ("bundle", "push", "submit", "weights")  # they need this machine's files or the internet


def kernel_args(cfg) -> tuple:
    """The kernel's arguments, parsed by run.py's own parser to catch a typo before the push, and
    the settings they give the kernel's run (the demo's where they leave them to it)."""
    from kit.cli import build_parser, parse_config

    args = shlex.split(cfg.kernel_args)
    parser = build_parser()
    parser.exit_on_error = False
    try:
        parsed, unknown = parser.parse_known_args(args)
    except argparse.ArgumentError as e:
        raise KitError(f"kernel arguments: {e}; fix the arguments after --") from e
    if unknown:
        raise KitError(f"unknown kernel argument(s) {' '.join(unknown)}; see run.py --help")
    if parsed.stage in NOT_IN_A_KERNEL:
        raise KitError(f"a kernel cannot run --stage {parsed.stage}; pass the study's stages after --, "
                       f"e.g. -- --stage all")
    if parsed.download:
        raise KitError("a kernel cannot --download (Kaggle mounts the data instead): drop it after -- and "
                       "list the data in kernel-metadata.json's competition_sources or dataset_sources")
    kernel = parse_config(args)
    if kernel.demo:
        from kit.demo import TRAIN_OVERRIDES

        apply_defaults(kernel, TRAIN_OVERRIDES)
    return args, kernel


def out_dir(cfg) -> Path:
    return Path(cfg.out) if cfg.out else DEFAULT_OUT


def run(cfg, strict=False) -> Path:
    """Write the bundle; `strict` (push): refuse what kaggle_meta.preflight finds, before writing."""
    args, kernel = kernel_args(cfg)
    template = kaggle_meta.template(cfg)
    meta = {**kaggle_meta.read(template), "code_file": CODE_FILE}
    warnings = kaggle_meta.validate(meta)
    problems = kaggle_meta.preflight(meta, kernel)
    if strict and problems:
        raise KitError("; also ".join(problems))
    for warning in warnings + problems:
        print(f"warning: {warning}")
    out = out_dir(cfg)
    source = bundle.kernel_source(args)
    write_text(source, out / CODE_FILE)
    write_json(meta, out / kaggle_meta.FILE)
    print(f"[bundle] {out / CODE_FILE} ({len(source.encode()) / 2**10:.0f} KiB) runs: "
          f"{shlex.join(['python', 'run.py', *args])}")
    if kaggle_meta.placeholder_owner(meta):
        print(f"[bundle] before pushing, put your Kaggle username in place of "
              f"{kaggle_meta.PLACEHOLDER_OWNER} in {template}")
    again = shlex.join(["python", "run.py", "--stage", "push", *(["--", *args] if args else [])])
    print(f"[bundle] push it: {again}, or kaggle kernels push -p {out}")
    return out
