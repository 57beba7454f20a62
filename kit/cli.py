"""Command line: parse flags into a Config, resolve it for this machine, run the stages."""
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path

from kit import env, interrupt, layout, pipeline, runlog, session, settings, shards, smoke
from kit.config import TIMED_COMPETITION, TASKS, Config, apply_defaults
from kit.errors import KitError
from kit.flags import parse_config
from kit.io import remove_partial_writes, write_json


def resolve(cfg: Config) -> Config:
    """Fill the defaults that depend on where we run."""
    where = env.platform()
    if not cfg.work_dir:
        cfg.work_dir = str(env.default_work_dir(where))
    apply_defaults(cfg, TASKS[cfg.task])
    if cfg.task == "competition" and where in ("kaggle", "colab"):
        apply_defaults(cfg, TIMED_COMPETITION)
    if cfg.smoke:
        smoke.resolve(cfg)
    if cfg.workers <= 0:
        cfg.workers = env.cpu_count()
    session.resolve(cfg, where)
    settings.resolve(cfg)
    return cfg


def run(cfg: Config):
    env.ensure_writable(cfg.work)
    runlog.start(cfg)  # main stops it, after printing any error
    if cfg.synthetic and not cfg.demo:
        raise KitError("--synthetic makes demo synthetic images and goes with --demo; mix in "
                       "your own with --synthetic-dir DIR")
    if not cfg.demo and first_process():
        shards.restore_all(cfg.work)  # a new machine: what the work dir kept, before any download
    if cfg.demo:
        from kit import demo

        demo.prepare(cfg)
        if cfg.synthetic:
            return demo.run_synthetic(cfg, run)
    elif cfg.download:
        from kit import download

        download.fetch(cfg)
    if first_process():  # torchrun's other ranks may already be writing
        for folder in {cfg.work, *([Path(cfg.data_dir)] if cfg.demo else [])}:
            remove_partial_writes(folder)
    write_json({**dataclasses.asdict(cfg), "platform": env.platform(),
                "stored_images": str(layout.chosen_dataset_dir(cfg.work, cfg.dataset_dir).resolve())},
               layout.run_config(cfg.work))
    plan = pipeline.plan(cfg.stage)
    if any(stage.model for stage in plan):
        env.hub_reachable()  # before any stage imports timm: offline, nothing waits on the hub
    for stage in plan:  # before the facts, which say whether torch is loaded
        stage.load()
    if session.start(cfg):
        print(env.facts(cfg, torch_loaded="torch" in sys.modules))
    whole = cfg.stage == "all"

    def skipped(stage):  # why --stage all passes it by, asked when it is due
        return stage.module.skipped(cfg) if whole and stage.optional else None

    done = []

    def finish_early(error=None, failed=None) -> bool:
        """Every session still ends with what it was run for, as far as it got: the stages with a
        `finish` (predict) make an interim submission at the time limit, or after a failure
        (`error`, --on-error submit) a fallback one. False: there were no weights to make it."""
        return any([stage.module.finish(cfg, error) for stage in plan
                    if whole and stage.finish and stage not in done and stage is not failed and not skipped(stage)])

    stage = None
    try:
        for stage in plan:
            why = skipped(stage)
            if why:
                print(f"[{stage.name}] skipped: {why}")
                continue
            session.check_time(cfg, stage.name)
            start = time.perf_counter()
            stage.module.run(cfg)
            print(f"[{stage.name}] done in {time.perf_counter() - start:.1f}s")
            if whole and not done:  # the targets are chosen: what would fail later fails now, not after training
                for later in plan:
                    if later.check and not skipped(later):
                        later.module.check(cfg)
            done.append(stage)
    except session.TimeUp:
        if done and first_process():
            finish_early()
        raise
    except interrupt.Interrupted:
        raise
    except Exception as e:  # any failure: out of memory, non-finite updates, unreadable data, a crashed worker
        if not (done and cfg.on_error == "submit" and first_process()):
            raise
        if cfg.debug:
            traceback.print_exc()
        if not finish_early(f"[{stage.name}] {describe(e)}", failed=stage):
            raise


def first_process() -> bool:
    """Not one of torchrun's other ranks: a stop that all of them share is told once."""
    return os.environ.get("RANK", "0") == "0"


def describe(e: Exception) -> str:
    """A KitError says problem and fix; an OSError out of a stage is the machine's (permissions,
    a full disk, a vanished mount): name it and the path; anything else, its type and first line."""
    if isinstance(e, KitError):
        return str(e)
    if not isinstance(e, OSError):
        first = next((line for line in str(e).splitlines() if line.strip()), "")[:300]
        return f"{type(e).__name__}: {first}"
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
