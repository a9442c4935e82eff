"""Every module imports on its own, the package's imports form no circle, and no function imports the package.

Three checks of the package's import structure (issue 21, "a package by concept"):

- every module of ``robustdistiller`` (and every Python file of the recipes, and the root ``train.py``)
  imports in a fresh interpreter as if it were the first module imported: one subprocess, and before each
  module every ``robustdistiller`` module (and every recipe-local module) is dropped from ``sys.modules``.
  Third-party modules (torch, SpeechBrain, ...) stay loaded between modules, which keeps the check fast;
  they are not ours and their import does not depend on ours;
- the graph of module-level imports among ``robustdistiller`` modules, read statically with :mod:`ast`, has
  no cycle. Importing ``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b`` first, so those are edges too,
  except for the importer's own ancestor packages (a package that imports its own submodules is no circle),
  unless the import names the ancestor itself (``from a.b import name`` in ``a/b/c.py``);
- no function or method imports ``robustdistiller``: an import inside a function is kept for optional
  third-party dependencies (onnx, matplotlib, pesq, ...) only.
"""

import ast
import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest

from tests.conftest import REPOSITORY_ROOT

PACKAGE = "robustdistiller"
PACKAGE_FOLDER = os.path.join(REPOSITORY_ROOT, PACKAGE)
RECIPES_FOLDER = os.path.join(REPOSITORY_ROOT, "recipes")


def package_modules():
    """``{dotted module name: file path}`` of every Python file of the package (packages by their ``__init__``)."""
    modules = {}
    for folder, subfolders, files in os.walk(PACKAGE_FOLDER):
        subfolders[:] = sorted(name for name in subfolders if name != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, REPOSITORY_ROOT)[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def script_files():
    """Repository-relative paths of the recipes' Python files and of the root ``train.py``."""
    paths = ["train.py"]
    for folder, subfolders, files in os.walk(RECIPES_FOLDER):
        subfolders[:] = sorted(name for name in subfolders if name != "__pycache__")
        paths += [
            os.path.relpath(os.path.join(folder, name), REPOSITORY_ROOT)
            for name in sorted(files)
            if name.endswith(".py")
        ]
    return paths


MODULES = package_modules()
SCRIPTS = script_files()

# Run in a fresh interpreter; argv[1] is a JSON list of [kind, name] with kind "module" (a dotted name) or
# "script" (a repository-relative file path). Prints a JSON object {name: null or the traceback}.
IMPORT_EACH_ALONE = r"""
import importlib, importlib.machinery, importlib.util, json, os, sys, traceback

root = os.getcwd()

# Every module is executed afresh, but its source is compiled once (where no .pyc is written, compiling is most
# of an import's time): code objects are immutable, so sharing them between executions changes nothing.
compiled = {}
compile_source = importlib.machinery.SourceFileLoader.source_to_code


def source_to_code_once(self, data, path, **options):
    key = (path, bytes(data))
    if key not in compiled:
        compiled[key] = compile_source(self, data, path, **options)
    return compiled[key]


importlib.machinery.SourceFileLoader.source_to_code = source_to_code_once
sys.path.insert(0, root)
targets = json.loads(sys.argv[1])
baseline = set(sys.modules)
results = {}


def forget_ours():
    # our package, and the recipe-local modules (prepare_*, the scripts) imported since
    recipes = os.path.join(root, "recipes") + os.sep
    for name in list(sys.modules):
        path = vars(sys.modules[name]).get("__file__") or ""  # vars: a lazy module's getattr would import it
        if name.split(".")[0] == "robustdistiller" or name not in baseline and (
                path.startswith(recipes) or os.path.dirname(path) == root):
            del sys.modules[name]


for kind, name in targets:
    forget_ours()
    added = None
    try:
        if kind == "module":
            importlib.import_module(name)
        else:
            path = os.path.join(root, name)
            added = os.path.dirname(path)
            sys.path.insert(0, added)
            unique = "script_" + name.replace(os.sep, "_").replace(".", "_")
            spec = importlib.util.spec_from_file_location(unique, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique] = module
            spec.loader.exec_module(module)
        results[name] = None
    except BaseException:
        results[name] = traceback.format_exc()
    finally:
        if added is not None:
            sys.path.remove(added)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def import_results():
    """``{module or script: None if it imported, else its traceback}``, from one fresh interpreter."""
    targets = [["module", name] for name in MODULES] + [["script", path] for path in SCRIPTS]
    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_ALONE, json.dumps(targets)],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_every_package_file_is_walked():
    """The walk finds the package's modules, its subpackages and the recipes (guards against an empty walk)."""
    assert {
        "robustdistiller",
        "robustdistiller.export",
        "robustdistiller.dpwavlm.model",
        "robustdistiller.downstream.brain",
    } <= set(MODULES)
    assert len([path for path in SCRIPTS if os.path.basename(path) == "train.py"]) == 13  # 12 recipes + the root


@pytest.mark.parametrize("name", list(MODULES) + SCRIPTS)
def test_imports_alone_in_a_fresh_interpreter(name, import_results):
    """The module imports when it is the first of ours to be imported."""
    assert name in import_results, f"{name} was not imported"
    assert import_results[name] is None, f"importing {name} alone failed:\n{import_results[name]}"


def _module_level_nodes(tree):
    """The nodes that run when the module is imported: everything outside function bodies and lambdas."""
    pending = list(ast.iter_child_nodes(tree))
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for decorator in getattr(node, "decorator_list", []):  # decorators and defaults run at import
                pending.append(decorator)
            pending.extend(node.args.defaults + [default for default in node.args.kw_defaults if default])
            continue
        yield node
        pending.extend(ast.iter_child_nodes(node))


def _absolute_base(importer, node):
    """The module an ``ImportFrom`` names, with relative imports (``from . import x``) made absolute."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[importer].endswith("__init__.py")
    parts = importer.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _owning_module(dotted):
    """The longest prefix of ``dotted`` that is one of the package's modules (``a.b.name`` -> ``a.b``)."""
    parts = dotted.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts) if parts else None


def import_targets(importer, node):
    """The package module each name of an ``Import``/``ImportFrom`` node stands for (None: not one of ours)."""
    if isinstance(node, ast.Import):
        return [_owning_module(alias.name) for alias in node.names if alias.name.split(".")[0] == PACKAGE]
    base = _absolute_base(importer, node)
    if base.split(".")[0] != PACKAGE:
        return []
    return [_owning_module(f"{base}.{alias.name}") for alias in node.names]


def import_graph():
    """``{module: {(imported module, line)}}``: module-level imports among the package's modules."""
    graph = defaultdict(set)
    for importer, path in MODULES.items():
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read(), path)
        ancestors = {".".join(importer.split(".")[:depth]) for depth in range(1, importer.count(".") + 2)}
        for node in _module_level_nodes(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in import_targets(importer, node):
                if target is None:
                    continue
                parts = target.split(".")
                for depth in range(1, len(parts) + 1):
                    imported = ".".join(parts[:depth])  # a.b.c runs a, a.b, then a.b.c
                    explicit = imported == target != importer  # named by the import, even an ancestor
                    if (explicit or imported not in ancestors) and imported in MODULES:
                        graph[importer].add((imported, node.lineno))
    return graph


def find_cycles(edges):
    """The strongly connected components that hold a cycle (Tarjan's algorithm), each as a sorted list of modules."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = [0]

    def visit(node):  # the package has ~90 modules: recursion depth is no concern
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def _one_cycle(component, edges):
    """One concrete circle inside a strongly connected component, as a list of modules (first == last)."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}
    while True:
        successors = sorted(edges[path[-1]] & members)
        if start in successors and len(path) > 1 or successors == [start]:
            return path + [start]
        following = next((successor for successor in successors if successor not in seen), None)
        if following is None:  # a back edge to the middle of the path closes a shorter circle
            closing = next(successor for successor in successors if successor in seen)
            return path[path.index(closing) :] + [closing]
        path.append(following)
        seen.add(following)


def test_no_import_cycle_among_package_modules():
    """Module-level imports never lead back to the importer (statically, so every entry point is covered)."""
    graph = import_graph()
    edges = {module: {target for target, _ in targets} for module, targets in graph.items()}
    lines = {(module, target): line for module, targets in graph.items() for target, line in targets}
    cycles = [_one_cycle(component, edges) for component in find_cycles(edges)]
    described = [
        " -> ".join(f"{a} (line {lines[a, b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"
        for cycle in cycles
    ]
    assert not cycles, "import cycles among robustdistiller modules:\n" + "\n".join(described)


def test_cycle_finder_finds_a_circle():
    """The checker itself: a three-module circle and a self-import are found, a diamond is not."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"a"}}) == [["a"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}}) == []
    assert _one_cycle(["a", "b", "c"], {"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_relative_and_submodule_imports_are_resolved():
    """``from . import x``, ``from pkg import submodule`` and ``import a.b.c`` name the module they run."""
    node = ast.parse("from . import onnx").body[0]
    assert import_targets("robustdistiller.export", node) == ["robustdistiller.export.onnx"]
    node = ast.parse("from .s3prl import x").body[0]
    assert import_targets("robustdistiller.export.onnx", node) == ["robustdistiller.export.s3prl"]
    node = ast.parse("from robustdistiller.export import main").body[0]
    assert import_targets("robustdistiller.export.__main__", node) == ["robustdistiller.export"]
    node = ast.parse("import robustdistiller.models.student").body[0]
    assert import_targets("robustdistiller.demo", node) == ["robustdistiller.models.student"]


def _imports_in_functions(path):
    """``(line, source line)`` of every import of ``robustdistiller`` (or relative import) inside a function."""
    with open(path, encoding="utf-8") as file:
        source = file.read()
    found = []
    for function in ast.walk(ast.parse(source, path)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                ours = any(alias.name.split(".")[0] == PACKAGE for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                ours = node.level > 0 or (node.module or "").split(".")[0] == PACKAGE
            else:
                continue
            if ours:
                found.append((node.lineno, source.splitlines()[node.lineno - 1].strip()))
    return sorted(set(found))


def test_no_function_imports_the_package():
    """Imports of ``robustdistiller`` sit at the top of the module, in the package, the recipes and ``train.py``."""
    offenders = []
    for path in list(MODULES.values()) + [os.path.join(REPOSITORY_ROOT, script) for script in SCRIPTS]:
        for line, text in _imports_in_functions(path):
            offenders.append(f"{os.path.relpath(path, REPOSITORY_ROOT)}:{line}: {text}")
    assert not offenders, "imports of robustdistiller inside functions:\n" + "\n".join(offenders)
