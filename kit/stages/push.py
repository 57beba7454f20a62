"""Push stage: bundle the kernel, then upload and start it with the kaggle package's own push.

The kernel's arguments are checked against its metadata before anything leaves the machine
(kaggle_meta.preflight: weights, competition data, the output to resume from). Credentials and
the network are checked next, so that their absence is one line here rather than a traceback.
The push runs in-process because the CLI exits 0 when Kaggle refuses it or drops a data source
(it only prints the reason); here either is an error.
"""
from kit.errors import KitError
from kit.kaggle import bundle, kaggle_meta
from kit.kaggle.download import kaggle_api, kaggle_errors

# the fields of kaggle's ApiSaveKernelResponse that list the sources it dropped
DROPPED = {"competition": "invalidCompetitionSources", "dataset": "invalidDatasetSources",
           "kernel": "invalidKernelSources", "model": "invalidModelSources"}


def run(cfg):
    folder = bundle.write(cfg.kernel_args, cfg.kernel_metadata, cfg.out, strict=True)
    meta = kaggle_meta.read(folder / kaggle_meta.FILE)
    kaggle_meta.validate(meta, folder)
    if kaggle_meta.placeholder_owner(meta):
        raise KitError(f"{kaggle_meta.FILE}: id still starts with {kaggle_meta.PLACEHOLDER_OWNER}; put your "
                       f"Kaggle username there (kaggle.com > your profile's URL) and push again")
    api = kaggle_api("--stage push")
    print(f"[push] kaggle kernels push -p {folder}", flush=True)
    with kaggle_errors("--stage push", f"access denied: is {meta['id']} yours?"):
        result = api.kernels_push(str(folder))
    if result is None or result.error:
        reason = result.error if result is not None else "no answer"
        raise KitError(f"Kaggle refused the push: {reason}; the bundle is in {folder}")
    dropped = [f"{kind} sources {getattr(result, field)}" for kind, field in DROPPED.items()
               if getattr(result, field, None)]
    if dropped:
        raise KitError(f"Kaggle pushed {result.url} without its {', '.join(dropped)}: the kernel will not find "
                       f"that data; accept the competition's rules or fix the slugs in {kaggle_meta.FILE}, "
                       f"then push again")
    print(f"[push] version {result.versionNumber} is running: {result.url}")
