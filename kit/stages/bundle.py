"""Bundle stage: dist/kaggle/kernel.py (the whole kit in one file) and its kernel-metadata.json,
ready for `kaggle kernels push -p dist/kaggle`.

`python run.py --stage bundle -- --stage all --epochs 6`: everything after `--` becomes the
kernel's own arguments (a script kernel gets no command line). They and the metadata are
checked here, so that a mistake shows now rather than after an upload and a queue; what the run
needs and the metadata does not attach (kaggle_meta.preflight) is a warning here and an error
for push.
"""
from kit.kaggle import bundle


def run(cfg):
    bundle.write(cfg.kernel_args, cfg.kernel_metadata, cfg.out)
