"""Where the kit runs: Kaggle, Colab or a local machine, faked with variables and folders; Kaggle's
old and new input layouts; the facts block; the hub check that makes timm work offline."""
import importlib.machinery
import importlib.metadata
import os
import platform as python_platform
import socket
import subprocess
import sys
import types

import pytest

from conftest import ROOT
from fake_data import gxs_dataset
from kit import cli, env, pipeline
from kit.config import Config
from kit.data import sources

COMPETITION = "grand-xray-slam-division-a"


@pytest.fixture
def kaggle(tmp_path, monkeypatch):
    """A Kaggle machine: the run-type variable and /kaggle/{input,working} as tmp folders."""
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    for name in ("KAGGLE_INPUT", "KAGGLE_WORKING"):
        folder = tmp_path / name.lower()
        folder.mkdir()
        monkeypatch.setattr(env, name, folder)
    return env.KAGGLE_INPUT


@pytest.fixture
def colab(monkeypatch):
    module = types.ModuleType("google.colab")
    module.__spec__ = importlib.machinery.ModuleSpec("google.colab", None)
    monkeypatch.setitem(sys.modules, "google.colab", module)


@pytest.fixture
def local(monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)


def test_kaggle_is_told_by_its_variable_and_its_working_folder(kaggle, monkeypatch):
    assert env.platform() == "kaggle"
    assert env.default_work_dir("kaggle") == env.KAGGLE_WORKING and env.data_roots("kaggle") == [kaggle]
    env.KAGGLE_WORKING.rmdir()  # the variable alone (a copied environment) is not Kaggle
    assert env.platform() != "kaggle"


def test_kaggle_wins_over_colab_whose_package_its_image_ships(kaggle, colab):
    assert env.platform() == "kaggle"


def test_colab_is_told_by_its_package(colab, monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert env.platform() == "colab"
    assert str(env.default_work_dir("colab")) == "/content/xray-kit"


def test_anywhere_else_is_local(local):
    assert env.platform() == "local"
    assert str(env.default_work_dir("local")) == "work" and [str(p) for p in env.data_roots("local")] == ["data"]


@pytest.mark.parametrize("mount", [COMPETITION, f"competitions/{COMPETITION}"], ids=["old", "new"])
def test_the_competition_is_found_in_both_kaggle_input_layouts(kaggle, tmp_path, mount):
    rows = [(f"{k}.jpg", f"P{k}", "PA", ["Cardiomegaly"]) for k in range(3)]
    csv = gxs_dataset(kaggle / mount, rows, images=False)
    gxs_dataset(kaggle / "datasets" / "someone" / "unrelated" / "deeper" / "still" / "deep", rows, images=False)
    assert sources.discover(env.data_roots(env.platform()), "auto") == (sources.gxs, csv)


@pytest.mark.parametrize("mount", ["eva02_tiny_patch14_224/pytorch/default/1",
                                   "models/timm/eva02_tiny_patch14_224/pytorch/default/1",
                                   "datasets/someone/my-weights"], ids=["old-model", "new-model", "new-dataset"])
def test_pretrained_weights_are_found_in_every_kaggle_mount(kaggle, mount):
    from kit.models.model import find_weights

    folder = kaggle / mount
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    if mount.startswith("datasets"):  # a folder whose name says nothing: timm's config.json does
        (folder / "config.json").write_text('{"architecture": "eva02_tiny_patch14_224"}')
    assert find_weights("eva02_tiny_patch14_224.mim_in22k", env.data_roots("kaggle")) == folder / "model.safetensors"


def facts(cfg, torch_loaded):
    return env.facts(torch_loaded, cfg.work, cfg.data_dir, cfg.time_limit, cfg.output_budget, cfg.stage)


def test_the_facts_block(tmp_path, kaggle):
    cfg = Config(work_dir=str(tmp_path / "w"), time_limit="11h30m", output_budget="19GB", data_dir="/data/x")
    (tmp_path / "w").mkdir()
    text = facts(cfg, torch_loaded=True)
    lines = text.splitlines()
    assert lines[0] == (f"xray kit on Kaggle | Python {python_platform.python_version()} | torch "
                        f"{importlib.metadata.version('torch')} | timm {importlib.metadata.version('timm')} "
                        f"| JPEG decoder: simplejpeg {importlib.metadata.version('simplejpeg')}")
    import torch

    assert lines[1].startswith(f"  CUDA {torch.version.cuda} | GPUs: ")
    assert f"  {len(os.sched_getaffinity(0))} CPUs | " in text
    assert f"data: /data/x | work dir: {tmp_path / 'w'} (" in text and " GB free)" in text
    assert "time limit: 11h30m | output budget: 19GB" in text
    assert "GPUs" not in facts(cfg, torch_loaded=False)


def test_the_facts_block_says_when_opencv_decodes_jpegs(tmp_path, monkeypatch):
    real = importlib.metadata.version

    def version(name):
        if name == "simplejpeg":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    first = facts(Config(work_dir=str(tmp_path)), torch_loaded=False).splitlines()[0]
    assert first.endswith("| JPEG decoder: OpenCV (simplejpeg not installed)")


@pytest.mark.parametrize("setting, shown", [(None, "not asked (no stage needs it)"),
                                            ("1", "offline (HF_HUB_OFFLINE=1)"), ("0", "online")])
def test_the_facts_block_says_what_was_decided_about_the_hub(tmp_path, monkeypatch, setting, shown):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if setting:
        monkeypatch.setenv("HF_HUB_OFFLINE", setting)
    assert f"Hugging Face hub: {shown} |" in facts(Config(work_dir=str(tmp_path)), torch_loaded=False)


def test_data_stages_start_without_torch(tmp_path):
    """The block for a data stage needs neither torch nor timm imported."""
    code = ("import sys; from kit import cli; cfg = cli.resolve(cli.parse_config(['--stage', 'split', "
            f"'--work-dir', {str(tmp_path)!r}])); print(cli.env.facts('torch' in sys.modules, cfg.work, "
            "cfg.data_dir, cfg.time_limit, cfg.output_budget, cfg.stage)); "
            "print(sorted({'torch', 'timm'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]" and "torch " in done.stdout


def test_reachable_asks_the_socket(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert env.reachable("127.0.0.1", port)
    assert not env.reachable("127.0.0.1", port, timeout=0.5)


def test_an_unreachable_hub_turns_huggingface_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []
    monkeypatch.setattr(env, "reachable", lambda host, port=443, timeout=2.0: asked.append(host) or False)
    assert not env.hub_reachable()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and asked == ["huggingface.co"]
    assert not env.hub_reachable() and len(asked) == 1  # decided once: no second wait

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example.org")
    monkeypatch.setattr(env, "reachable", lambda host, port=443, timeout=2.0: asked.append(host) or True)
    assert env.hub_reachable() and os.environ["HF_HUB_OFFLINE"] == "0" and asked[-1] == "hf-mirror.example.org"
    assert env.hub_reachable() and len(asked) == 2  # online is decided once too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the user's word goes
    assert not env.hub_reachable() and len(asked) == 2


@pytest.mark.parametrize("stage", [s.name for s in pipeline.PIPELINE + pipeline.TOOLS if not s.model])
def test_model_free_stages_do_not_import_timm(stage):
    """Those stages skip the hub check, which is only right while timm stays out of them."""
    module = f"kit.stages.{stage.replace('-', '_')}"
    done = subprocess.run([sys.executable, "-c", f"import sys, {module}; assert 'timm' not in sys.modules"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_hub_is_asked_only_when_a_stage_loads_a_model(tmp_path, monkeypatch, capsys):
    asked = []
    monkeypatch.setattr(env, "hub_reachable", lambda: asked.append(1) or False)
    monkeypatch.chdir(tmp_path)
    for stage, expected in (("metadata", 0), ("split", 0), ("soup", 1), ("all", 2)):
        assert cli.main(["--stage", stage, "--work-dir", str(tmp_path / "w")]) == 2  # no data, no run
        assert len(asked) == expected, stage
    capsys.readouterr()


def test_the_weights_stage_saves_what_pretrained_auto_finds(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import load_file

    from kit.models.model import create_model
    from kit.stages import weights

    arch = "eva02_tiny_patch14_224.mim_in22k"
    cfg = Config(model=arch, out=str(tmp_path / "upload"))
    monkeypatch.setattr(env, "hub_reachable", lambda: False)
    with pytest.raises(weights.KitError, match="hub cannot be reached"):
        weights.run(cfg)
    real_create = timm.create_model
    with monkeypatch.context() as offline:  # the hub is out of reach here: random weights stand in for it
        offline.setattr(env, "hub_reachable", lambda: True)
        offline.setattr(timm, "create_model", lambda name, pretrained, **kw: real_create(name, **kw))
        weights.run(cfg)
    saved = load_file(tmp_path / "upload" / "model.safetensors")
    # mounted like a Kaggle dataset whose name says nothing about the model
    mounted = tmp_path / "input" / "datasets" / "someone" / "my-upload"
    mounted.parent.mkdir(parents=True)
    (tmp_path / "upload").rename(mounted)
    model = create_model(arch, num_classes=3, img_size=56, pretrained="auto", search_roots=[tmp_path / "input"])
    loaded = model.state_dict()
    assert loaded["blocks.0.attn.qkv.weight"].equal(saved["blocks.0.attn.qkv.weight"])
    assert loaded["head.weight"].shape == (3, 192)  # a new head for the kit's classes
