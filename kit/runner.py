"""Running one resolved config: the data its stages read prepared, the stages of --stage in order
(kit/pipeline.py: the table), and a session that stops early still ending with what it was run
for. The command line runs it once; the synthetic demo's stage runs it for each of its runs.
"""
import os
import sys
import time
import traceback
from pathlib import Path

from kit import env, errors, layout, pipeline, runlog
from kit.config import apply_defaults, download_kwargs
from kit.data import shards
from kit.io import remove_partial_writes, write_json
from kit.training import interrupt, session


def prepare(cfg):
    """The data the stages read: the demo's generated dataset, or on a new machine what the work dir
    kept of the stored images and the download (shards), then --download's missing files."""
    if cfg.demo:
        from kit.data import demo

        apply_defaults(cfg, demo.defaults(cfg.task, cfg.smoke))
        cfg.data_dir = cfg.data_dir or demo.data_dir(cfg.work)
        demo.prepare(cfg.data_dir)
        return
    if first_process():
        shards.restore_all(cfg.work)  # before any download
    if cfg.download:
        from kit.kaggle import download

        cfg.data_dir = download.fetch(**download_kwargs(cfg))


def record_config(cfg, **more):
    """run_config.json: the resolved settings, where the run ran and where its images are stored,
    and `more` (the train stage's fitted schedule)."""
    write_json({**cfg.to_dict(), "platform": env.platform(),
                "stored_images": str(layout.chosen_dataset_dir(cfg.work, cfg.dataset_dir).resolve()), **more},
               layout.run_config(cfg.work))


def run(cfg):
    """Run --stage (all: the pipeline in order) for a resolved config."""
    env.ensure_writable(cfg.work)
    runlog.start(cfg.work, cfg.stage)  # the command line stops it, after printing any error
    prepare(cfg)
    if first_process():  # torchrun's other ranks may already be writing
        for folder in {cfg.work, *([Path(cfg.data_dir)] if cfg.demo else [])}:
            remove_partial_writes(folder)
    record_config(cfg)
    stages = pipeline.to_run(cfg.stage)
    if any(stage.model for stage in stages):
        env.hub_reachable()  # before any stage imports timm: offline, nothing waits on the hub
    for stage in stages:  # before the facts, which say whether torch is loaded
        stage.load()
    if session.start(cfg.time_limit):
        print(env.facts("torch" in sys.modules, cfg.work, cfg.data_dir, cfg.time_limit, cfg.output_budget, cfg.stage))
    run_stages(cfg, stages)


def run_stages(cfg, stages):
    """The stages in order; under --stage all, the checks of the later ones once the targets are
    chosen, and the ones a run with a test split or a submission to make passes by."""
    whole = cfg.stage == "all"

    def skipped(stage):  # why --stage all passes it by, asked when it is due
        return stage.module.skipped(cfg) if whole and stage.optional else None

    done = []

    def finish_early(error=None, failed=None) -> bool:
        """Every session still ends with what it was run for, as far as it got: the stages with a
        `finish` (predict) make an interim submission at the time limit, or after a failure
        (`error`, --on-error submit) a fallback one. False: there were no weights to make it."""
        return any([stage.module.finish(cfg, error) for stage in stages
                    if whole and stage.finish and stage not in done and stage is not failed and not skipped(stage)])

    stage = None
    try:
        for stage in stages:
            why = skipped(stage)
            if why:
                print(f"[{stage.name}] skipped: {why}")
                continue
            session.check_time(cfg.time_limit, cfg.work, stage.name)
            start = time.perf_counter()
            stage.module.run(cfg)
            print(f"[{stage.name}] done in {time.perf_counter() - start:.1f}s")
            if whole and not done:  # the targets are chosen: what would fail later fails now, not after training
                for later in stages:
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
        if not finish_early(f"[{stage.name}] {errors.describe(e)}", failed=stage):
            raise


def first_process() -> bool:
    """Not one of torchrun's other ranks: a stop that all of them share is told once."""
    return os.environ.get("RANK", "0") == "0"
