"""Each shared fact is written once, in `easyedit_split/constants.py`: a scan of the package's code.

Docstrings and comments may mention the names; code may not re-declare them. The scan reads the
syntax tree, so `"spilt"` in a docstring is fine and `"spilt"` in an expression is not.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from easyedit_split import constants

PACKAGE = Path(__file__).resolve().parents[1] / "easyedit_split"
HOME = PACKAGE / "constants.py"

SWEEP = (-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0)
FORMS = ("vector", "lora", "local_weight")
COMPONENTS = ("mlp_mid", "mlp", "attn", "block")


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for statement in body:  # a bare string statement is a docstring or an attribute's doc
                if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                    ids.add(id(statement.value))
    return ids


def _literal_sequence(node: ast.AST) -> tuple | None:
    if not isinstance(node, (ast.Tuple, ast.List)) or not node.elts:
        return None
    values = []
    for element in node.elts:
        if isinstance(element, ast.UnaryOp) and isinstance(element.op, ast.USub) and isinstance(element.operand, ast.Constant):
            values.append(-element.operand.value)
        elif isinstance(element, ast.Constant):
            values.append(element.value)
        else:
            return None
    return tuple(values)


def duplicated_facts(source: str) -> list[str]:
    """The shared facts `source` writes itself instead of importing them from constants."""
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if re.search(r"(^|\W)spilt(_|$)", node.value):
                found.append(f"line {node.lineno}: EasyEdit's spelling {node.value!r}")
            if node.value.lower() == constants.DEFAULT_MODEL_NAME:
                found.append(f"line {node.lineno}: the default model name")
        sequence = _literal_sequence(node)
        if sequence is not None:
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sequence) and \
                    tuple(float(v) for v in sequence) == SWEEP:
                found.append(f"line {node.lineno}: the default sweep")
            if sequence == FORMS:
                found.append(f"line {node.lineno}: the intervention forms")
            if sequence == COMPONENTS:
                found.append(f"line {node.lineno}: the intervention components")
    return found


def test_the_facts_are_the_ones_constants_holds():
    # the scan looks for these values; if constants changes, the scan must follow
    assert constants.DEFAULT_SWEEP == SWEEP
    assert constants.INTERVENTION_METHODS == FORMS
    assert constants.INTERVENTION_COMPONENTS == COMPONENTS
    assert constants.ALG_ALIASES == {"spilt": "split"}


def test_scan_finds_a_copied_fact_and_ignores_prose():
    copied = 'DEFAULTS = (-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0)\nname = "spilt"\nM = "smollm2-135m-instruct"\n'
    assert len(duplicated_facts(copied)) == 3
    prose = 'def f():\n    """SPLIT is spelled "spilt" by EasyEdit; default sweep -8..8."""\n    return 1  # spilt\n'
    assert duplicated_facts(prose) == []
    assert duplicated_facts('x = f"{base}/spilt_{method}"\n') != []


def test_constants_holds_the_facts():
    assert duplicated_facts(HOME.read_text(encoding="utf-8"))  # the one home of each fact


_FILES = sorted(p for p in PACKAGE.rglob("*.py") if p != HOME)


@pytest.mark.parametrize("path", _FILES, ids=[str(p.relative_to(PACKAGE)) for p in _FILES])
def test_no_module_redefines_a_shared_fact(path):
    assert duplicated_facts(path.read_text(encoding="utf-8")) == []
