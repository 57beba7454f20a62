"""synthetic-demo stage (`--demo --synthetic`): the synthetic-data study on the demo data, as
runs of the pipeline. Real images only, in <work> itself (a finished `--demo` run there is
reused); then the generate stage learns the two rarest classes from that run's train split into
<work>/generated; a second run, in <work>/synthetic, has those images in its train.csv;
synth-quality judges them with the real-only soup, and compare puts both runs' test results side
by side (<work>/reports/compare.csv).
"""
import dataclasses

from kit import layout, runner
from kit.config import apply_defaults
from kit.data import demo


def run(cfg):
    apply_defaults(cfg, demo.GENERATOR_OVERRIDES)
    study = dataclasses.replace(cfg, demo=False, synthetic=False, stage="all")
    real = dataclasses.replace(study, synthetic_dir="")
    generated = layout.generated_dir(real.work)
    mixed = dataclasses.replace(study, work_dir=str(cfg.work / "synthetic"), synthetic_dir=str(generated))
    print(f"[demo] run real images only: {real.work}")
    runner.run(real)
    print(f"[demo] a generator of the rarest classes ({', '.join(demo.rarest_classes())}) learns from the train "
          f"split of {real.work}")
    runner.run(dataclasses.replace(real, stage="generate"))
    print(f"[demo] run with synthetic images: {mixed.work}")
    runner.run(mixed)
    runner.run(dataclasses.replace(mixed, stage="synth-quality", weights=str(layout.soup_weights(real.work))))
    runner.run(dataclasses.replace(study, stage="compare", runs=(real.work_dir, mixed.work_dir)))
