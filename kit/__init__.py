"""xray kit: a chest X-ray classification study, from raw dataset to submission."""

__version__ = "0.1.0"
