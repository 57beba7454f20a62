"""Model soups: weight averages of checkpoints from one training run.

Uniform soup: the mean of the chosen epochs' weights. Greedy soup (Wortsman et al., 2022,
"Model soups"): try ingredients best-first and keep each only if the soup's validation score
does not drop.
"""

import torch

from kit.errors import KitError

CHECKED_FIELDS = ("arch", "classes", "img_size")


def check_compatible(checkpoints: dict):
    """Refuse to average checkpoints of different models, class lists or image sizes.

    `checkpoints` maps a display name (the file name) to a checkpoint dict.
    """
    names = list(checkpoints)
    first = checkpoints[names[0]]
    for name in names[1:]:
        other = checkpoints[name]
        differ = [f"{k} ({first.get(k)} vs {other.get(k)})" for k in CHECKED_FIELDS
                  if first.get(k) != other.get(k)]
        ref, sd = first["state_dict"], other["state_dict"]
        if not differ and (ref.keys() != sd.keys() or any(ref[k].shape != sd[k].shape for k in ref)):
            differ = ["weight names or shapes"]
        if differ:
            raise KitError(f"cannot average {names[0]} and {name}: they differ in {', '.join(differ)}; "
                           f"average checkpoints of one training run only (choose them with --soup-epochs)")


def uniform_average(state_dicts: list) -> dict:
    """Mean of each floating-point tensor: float64 sum, divided, clamped and stored as float32,
    the arithmetic of timm's avg_checkpoints.py. Integer buffers come from the last state dict."""
    f32 = torch.finfo(torch.float32)
    out = {}
    for key, last in state_dicts[-1].items():
        if last.is_floating_point():
            total = sum(sd[key].to(torch.float64) for sd in state_dicts)
            out[key] = (total / len(state_dicts)).clamp(f32.min, f32.max).to(torch.float32)
        else:
            out[key] = last.clone()
    return out


def greedy(scores: dict, score_mix):
    """Greedy soup: ingredients best `scores` first, each kept only if the soup's score with it
    does not drop. `score_mix(names) -> float` scores the uniform soup of `names`.

    Returns the kept names, the soup's score, and one (name, soup score with it, kept) per try."""
    order = sorted(scores, key=scores.get, reverse=True)
    kept, best = [order[0]], scores[order[0]]
    steps = [(order[0], best, True)]
    for name in order[1:]:
        value = score_mix(kept + [name])
        steps.append((name, value, value >= best))
        if value >= best:
            kept, best = kept + [name], value
    return kept, best, steps
