"""Every setting of the kit in one dataclass. Its defaults are the study's recipe.

Each field's metadata carries its command-line help, so `run.py --help` and the
resolved `run_config.json` can never drift apart from the code that reads them.
"""
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from kit import pipeline

# what --task changes, where the user did not choose: the competition trains on everything its
# sample submission scores (classes from the sample, read by the metadata stage)
TASKS = {
    "study": {},
    "competition": dict(label_mode="multi", views="all", keep_negatives=1.0, val_frac=0.05, test_frac=0.0,
                        on_missing="fill"),
}
# and on Kaggle and Colab, where a session's length is known and its end must leave a submission behind
TIMED_COMPETITION = dict(epochs="auto", on_error="submit")


def opt(default, help, group="general", choices=None, flag=None, check=None):
    """A setting; `check`: (predicate, what it asks) of a number, tested on the command line."""
    return field(default=default, metadata=dict(help=help, group=group, choices=choices, flag=flag, check=check))


def at_least(low):
    return (lambda v: v >= low), f"at least {low}"


def above(low):
    return (lambda v: v > low), f"above {low}"


def between(low, high):
    return (lambda v: low <= v <= high), f"from {low} to {high}"


@dataclass
class Config:
    # general
    stage: str = opt("all", "stage to run, or all of the pipeline's stages in order (kit/pipeline.py)",
                     choices=(*pipeline.BY_NAME, "all"))
    task: str = opt("study", "study: the notebooks' 5 classes, single-label, frontal views, a held-out "
                             "test report; competition: what the competition's sample submission scores, "
                             "multi-label, every view and labelled image, a small val split, "
                             "submission.csv at the end of every session", choices=tuple(TASKS))
    work_dir: str = opt("", "where every artifact is written (default: /kaggle/working on Kaggle; on Colab "
                            "/content/drive/MyDrive/xray-kit when Drive is mounted, else /content/xray-kit; "
                            "./work elsewhere)")
    force: bool = opt(False, "redo a stage even when its outputs are up to date")
    seed: int = opt(42, "seed of the split, the data order and the weights", check=at_least(0))
    workers: int = opt(0, "CPU worker processes (0: all cores)")
    demo: bool = opt(False, "generate a small dataset in the Grand X-Ray Slam layout and run the "
                           "whole study on it with a CPU-sized model")
    smoke: bool = opt(False, "every stage on a small slice of the real data (a few hundred images, one "
                             "short epoch) in <work>/smoke, to find a wrong path or missing weights in "
                             "minutes; nothing a real run would take as its own")
    debug: bool = opt(False, "show the full traceback of an error")

    # data
    data_dir: str = opt("", "dataset root (default: searched for under /kaggle/input or ./data)", "data")
    dataset: str = opt("auto", "dataset format", "data", ("auto", "gxs", "nih", "chexpert", "csv"))
    classes: str = opt("", "comma-separated target classes, or 'all' (default: the dataset's five "
                           "study classes; competition: the sample submission's)", "data")
    label_mode: str = opt("single", "single: exactly one finding, a target; multi: any target "
                                    "positive (competition default: multi)", "data", ("single", "multi"))
    views: str = opt("AP,PA", "view positions to keep, or 'all' (competition default: all)", "data")
    keep_negatives: float = opt(0.0, "multi mode: fraction of images with no target to keep "
                                     "(competition default: 1, every labelled image)", "data",
                                check=between(0, 1))
    uncertain: str = opt("zero", "CheXpert's uncertain (-1) labels: zero, one, or drop the image",
                         "data", ("zero", "one", "drop"))
    csv: str = opt("", "csv dataset: the metadata CSV", "data")
    image_col: str = opt("image", "csv dataset: column with the image path", "data")
    patient_col: str = opt("", "csv dataset: column with the patient id (empty: none)", "data")
    label_cols: str = opt("", "csv dataset: comma-separated 0/1 label columns", "data")
    labels_col: str = opt("", "csv dataset: one column holding all labels, split by --labels-sep", "data")
    labels_sep: str = opt("|", "csv dataset: separator of --labels-col", "data")
    view_col: str = opt("", "csv dataset: column with the view position (empty: none)", "data")
    image_root: str = opt("", "csv dataset: folder the image paths are relative to "
                              "(default: the CSV's folder)", "data")
    resize: int = opt(512, "shorter side of stored images in pixels (0: copy originals)", "data", check=at_least(0))
    dataset_dir: str = opt("auto", "folder of the stored images (auto: on Kaggle a scratch folder under "
                                   "/kaggle/tmp/xray-kit, outside the kernel's output, rebuilt by each new "
                                   "session; on Colab /content/xray-kit-local on the local disk, never on "
                                   "Drive; elsewhere <work>/dataset)", "data")
    val_frac: float = opt(0.15, "fraction of images in the validation split (competition default: 0.05)",
                          "data")
    test_frac: float = opt(0.15, "fraction of images in the test split (competition default: 0, no test "
                                 "report)", "data")
    split_seed: int = opt(-1, "seed of the split alone (-1: --seed): runs of other seeds, models or losses "
                              "that share it answer the same val films, as a blend needs", "data",
                          check=at_least(-1))
    split: str = opt("stratified", "stratified: patient-grouped, label-stratified; official: NIH's "
                                   "test_list.txt is the test set", "data", ("stratified", "official"))

    # train
    model: str = opt("eva02_base_patch14_448.mim_in22k_ft_in1k", "timm model name", "train")
    img_size: int = opt(448, "training image size (evaluate and predict use the checkpoint's)", "train", check=at_least(1))
    pretrained: str = opt("auto", "auto: find weights offline first; none: random init; or a "
                                  "weights file", "train")
    drop_path: float = opt(0.1, "stochastic depth rate", "train", check=between(0, 1))
    head_init: str = opt("prior", "classifier bias at the start: prior, the log-odds of each class's share "
                                  "of the train split (RetinaNet's init: the first updates learn the signs, "
                                  "not the prevalence); zero: probability 0.5 for every class", "train",
                         ("prior", "zero"))
    epochs: str = opt(6, "training epochs, or auto: after the first updates, the most whole epochs that fit in "
                           "the time limit (over --sessions sessions) with the stages after training, the "
                           "schedule fitted to end there (competition default on Kaggle and Colab: auto)", "train")
    max_epochs: int = opt(0, "--epochs auto: at most this many, however many fit (0: as many as fit; a small "
                             "model in a long session may fit dozens)", "train", check=at_least(0))
    batch_size: str = opt("auto", "per-device batch, or auto: the largest that fits", "train")
    accum: str = opt("auto", "gradient accumulation steps, or auto: keep --effective-batch", "train")
    effective_batch: int = opt(64, "images per optimizer update across devices and accumulation", "train",
                               check=at_least(1))
    lr: float = opt(3e-4, "head learning rate; deeper layers get lr * layer_decay^depth", "train", check=above(0))
    layer_decay: float = opt(0.77, "layer-wise learning-rate decay", "train", check=above(0))
    weight_decay: float = opt(0.05, "AdamW weight decay", "train", check=at_least(0))
    warmup_epochs: float = opt(1.0, "linear warmup before the cosine schedule", "train", check=at_least(0))
    min_lr: float = opt(1e-6, "cosine schedule floor", "train", check=at_least(0))
    loss: str = opt("focal_bce", "training loss: focal_bce (w*focal + (1-w)*BCE), focal, bce, or asl (the "
                                 "asymmetric loss: negatives down-weighted by --asl-gamma-neg and shifted "
                                 "by --asl-clip, as for many rare findings)", "train",
                    ("focal_bce", "focal", "bce", "asl"))
    focal_weight: float = opt(0.7, "weight w of focal in w*focal + (1-w)*BCE", "train", check=between(0, 1))
    focal_alpha: float = opt(0.25, "focal loss alpha", "train", check=between(0, 1))
    focal_gamma: float = opt(2.0, "focal loss gamma", "train", check=at_least(0))
    asl_gamma_neg: float = opt(4.0, "asl: focusing exponent of the negatives", "train", check=at_least(0))
    asl_gamma_pos: float = opt(1.0, "asl: focusing exponent of the positives", "train", check=at_least(0))
    asl_clip: float = opt(0.05, "asl: probability margin subtracted from the negatives (0: none)", "train",
                          check=between(0, 1))
    pos_weight: str = opt("none", "BCE positive weights", "train", ("none", "balanced"))
    amp: str = opt("auto", "mixed precision: auto picks bf16, else fp16 with scaling, off on CPU",
                   "train", ("auto", "bf16", "fp16", "off"))
    clip_grad: float = opt(1.0, "gradient norm clip (0: off)", "train", check=at_least(0))
    aug: str = opt("strong", "training augmentation", "train", ("strong", "light", "none"))
    hflip: float = opt(0.0, "probability of a horizontal flip in training augmentation (0: a chest film's "
                            "left and right differ: heart, stomach bubble, devices)", "train", check=between(0, 1))
    ema_decay: float = opt(0.999, "EMA decay of the weights", "train", check=between(0, 1))
    ema_warmup: bool = opt(True, "ramp the EMA decay up from 0 over the first updates", "train")
    keep_epochs: str = opt("auto", "epoch checkpoints to keep: auto (the soup's and the best), "
                                   "all, or a number of latest", "train")
    compile: str = opt("auto", "torch.compile the training step: auto compiles on GPUs of compute "
                               "capability 8.0 and newer, which Triton supports, not on older GPUs or the "
                               "CPU; a compile that fails falls back to not compiled", "train",
                       ("auto", "on", "off"))
    grad_checkpointing: bool = opt(False, "trade compute for memory", "train")
    ddp: str = opt("auto", "several GPUs: auto relaunches under torchrun; off uses one", "train",
                   ("auto", "off"))

    # soup, evaluate, predict
    soup: str = opt("uniform", "uniform: average --soup-epochs; greedy: add the epochs on disk, best "
                               "val AUC first, while it does not drop", "evaluate", ("uniform", "greedy"))
    soup_epochs: str = opt("last2", "epochs to average: 5,6 or lastN (the last N, or all of a shorter run)", "evaluate")
    weights: str = opt("", "weights to evaluate and predict with (default: the soup)", "evaluate")
    bootstrap: int = opt(1000, "bootstrap resamples for confidence intervals", "evaluate", check=at_least(1))
    tta: bool = opt(False, "test-time augmentation, only with what training did: average with the horizontal "
                           "flip when --hflip > 0, else with the film zoomed in 5%% and shifted 2%%", "evaluate")
    study_pool: str = opt("auto", "one answer per study (a patient's visit), pooled from its films' "
                                  "probabilities: mean, max, none (per film), or auto: what scores best on "
                                  "val, pooling only when the training labels are constant within studies "
                                  "(reports/study_pool.json)", "evaluate", ("auto", "none", "mean", "max"))
    predict_csv: str = opt("", "sample submission listing the images to predict", "evaluate")
    predict_dir: str = opt("", "folder of images to predict", "evaluate")
    on_missing: str = opt("fail", "an image that cannot be predicted: fail, or fill with the "
                                  "training prevalence (competition default: fill)", "evaluate", ("fail", "fill"))

    # synthetic-data study
    synthetic_dir: str = opt("", "generated images to add to train.csv (never val or test): a folder of "
                                 "class subfolders (DIR/Cardiomegaly/*.png) or a CSV of path,label or "
                                 "path plus 0/1 class columns", "study")
    synthetic_max_ratio: float = opt(1.0, "at most this many synthetic images per real train image of "
                                          "their class", "study", check=at_least(0))
    synthetic_classes: str = opt("", "comma-separated classes that take synthetic images (default: all; "
                                     "generate: the classes it generates, default the two rarest)",
                                 "study")
    near_copy: float = opt(0.1, "synth-quality: flag a synthetic image whose nearest real image is closer "
                                "than this fraction of the median real-to-nearest-real distance", "study",
                                check=above(0))
    runs: tuple[str, ...] = opt((), "compare: the work dirs of two runs, WORK_A WORK_B (the baseline "
                                    "first), evaluated on the same test split; blend: two or more finished "
                                    "runs' work dirs (or attached kernel outputs) sharing their val split",
                                "study")
    specificity: float = opt(0.9, "compare: sensitivity is reported at this specificity", "study",
                             check=between(0, 1))
    synthetic: bool = opt(False, "with --demo: also train a generator on the two rarest classes, generate "
                                 "synthetic images with it, train a second run with them, judge them and "
                                 "compare the runs", "study")
    gen_size: int = opt(128, "generate: side of the generated images in pixels (the generator works at it)",
                        "study", check=((lambda v: v in (32, 64, 128, 256)), "32, 64, 128 or 256"))
    gen_width: int = opt(64, "generate: channels of the UNet's first level (then 2x, 2x, 4x, 4x down to 16 px)",
                         "study", check=at_least(8))
    gen_epochs: int = opt(300, "generate: training epochs of the generator over its real train images", "study",
                          check=at_least(1))
    gen_batch: int = opt(64, "generate: images per generator update", "study", check=at_least(1))
    gen_lr: float = opt(2e-4, "generate: AdamW learning rate of the generator", "study", check=above(0))
    gen_target: str = opt("epsilon", "generate: what the UNet predicts: epsilon (the noise), sample (the clean "
                                     "image: film-like within a hundred updates, what the CPU demo uses) or "
                                     "v_prediction", "study", choices=("epsilon", "sample", "v_prediction"))
    gen_steps: int = opt(25, "generate: DPM-Solver++ steps per generated image", "study", check=between(1, 1000))
    gen_per_class: int = opt(0, "generate: images per class (0: as many as --synthetic-max-ratio lets the "
                                "split mix in)", "study", check=at_least(0))

    # kaggle and colab
    kernel_args: str = opt("", "bundle, push: the kernel's own run.py arguments; everything after -- lands "
                               "here (run.py --stage bundle -- --stage all --epochs 6)", "platform")
    kernel_metadata: str = opt("", "bundle, push: the kernel-metadata.json to bundle (default: the one "
                                   "beside run.py)", "platform")
    out: str = opt("", "bundle, push: folder of kernel.py and its metadata (default: dist/kaggle); "
                       "weights: folder to save the pretrained weights in (default: data/weights/MODEL)", "platform")
    competition: str = opt("", "submit: the competition to submit to (default: the one in kernel-metadata.json's "
                                "competition_sources)", "platform")
    from_kernel: str = opt("", "submit: first fetch the submission and its run's reports from this kernel's "
                               "output (OWNER/SLUG) into <work>/kernel_output/SLUG, and submit that", "platform")
    download: bool = opt(False, "fetch the dataset with the Kaggle API into --data-dir when it is missing "
                                "(needs Kaggle credentials)", "platform")
    time_limit: str = opt("auto", "stop training this long after the start, with last.pth saved, e.g. "
                                  "11h30m, 90m, 600s or none (auto: 11h30m on Kaggle, 11h on Colab, none elsewhere)", "platform")
    output_budget: str = opt("auto", "warn before training when the work dir would outgrow this, e.g. 19GB "
                                     "or none (auto: 19GB on Kaggle, which keeps about 20 GB; 15GB on "
                                     "Colab, a free Drive; none elsewhere)", "platform")
    sessions: int = opt(1, "--epochs auto: fit the schedule to this many sessions of --time-limit; each but "
                           "the last ends with an interim submission, and --resume auto continues", "platform",
                        check=at_least(1))
    on_error: str = opt("stop", "a failure once an epoch's weights exist (out of memory, non-finite updates, "
                                "unreadable data, a crashed worker, ...): submit ends the run with a fallback "
                                "submission from the val-best epoch and exit 0; stop ends it with the error "
                                "(competition default on Kaggle and Colab: submit)", "platform", ("submit", "stop"))
    resume: str = opt("none", "auto: continue from a matching checkpoints/last.pth found under the data "
                              "roots (on Kaggle: a previous version's output attached as input); or the "
                              "folder or last.pth to continue from; none", "platform")
    keep_shards: str = opt("auto", "keep the stored images, and what --download fetched besides their films, "
                                   "in <work>/shards as a few large tar files that a new machine unpacks "
                                   "instead of storing and downloading again (auto: on Colab, whose work dir "
                                   "on Drive outlives the local disk)", "platform", ("auto", "on", "off"))

    # the settings named on the command line (None: a Config built in code, where a value other
    # than the default counts as chosen); not a field, so never a flag nor in run_config.json
    given = None

    @property
    def work(self) -> Path:
        return Path(self.work_dir)

    def to_dict(self):
        return dataclasses.asdict(self)


def fields_by_group():
    groups = {}
    for f in dataclasses.fields(Config):
        groups.setdefault(f.metadata["group"], []).append(f)
    return groups


def chosen(cfg, name) -> bool:
    """Whether the user chose setting `name`, rather than leaving it to its default."""
    if cfg.given is not None:
        return name in cfg.given
    return getattr(cfg, name) != next(f.default for f in dataclasses.fields(Config) if f.name == name)


def apply_defaults(cfg, values: dict):
    """Set each of `values` that the user did not choose (task and demo defaults)."""
    for name, value in values.items():
        if not chosen(cfg, name):
            setattr(cfg, name, value)


# the settings a stage hands on to a library factory (as timm's optimizer_kwargs)

def optimizer_kwargs(cfg) -> dict:
    return dict(lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)


def predict_kwargs(cfg) -> dict:
    """Where the competition's test set is: given, or searched for under the data folder."""
    return dict(predict_csv=cfg.predict_csv, predict_dir=cfg.predict_dir, data_dir=cfg.data_dir)


def download_kwargs(cfg) -> dict:
    """What --download fetches, where, and how it stores the films."""
    return dict(dataset=cfg.dataset, data_dir=cfg.data_dir, resize=cfg.resize, workers=cfg.workers,
                smoke=cfg.smoke, predict_csv=cfg.predict_csv)


def scorer_kwargs(cfg) -> dict:
    """How a stage's model scores images: its loaders, precision and test-time augmentation."""
    return dict(batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed, amp=cfg.amp, tta=cfg.tta,
                hflip=cfg.hflip)


def loss_kwargs(cfg) -> dict:
    return dict(loss=cfg.loss, pos_weight=cfg.pos_weight, focal_weight=cfg.focal_weight,
                focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma, asl_gamma_neg=cfg.asl_gamma_neg,
                asl_gamma_pos=cfg.asl_gamma_pos, asl_clip=cfg.asl_clip)
