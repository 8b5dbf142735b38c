"""The declared dependency ranges: any recent torch (not one pin), transformers from the lowest version
the suite was run under (see docs/models.md)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from packaging.requirements import Requirement

SETUP = Path(__file__).resolve().parents[1] / "setup.py"


def _setup_keywords() -> dict:
    tree = ast.parse(SETUP.read_text(encoding="utf-8"))
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    return {kw.arg: kw.value for kw in call.keywords}


def _requirements() -> dict[str, Requirement]:
    values = ast.literal_eval(_setup_keywords()["install_requires"])
    return {Requirement(text).name.lower(): Requirement(text) for text in values}


@pytest.mark.parametrize("name, version, admitted", [
    ("torch", "2.6.0", True), ("torch", "2.13.0", True), ("torch", "2.14.1", True), ("torch", "2.5.1", False),
    ("transformers", "4.56.2", True), ("transformers", "4.57.6", True), ("transformers", "5.24.0", True),
    ("transformers", "4.55.4", False),
])
def test_declared_ranges(name, version, admitted):
    assert _requirements()[name].specifier.contains(version) is admitted


def test_no_dependency_is_pinned_to_one_version():
    pinned = [str(r) for r in _requirements().values() if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned


def test_optional_groups_are_extras():
    extras = ast.literal_eval(_setup_keywords()["extras_require"])
    assert {"test", "judge"} <= set(extras)
    assert not any(Requirement(r).name == "openai" for r in ast.literal_eval(_setup_keywords()["install_requires"]))
