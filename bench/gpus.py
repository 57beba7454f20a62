"""What known GPUs can do at most (dense tensor TFLOPS per precision, memory bandwidth), and the
arithmetic that carries a training rate measured on one of them over to Kaggle's T4 x2.

Figures are NVIDIA's datasheets, dense (the datasheets' "with sparsity" figures halved);
fp16 and bf16 are tensor-core rates with float32 accumulation; tf32 is what float32 matmuls
run as on Ampere and newer under torch.set_float32_matmul_precision("high").
"""
from dataclasses import dataclass

SESSION_HOURS = 12  # a Kaggle GPU session
TRAIN_FILMS = 107_374  # Grand X-Ray Slam's training films
TEST_FILMS = 46_233  # and its test films, scored by predict
TWO_GPU_SCALING = 0.9  # assumed, not measured: DDP over PCIe, its all-reduce overlapped with backward


@dataclass(frozen=True)
class Gpu:
    tflops: dict  # precision -> dense peak
    bandwidth_gbs: float


# (pattern in torch.cuda.get_device_name, what it can do): the first pattern found wins, so a
# variant comes before the name it extends ("H100 PCIe" before "H100")
GPUS = (
    # NVIDIA H200 Tensor Core GPU datasheet (H200 NVL column; SXM column below)
    ("H200 NVL", Gpu(dict(bf16=835, fp16=835, tf32=418, fp32=60), 4800)),
    ("H200", Gpu(dict(bf16=989, fp16=989, tf32=495, fp32=67), 4800)),
    # NVIDIA H100 Tensor Core GPU datasheet (H100 NVL, H100 PCIe, H100 SXM columns)
    ("H100 NVL", Gpu(dict(bf16=835, fp16=835, tf32=418, fp32=60), 3900)),
    ("H100 PCIe", Gpu(dict(bf16=756, fp16=756, tf32=378, fp32=51), 2000)),
    ("H100", Gpu(dict(bf16=989, fp16=989, tf32=495, fp32=67), 3350)),
    # NVIDIA A100 Tensor Core GPU datasheet (80GB SXM, 80GB PCIe, 40GB)
    ("A100-SXM4-80GB", Gpu(dict(bf16=312, fp16=312, tf32=156, fp32=19.5), 2039)),
    ("A100 80GB PCIe", Gpu(dict(bf16=312, fp16=312, tf32=156, fp32=19.5), 1935)),
    ("A100", Gpu(dict(bf16=312, fp16=312, tf32=156, fp32=19.5), 1555)),
    # NVIDIA L40S datasheet
    ("L40S", Gpu(dict(bf16=362, fp16=362, tf32=183, fp32=91.6), 864)),
    # NVIDIA L4 Tensor Core GPU datasheet
    ("L4", Gpu(dict(bf16=121, fp16=121, tf32=60, fp32=30.3), 300)),
    # NVIDIA V100 Tensor Core GPU datasheet (SXM2); Volta has no bf16 or tf32
    ("V100", Gpu(dict(fp16=125, fp32=15.7), 900)),
    # NVIDIA T4 Tensor Core GPU datasheet ("mixed precision FP16/FP32"); Turing has no bf16 or tf32
    ("T4", Gpu(dict(fp16=65, fp32=8.1), 320)),
    # NVIDIA Tesla P100 datasheet (PCIe 16GB)
    ("P100", Gpu(dict(fp16=18.7, fp32=9.3), 732)),
)
T4 = dict(GPUS)["T4"]


def lookup(name) -> "Gpu | None":
    """The table's entry for a device name such as 'NVIDIA H100 80GB HBM3' or 'Tesla T4'."""
    return next((gpu for pattern, gpu in GPUS if pattern in name), None)


def ratios_to_t4(gpu: Gpu) -> tuple:
    """(fp16 tensor TFLOPS, memory bandwidth) of `gpu` as multiples of the T4's."""
    return gpu.tflops["fp16"] / T4.tflops["fp16"], gpu.bandwidth_gbs / T4.bandwidth_gbs


def t4_estimate(train_img_s, forward_img_s, compute_ratio, bandwidth_ratio, gpus=2,
                scaling=TWO_GPU_SCALING) -> dict:
    """Kaggle's T4 x2 from fp16 figures measured on another card.

    train_img_s: the fp16 training step with the T4's attention kernels, not compiled, and
    forward_img_s: the model alone at fp16, both on the measured card, whose fp16 tensor
    TFLOPS and memory bandwidth are compute_ratio and bandwidth_ratio times the T4's. A step
    bound by arithmetic slows by the first ratio, one bound by memory traffic by the second:
    "slow" divides by the larger, "fast" by the smaller, and the T4's rate lies between.
    Training runs on `gpus` T4s at `scaling` of linear (DDP); predict replicates the model on
    each (DataParallel, no gradients to exchange). Each bound gives training images/s, the
    training epochs of TRAIN_FILMS that fit in SESSION_HOURS (training only: no validation,
    no start-up) and predict's minutes for TEST_FILMS (the GPUs' rate; decoding not counted)."""
    out = {}
    for bound, ratio in (("slow", max(compute_ratio, bandwidth_ratio)),
                         ("fast", min(compute_ratio, bandwidth_ratio))):
        train = gpus * scaling * train_img_s / ratio
        forward = gpus * forward_img_s / ratio
        out[bound] = {"train_img_s": train, "epochs_per_session": SESSION_HOURS * 3600 * train / TRAIN_FILMS,
                      "predict_min": TEST_FILMS / forward / 60}
    return out
