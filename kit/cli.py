"""Command line: parse flags into a Config, resolve it for this machine, run the stages."""
import argparse
import dataclasses
import importlib
import sys
import time
import traceback
import typing

from kit import env
from kit.config import STAGES, Config, fields_by_group
from kit.errors import KitError
from kit.io import write_json

GROUP_TITLES = {
    "general": "general",
    "data": "data: dataset, filter, stored images and split",
    "train": "train: model and recipe",
    "evaluate": "soup, evaluate and predict",
    "study": "synthetic-data study",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Chest X-ray classification study: "
                    + " -> ".join(STAGES) + ". Every artifact goes to --work-dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for group, fields in fields_by_group().items():
        g = parser.add_argument_group(GROUP_TITLES[group])
        for f in fields:
            flag = "--" + f.name.replace("_", "-")
            kw = dict(dest=f.name, default=f.default, help=f.metadata["help"])
            if f.type in (bool, "bool"):
                kw["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(f.type) is tuple:  # tuple[str, str]: a flag taking two values
                kw.update(type=typing.get_args(f.type)[0], nargs=len(typing.get_args(f.type)),
                          metavar=f.name.upper())
            else:
                kw["type"] = {"int": int, "float": float, "str": str}.get(f.type, f.type)
                kw["choices"] = f.metadata["choices"]
                kw["metavar"] = None if f.metadata["choices"] else f.name.upper()
            g.add_argument(flag, **kw)
    return parser


def parse_config(argv=None) -> Config:
    args = build_parser().parse_args(argv)
    return Config(**vars(args))


def resolve(cfg: Config) -> Config:
    """Fill the defaults that depend on where we run."""
    where = env.platform()
    if not cfg.work_dir:
        cfg.work_dir = str(env.default_work_dir(where))
    if cfg.workers <= 0:
        cfg.workers = env.cpu_count()
    return cfg


def stage_list(stage):
    return list(STAGES) if stage == "all" else [stage]


def run(cfg: Config):
    if cfg.demo:
        from kit import demo

        demo.prepare(cfg)
    env.ensure_writable(cfg.work)
    write_json(dataclasses.asdict(cfg), cfg.work / "run_config.json")
    print(f"xray kit: {env.platform()} | work dir {cfg.work} | stages: {cfg.stage}")
    for name in stage_list(cfg.stage):
        module = importlib.import_module(f"kit.stages.{name.replace('-', '_')}")
        if cfg.stage == "all" and hasattr(module, "wanted") and not module.wanted(cfg):
            continue
        start = time.perf_counter()
        module.run(cfg)
        print(f"[{name}] done in {time.perf_counter() - start:.1f}s")


def main(argv=None):
    cfg = parse_config(argv)
    try:
        run(resolve(cfg))
    except KitError as e:
        if cfg.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
