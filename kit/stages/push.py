"""Push stage: bundle the kernel, then upload and start it with the kaggle CLI's own push.

Credentials and the network are checked first, so that their absence is one line here rather
than a traceback from the CLI.
"""
import subprocess
import sys

from kit import kaggle_meta
from kit.download import kaggle_api
from kit.errors import KitError
from kit.stages import bundle


def run(cfg):
    folder = bundle.run(cfg)
    meta = kaggle_meta.read(folder / kaggle_meta.FILE)
    kaggle_meta.validate(meta, folder)
    if kaggle_meta.placeholder_owner(meta):
        raise KitError(f"{kaggle_meta.FILE}: id still starts with {kaggle_meta.PLACEHOLDER_OWNER}; put your "
                       f"Kaggle username there (kaggle.com > your profile's URL) and push again")
    kaggle_api("--stage push")
    print(f"[push] kaggle kernels push -p {folder}", flush=True)
    code = subprocess.run([sys.executable, "-m", "kaggle", "kernels", "push", "-p", str(folder)]).returncode
    if code:
        raise KitError(f"kaggle kernels push failed (exit code {code}, its message is above); the bundle "
                       f"is in {folder}")
