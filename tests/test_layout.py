"""The package's layout (issue #14): models -> estimators -> tasks -> evaluation, with no import cycle.

The import graph is read with `ast` from every ocr_jax/**/*.py: each ``import ocr_jax...`` and ``from ocr_jax...
import ...`` statement, at module level or inside a function (a deferred import still runs). Importing a module also
runs its packages' ``__init__``, so an edge to ``ocr_jax.a.b`` is an edge to ``ocr_jax.a`` too. The training loop
imports task modules by name (``config.task_module``), which is not an edge: the loop does not depend on them.
"""

import ast
import functools
import importlib
import os
import subprocess
import sys

import ml_collections
import pytest

from ocr_jax import configs
from ocr_jax.training import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "ocr_jax")


def module_files() -> dict[str, str]:
    """{module name: path} of every module of ocr_jax (packages by their __init__)."""
    out = {}
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                parts = os.path.relpath(os.path.join(root, name), REPO)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = os.path.join(root, name)
    return out


MODULES = module_files()


def imported_names(path: str, module: str) -> set[tuple[str, str | None]]:
    """``(module, None)`` for each ``import ocr_jax.X`` and ``(X, Y)`` for each ``from ocr_jax.X import Y`` in `path`,
    at any depth (deferred imports inside functions included); relative imports resolved."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.name, None) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names.update((base, a.name) for a in node.names)
    return {(m, y) for m, y in names if m == "ocr_jax" or m.startswith("ocr_jax.")}


def top_level_names(module: str) -> set[str]:
    """Names bound at the top level of `module`'s file ("*" if it has a module ``__getattr__``: lazy attributes)."""
    tree = ast.parse(open(MODULES[module], encoding="utf-8").read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names | ({"*"} if "__getattr__" in names else set())


def import_graph() -> dict[str, set[str]]:
    """{module: the ocr_jax modules importing it runs}, ancestors of the importer itself left out (a package's
    __init__ runs before its submodules; it importing them is no cycle). Raises AssertionError for an import of
    something ocr_jax does not have (e.g. a deferred import of a module that has moved)."""
    graph = {}
    for module, path in MODULES.items():
        own_ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        edges = set()
        for base, member in imported_names(path, module):
            if base not in MODULES:
                raise AssertionError(f"{module} imports {base}, which is not a module of ocr_jax")
            target = base
            if member is not None:
                if f"{base}.{member}" in MODULES:
                    target = f"{base}.{member}"
                elif not {member, "*"} & top_level_names(base):
                    raise AssertionError(f"{module} imports {member} from {base}, which has no such module or name")
            parts = target.split(".")
            edges |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - own_ancestors - {module}
        graph[module] = edges
    return graph


@functools.cache
def graph() -> dict[str, set[str]]:
    return import_graph()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle ``[a, b, ..., a]`` of the graph, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_import_graph_is_read_from_the_sources():
    assert "ocr_jax.tasks.air" in graph()["ocr_jax.api"]  # a deferred import inside a function
    assert {"ocr_jax.evaluation.air", "ocr_jax.models.air", "ocr_jax.estimators"} <= graph()["ocr_jax.tasks.air"]
    assert "ocr_jax.evaluation.sqair" in graph()["ocr_jax.evaluation.air"]


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# The layers: a module of the first package may not import from the packages after it.
LAYERS = {
    "ocr_jax.models": ("ocr_jax.estimators", "ocr_jax.tasks", "ocr_jax.evaluation", "ocr_jax.training", "ocr_jax.api"),
    "ocr_jax.estimators": ("ocr_jax.models", "ocr_jax.tasks", "ocr_jax.evaluation", "ocr_jax.training", "ocr_jax.api"),
    "ocr_jax.evaluation": ("ocr_jax.tasks", "ocr_jax.training", "ocr_jax.api"),
    "ocr_jax.data": (
        "ocr_jax.models",
        "ocr_jax.estimators",
        "ocr_jax.tasks",
        "ocr_jax.evaluation",
        "ocr_jax.training",
        "ocr_jax.api",
    ),
}


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_layers_import_only_downwards(package):
    bad = sorted(
        f"{m} imports {t}"
        for m, targets in graph().items()
        if in_package(m, package)
        for t in targets
        if any(in_package(t, f) for f in LAYERS[package])
    )
    assert not bad, bad


def test_tasks_use_the_training_package_only_for_the_task_registry():
    bad = sorted(
        f"{m} imports {t}"
        for m, targets in graph().items()
        if in_package(m, "ocr_jax.tasks")
        for t in targets
        if in_package(t, "ocr_jax.training") and t not in ("ocr_jax.training", "ocr_jax.training.tasks")
    )
    assert not bad, bad


def test_models_hold_only_models():
    assert sorted(m for m in MODULES if in_package(m, "ocr_jax.models")) == [
        "ocr_jax.models",
        "ocr_jax.models.air",
        "ocr_jax.models.modules",
        "ocr_jax.models.pcfg",
        "ocr_jax.models.sqair",
        "ocr_jax.models.vrnn",
    ]


# Imports every module in a fresh interpreter, each after the ocr_jax modules imported before it are forgotten, so
# that each is imported first (jax, flax, ... stay loaded: fast). absl flags defined by a module are removed again.
FRESH_IMPORTS = """
import importlib, sys
from absl import flags
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "ocr_jax" or m.startswith("ocr_jax.")]:
        del sys.modules[loaded]
    defined = set(flags.FLAGS)
    importlib.import_module(name)
    for flag in set(flags.FLAGS) - defined:
        delattr(flags.FLAGS, flag)
print("imported", len(sys.argv) - 1)
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    names = sorted(MODULES)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_IMPORTS, *names], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["imported", str(len(names))]


# ---- task modules by name: the configs, and the runs made before the tasks moved --------------------------------
def test_configs_name_current_task_modules():
    for name in configs.names():
        config = configs.get_config(name)
        module = config.get("task_module")
        if module:
            assert module in MODULES and tasks.task_module_name(module) == module, (name, module)


@pytest.mark.parametrize("old,new", sorted(tasks.RENAMED_TASK_MODULES.items()))
def test_a_renamed_task_module_builds_the_task_of_its_new_module(old, new):
    assert new in MODULES and old not in MODULES
    name = {"ocr_jax.tasks.air": "air", "ocr_jax.tasks.sqair": "sqair", "ocr_jax.tasks.toy_vae": "toy_vae"}[new]
    task = tasks.make_task(ml_collections.ConfigDict(dict(task=name, task_module=old)))
    assert type(task).__module__ == new
    assert importlib.import_module(new).__name__ == new
