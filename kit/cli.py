"""Command line: parse flags into a Config, resolve it for this machine, run the stages."""
import argparse
import dataclasses
import importlib
import os
import shlex
import sys
import time
import traceback
import typing
from pathlib import Path

from kit import env, interrupt, runlog, session, smoke
from kit.config import STAGES, TASKS, Config, apply_defaults, fields_by_group
from kit.errors import KitError
from kit.io import remove_partial_writes, write_json

# stages that never import timm: they start at once, without asking whether the hub answers
MODEL_FREE = ("metadata", "separate", "split", "generate", "compare", "bundle", "push", "submit")

GROUP_TITLES = {
    "general": "general",
    "data": "data: dataset, filter, stored images and split",
    "train": "train: model and recipe",
    "evaluate": "soup, evaluate and predict",
    "study": "synthetic-data study",
    "platform": "Kaggle, Colab and sessions",
}


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default, unless its help already says what it is or there is none to show."""

    def _get_help_string(self, action):
        if "(default" in (action.help or "") or action.default in ("", None, ()):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, not argparse's usage of every flag: the flag, what is wrong, where to look."""
        self.exit(2, f"error: {message}; run.py --help lists every flag\n")


def checked(kind, check):
    """argparse type: `kind`, refused (saying the range) outside `check`."""
    ok, wanted = check

    def convert(text):
        value = kind(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range (it must be {wanted})")
        return value
    convert.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return convert


def build_parser(defaults=True):
    """The command line; without `defaults`, parsing gives only the settings the user named."""
    parser = Parser(
        prog="run.py",
        description="Chest X-ray classification study: "
                    + " -> ".join(STAGES) + ". Every artifact goes to --work-dir.",
        formatter_class=DefaultsFormatter,
    )
    for group, fields in fields_by_group().items():
        g = parser.add_argument_group(GROUP_TITLES[group])
        for f in fields:
            flag = "--" + f.name.replace("_", "-")
            kw = dict(dest=f.name, default=f.default if defaults else argparse.SUPPRESS, help=f.metadata["help"])
            if f.type in (bool, "bool"):
                kw["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(f.type) is tuple:  # tuple[str, str]: a flag taking two values
                kw.update(type=typing.get_args(f.type)[0], nargs=len(typing.get_args(f.type)),
                          metavar=f.name.upper())
            else:
                kw["type"] = {"int": int, "float": float, "str": str}.get(f.type, f.type)
                if f.metadata["check"]:
                    kw["type"] = checked(kw["type"], f.metadata["check"])
                kw["choices"] = f.metadata["choices"]
                kw["metavar"] = None if f.metadata["choices"] else f.name.upper()
            g.add_argument(flag, **kw)
    return parser


def parse_config(argv=None) -> Config:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" in argv:  # run.py --stage bundle -- ARGS: ARGS are the bundled kernel's own arguments
        cut = argv.index("--")
        argv = argv[:cut] + ["--kernel-args=" + shlex.join(argv[cut + 1:])]
    cfg = Config(**vars(build_parser().parse_args(argv)))
    cfg.given = frozenset(vars(build_parser(defaults=False).parse_args(argv)))
    return cfg


def resolve(cfg: Config) -> Config:
    """Fill the defaults that depend on where we run."""
    where = env.platform()
    if not cfg.work_dir:
        cfg.work_dir = str(env.default_work_dir(where))
    apply_defaults(cfg, TASKS[cfg.task])
    if cfg.smoke:
        smoke.resolve(cfg)
    if cfg.workers <= 0:
        cfg.workers = env.cpu_count()
    session.resolve(cfg, where)
    return cfg


def stage_list(stage):
    return list(STAGES) if stage == "all" else [stage]


def run(cfg: Config):
    env.ensure_writable(cfg.work)
    runlog.start(cfg)  # main stops it, after printing any error
    if cfg.synthetic and not cfg.demo:
        raise KitError("--synthetic makes demo synthetic images and goes with --demo; mix in "
                       "your own with --synthetic-dir DIR")
    if cfg.demo:
        from kit import demo

        demo.prepare(cfg)
        if cfg.synthetic:
            from kit import synthetic_demo

            return synthetic_demo.run(cfg, run)
    elif cfg.download:
        from kit import download

        download.fetch(cfg)
    if first_process():  # torchrun's other ranks may already be writing
        for folder in {cfg.work, *([Path(cfg.data_dir)] if cfg.demo else [])}:
            remove_partial_writes(folder)
    write_json(dataclasses.asdict(cfg), cfg.work / "run_config.json")
    if set(stage_list(cfg.stage)) - set(MODEL_FREE):
        env.hub_reachable()  # before any stage imports timm: offline, nothing waits on the hub
    modules = {name: importlib.import_module(f"kit.stages.{name.replace('-', '_')}")
               for name in stage_list(cfg.stage)}
    if session.start(cfg):
        print(env.facts(cfg, torch_loaded="torch" in sys.modules))
    submits = False  # whether this run ends with a submission
    try:
        for name, module in modules.items():
            why = module.skipped(cfg) if cfg.stage == "all" and hasattr(module, "skipped") else None
            if why:
                print(f"[{name}] skipped: {why}")
                continue
            session.check_time(cfg, name)
            start = time.perf_counter()
            module.run(cfg)
            print(f"[{name}] done in {time.perf_counter() - start:.1f}s")
            if name == "metadata" and "predict" in modules and not modules["predict"].skipped(cfg):
                submits = True
                modules["predict"].check_ahead(cfg)  # before hours of training, not after
    except session.TimeUp:
        if submits and first_process():  # every session ends with a submission
            modules["predict"].interim(cfg)
        raise


def first_process() -> bool:
    """Not one of torchrun's other ranks: a stop that all of them share is told once."""
    return os.environ.get("RANK", "0") == "0"


def describe(e: Exception) -> str:
    """A KitError says problem and fix; an OSError out of a stage is the machine's (permissions,
    a full disk, a vanished mount): name it and the path."""
    if isinstance(e, KitError):
        return str(e)
    where = f": {e.filename}" if e.filename else ""
    return (f"{e.strerror or e}{where}; check that path's permissions and the free disk space, then "
            f"rerun (finished work is kept)")


def main(argv=None):
    cfg = parse_config(argv)
    try:
        run(resolve(cfg))
    except (KitError, OSError) as e:
        if cfg.debug:
            traceback.print_exc()
        print(f"error: {describe(e)}", file=sys.stderr)
        return 2
    except session.TimeUp as e:
        if first_process():
            print(e)
        return 0
    except interrupt.Interrupted as e:
        if first_process():
            print(e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        session.end()
        runlog.stop()
    return 0
