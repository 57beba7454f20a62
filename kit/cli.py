"""Command line: parse flags into a Config, resolve it for this machine, run the stages."""
import sys
import traceback

from kit import env, runlog, runner
from kit.config import settings
from kit.config import TIMED_COMPETITION, TASKS, Config, apply_defaults
from kit.config.flags import parse_config
from kit.data import smoke
from kit.errors import KitError, describe
from kit.training import interrupt, session


def resolve(cfg: Config) -> Config:
    """Fill the defaults that depend on where we run."""
    where = env.platform()
    if not cfg.work_dir:
        cfg.work_dir = str(env.default_work_dir(where))
    apply_defaults(cfg, TASKS[cfg.task])
    if cfg.task == "competition" and where in ("kaggle", "colab"):
        apply_defaults(cfg, TIMED_COMPETITION)
    if cfg.smoke:  # its own folders and short settings (the user's flags still win)
        cfg.work_dir, cfg.dataset_dir = smoke.folders(cfg.work_dir, cfg.dataset_dir)
        apply_defaults(cfg, smoke.defaults(cfg.task))
    if cfg.workers <= 0:
        cfg.workers = env.cpu_count()
    cfg.time_limit, cfg.output_budget = session.resolve(cfg.time_limit, cfg.output_budget, cfg.resume, where)
    settings.resolve(cfg)
    return cfg


def main(argv=None):
    cfg = parse_config(argv)
    try:
        runner.run(resolve(cfg))
    except (KitError, OSError) as e:
        if cfg.debug:
            traceback.print_exc()
        print(f"error: {describe(e)}", file=sys.stderr)
        return 2
    except session.TimeUp as e:
        if runner.first_process():
            print(e)
        return 0
    except interrupt.Interrupted as e:
        if runner.first_process():
            print(e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        session.end()
        runlog.stop()
    return 0
