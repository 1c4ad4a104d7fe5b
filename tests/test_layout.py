"""The package's layout keeps the promises of ARCHITECTURE.md (issue 15's "done when").

Read from the source with ``ast`` (no imports): module sizes, the one home of Pyro's internals,
the import layers (no module-level cycle, no import pointing up a layer), ``__all__`` in every
public module and a docstring on every public definition.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_vi"
MAX_LINES = 420  # "no module over ~400 lines"
# Attributes and names that belong to Pyro's private internals (the param store's dicts, Trace_ELBO's
# helper); only engine/params.py may use them.
PRIVATE_PYRO = {"_params", "_constraints", "_param_to_name", "_compute_log_r", "_get_traces",
                "_loss_and_surrogate_loss_particle", "_standard_normal", "_Subsample", "_do_not_trace"}
PARAMS_MODULE = "pyro_vi.engine.params"
# Lower number = lower layer; a module may import only from its own layer or below.
LAYERS = {
    "pyro_vi.errors": 0, "pyro_vi._interrupt": 0, "pyro_vi.device": 1, "pyro_vi.io": 1, "pyro_vi.preflight": 1,
    "pyro_vi.conjugate": 1, "pyro_vi.engine": 2, "pyro_vi.vae.data": 3, "pyro_vi.vae.model": 3,
    "pyro_vi.estimators": 4, "pyro_vi.local": 5, "pyro_vi.vae": 5, "pyro_vi.mixture": 5,
    "pyro_vi.diagnostics": 5, "pyro_vi.posteriordb": 5, "pyro_vi.plots": 6,
    "pyro_vi.commands": 7, "pyro_vi.cli": 8, "pyro_vi.__main__": 9,
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    best = max((prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len, default=None)
    assert best is not None, f"{module} has no layer in tests/test_layout.py LAYERS (add it, and to ARCHITECTURE.md)"
    return LAYERS[best]


def _imports(name: str) -> set[str]:
    """pyro_vi modules ``name`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    found = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyro_vi"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("pyro_vi"))
    return found - {name}


def test_no_module_is_over_the_size_limit():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_only_engine_params_touches_pyro_internals():
    offenders = []
    for name, tree in TREES.items():
        if name == PARAMS_MODULE:
            continue
        for node in ast.walk(tree):
            own = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE_PYRO and not own:  # self._params: our own field
                offenders.append(f"{name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Constant) and node.value in PRIVATE_PYRO:  # a private name matched as a string
                offenders.append(f"{name}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyro."):
                offenders += [f"{name}:{node.lineno} {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert offenders == []


def test_the_probe_sees_a_private_access():
    """The check above can fail: the same walk finds the attribute in a snippet that uses it."""
    tree = ast.parse("import pyro\npyro.get_param_store()._params.clear()\nfrom pyro.infer.trace_elbo import _compute_log_r\n"
                     "subsample = type(site['fn']).__name__ == '_Subsample'\n")
    attrs = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in PRIVATE_PYRO]
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names if a.name.startswith("_")]
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in PRIVATE_PYRO]
    assert attrs == ["_params"] and names == ["_compute_log_r"] and strings == ["_Subsample"]


def test_imports_point_down_the_layers_without_cycles():
    upward = []
    for name in MODULES:
        for target in _imports(name):
            if target == "pyro_vi" or name in ("pyro_vi",) or (MODULES[name].name == "__init__.py" and target.startswith(name + ".")):
                continue  # a package's __init__ re-exports its own submodules
            if _layer(target) > _layer(name):
                upward.append(f"{name} -> {target}")
    assert upward == []
    # No cycle among modules (edges into a package's __init__ count as edges to the package).
    graph = {name: {t for t in _imports(name) if t != "pyro_vi" and not t.startswith(name + ".")} for name in MODULES}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if not state.get(nxt):
                cycle = visit(nxt, path + [node])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    cycles = [c for c in (visit(n, []) for n in sorted(graph) if not state.get(n)) if c]
    assert cycles == []


PUBLIC_MODULES = [name for name in MODULES if not any(part.startswith("_") for part in name.split("."))]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_module_declares_all_and_documents_its_definitions(name):
    tree = TREES[name]
    assert ast.get_docstring(tree), f"{name} has no module docstring"
    declared = [
        node for node in tree.body if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
    ]
    assert declared, f"{name} defines no __all__"
    undocumented = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            if not ast.get_docstring(node):
                undocumented.append(node.name)
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if (isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)) and not member.name.startswith("_")
                            and not any(getattr(d, "id", getattr(d, "attr", "")) in ("property", "setter") for d in member.decorator_list)
                            and not ast.get_docstring(member)):
                        undocumented.append(f"{node.name}.{member.name}")
    assert undocumented == [], f"{name}: public definitions without a docstring"
