"""The stage contract: the table in kit/pipeline.py is the whole pipeline, every stage
reads what an earlier one wrote, and really reads and writes what its row says, and imports
run top-down (command line -> stages -> library)."""
import ast
from pathlib import Path

import contract
import pandas as pd
import pytest
from test_competition import TINY, competition

from kit import cli, layout, pipeline

ROOT = Path(__file__).resolve().parents[1]
HOOKS = {"check": "check", "optional": "skipped", "finish": "finish"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A competition run with every stage: a test split for evaluate, two epochs in the soup (which
    scores them on val), and a damaged test film that predict fills with the train prevalence."""
    root, _ = competition(tmp_path_factory.mktemp("contract") / "data", patients=30, test_films=4)
    (root / "test1" / "test_0001.jpg").write_bytes(b"not a JPEG")
    work = root.parent / "work"
    argv = ["--task", "competition", "--data-dir", str(root), "--work-dir", str(work), *TINY,
            "--test-frac", "0.2", "--soup-epochs", "last2", "--on-missing", "fill"]
    with contract.record(pipeline.PIPELINE) as accesses:
        assert cli.main(argv) == 0
    where = contract.areas(work, data=root, sample=[root / "sample_submission_1.csv", root / "test1"])
    return argv, accesses, where


@pytest.mark.parametrize("stage", pipeline.PIPELINE, ids=lambda s: s.name)
def test_each_stage_reads_and_writes_what_its_row_says(recorded, stage):
    _, accesses, where = recorded
    assert contract.undeclared(stage, accesses, where) == []


def test_under_stage_all_the_stages_run_in_order_and_their_declared_hooks_are_asked(recorded):
    _, accesses, _ = recorded
    assert [name for name, hook in accesses.calls if hook == "run"] == [s.name for s in pipeline.PIPELINE]
    for stage in pipeline.PIPELINE:  # `finish` only where the time limit stops the run
        asked = {hook for name, hook in accesses.calls if name == stage.name}
        declared = {hook for hook, on in (("run", True), ("check", stage.check), ("skipped", stage.optional)) if on}
        assert asked == declared, stage.name
    # a stage's check runs as soon as the first stage has chosen the targets, before the data is copied
    assert accesses.calls[0] == ("metadata", "run")
    assert accesses.calls.index(("predict", "check")) < accesses.calls.index(("separate", "run"))


def test_a_stage_reading_an_artifact_its_row_does_not_declare_fails_the_check(recorded, monkeypatch):
    argv, _, where = recorded
    split = pipeline.BY_NAME["split"]
    run = split.load().run

    def reads_history_too(cfg):
        pd.read_csv(layout.history_csv(cfg.work))
        return run(cfg)
    monkeypatch.setattr(split.module, "run", reads_history_too)
    with contract.record([split]) as accesses:
        assert cli.main([*argv, "--stage", "split", "--force"]) == 0
    assert contract.undeclared(split, accesses, where) == ["split reads history, which its row does not declare"]


def test_every_stage_reads_what_an_earlier_stage_wrote():
    written = set()
    for stage in pipeline.PIPELINE:
        assert set(stage.reads) <= written, (stage.name, set(stage.reads) - written)
        written |= set(stage.writes)
    for tool in pipeline.TOOLS:
        assert set(tool.reads) <= written, (tool.name, set(tool.reads) - written)
    named = {a for s in pipeline.PIPELINE + pipeline.TOOLS for a in s.reads + s.writes}
    assert named <= set(layout.ARTIFACTS)  # every artifact is a path of the work directory's contract
    assert {i for s in pipeline.PIPELINE + pipeline.TOOLS for i in s.inputs} <= set(pipeline.INPUTS)


@pytest.mark.parametrize("stage", pipeline.PIPELINE + pipeline.TOOLS, ids=lambda s: s.name)
def test_each_stage_is_a_module_with_run_and_the_hooks_it_declares(stage):
    module = stage.load()
    assert callable(module.run)
    for flag, hook in HOOKS.items():
        assert hasattr(module, hook) == getattr(stage, flag), (stage.name, hook)


def test_the_stage_folder_holds_exactly_the_table():
    files = {p.stem for p in (ROOT / "kit" / "stages").glob("*.py") if p.stem != "__init__"}
    assert files == {s.name.replace("-", "_") for s in pipeline.PIPELINE + pipeline.TOOLS}
    assert [s.name for s in pipeline.to_run("all")] == [s.name for s in pipeline.PIPELINE]


def _imports(path: Path) -> set:
    """Modules of the kit that `path` imports (`from kit import x` counts as kit.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("kit.")}


def test_imports_run_top_down():
    stage_modules = {f"kit.stages.{p.stem}" for p in (ROOT / "kit" / "stages").glob("*.py") if p.stem != "__init__"}
    for path in (ROOT / "kit").rglob("*.py"):
        name = "kit." + ".".join(path.relative_to(ROOT / "kit").with_suffix("").parts)
        imported = _imports(path) - {name}
        if name == "kit.cli":
            continue
        assert "kit.cli" not in imported, f"{name} imports the command line"
        assert not imported & stage_modules, f"{name} imports stage(s) {imported & stage_modules}"
