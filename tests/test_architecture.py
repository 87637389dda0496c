"""The package layout keeps its promises: dependencies point cli -> harnesses -> core, no cycles.

Every module is parsed (not imported), so the rules hold for imports inside functions too, and a
module that fails to import for another reason cannot hide an edge. docs/architecture.md draws
the same layers.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "napari_meddift"
ROOT = "napari_meddift"

#: top-level units of the package, by layer (a unit is a subpackage or a top-level module).
#: Packages other work adds later already have their place: registration/ and explorer/ are core,
#: batch/ is a harness.
CORE = {"__init__", "errors", "progress", "lazy", "io", "backbones", "matching", "registration", "explorer", "pca"}
HARNESSES = {"evaluation", "synthetic", "training", "batch"}
CLI = {"cli"}
WIDGETS = {"_qt"}
GUI_LIBRARIES = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports_of(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports, at any depth of the file (functions too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path)
    package = name if is_package(path) else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            # `from . import x` may name a submodule: count it as an import of that module too
            out.update(f"{target}.{a.name}" for a in node.names if a.name != "*")
    return out


def unit_of(name: str) -> str | None:
    """'napari_meddift.io.store' -> 'io'; the package itself -> '__init__'; outside -> None."""
    parts = name.split(".")
    if parts[0] != ROOT:
        return None
    if len(parts) == 1:
        return "__init__"
    unit = parts[1]
    known = {
        p.stem if p.is_file() else p.name for p in PKG.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()
    }
    return unit if unit in known else "__init__"  # `from napari_meddift import __version__`


def layer_of(unit: str) -> str:
    for layer, units in (("core", CORE), ("harness", HARNESSES), ("cli", CLI), ("widgets", WIDGETS)):
        if unit in units:
            return layer
    raise AssertionError(
        f"napari_meddift/{unit} belongs to no layer; add it to CORE, HARNESSES, CLI or WIDGETS in "
        "tests/test_architecture.py and to docs/architecture.md"
    )


def modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def unit_graph() -> dict[str, dict[str, set[str]]]:
    """{unit: {imported unit: {'module -> module', ...}}} for edges between different units."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in modules():
        src_name = module_name(path)
        src = unit_of(src_name)
        for target in imports_of(path):
            dst = unit_of(target)
            if dst is not None and dst != src:
                graph[src][dst].add(f"{src_name} -> {target}")
    return graph


def test_every_unit_has_a_layer():
    units = {unit_of(module_name(p)) for p in modules()}
    for unit in units:
        layer_of(unit)  # raises with the way out


def test_core_imports_no_harness_cli_or_gui():
    bad = []
    for path in modules():
        name = module_name(path)
        if layer_of(unit_of(name)) != "core":
            continue
        for target in imports_of(path):
            top = target.split(".")[0]
            unit = unit_of(target)
            if top in GUI_LIBRARIES or (unit is not None and layer_of(unit) != "core"):
                bad.append(f"{name} imports {target}")
    assert not bad, "the core must stay Qt-free and independent of harnesses and the CLI:\n" + "\n".join(bad)


def test_harnesses_import_no_cli_or_widgets():
    bad = []
    for path in modules():
        name = module_name(path)
        if layer_of(unit_of(name)) != "harness":
            continue
        for target in imports_of(path):
            top = target.split(".")[0]
            unit = unit_of(target)
            if top in GUI_LIBRARIES or (unit is not None and layer_of(unit) in ("cli", "widgets")):
                bad.append(f"{name} imports {target}")
    assert not bad, "harnesses may use the core only (and each other):\n" + "\n".join(bad)


def test_widgets_do_not_import_the_cli():
    bad = [f"{module_name(p)} imports {t}" for p in modules() if unit_of(module_name(p)) == "_qt"
           for t in imports_of(p) if unit_of(t) == "cli"]
    assert not bad, "\n".join(bad)


def test_no_cycles_between_units():
    graph = unit_graph()
    cycles = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, {})):
            if state.get(v) == 1:
                loop = stack[stack.index(v):] + [v]
                edges = [sorted(graph[a][b])[0] for a, b in zip(loop, loop[1:])]
                cycles.append(" -> ".join(loop) + "  (" + "; ".join(edges) + ")")
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u)
    assert not cycles, "imports run both ways between units:\n" + "\n".join(cycles)


#: the core's own order, as docs/architecture.md draws it: a core unit imports only units of a lower rank
CORE_RANK = {"__init__": 0, "errors": 0, "progress": 0, "lazy": 0, "io": 1, "backbones": 2, "matching": 2,
             "pca": 2, "registration": 3, "explorer": 3}


def test_core_units_import_downwards():
    assert set(CORE_RANK) == CORE, "give every core unit a rank in CORE_RANK (and a place in docs/architecture.md)"
    bad = [edge for src, targets in unit_graph().items() if src in CORE
           for dst, edges in targets.items() if dst in CORE and CORE_RANK[dst] >= CORE_RANK[src]
           for edge in sorted(edges)]
    assert {"backbones", "matching", "io"} <= set(unit_graph()["registration"])  # the check sees core edges
    assert not bad, ("inside the core, imports run downwards (base <- io/ <- backbones/, matching/, pca.py <- "
                     "registration/, explorer/; docs/architecture.md):\n" + "\n".join(bad))


def test_only_the_demo_command_opens_napari():
    """cli/ may import _qt/ (and napari) only to open the demo's window."""
    bad = [f"{module_name(p)} imports {t}" for p in modules() if unit_of(module_name(p)) == "cli"
           and p.name != "demo.py" for t in imports_of(p)
           if unit_of(t) == "_qt" or t.split(".")[0] in GUI_LIBRARIES]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_function_level_imports(tmp_path):
    """The rules would miss the old cli <-> l2r cycle if imports inside functions were skipped."""
    path = PKG / "cli" / "extract.py"
    found = imports_of(path)
    assert "napari_meddift.backbones.extraction" in found  # imported inside run()
    assert unit_of("napari_meddift.evaluation.l2r") == "evaluation"
    assert layer_of("batch") == "harness" and layer_of("registration") == "core"
    with pytest.raises(AssertionError, match="belongs to no layer"):
        layer_of("newthing")


def test_user_facing_imports_still_work():
    from napari_meddift.cli import main
    from napari_meddift.matching import Matcher
    from napari_meddift.io.store import DescriptorStore, open_store

    assert callable(main) and callable(open_store)
    assert DescriptorStore.__module__ == "napari_meddift.io.store"
    # Matcher.from_stores is a classmethod whose parameters and defaults are the ones
    # docs/architecture.md's key contracts promise
    assert isinstance(inspect.getattr_static(Matcher, "from_stores"), classmethod)
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    [documented] = re.findall(r"^Matcher\.from_stores\((.*)\)\s*$", text, flags=re.M)
    doc = ast.parse(f"def f({documented}): pass").body[0].args
    doc_defaults = [None] * (len(doc.args) - len(doc.defaults)) + [ast.literal_eval(d) for d in doc.defaults]
    promised = [(a.arg, d) for a, d in zip(doc.args, doc_defaults)]
    actual = [(n, None if p.default is inspect.Parameter.empty else p.default)
              for n, p in inspect.signature(Matcher.from_stores).parameters.items()]
    assert actual == promised, f"docs/architecture.md says Matcher.from_stores{promised}; the code has {actual}"


# --- declared dependencies match the imports -------------------------------------------------

#: import name -> the distributions that provide it, where the names differ
PROVIDERS = {"itk": {"itk-elastix", "itk"}}
#: declared, needed at run time, never imported by name
INDIRECT = {"einops"}  # MONAI's diffusion UNets import it for attention
#: core modules may import these optional packages (inside functions, with a message naming the extra)
OPTIONAL_IN_CORE = {"unigradicon": "unigradicon"}


def _canonical(requirement: str) -> str:
    """``'SimpleITK>=2.3'`` -> ``'simpleitk'``; ``'napari-meddift[all]'`` -> ``'napari-meddift'`` (PEP 503)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _extra(name: str, extras: dict[str, list[str]]) -> set[str]:
    """Distributions an extra installs, following ``napari-meddift[a,b]`` into the extras it names."""
    out: set[str] = set()
    for req in extras[name]:
        if _canonical(req) == "napari-meddift":
            for inner in re.search(r"\[(.*)\]", req).group(1).split(","):
                out |= _extra(inner.strip(), extras)
        else:
            out.add(_canonical(req))
    return out


def third_party_imports(layers: set[str]) -> dict[str, set[str]]:
    """{top-level import name: {importing module, ...}} over the modules of ``layers``; the standard
    library and the package itself left out."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in modules():
        name = module_name(path)
        if layer_of(unit_of(name)) not in layers:
            continue
        for target in imports_of(path):
            top = target.split(".")[0]
            if top and top != ROOT and top != "__future__" and top not in sys.stdlib_module_names:
                out[top].add(name)
    return out


def _providers(top: str) -> set[str]:
    return PROVIDERS.get(top, {_canonical(top)})


def test_core_imports_are_declared_dependencies():
    """What the core imports is installed with the package itself (psygnal, numba, scipy, psutil
    included); the one optional import sits in its extra."""
    project = _project()
    deps = {_canonical(r) for r in project["dependencies"]}
    core = third_party_imports({"core"})
    assert {"torch", "monai", "zarr", "psygnal", "numba", "scipy", "psutil"} <= set(core)  # the parser sees them
    undeclared = {f"{top} (imported by {', '.join(sorted(core[top]))})" for top in core
                  if not _providers(top) & deps and top not in OPTIONAL_IN_CORE}
    assert not undeclared, "declare these in pyproject's [project] dependencies:\n" + "\n".join(sorted(undeclared))
    for top, extra in OPTIONAL_IN_CORE.items():
        assert _providers(top) & _extra(extra, project["optional-dependencies"]), (top, extra)


def test_every_import_is_declared_and_every_dependency_used():
    project = _project()
    extras = project["optional-dependencies"]
    deps = {_canonical(r) for r in project["dependencies"]}
    everywhere = third_party_imports({"core", "harness", "cli", "widgets"})
    declared = deps.union(*(_extra(e, extras) for e in extras))
    undeclared = sorted(top for top in everywhere if not _providers(top) & declared)
    assert not undeclared, f"imported but declared neither as a dependency nor in an extra: {undeclared}"
    used = set().union(*(_providers(top) for top in everywhere)) | INDIRECT
    assert not deps - used, f"declared dependencies nothing imports: {sorted(deps - used)}"


def test_dask_is_the_batch_extra():
    """dask/distributed are needed only by batch/ (extract-many, --workers/--scheduler): an extra of
    their own, which `all` (what .ci/run installs) includes."""
    project = _project()
    extras = project["optional-dependencies"]
    assert not {"dask", "distributed"} & {_canonical(r) for r in project["dependencies"]}
    assert {"dask", "distributed"} <= _extra("batch", extras) <= _extra("all", extras)
    users = set().union(*(third_party_imports({"core", "harness", "cli", "widgets"}).get(t, set())
                          for t in ("dask", "distributed")))
    assert users and all(u.startswith(f"{ROOT}.batch.") for u in users), sorted(users)
    assert '".[all,test]"' in (REPO / ".ci" / "run").read_text(encoding="utf-8")


def test_missing_dask_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    from napari_meddift.cli import main

    for name in ("dask", "distributed"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    scan = tmp_path / "a.nii.gz"
    scan.write_bytes(b"")  # never read: the cluster is refused first
    assert main(["extract-many", str(scan), "-o", str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["meddift: error: Dask is not installed: extract-many and --workers/--scheduler need it; "
                   "install it from the clone with `pip install -e \".[batch]\"`"]
