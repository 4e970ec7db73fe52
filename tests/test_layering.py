"""The package's imports hold the layering written in docs/ARCHITECTURE.md: no circles, nothing upward.

Every import statement of ``src/memrope`` counts, lazy ones inside functions too: a lazy import still
ties the two modules together, it only hides the tie from a reader.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "memrope"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
SOURCE_LINE_BUDGET = 600
"""docs/ARCHITECTURE.md (and the project's guide): no source file over about 600 lines."""
SOURCE_LINE_SLACK = 50  # "about": a file may pass the budget by a docstring paragraph, not by a concept


def modules() -> dict[str, Path]:
    """``memrope.x.y`` -> file, for every module of the package (packages by their ``__init__``)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports (the longest known prefix of each name)."""
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
            stem = ".".join(p for p in (base, node.module or "") if p)
            names += [stem] + [f"{stem}.{a.name}" for a in node.names]
    out = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module and name.startswith("memrope"):
            out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imported(m, p, set(mods)) for m, p in mods.items()}


def documented_floors() -> dict[str, int]:
    """The ``layers`` block of docs/ARCHITECTURE.md: ``floor name name ...   comment`` per line."""
    block = re.search(r"```layers\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert block, f"{DOC} has no ```layers block"
    floors = {}
    for line in block.group(1).splitlines():
        row = re.match(r"(\d+)\s+(\S+(?: \S+)*)", line.strip())  # names one space apart, comment after two
        if row is None:
            continue
        level, names = row.group(1), row.group(2).split()
        for name in names:
            assert name not in floors, f"{name} is given two floors in {DOC}"
            floors[name] = int(level)
    return floors


def floor_of(module: str, floors: dict[str, int]) -> int | None:
    name = module.removeprefix("memrope.") if module != "memrope" else "memrope"
    while name:
        if name in floors:
            return floors[name]
        name = name.rpartition(".")[0]
    return None


def package_of(module: str) -> str:
    """The unit whose modules may import each other on one floor: a sub-package, or the module itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_the_import_parser_sees_lazy_and_relative_imports(tmp_path):
    known = {"memrope", "memrope.a", "memrope.a.b", "memrope.c"}
    src = tmp_path / "b.py"
    src.write_text("from . import x\nfrom ..c import thing\n\ndef f():\n    import memrope.a\n")
    assert imported("memrope.a.b", src, known) == {"memrope.a", "memrope.c"}


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    found = cycles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_module_has_a_documented_floor():
    floors = documented_floors()
    missing = sorted(m for m in modules() if floor_of(m, floors) is None)
    assert not missing, f"modules without a floor in {DOC.name}'s layers table: {missing}"


def test_imports_run_only_downward():
    floors = documented_floors()
    wrong = []
    for module, targets in graph().items():
        mine = floor_of(module, floors)
        for target in sorted(targets):
            theirs = floor_of(target, floors)
            if theirs is None or mine is None:
                continue  # reported by test_every_module_has_a_documented_floor
            same_package = package_of(module) == package_of(target)
            if theirs > mine or (theirs == mine and not same_package):
                wrong.append(f"{module} (floor {mine}) imports {target} (floor {theirs})")
    assert not wrong, "imports against the layering of docs/ARCHITECTURE.md:\n" + "\n".join(wrong)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_source_files_stay_within_the_line_budget(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= SOURCE_LINE_BUDGET + SOURCE_LINE_SLACK, (
        f"{path.relative_to(ROOT)} has {lines} lines (budget ~{SOURCE_LINE_BUDGET}): split it by concept")


def test_docstring_citations_name_files_that_exist_or_an_upstream_commit():
    """A ``path/file.py`` cited in a docstring or comment is this repository's, or comes with the
    upstream repository and commit it was read at (``owner/repo@abc1234 path``)."""
    cited = re.compile(r"``([\w./-]+\.py)``")
    upstream = re.compile(r"[\w.-]+/[\w.-]+@[0-9a-f]{7,40}")
    repo_files = {p.name for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts}
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for match in cited.finditer(text):
            name = Path(match.group(1)).name
            if name in repo_files:
                continue
            context = text[max(0, match.start() - 300):match.start()]
            if not upstream.search(context):
                line = text.count("\n", 0, match.start()) + 1
                bad.append(f"{path.relative_to(ROOT)}:{line}: {match.group(1)}")
    assert not bad, "citations of files that are neither here nor pinned upstream:\n" + "\n".join(bad)
