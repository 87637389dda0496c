"""The docs that describe the code keep up with it.

* docs/architecture.md names every module of the package by its path (``io/volume.py``), and
  every ``*.py`` path it names exists;
* pyproject.toml's comments name modules that exist;
* docs/cli.md documents each sub-command's options, and no option a sub-command lacks.

Read, not run: nothing here imports PyTorch (building the parser is as light as ``--help``).
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "napari_meddift"
ARCHITECTURE = REPO / "docs" / "architecture.md"
#: paths the docs may name outside the package, taken from the repository root
REPO_PREFIXES = ("tests/", "benchmarks/", "docs/", "src/", ".ci/")


def _holds_code(path: Path) -> bool:
    """Anything but a docstring (and ``from __future__``): a package ``__init__.py`` that is only a
    docstring need not be named."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
               and not (isinstance(n, ast.ImportFrom) and n.module == "__future__") for n in tree.body)


def package_modules() -> list[str]:
    """Every module of the package as a path relative to ``src/napari_meddift`` (``io/volume.py``)."""
    out = []
    for p in sorted(PKG.rglob("*.py")):
        if "__pycache__" in p.parts or (p.name == "__init__.py" and not _holds_code(p)):
            continue
        out.append(p.relative_to(PKG).as_posix())
    return out


def named_paths(text: str) -> set[str]:
    """``*.py`` paths a markdown text names in backticks (``io/volume.py``, ``pca.py``)."""
    return {m for m in re.findall(r"`([\w./-]+\.py)`", text) if not m.startswith(("http", "python"))}


def _exists(name: str) -> bool:
    if name.startswith(REPO_PREFIXES):
        return (REPO / name).is_file()
    return (PKG / name).is_file()


def test_architecture_names_every_module():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    named = named_paths(text)
    missing = [m for m in package_modules() if m not in named]
    assert not missing, (
        "docs/architecture.md does not name these modules (add a row with the path in backticks, "
        "relative to src/napari_meddift):\n" + "\n".join(missing))


def test_every_module_architecture_names_exists():
    stale = sorted(n for n in named_paths(ARCHITECTURE.read_text(encoding="utf-8")) if not _exists(n))
    assert not stale, ("docs/architecture.md names modules that do not exist (paths are relative to "
                       "src/napari_meddift, or to the repository for tests/, benchmarks/, docs/):\n"
                       + "\n".join(stale))


def test_the_module_checks_would_fail():
    """Not vacuous: the two checks see the package's modules and would catch a stale name."""
    modules = package_modules()
    assert {"io/volume.py", "cli/__init__.py", "_qt/app.py", "errors.py"} <= set(modules)
    assert "io/__init__.py" not in modules  # only a docstring
    assert named_paths("see `io/volume.py` and `gone/module.py`, not volume.py") == {"io/volume.py", "gone/module.py"}
    assert _exists("io/volume.py") and _exists("tests/test_docs.py") and not _exists("gone/module.py")


def test_pyproject_names_existing_modules():
    """Comments in pyproject.toml point at modules by path (``io/locking.py``) or by a name that is
    unique in the package."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    by_name: dict[str, list[str]] = {}
    for m in package_modules():
        by_name.setdefault(m.rsplit("/", 1)[-1], []).append(m)
    stale = []
    for name in set(re.findall(r"[\w/]+\.py\b", text)):
        if "/" in name:
            ok = _exists(name)
        else:
            ok = len(by_name.get(name, [])) == 1
        if not ok:
            stale.append(name)
    assert not stale, f"pyproject.toml names modules that do not exist (or not uniquely): {sorted(stale)}"


# --- docs/cli.md against the parser ----------------------------------------------------------

def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from napari_meddift.cli import build_parser

    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _cli_sections() -> dict[str, str]:
    """{sub-command: its section of docs/cli.md} (sections are headed ``## `meddift NAME ...```)."""
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    out: dict[str, str] = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        m = re.match(r"`meddift ([a-z0-9-]+)", section)
        if m:
            out[m.group(1)] = out.get(m.group(1), "") + section
    return out


def _options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text)) - {"--help"}


def test_cli_doc_has_a_section_per_subcommand_and_names_its_options():
    sections = _cli_sections()
    problems = []
    for name, parser in _subparsers().items():
        if name not in sections:
            problems.append(f"{name}: no section `## \\`meddift {name} ...\\`` in docs/cli.md")
            continue
        section = sections[name]
        documented = _options(section)
        actions = [a for a in parser._actions if a.option_strings and "--help" not in a.option_strings]
        undocumented = [a.option_strings[-1] for a in actions
                        if not any(o in documented
                                   or (not o.startswith("--") and re.search(rf"(?<![\w-]){o}\b", section))
                                   for o in a.option_strings)]
        if undocumented:
            problems.append(f"{name}: options not in its section: {sorted(undocumented)}")
        taken = {o for a in actions for o in a.option_strings}
        if documented - taken:
            problems.append(f"{name}: its section names options it does not take: {sorted(documented - taken)}")
    assert not problems, "docs/cli.md and `meddift <cmd> --help` differ:\n" + "\n".join(problems)
