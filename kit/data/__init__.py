"""The data: dataset adapters (sources/), images on disk and their shards, augmentation and loaders,
the competition's sample submission and test films, studies, the demo's and smoke's data,
synthetic images.
"""
