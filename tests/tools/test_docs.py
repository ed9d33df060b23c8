"""The documentation holds together: README.md and docs/*.md link only to files (and headings) that exist, README stays
an index (short, no links out of the repository), and README's quickstart runs the commands CI runs (.ci/run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
MAX_README_LINES = 220
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
_HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _prose(text: str) -> str:
    """The text with fenced code blocks blanked (line numbers kept) and inline code spans emptied."""
    lines, fenced = [], False
    for line in text.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
            lines.append("")
            continue
        lines.append("" if fenced else line)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "``", "\n".join(lines), flags=re.S)


def _headings(text: str) -> list[str]:
    found, fenced = [], False
    for line in text.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)):
            found.append(m.group(1))
    return found


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).lower()                 # inline HTML renders nothing
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    slugs: set[str] = set()
    seen: dict[str, int] = {}
    for heading in _headings(text):
        slug = github_slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        slugs.add(slug if n == 0 else f"{slug}-{n}")
    slugs.update(_HTML_ANCHOR.findall(text))
    return slugs


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every inline link, image and reference definition outside code."""
    prose = _prose(path.read_text(encoding="utf-8"))
    found = [(prose.count("\n", 0, m.start()) + 1, m.group(3)) for m in _INLINE_LINK.finditer(prose)]
    found += [(prose.count("\n", 0, m.start()) + 1, m.group(1)) for m in _REF_LINK.finditer(prose)]
    return sorted(found)


def test_docs_found():
    names = [_rel(p) for p in DOCS]
    assert "README.md" in names and "docs/README.md" in names, names
    assert any(target for _, target in links(README)), "README.md: no links found (is the link parser broken?)"


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_relative_links_resolve(doc: Path):
    broken = []
    for line, target in links(doc):
        where = f"{_rel(doc)}:{line}: link {target!r}"
        if _SCHEME.match(target) or target.startswith("//"):
            if doc == README:
                broken.append(f"{where} points outside the repository (README links only to files in it)")
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / unquote(path_part)).resolve() if path_part else doc
        if path_part.startswith("/") or not dest.is_relative_to(ROOT):
            broken.append(f"{where} leaves the repository ({dest})")
            continue
        if not dest.exists():
            broken.append(f"{where}: {_rel(dest) if dest.is_relative_to(ROOT) else dest} does not exist")
            continue
        if anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
            broken.append(f"{where}: {_rel(dest)} has no heading with the anchor #{anchor}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_has_no_external_urls():
    hits = [f"README.md:{i}: {line.strip()}" for i, line in enumerate(README.read_text(encoding="utf-8").split("\n"), 1)
            if re.search(r"\b(?:https?|ftp)://", line)]
    assert not hits, "README.md points outside the repository:\n" + "\n".join(hits)


def test_readme_is_an_index():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, (f"README.md has {n} lines, more than {MAX_README_LINES}: it is the index; move the "
                                   f"detail into docs/ and link it")


def test_slugs():
    assert github_slug("The drift guard (`cache:`)") == "the-drift-guard-cache"
    assert github_slug("Training in miniature: GRPO vs +RPO (CPU, 2026-11-30)") == \
        "training-in-miniature-grpo-vs-rpo-cpu-2026-11-30"
    assert github_slug("The kernel library: `rpo_kernels`") == "the-kernel-library-rpo_kernels"


# -- README's quickstart runs what CI runs --------------------------------------------------------------------------

def _ci_command(needle: str) -> str:
    lines = [ln.strip() for ln in CI.read_text(encoding="utf-8").splitlines()
             if needle in ln and not ln.lstrip().startswith("#")]
    assert len(lines) == 1, f".ci/run: expected one command line containing {needle!r}, found {lines}"
    return lines[0]


def _meaningful(command: str) -> list[str]:
    """A command's words without its long options (--quiet and the like change how, not what, it installs)."""
    return [w for w in shlex.split(command) if not w.startswith("--")]


def _quickstart_commands() -> list[list[str]]:
    """The commands of each code block in README's "Quickstart" section, split on && and newlines."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Quickstart\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert m, "README.md has no '## Quickstart' section"
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", m.group(1), flags=re.M | re.S)
    assert blocks, "README.md: the Quickstart section has no code block"
    return [[c.strip() for c in re.split(r"&&|\n", block) if c.strip()] for block in blocks]


def test_quickstart_runs_the_ci_test_command():
    test_cmd = _ci_command("-m pytest")
    assert test_cmd == "TRITON_INTERPRET=1 .venv/bin/python -m pytest -q", f".ci/run: test command is {test_cmd!r}"
    blocks = _quickstart_commands()
    assert any(test_cmd in block for block in blocks), (
        f"README.md: no Quickstart code block runs .ci/run's test command {test_cmd!r}; blocks: {blocks}")


def test_quickstart_installs_as_ci_does():
    install = _meaningful(_ci_command("pip install"))
    assert install[-3:] == ["torch==2.13.0", "-e", ".[dev]"], f".ci/run: install command is {install}"
    blocks = _quickstart_commands()
    test_cmd = _ci_command("-m pytest")
    for block in blocks:
        installs = [_meaningful(c) for c in block if "pip install" in c]
        assert install in installs, (
            f"README.md: a Quickstart code block does not install as .ci/run does ({shlex.join(install)}): {block}")
        if test_cmd in block:
            assert block.index(test_cmd) > max(i for i, c in enumerate(block) if _meaningful(c) == install), (
                f"README.md: the Quickstart test block runs the tests before installing: {block}")
