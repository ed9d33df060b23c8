"""The tree is clean under the house's ruff configuration (pyproject.toml: line length 120, pyflakes, pycodestyle,
isort, bugbear, pyupgrade)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_is_clean():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (it is in the dev extra: pip install -e '.[dev]')")
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]


PACKAGES = ("rpo_kernels", "rpo_train", "benchmarks")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules ``path`` imports, at the top or inside functions (a lazy import still couples them)."""
    import ast

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    """Each project module -> the project modules it imports."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: _imports(path, name, set(files)) for name, path in files.items()}


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_runtime_is_below_the_method():
    """``rpo_train.runtime`` is the plumbing every layer may use (the layering: arrows point down, runtime from
    anywhere), so it imports nothing of the project outside itself: not the method (config, trainer, cache, ...),
    not the rooms (data, model, rollout)."""
    up = sorted(f"{name} -> {target}" for name, targets in _graph().items() if name.startswith("rpo_train.runtime")
                for target in targets if not target.startswith("rpo_train.runtime"))
    assert not up, "rpo_train.runtime imports from above it: " + "; ".join(up)


def test_nothing_points_outside_the_repository():
    """A user's clone has only the repository: no file may send them to the folder beside it or to this machine."""
    listed = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout ({listed.stderr.strip()}): cannot list the repository's files")
    offenders = []
    for name in listed.stdout.splitlines():
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".yaml", ".toml", ".sh", ".txt", ".cu", ".cuh", ".h", ".cpp") and \
                name not in ("CMakeLists.txt", ".ci/run"):
            continue
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for needle in ("../shared", "/work/"):
            if needle in text and path.name != "test_lint.py":
                offenders.append(f"{name}: {needle}")
    assert not offenders, offenders
