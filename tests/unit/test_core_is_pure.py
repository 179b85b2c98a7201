"""The core decides without I/O: no faust, aiokafka, redis, asyncio, and no clock."""

from __future__ import annotations

import ast
from pathlib import Path

import nextbest.core

CORE = Path(nextbest.core.__file__).parent
FORBIDDEN_MODULES = {"faust", "mode", "aiokafka", "redis", "asyncio", "time", "socket"}
FORBIDDEN_CALLS = {"now", "utcnow", "today"}


def core_files() -> list[Path]:
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 8  # the check would pass vacuously on an empty folder
    return files


def test_core_imports_no_io_library() -> None:
    offenders = []
    for path in core_files():
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {name}" for name in names if name.split(".")[0] in FORBIDDEN_MODULES
            ]
    assert offenders == []


def test_core_reads_no_clock() -> None:
    offenders = [
        f"{path.name}:{node.lineno}"
        for path in core_files()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_CALLS
    ]
    assert offenders == []
