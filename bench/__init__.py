"""Benchmarks of the kit's hot paths, each against the obvious alternative: `python -m bench.NAME`."""
