"""Where the kit runs: Kaggle, Colab or a local machine; the kernel bundle and its metadata, the
Kaggle API's downloads.
"""
