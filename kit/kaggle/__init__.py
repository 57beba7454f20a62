"""Kaggle: the kernel bundle and its metadata, and the Kaggle API's downloads (the archive streamed
by byte ranges)."""
