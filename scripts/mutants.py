"""A curated mutation check: apply each mutant of ``scripts/mutants.yaml`` to a temporary copy of the
tree, run the tests that should catch it, and print what was killed and what survived.

Each mutant is an exact source-text replacement in one file (``find`` must occur exactly once; when it
does not, because the code moved, the mutant is reported as NOT APPLIED, loudly, and never counted as
killed). The worktree is never touched: every mutant runs in its own copy of ``src/``, ``tests/``,
``scripts/``, ``docs/`` and the project files, imported through ``PYTHONPATH`` (which a subprocess the
tests start inherits), with ``OMP_NUM_THREADS=1`` and a timeout per mutant. Too slow for CI (minutes):

    .venv/bin/python scripts/mutants.py                 # every mutant
    .venv/bin/python scripts/mutants.py --only sampler_renoise_previous_draw --keep-going
    .venv/bin/python scripts/mutants.py --check         # only that every mutant still applies

Exit status: 0 when every mutant applied and was killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("src", "tests", "scripts", "docs", "pyproject.toml", "README.md")
DEFAULT_TIMEOUT = 900.0  # seconds per mutant: a mutant that hangs the tests counts as killed by timeout


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    find: tuple[str, ...]  # one or more exact texts, each replaced by its ``replace`` (same order)
    replace: tuple[str, ...]
    tests: tuple[str, ...]
    bug: str

    def apply(self, root: Path) -> str | None:
        """Write the mutant into ``root``; the reason it cannot be applied, else None."""
        path = root / self.file
        if not path.exists():
            return f"{self.file} does not exist"
        text = path.read_text()
        for find, replace in zip(self.find, self.replace, strict=True):
            count = text.count(find)
            if count != 1:
                return f"its source text {find.strip()[:60]!r} occurs {count} times in {self.file} (expected once)"
            text = text.replace(find, replace)
        path.write_text(text)
        return None


def load(path: Path) -> list[Mutant]:
    data = yaml.safe_load(path.read_text())
    mutants = []
    for item in data:
        unknown = set(item) - {"name", "file", "find", "replace", "tests", "bug"}
        if unknown:
            raise ValueError(f"{path}: mutant {item.get('name')!r} has unknown keys {sorted(unknown)}")
        find, replace = item["find"], item["replace"]
        find, replace = ((find,), (replace,)) if isinstance(find, str) else (tuple(find), tuple(replace))
        if len(find) != len(replace) or find == replace:
            raise ValueError(f"{path}: mutant {item['name']!r} needs as many replacements as texts, and a change")
        mutants.append(Mutant(item["name"], item["file"], find, replace, tuple(item["tests"]), item.get("bug", "")))
    names = [m.name for m in mutants]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate mutant names")
    return mutants


def copy_tree(dst: Path, root: Path = ROOT) -> None:
    for name in COPIED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dst / name)


def run_one(mutant: Mutant, timeout: float, python: str, tree: Path = ROOT) -> tuple[str, float, str]:
    """(outcome, seconds, last lines of output): killed / survived / NOT APPLIED / timeout (killed)."""
    with tempfile.TemporaryDirectory(prefix="memrope-mutant-") as tmp:
        root = Path(tmp)
        copy_tree(root, tree)
        problem = mutant.apply(root)
        if problem is not None:
            return "NOT APPLIED", 0.0, problem
        env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}
        cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *mutant.tests]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "killed (timeout)", time.perf_counter() - start, ""
        seconds = time.perf_counter() - start
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        if proc.returncode == 0:
            return "SURVIVED", seconds, tail
        if proc.returncode in (4, 5):  # usage error / nothing collected: the test list is wrong
            return "NOT RUN (bad test list)", seconds, tail
        return "killed", seconds, tail


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mutants", type=Path, default=ROOT / "scripts" / "mutants.yaml")
    p.add_argument("--only", nargs="*", help="names of the mutants to run")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per mutant")
    p.add_argument("--check", action="store_true", help="only check that every mutant applies to this tree")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--root", type=Path, default=ROOT,
                   help="the tree to copy and mutate (default: this checkout), e.g. an older commit's worktree")
    args = p.parse_args(argv)
    mutants = load(args.mutants)
    if args.only:
        missing = sorted(set(args.only) - {m.name for m in mutants})
        if missing:
            p.error(f"no mutant named {', '.join(missing)}")
        mutants = [m for m in mutants if m.name in args.only]
    if args.check:
        bad = []
        for m in mutants:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / m.file).parent.mkdir(parents=True)
                if (args.root / m.file).exists():
                    shutil.copy2(args.root / m.file, Path(tmp) / m.file)
                problem = m.apply(Path(tmp))
            if problem is not None:
                bad.append(m)
                print(f"NOT APPLICABLE: {m.name}: {problem}", file=sys.stderr)
        print(f"{len(mutants) - len(bad)} of {len(mutants)} mutants apply")
        return 1 if bad else 0
    rows = []
    print("| mutant | file | tests run | outcome | s |\n|---|---|---|---|---|", flush=True)
    for m in mutants:
        outcome, seconds, tail = run_one(m, args.timeout, args.python, args.root)
        rows.append((m, outcome))
        print(f"| {m.name} | {m.file} | {' '.join(m.tests)} | {outcome} | {seconds:.0f} |", flush=True)
        if outcome not in ("killed", "killed (timeout)"):
            print(f"  !! {m.name}: {outcome}: {tail}", file=sys.stderr, flush=True)
    killed = sum(o.startswith("killed") for _, o in rows)
    not_applied = [m.name for m, o in rows if o == "NOT APPLIED"]
    survived = [m.name for m, o in rows if o == "SURVIVED"]
    print(f"\n{killed} of {len(rows)} killed; survived: {', '.join(survived) or 'none'}; "
          f"not applied: {', '.join(not_applied) or 'none'}")
    if not_applied:
        print(f"memrope mutants: {len(not_applied)} mutant(s) NOT APPLIED (their source text moved): "
              f"{', '.join(not_applied)}; update scripts/mutants.yaml", file=sys.stderr)
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
