"""The package's layering, read from the imports of every ``covid/**/*.py`` file.

Data flows inputs -> model -> explain -> training -> evaluation -> screening -> app, and
a module may import only from its own stage or a lower one; the app reads a model's
figures from the evaluation stage, never from training. Every import counts, including
the ones deferred inside functions and under ``TYPE_CHECKING``. The top-level
entry modules may import any stage but the app; nothing imports them, and they
are the only modules run as ``python -m`` (one entry point per tool). There is no
import circle between modules, and only ``covid/app/`` imports Streamlit.

The rules are plain functions, checked first on synthetic imports that break
them (so that the test is known to fail when it should), then on the real tree.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "covid"

STAGES = ("inputs", "model", "explain", "training", "evaluation", "screening", "app")
"""The stages, lowest first."""

ROOT = "covid"
"""The package itself (``covid/__init__.py``): below every stage, importable by all."""
ROOT_MODULES = frozenset({"covid.settings", "covid.flags"})
"""Plain modules at the package's top that count as the package itself: the settings
(paths and environment variables, no third-party import), which every stage reads, and the
command-line flags every command shares (argparse and the settings only)."""

ENTRY_MODULES = frozenset({"covid.__main__", "covid.train", "covid.evaluate", "covid.train_lungs",
                           "covid.train_opacity", "covid.fit_ood", "covid.invariance"})
"""Command-line entry points at the package's top: above every stage but the app."""

CHILD_PROCESSES = frozenset({"covid.training.backend"})
"""Modules below the top that run as ``python -m``: the backend probe, which the trainers
start as a child process to time a backend before Keras is imported."""

UI_LIBRARIES = ("streamlit",)


# ------------------------------------------------------------------ reading imports


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """``covid/inputs/decode.py`` -> ``covid.inputs.decode``; ``__init__`` -> the package."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every module name a source imports, wherever the import statement is.

    ``from a.b import c`` gives ``a.b.c`` (it may be a submodule; see
    :func:`resolve`); relative imports are made absolute against ``module``.
    """
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
            names.append(base)
    return names


def resolve(name: str, modules: Iterable[str]) -> str | None:
    """The most specific module of the package that ``name`` refers to, or None."""
    known = set(modules)
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def read_package(package: Path = PACKAGE) -> dict[str, list[str]]:
    """Module name -> the (unresolved) names it imports, for every file of the package."""
    imports = {}
    for path in sorted(package.rglob("*.py")):
        name = module_name(path, package)
        imports[name] = imported_names(path.read_text(encoding="utf-8"), name,
                                       is_package=path.name == "__init__.py")
    return imports


def internal_graph(imports: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (itself excluded)."""
    graph = {}
    for module, names in imports.items():
        targets = {resolve(name, imports) for name in names if name.split(".")[0] == ROOT}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


# ------------------------------------------------------------------------ the rules


def stage_of(module: str) -> str | None:
    """A module's stage, ``ROOT``, ``"entry"``, or None for a module outside the layout."""
    if module == ROOT or module in ROOT_MODULES:
        return ROOT
    if module in ENTRY_MODULES:
        return "entry"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in STAGES:
        return parts[1]
    return None


def may_import(importer: str, imported: str) -> bool:
    """Whether a module of stage ``importer`` may import one of stage ``imported``."""
    if imported == ROOT:
        return True
    if importer == "entry":
        return imported != "app"
    if imported == "entry" or importer == ROOT:
        return False
    return STAGES.index(imported) <= STAGES.index(importer)


def layering_violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Every import from a higher stage, and every module outside the layout."""
    problems = []
    for module, targets in sorted(graph.items()):
        stage = stage_of(module)
        if stage is None:
            problems.append(f"{module} is in no stage (put it under one of {', '.join(STAGES)})")
            continue
        for target in sorted(targets):
            target_stage = stage_of(target)
            if target_stage is not None and not may_import(stage, target_stage):
                problems.append(f"{module} ({stage}) imports {target} ({target_stage})")
    return problems


def import_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def ui_importers(imports: Mapping[str, Iterable[str]]) -> list[str]:
    """Modules outside ``covid.app`` that import a UI library."""
    return sorted(
        module for module, names in imports.items()
        if stage_of(module) != "app"
        and any(name.split(".")[0] in UI_LIBRARIES for name in names)
    )


def arrows(graph: Mapping[str, Iterable[str]], importer: str, imported: str) -> list[str]:
    """Every import of a module of stage ``imported`` by one of stage ``importer``."""
    return sorted(f"{module} imports {target}" for module, targets in graph.items()
                  if stage_of(module) == importer
                  for target in targets if stage_of(target) == imported)


def runnable_modules(sources: Mapping[str, str]) -> list[str]:
    """Modules with an ``if __name__ == "__main__":`` block, from module name -> source."""
    found = []
    for module, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                    and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"):
                found.append(module)
                break
    return sorted(found)


def second_entry_points(sources: Mapping[str, str]) -> list[str]:
    """Runnable modules that are neither a top-level entry point nor a child process."""
    return [m for m in runnable_modules(sources)
            if stage_of(m) not in ("entry", ROOT) and m not in CHILD_PROCESSES]


# ----------------------------------------------------------- the rules can fail


def test_reading_finds_deferred_type_checking_and_relative_imports():
    source = '''
from __future__ import annotations
import numpy as np
from typing import TYPE_CHECKING
from covid.inputs import decode
if TYPE_CHECKING:
    from covid.app.state import chosen_study
def later():
    import streamlit as st
    from . import table
    from ..model.network import load_model
'''
    names = imported_names(source, "covid.screening.report")
    for name in ("numpy", "covid.inputs.decode", "covid.app.state", "streamlit",
                 "covid.screening.table", "covid.model.network"):
        assert name in names
    modules = ["covid", "covid.inputs", "covid.inputs.decode", "covid.app", "covid.app.state"]
    assert resolve("covid.inputs.decode", modules) == "covid.inputs.decode"
    assert resolve("covid.app.state.chosen_study", modules) == "covid.app.state"
    assert resolve("covid.inputs.nothing", modules) == "covid.inputs"
    assert resolve("numpy", modules) is None


def test_an_import_from_a_higher_stage_is_caught():
    graph = {
        "covid.inputs.decode": {"covid.inputs.errors", "covid"},
        "covid.explain.overlay": {"covid.screening.table"},  # explain reaching up
        "covid.screening.table": {"covid.explain.overlay", "covid.training.metrics"},
        "covid.training.metrics": set(),
        "covid.model.network": {"covid.app.state"},  # anything reaching the app
        "covid.__main__": {"covid.screening.predict", "covid.app.screening"},  # entry -> app
        "covid.screening.predict": {"covid.train"},  # a stage importing an entry point
        "covid.helpers": set(),  # outside the layout
    }
    assert layering_violations(graph) == [
        "covid.__main__ (entry) imports covid.app.screening (app)",
        "covid.explain.overlay (explain) imports covid.screening.table (screening)",
        "covid.helpers is in no stage (put it under one of inputs, model, explain, training, "
        "evaluation, screening, app)",
        "covid.model.network (model) imports covid.app.state (app)",
        "covid.screening.predict (screening) imports covid.train (entry)",
    ]


def test_lower_stages_and_entry_points_pass():
    graph = {
        "covid": set(),
        "covid.app.screening": {"covid.inputs.decode", "covid.screening.table", "covid"},
        "covid.screening.table": {"covid.evaluation.results", "covid.screening.pipeline"},
        "covid.evaluation.results": {"covid.training.catalogue"},
        "covid.train": {"covid.training.train"},
        "covid.evaluate": {"covid.evaluation.cli", "covid"},
    }
    assert layering_violations(graph) == []


def test_an_arrow_from_the_app_to_training_is_caught():
    graph = {
        "covid.app.model_page": {"covid.evaluation.results", "covid.training.catalogue"},
        "covid.evaluation.results": {"covid.training.catalogue"},
        "covid.training.catalogue": set(),
    }
    assert arrows(graph, "app", "training") == [
        "covid.app.model_page imports covid.training.catalogue"]
    assert arrows(graph, "training", "evaluation") == []


def test_an_import_circle_is_caught():
    graph = {
        "covid.inputs.decode": {"covid.inputs.dicom"},
        "covid.inputs.dicom": {"covid.inputs.decode", "covid.inputs.errors"},
        "covid.inputs.errors": set(),
        "covid.app.a": {"covid.app.b"},
        "covid.app.b": {"covid.app.c"},
        "covid.app.c": {"covid.app.a"},
    }
    assert import_cycles(graph) == [
        ["covid.app.a", "covid.app.b", "covid.app.c"],
        ["covid.inputs.decode", "covid.inputs.dicom"],
    ]
    del graph["covid.inputs.dicom"]
    graph["covid.app.c"] = set()
    assert import_cycles(graph) == []


def test_streamlit_outside_the_app_is_caught():
    imports = {
        "covid.app.state": ["streamlit"],
        "covid.screening.table": ["numpy", "streamlit.column_config"],
        "covid": [],
    }
    assert ui_importers(imports) == ["covid.screening.table"]


def test_a_second_entry_point_below_the_top_is_caught():
    main_block = 'import sys\ndef main(): ...\nif __name__ == "__main__":\n    main()\n'
    sources = {
        "covid.train": main_block,
        "covid.training.train": main_block,  # the same tool run a second way
        "covid.training.backend": main_block,
        "covid.training.data": "def main(): ...\n",
    }
    assert runnable_modules(sources) == ["covid.train", "covid.training.backend",
                                         "covid.training.train"]
    assert second_entry_points(sources) == ["covid.training.train"]


# ----------------------------------------------------------------- the real tree


@pytest.fixture(scope="module")
def imports() -> dict[str, list[str]]:
    found = read_package()
    assert {"covid", "covid.inputs.decode", "covid.app.state"} <= set(found)
    return found


def test_no_module_imports_from_a_stage_above_its_own(imports):
    assert layering_violations(internal_graph(imports)) == []


def test_no_import_circles(imports):
    assert import_cycles(internal_graph(imports)) == []


def test_the_app_reads_no_training_module(imports):
    assert arrows(internal_graph(imports), "app", "training") == []


def test_only_the_app_imports_streamlit(imports):
    assert ui_importers(imports) == []
    assert any("streamlit" in names for module, names in imports.items()
               if stage_of(module) == "app")


def test_the_decoders_share_errors_below_both(imports):
    graph = internal_graph(imports)
    assert "covid.inputs.errors" in graph["covid.inputs.decode"]
    assert "covid.inputs.errors" in graph["covid.inputs.dicom"]
    assert "covid.inputs.decode" not in graph["covid.inputs.dicom"]
    assert graph["covid.inputs.errors"] <= {ROOT}


def test_each_tool_runs_one_way_only_from_the_top():
    sources = {module_name(p): p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}
    assert second_entry_points(sources) == []
    assert set(runnable_modules(sources)) == ENTRY_MODULES | CHILD_PROCESSES
