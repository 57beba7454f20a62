"""kernel-metadata.json: the template passes, each broken field is refused with its message, and
the kaggle CLI's own pre-upload checks (the oracle) refuse the same files."""
import json
import re

import pytest

from conftest import ROOT
from kaggle_server import kaggle_server  # noqa: F401 (a fixture)
from kit.errors import KitError
from kit.kaggle import kaggle_meta

TEMPLATE = json.loads((ROOT / kaggle_meta.FILE).read_text())
GONE = object()

# (change to the template, the kit's message); `kaggle kernels push` refuses every one of them too
BROKEN = [
    ({"title": "xray"}, r"title 'xray' has fewer than 5 characters"),
    ({"code_file": GONE}, r"code_file is missing"),
    ({"id": GONE}, r"id is missing"),
    ({"id": "alice/xray"}, r"id slug 'xray' is shorter than 5"),
    ({"id": "alice/xray-kit-eva-x/3"}, r"names a version; drop"),
    ({"id": "alice/xray-kit/eva/x"}, r"not of the form owner/kernel-slug"),
    ({"language": "Python"}, r"language is 'Python'; use one of python, r, rmarkdown"),
    ({"kernel_type": "notebooks"}, r"kernel_type is 'notebooks'; use one of script, notebook"),
    ({"is_private": "yes"}, r"is_private is 'yes', not a boolean"),
    ({"enable_gpu": 1}, r"enable_gpu is 1, not a boolean"),
    ({"enable_internet": "off"}, r"enable_internet is 'off', not a boolean"),
    ({"dataset_sources": ["nih-chest-xrays"]}, r"dataset_sources entry 'nih-chest-xrays' is not of the form"),
    ({"dataset_sources": "nih-chest-xrays/data"}, r"dataset_sources must be a list"),
    ({"kernel_sources": ["alice/eva"]}, r"kernel_sources slug 'eva' is shorter than 5"),
    ({"model_sources": ["timm/eva02/pytorch/base"]}, r"model_sources entry .* owner/model/framework"),
    ({"model_sources": ["timm/eva02/pytorch/base/v1"]}, r"version a number"),
    ({"docker_image_pinning_type": "newest"}, r"docker_image_pinning_type is 'newest'"),
]
# accepted by the CLI, refused here: Kaggle would not do what was meant
KIT_ONLY = [
    ({"id": "alice/xray kit eva"}, r"slug 'xray kit eva' is not a Kaggle slug .* use 'xray-kit-eva'"),
    ({"competition_sources": ["alice/grand-xray-slam"]}, r"not a competition slug"),
]
WARNED = [
    ({"machine_shape": "NvidiaTeslaP100"}, r"NvidiaTeslaP100 is retired"),
    ({"machine_shape": GONE}, r"enable_gpu without machine_shape may get a P100"),
    ({"enable_internet": GONE}, r"enable_internet is not set.* turns the internet ON"),
    ({"title": "Chest X-ray kit"}, r"makes the slug 'chest-x-ray-kit', not 'xray-kit-eva-x'"),
    ({"enable_gpus": True}, r"unknown field 'enable_gpus'"),
]


def changed(change) -> dict:
    meta = dict(TEMPLATE)
    for key, value in change.items():
        if value is GONE:
            meta.pop(key)
        else:
            meta[key] = value
    return meta


def test_the_template_passes_cleanly():
    assert kaggle_meta.validate(TEMPLATE) == []
    assert TEMPLATE["enable_internet"] is False and TEMPLATE["kernel_type"] == "script"
    assert kaggle_meta.placeholder_owner(TEMPLATE)


@pytest.mark.parametrize("change, message", BROKEN + KIT_ONLY)
def test_each_broken_field_is_refused_with_its_message(change, message):
    with pytest.raises(KitError, match=r"^kernel-metadata.json: ") as e:
        kaggle_meta.validate(changed(change))
    assert re.search(message, str(e.value)), str(e.value)


@pytest.mark.parametrize("change, message", WARNED)
def test_fields_kaggle_takes_but_misreads_are_warned(change, message):
    warnings = kaggle_meta.validate(changed(change))
    assert len(warnings) == 1 and re.search(message, warnings[0]), warnings


def test_a_bare_slug_id_and_string_booleans_pass_as_in_the_cli():
    assert kaggle_meta.validate(changed({"id": "xray-kit-eva-x", "is_private": "TRUE"})) == []


def test_code_file_must_be_in_the_bundle_folder(tmp_path):
    with pytest.raises(KitError, match="'kernel.py' is not in"):
        kaggle_meta.validate(TEMPLATE, tmp_path)
    (tmp_path / "kernel.py").write_text("")
    assert kaggle_meta.validate(TEMPLATE, tmp_path) == []


@pytest.fixture(scope="module")
def kaggle_api(tmp_path_factory):
    """The kaggle package's API with dummy credentials; it touches no network before its checks pass.
    Importing it needs everything the package imports, six included (which it does not declare)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KAGGLE_CONFIG_DIR", str(tmp_path_factory.mktemp("kaggle")))
        mp.setenv("KAGGLE_USERNAME", "someone")
        mp.setenv("KAGGLE_KEY", "0" * 32)
        mp.delenv("KAGGLE_API_TOKEN", raising=False)
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        api.authenticate()
        yield api


@pytest.mark.parametrize("change, message", BROKEN)
def test_the_kaggle_cli_refuses_the_same_files(kaggle_api, kaggle_server, tmp_path, change, message):
    (tmp_path / kaggle_meta.FILE).write_text(json.dumps(changed(change)))
    (tmp_path / "kernel.py").write_text("print('hi')\n")
    with pytest.raises((ValueError, TypeError)):
        kaggle_api.kernels_push(str(tmp_path))
    assert kaggle_server.requests == []  # refused before anything is sent


def test_requirements_cover_what_the_kaggle_package_imports(kaggle_api):
    import sys

    requirements = (ROOT / "requirements.txt").read_text().split()
    assert "six" in sys.modules and "six" in requirements and "kaggle" in requirements
