"""xray kit: a chest X-ray classification study, from raw dataset to submission."""
import os
from pathlib import Path

# OpenMP threads that spin while they wait slow CPU training down several times over as soon as
# another process shares the cores; waiting asleep costs next to nothing. Set before torch loads
# its OpenMP runtime, which reads it once; a setting of the user's own wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
ROOT = Path(__file__).resolve().parents[1]  # the folder of run.py: what a kernel bundles
