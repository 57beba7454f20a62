"""The pipeline in one place: every stage, in order, with what it reads and writes.

    metadata -> separate -> split -> train -> soup -> evaluate -> predict

A stage is a module kit/stages/<name>.py (dashes as underscores) holding `run(cfg)`; the table
below declares the rest, and the command line runs every stage the same way (order, time
checks, timing). A stage whose outputs can be up to date wraps its `run` in `stamped`, with a
`stamp(cfg)` that names the settings, inputs and outputs deciding it. Adding a stage is one
module and one line here.

Modules load only when their stage runs: the data stages start without importing timm.
"""
import functools
import importlib
from dataclasses import dataclass, field
from typing import NamedTuple

from kit import stamps


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple = ()  # artifacts (layout's names) an earlier stage wrote
    writes: tuple = ()
    inputs: tuple = ()  # what it reads of the data folder (INPUTS)
    model: bool = False  # imports timm: the hub is asked first, so an offline machine never waits on it
    # `check(cfg)`: run under --stage all as soon as the first stage has chosen the targets, so that a
    # mistake stops the run before hours of training
    check: bool = False
    # `skipped(cfg) -> str | None`: under --stage all, why this run passes the stage by
    optional: bool = False
    # `finish(cfg, error)`: what it still does under --stage all when the time limit (error None) or,
    # with --on-error submit, a failure stops the run before it (predict: an interim submission from
    # the latest weights, or a fallback from the val-best epoch)
    finish: bool = False
    doc: str = field(default="", compare=False)

    def load(self):
        return importlib.import_module(f"kit.stages.{self.name.replace('-', '_')}")

    @property
    def module(self):
        return self.load()


# the data folder's parts a stage reads: the dataset's tables and images, and the competition's
# sample submission with its test films
INPUTS = ("data", "sample")

PIPELINE = (
    Stage("metadata", (), ("filtered",), ("data", "sample"), doc="keep the target classes' images"),
    Stage("separate", ("filtered",), ("dataset",), ("data",), doc="copy and shrink just those images"),
    Stage("split", ("dataset",), ("splits",), doc="train/val/test by patient"),
    # the sample submission: how many test films predict will take, time kept at the end
    Stage("train", ("dataset", "splits"), ("checkpoints", "history"), ("sample",), model=True, doc="fine-tune"),
    Stage("soup", ("checkpoints", "splits", "history", "dataset"), ("soup", "reports"), model=True,
          doc="average the last epochs"),
    Stage("evaluate", ("soup", "splits", "checkpoints", "history", "dataset"), ("reports",), model=True,
          optional=True, doc="the held-out test report"),
    # splits/train.csv: the prevalence that fills an unreadable film (--on-missing fill);
    # checkpoints/last.pth: the schedule the submission's report names
    Stage("predict", ("soup", "filtered", "dataset", "splits", "checkpoints"), ("submission", "reports"),
          ("sample",), model=True, check=True, optional=True, finish=True,
          doc="submission.csv in the sample submission's order"),
)
# run only when named
TOOLS = (
    Stage("generate", ("splits", "dataset"), ("generated", "reports"), doc="synthetic images of scarce classes"),
    Stage("synth-quality", ("splits", "soup", "dataset"), ("reports",), model=True, doc="judge synthetic images"),
    Stage("compare", ("reports",), ("reports",), doc="two runs' test AUCs, paired"),
    Stage("synthetic-demo", (), ("generated", "reports"), doc="--demo --synthetic: the synthetic-data study's runs"),
    Stage("blend", (), ("submission", "reports"), doc="several runs' answers, weights chosen on val"),
    Stage("bundle", doc="the kit as one kernel.py"),
    Stage("push", doc="bundle and push the kernel"),
    Stage("submit", ("submission",), doc="submit submission.csv"),
    Stage("weights", model=True, doc="save pretrained weights for a machine without internet"),
)
BY_NAME = {s.name: s for s in PIPELINE + TOOLS}


def to_run(name: str) -> list:
    """The stages `--stage name` runs, in order."""
    return list(PIPELINE) if name == "all" else [BY_NAME[name]]


class Stamp(NamedTuple):
    """What decides whether a stage's outputs are up to date; `found`: what the stamp looked up
    that the run needs too (the dataset's CSV, the test folder's index, ...), handed on to it."""
    settings: dict
    inputs: list
    outputs: list
    found: object = None


def stamped(name: str, stamp):
    """`run` of stage `name`, skipped (saying so) when `stamp(cfg, ...)`'s outputs exist and its
    settings and inputs did not change since they were made; recorded when it ran. A stamp that
    found something hands it to the run as `found=`, so a stage looks nothing up twice."""
    def wrap(run):
        @functools.wraps(run)
        def checked(cfg, *args, **kwargs):  # cfg: the stage's whole config, handed to its stamp and run
            s = stamp(cfg, *args, **kwargs)
            if stamps.up_to_date(cfg.work, name, s.settings, s.inputs, s.outputs, cfg.force):
                return None
            result = run(cfg, *args, **kwargs, **({} if s.found is None else {"found": s.found}))
            stamps.record(cfg.work, name, s.settings, s.inputs)
            return result
        return checked
    return wrap
