"""`run.py --demo --synthetic`: the synthetic-data study end to end on the demo data, on a CPU.

Two runs of the whole study: real images only, in <work> itself (so a finished `--demo` run
there is reused, not redone), then the generate stage trains a CPU-sized diffusion model on
that run's train images of the two rarest classes and samples synthetic images of them into
<work>/generated; the second run, in <work>/synthetic, has them in its train.csv. synth-quality
judges them with the real-only run's soup; compare puts the two runs' test results side by side
(<work>/reports/compare.csv).
"""
import dataclasses

from kit import demo, layout
from kit.config import apply_defaults

RARE_CLASSES = 2
# CPU-sized generator (flags the user passes win): 32 px, a 32-channel UNet (1.0M parameters), 40
# epochs of batches of 8 of the 81 demo train images of the two rarest classes (400 updates, a
# higher rate than the study's for so few), 20 sampling steps. It predicts the clean image: a
# noise-predicting one still samples saturated noise after 150 updates, this one films with the
# class's signs after 70; 400 rather than 150 updates halve synth-quality's Frechet distance
GENERATOR_OVERRIDES = dict(gen_size=32, gen_width=32, gen_batch=8, gen_lr=1e-3, gen_epochs=40, gen_target="sample",
                           gen_steps=20)


def rarest_classes(n=RARE_CLASSES) -> list:
    return sorted(demo.PROPORTIONS, key=demo.PROPORTIONS.get)[:n]


def run(cfg, run_stages):
    """cfg: prepared by demo.prepare; run_stages: kit.cli.run (one config's stages)."""
    apply_defaults(cfg, GENERATOR_OVERRIDES)
    study = dataclasses.replace(cfg, demo=False, synthetic=False, stage="all")
    real = dataclasses.replace(study, synthetic_dir="")
    generated = layout.generated_dir(real.work)
    mixed = dataclasses.replace(study, work_dir=str(cfg.work / "synthetic"), synthetic_dir=str(generated))
    print(f"[demo] run real images only: {real.work}")
    run_stages(real)
    print(f"[demo] a generator of the rarest classes ({', '.join(rarest_classes())}) learns from the train "
          f"split of {real.work}")
    run_stages(dataclasses.replace(real, stage="generate"))
    print(f"[demo] run with synthetic images: {mixed.work}")
    run_stages(mixed)
    run_stages(dataclasses.replace(mixed, stage="synth-quality", weights=str(layout.soup_weights(real.work))))
    run_stages(dataclasses.replace(study, stage="compare", runs=(real.work_dir, mixed.work_dir)))
