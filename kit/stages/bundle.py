"""Bundle stage: dist/kaggle/kernel.py (the whole kit in one file) and its kernel-metadata.json,
ready for `kaggle kernels push -p dist/kaggle`.

`python run.py --stage bundle -- --stage all --epochs 6`: everything after `--` becomes the
kernel's own arguments (a script kernel gets no command line). They and the metadata are
checked here, so that a mistake shows now rather than after an upload and a queue.
"""
import argparse
import shlex
from pathlib import Path

from kit import bundle, kaggle_meta
from kit.errors import KitError
from kit.io import write_json, write_text

DEFAULT_OUT = Path("dist") / "kaggle"
CODE_FILE = "kernel.py"
NOT_IN_A_KERNEL = ("bundle", "push", "weights")  # they need this machine's files or the internet


def kernel_args(cfg) -> list:
    """The kernel's arguments, parsed by run.py's own parser to catch a typo before the push."""
    from kit.cli import build_parser

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
    return args


def out_dir(cfg) -> Path:
    return Path(cfg.out) if cfg.out else DEFAULT_OUT


def run(cfg) -> Path:
    args = kernel_args(cfg)
    template = Path(cfg.kernel_metadata) if cfg.kernel_metadata else bundle.ROOT / kaggle_meta.FILE
    meta = {**kaggle_meta.read(template), "code_file": CODE_FILE}
    for warning in kaggle_meta.validate(meta):
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
