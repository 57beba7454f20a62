"""The Markdown a user reads: every relative link and #anchor resolves, and every `run.py` command
line in it parses with the kit's own flags, a bundled kernel's arguments (after `--`) included."""
import re
import shlex
from pathlib import Path

import pytest

from kit.config import flags

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md",
         ROOT / "tests" / "README.md"]
FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.M | re.S)  # in a list item too, indented
LINK = re.compile(r"\]\(([^)\s]+)\)")
SHELL_OPERATORS = {"&&", "||", ";", "|"}


def prose(text):
    return FENCE.sub("", text)


def fenced_lines(text):
    """The lines of every fenced block, a line ending in a backslash joined with the next."""
    for block in FENCE.findall(text):
        yield from block.replace("\\\n", " ").splitlines()[1:-1]


def anchors(path):
    """GitHub's heading ids: lower case, punctuation but `-` and `_` dropped, spaces to `-`,
    a repeated id numbered -1, -2, ..."""
    seen, ids = {}, set()
    for line in prose(path.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            ids.add(slug if n == 0 else f"{slug}-{n}")
    return ids


def broken_links(page):
    found = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            found.append(f"{target}: no {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            found.append(f"{target}: no heading #{anchor} in {file.name}")
    return found


def run_py_commands(page):
    """The argument lists of every `run.py` call in the page's code, fenced or inline; lines with
    a placeholder (`<...>`, `...`) are left out."""
    text = page.read_text()
    spans = [s.replace("\n", " ") for s in re.findall(r"`([^`]+)`", prose(text))]
    for line in [*fenced_lines(text), *spans]:
        if "run.py" not in line or "<" in line or "..." in line:
            continue
        tokens = shlex.split(line.lstrip("!"), comments=True)
        segment = []
        for token in [*tokens, ";"]:
            if token not in SHELL_OPERATORS:
                segment.append(token)
                continue
            calls = [i for i, t in enumerate(segment) if t.endswith("run.py")]
            if calls:
                yield line, segment[calls[0] + 1:]
            segment = []


def parse_error(args):
    try:
        cfg = flags.parse_config(args)
        if cfg.kernel_args:
            flags.parse_config(shlex.split(cfg.kernel_args))
    except SystemExit as stop:
        return None if stop.code == 0 else f"exit {stop.code}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_run_py_command_parses_with_the_kits_flags(page, capsys):
    commands = list(run_py_commands(page))
    failures = [(line, error) for line, args in commands if (error := parse_error(args))]
    assert failures == []
    if page.name == "README.md" and page.parent == ROOT:
        assert len(commands) >= 10  # the README's commands were all found, not skipped


def test_a_broken_link_anchor_or_flag_is_caught(tmp_path):
    (tmp_path / "other.md").write_text("# A `--flag`: here\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a---flag-here) [dup](other.md#twice-1) [self](#top)\n\n# Top\n\n"
                    "[gone](missing.md) [bad anchor](other.md#nowhere) [bad dup](other.md#twice-2)\n\n"
                    "```bash\npython run.py --stage all --no-such-flag   # a comment\n"
                    "python run.py --stage push -- --task nonsense\n"
                    "python run.py --stage split && torchrun --standalone run.py --stage train\n```\n"
                    "and inline `python run.py --data-dir\n<your folder>` with a placeholder.\n\n"
                    "1. In a list:\n   ```bash\n   python run.py --stage nope\n   ```\n")
    assert [b.split(":")[0] for b in broken_links(page)] == ["missing.md", "other.md#nowhere",
                                                              "other.md#twice-2"]
    commands = list(run_py_commands(page))
    assert [args for _, args in commands] == [
        ["--stage", "all", "--no-such-flag"], ["--stage", "push", "--", "--task", "nonsense"],
        ["--stage", "split"], ["--stage", "train"], ["--stage", "nope"]]
    assert [parse_error(args) is not None for _, args in commands] == [True, True, False, False, True]
