"""The shape of the code a newcomer reads: no function of the package, its rule adapters or its
scripts is longer than :data:`LONGEST` lines (``def`` to last line, docstring included), so that
each does one step that can be read whole; a longer one is cut into named steps."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LONGEST = 60
SOURCES = sorted([*(REPO / "nucseg").rglob("*.py"), *(REPO / "workflow_scripts").glob("*.py"), *(REPO / "scripts").glob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_function_is_longer_than_the_limit(path):
    tree = ast.parse(path.read_text(), str(path))
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > LONGEST
    ]
    assert not long, f"{path.relative_to(REPO)}: longer than {LONGEST} lines: {', '.join(long)}"
