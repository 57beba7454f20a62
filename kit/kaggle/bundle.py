"""A one-file Kaggle kernel. `kaggle kernels push` uploads only the file named by code_file, so
kernel.py carries run.py and the kit package inside itself: a zip archive, base64, in a string.

At start the kernel unpacks them into a temporary folder named after the archive's hash (runs
of one kernel share it; another kernel never sees stale code), puts that folder first on
sys.path and calls run.py's main with the arguments baked in at bundle time. The folder is a
real one because the training relaunch under torchrun and the data-loading worker processes
import the kit from disk. The same sources always give the same kernel.py, byte for byte.
"""
import argparse
import base64
import dataclasses
import hashlib
import io
import shlex
import zipfile
from pathlib import Path

from kit import ROOT
from kit.config import settings
from kit.config import apply_defaults
from kit.config.flags import build_parser, parse_config
from kit.errors import KitError
from kit.io import write_json, write_text
from kit.kaggle import kaggle_meta
from kit.training import session

ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: no file time leaks into the bytes

KERNEL = '''\
"""xray kit as one Kaggle script kernel: python run.py --stage bundle wrote it.

It runs `{shown}`. run.py and the kit package travel in ARCHIVE (a zip, base64)
and are unpacked into a temporary folder at start. Edit ARGS to change the run; bundle again
to change the code.
"""
import base64
import hashlib
import io
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

ARGS = {args!r}
ARCHIVE_SHA256 = "{digest}"
ARCHIVE = """
{archive}"""


def unpack() -> Path:
    """The folder holding run.py and kit/, unpacked once per archive and renamed into place
    whole, so that no process ever imports from a half-written folder."""
    data = base64.b64decode(ARCHIVE)
    if hashlib.sha256(data).hexdigest() != ARCHIVE_SHA256:
        sys.exit("kernel.py: ARCHIVE was edited and is damaged; bundle the kernel again")
    target = Path(tempfile.gettempdir()) / ("xray-kit-" + ARCHIVE_SHA256[:16])
    if not (target / "run.py").is_file():
        staging = tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent)
        zipfile.ZipFile(io.BytesIO(data)).extractall(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another process put it in place first
            shutil.rmtree(staging)
    return target


if __name__ == "__main__":
    sys.path.insert(0, str(unpack()))
    from kit.cli import main

    code = main(ARGS)
    if code:
        sys.exit(code)
'''


def sources(root=ROOT) -> list:
    """run.py and every module of the kit package, relative to `root`, in a fixed order."""
    return [Path("run.py")] + sorted(p.relative_to(root) for p in (Path(root) / "kit").rglob("*.py"))


def archive(root=ROOT) -> bytes:
    """A zip of `sources` whose bytes depend on the files' contents and names only."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for rel in sources(root):
            info = zipfile.ZipInfo(rel.as_posix(), ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, (Path(root) / rel).read_bytes(), compresslevel=9)
    return buffer.getvalue()


def kernel_source(args, root=ROOT) -> str:
    """kernel.py's text: the kit of `root` that runs `run.py ARGS`."""
    data = archive(root)
    return KERNEL.format(shown=shlex.join(["python", "run.py", *args]), args=list(args),
                         digest=hashlib.sha256(data).hexdigest(),
                         archive=base64.encodebytes(data).decode("ascii"))


DEFAULT_OUT = Path("dist") / "kaggle"
CODE_FILE = "kernel.py"
NOT_IN_A_KERNEL = ("bundle", "push", "submit", "weights")  # they need this machine's files or the internet


def kernel_args(text) -> tuple:
    """The kernel's arguments (`text`, the words after --), parsed by run.py's own parser to catch
    a typo before the push, and the settings they give the kernel's run (the demo's where they
    leave them to it)."""
    try:
        args = shlex.split(text)
    except ValueError as e:  # an unclosed quote
        raise KitError(f"kernel arguments: {e}; fix the quoting after --") from e
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
    try:  # the words-or-numbers (--epochs auto), as the kernel resolves them on Kaggle
        limit = session.KAGGLE_TIME_LIMIT if kernel.time_limit == "auto" else kernel.time_limit
        settings.resolve(dataclasses.replace(kernel, time_limit=limit))
    except KitError as e:
        raise KitError(f"kernel arguments: {e}") from e
    if kernel.demo:
        from kit.data.demo import TRAIN_OVERRIDES

        apply_defaults(kernel, TRAIN_OVERRIDES)
    return args, kernel


def out_dir(out) -> Path:
    return Path(out) if out else DEFAULT_OUT


def write(args_text, kernel_metadata, out, strict=False) -> Path:
    """Write the bundle of the kernel running `args_text` with --kernel-metadata `kernel_metadata`
    into --out `out`; `strict` (push): refuse what kaggle_meta.preflight finds, before writing."""
    args, kernel = kernel_args(args_text)
    template = kaggle_meta.template(kernel_metadata)
    meta = {**kaggle_meta.read(template), "code_file": CODE_FILE}
    warnings = kaggle_meta.validate(meta)
    problems = kaggle_meta.preflight(meta, kernel)
    if strict and problems:
        raise KitError("; also ".join(problems))
    for warning in warnings + problems:
        print(f"warning: {warning}")
    out = out_dir(out)
    source = kernel_source(args)
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
