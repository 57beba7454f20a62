"""kernel-metadata.json checked with the rules `kaggle kernels push` applies before it uploads,
so a broken field is refused at once instead of after a push.

The rules are those of the kaggle package (2.2.5), kaggle/api/kaggle_api_extended.py:
`KaggleApi.kernels_push` (title, code_file, id, language, kernel_type, sources, pinning type),
`validate_kernel_string`, `parse_kernel_string`, `validate_dataset_string`,
`validate_model_instance_version_string`, `get_bool`, and the slug form of `_validate_slug_syntax`.
Kaggle accepts some fields that do not do what their author meant; those give warnings.
`preflight` checks the kernel's own arguments against the metadata: what the run needs that the
kernel would not have.
"""
import json
import re
from pathlib import Path

from slugify import slugify

from kit import ROOT
from kit.errors import KitError

FILE = "kernel-metadata.json"
LANGUAGES = ("python", "r", "rmarkdown")
KERNEL_TYPES = ("script", "notebook")
PINNING_TYPES = ("original", "latest")
BOOLEANS = ("is_private", "enable_gpu", "enable_tpu", "enable_internet")
SOURCES = ("dataset_sources", "competition_sources", "kernel_sources", "model_sources")
KNOWN = {"id", "id_no", "title", "code_file", "language", "kernel_type", "machine_shape", "keywords",
         "docker_image", "docker_image_pinning_type", *BOOLEANS, *SOURCES}
SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
MIN_TITLE = MIN_SLUG = 5
# the server runs these retired shapes on something else (kaggle's _RETIRED_ACCELERATORS)
RETIRED_SHAPES = {"nvidiateslap100": "it runs on the default GPU (NvidiaTeslaT4: T4 x2) instead",
                  "tpuv38": "it runs on a TpuV5E8 instead", "tpu1vmv38": "it runs on a TpuV5E8 instead",
                  "tpuv232": "it runs on CPU instead", "tpuv2256": "it runs on CPU instead"}
PLACEHOLDER_OWNER = "YOUR_KAGGLE_USERNAME"
COMPETITION = "grand-xray-slam-division-a"  # the template's, and the example in messages
TRAINING_STAGES = ("all", "train")  # the stages that load pretrained weights


def read(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path} not found; pass --kernel-metadata PATH or restore the template "
                       f"{FILE} beside run.py")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise KitError(f"{path} is not valid JSON ({e}); fix it and bundle again") from e
    if not isinstance(meta, dict):
        raise KitError(f"{path} must hold one JSON object of kernel settings")
    return meta


def template(kernel_metadata) -> Path:
    """--kernel-metadata `kernel_metadata`, else the template beside run.py."""
    return Path(kernel_metadata) if kernel_metadata else ROOT / FILE


def _bad(field, problem, fix, where=FILE + ": "):
    raise KitError(f"{where}{field} {problem}; {fix}")


def check_kernel_ref(flag, ref):
    """A kernel named on the command line (`flag`), with the rules of kernel_sources."""
    _check_kernel_ref(flag, ref, where="")


def _check_kernel_ref(field, ref, own=False, where=FILE + ": "):
    """validate_kernel_string: owner/slug or owner/slug/version, a slug of five characters or more.
    parse_kernel_string: the kernel's own id may be a bare slug (the owner is the signed-in user)
    but names no version. Its slug must also have the form of every Kaggle slug."""
    def bad(problem, fix):
        _bad(field, problem, fix, where)

    if not isinstance(ref, str):
        bad(f"{ref!r} is not a string", "write e.g. alice/xray-kit-eva-x")
    bare = own and "/" not in ref
    parts = ["", ref] if bare else ref.split("/")
    if not bare and (len(parts) not in (2, 3) or not all(parts)):
        bad(f"{ref!r} is not of the form owner/kernel-slug", "write e.g. alice/xray-kit-eva-x")
    if len(parts[1]) < MIN_SLUG:
        bad(f"slug {parts[1]!r} is shorter than {MIN_SLUG} characters", "use a longer slug")
    if own and len(parts) == 3:
        bad(f"{ref!r} names a version", "drop the /version part")
    if own and not SLUG.match(parts[1].lower()):
        bad(f"slug {parts[1]!r} is not a Kaggle slug (letters, digits and single hyphens inside)",
            f"use {slugify(parts[1]) or 'xray-kit-eva-x'!r}")


def _check_sources(meta):
    for field in SOURCES:
        refs = meta.get(field, [])
        if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
            _bad(field, "must be a list of names", f'write e.g. "{field}": []')
        for ref in refs:
            parts = ref.split("/")
            if field == "dataset_sources" and (len(parts) not in (2, 3) or not parts[0] or not parts[1]):
                _bad(field, f"entry {ref!r} is not of the form owner/dataset-slug",
                     "write e.g. nih-chest-xrays/data")  # validate_dataset_string
            elif field == "kernel_sources":
                _check_kernel_ref(field, ref)
            elif field == "model_sources" and (len(parts) != 5 or not all(parts) or not parts[4].isdigit()):
                _bad(field, f"entry {ref!r} is not of the form owner/model/framework/variation/version "
                            f"(version a number)", "copy it from the model page's Add Input")
            elif field == "competition_sources" and len(parts) != 1:
                _bad(field, f"entry {ref!r} is not a competition slug",
                     "write the name from the competition's URL, e.g. grand-xray-slam-division-a")


def validate(meta: dict, folder=None) -> list:
    """Raise KitError for what `kaggle kernels push` would refuse; return warnings for what it
    accepts but that would not do what was meant. With `folder`, code_file must exist in it."""
    title = meta.get("title")
    if title is not None and (not isinstance(title, str) or len(title) < MIN_TITLE):
        _bad("title", f"{title!r} has fewer than {MIN_TITLE} characters", "give the kernel a longer title")
    code_file = meta.get("code_file")
    if not code_file or not isinstance(code_file, str):
        _bad("code_file", "is missing", 'name the script, e.g. "code_file": "kernel.py"')
    if folder is not None and not (Path(folder) / code_file).is_file():
        _bad("code_file", f"{code_file!r} is not in {folder}", "bundle again")
    ref = meta.get("id")
    if not ref and not meta.get("id_no"):
        _bad("id", "is missing", 'set "id": "YOUR_USERNAME/xray-kit-eva-x"')
    if ref:
        _check_kernel_ref("id", ref, own=True)
    if meta.get("language") not in LANGUAGES:
        _bad("language", f"is {meta.get('language')!r}", f"use one of {', '.join(LANGUAGES)}")
    if meta.get("kernel_type") not in KERNEL_TYPES:
        _bad("kernel_type", f"is {meta.get('kernel_type')!r}", f"use one of {', '.join(KERNEL_TYPES)}")
    for field in BOOLEANS:  # get_bool: a JSON boolean, or the strings "true"/"false" in any case
        value = meta.get(field, False)
        if not isinstance(value, bool) and str(value).lower() not in ("true", "false"):
            _bad(field, f"is {value!r}, not a boolean", "write true or false")
    _check_sources(meta)
    pinning = meta.get("docker_image_pinning_type")
    if pinning is not None and pinning not in PINNING_TYPES:
        _bad("docker_image_pinning_type", f"is {pinning!r}", f"use one of {', '.join(PINNING_TYPES)}")
    return _warnings(meta)


def _flag(meta, field) -> bool:
    return str(meta.get(field, False)).lower() == "true"


def _warnings(meta) -> list:
    out = [f"{FILE}: unknown field {k!r} is ignored by Kaggle" for k in sorted(set(meta) - KNOWN)]
    ref = str(meta.get("id", ""))
    slug = ref.split("/")[1] if "/" in ref else ref
    if meta.get("title") and slug and slugify(meta["title"]) != slug.lower():
        out.append(f"{FILE}: title {meta['title']!r} makes the slug {slugify(meta['title'])!r}, not {slug!r}: "
                   f"Kaggle names the kernel after its title, so a later push may create a second kernel")
    shape = str(meta.get("machine_shape") or "")
    if shape.lower() in RETIRED_SHAPES:
        out.append(f"{FILE}: machine_shape {shape} is retired: {RETIRED_SHAPES[shape.lower()]}; "
                   f"use NvidiaTeslaT4")
    if _flag(meta, "enable_gpu") and not shape:
        out.append(f"{FILE}: enable_gpu without machine_shape may get a P100, which current PyTorch "
                   f"does not support; set \"machine_shape\": \"NvidiaTeslaT4\"")
    if "enable_internet" not in meta:
        out.append(f"{FILE}: enable_internet is not set, and the kaggle CLI then turns the internet ON "
                   f"(competitions often forbid it); set it explicitly")
    return out


def placeholder_owner(meta) -> bool:
    return str(meta.get("id", "")).startswith(PLACEHOLDER_OWNER + "/")


def preflight(meta: dict, kernel) -> list:
    """What the kernel's run (`kernel`: the Config its arguments give) needs and the metadata does
    not attach, each as 'problem; fix'. Push refuses them, bundle warns."""
    problems = []
    sources = {field: meta.get(field) or [] for field in SOURCES}
    internet = str(meta.get("enable_internet", True)).lower() == "true"  # the CLI's default: on
    if (kernel.stage in TRAINING_STAGES and kernel.pretrained != "none" and not internet
            and not sources["model_sources"] and not sources["dataset_sources"]):
        problems.append(
            f"the kernel trains from pretrained weights (--pretrained {kernel.pretrained}) with the internet off "
            f"and {FILE} attaches no model_sources or dataset_sources; attach the weights (a Kaggle Model's "
            f"handle in model_sources, or the dataset made from --stage weights in dataset_sources) or pass "
            f"--pretrained none after --")
    if kernel.task == "competition" and not kernel.demo and not sources["competition_sources"]:
        problems.append(f"the kernel runs --task competition and {FILE}'s competition_sources is empty; add "
                        f'"{COMPETITION}" (after accepting its rules on kaggle.com)')
    if kernel.resume == "auto" and not sources["kernel_sources"]:
        own = meta.get("id") or "YOU/xray-kit-eva-x"
        problems.append(f"the kernel runs --resume auto and {FILE} has no kernel_sources to resume from; add "
                        f'"{own}" (the version whose output it continues) to kernel_sources')
    return problems


def competition(meta: dict) -> str:
    """The one competition the metadata attaches."""
    _check_sources(meta)
    names = meta.get("competition_sources") or []
    if len(names) != 1:
        listed = f"lists {', '.join(names)}" if names else "lists none"
        raise KitError(f"{FILE}'s competition_sources {listed}; name the competition with --competition SLUG")
    return names[0]
