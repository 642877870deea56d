"""The toolkit's layers and the absence of import cycles, checked on the code as it stands.

The contracts live in pyproject.toml (`[tool.importlinter]`): the command line on top and
imported by nothing, then validation and plots, the era engine, training / simulation / remote
services / serving, the file layer, and the error family at the bottom; the runtime never
imports the toolkit; only the Dask executor imports dask. Cycles are found over grimp's import
graph (import-linter's own), module by module and subpackage by subpackage. Each check is also
run once on a copy of the code with a violation planted, so it is known to be able to fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pixelring2nmf", "mlserver_model")


def lint_imports(root: Path, contract: str = "") -> subprocess.CompletedProcess:
    """import-linter on the code under `root` (one contract, or all), in a fresh interpreter
    whose path starts at `root`, so that it reads that copy of the code."""
    limit = f"limit_to_contracts=({contract!r},), " if contract else ""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            f"from importlinter.cli import lint_imports; "
            f"raise SystemExit(lint_imports({limit}no_cache=True))",
        ],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def successors(module: str) -> list[str]:
        return sorted(m for m in graph.find_modules_directly_imported_by(module) if m in modules)

    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(successors(root)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors(child))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def subpackage_graph(graph: grimp.ImportGraph) -> tuple[grimp.ImportGraph, set[str]]:
    """The imports between the toolkit's subpackages (pixelring2nmf.era, ...), one node each."""

    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    squashed = grimp.ImportGraph()
    toolkit = {m for m in graph.modules if m.startswith("pixelring2nmf.")}
    for module in toolkit:
        squashed.add_module(top(module))
        for imported in graph.find_modules_directly_imported_by(module):
            if imported in toolkit and top(imported) != top(module):
                squashed.add_import(importer=top(module), imported=top(imported))
    return squashed, {top(m) for m in toolkit}


def test_layer_contracts_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_no_import_cycle_in_either_package() -> None:
    graph = grimp.build_graph(*PACKAGES)
    for package in PACKAGES:
        modules = {m for m in graph.modules if m == package or m.startswith(package + ".")}
        assert cycles(graph, modules) == [], package
    squashed, subpackages = subpackage_graph(graph)
    assert cycles(squashed, subpackages) == []


def test_the_cycle_check_finds_a_planted_cycle() -> None:
    graph = grimp.build_graph(*PACKAGES)
    graph.add_import(importer="pixelring2nmf.io.keys", imported="pixelring2nmf.era.merge")
    modules = {m for m in graph.modules if m.startswith("pixelring2nmf.")}
    assert any("pixelring2nmf.io.keys" in group for group in cycles(graph, modules))
    squashed, subpackages = subpackage_graph(graph)
    # era -> model -> io is allowed, so the planted io -> era may close a cycle through model
    planted = {"pixelring2nmf.era", "pixelring2nmf.io"}
    assert any(planted <= set(group) for group in cycles(squashed, subpackages))


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("pixelring2nmf/io/keys.py", "from ..cli import main", "layers"),
        ("pixelring2nmf/era/plan.py", "import distributed", "dask"),
        ("mlserver_model/dftools.py", "import pixelring2nmf", "runtime-alone"),
    ],
)
def test_a_planted_violation_breaks_its_contract(
    tmp_path: Path, module: str, planted: str, contract: str
) -> None:
    for name in (*PACKAGES, "pyproject.toml"):
        source = REPO / name
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, tmp_path / name)
    assert lint_imports(tmp_path, contract).returncode == 0  # the copy as it is: kept
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{planted}  # planted by the test\n")
    result = lint_imports(tmp_path, contract)
    assert result.returncode != 0, result.stdout
    assert "0 kept, 1 broken" in result.stdout
