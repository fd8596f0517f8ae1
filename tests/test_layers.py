"""Layering rules that import-linter cannot see: no module reads another module's underscore
names (the layers themselves are checked by `lint-imports`, see pyproject.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "etcdkit"


def defined_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return names


def test_no_module_reads_another_modules_private_names() -> None:
    offences = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        own = defined_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            name = node.attr
            if not name.startswith("_") or name.startswith("__") or name in own:
                continue
            offences.append(f"{path.relative_to(SRC)}:{node.lineno}: .{name}")
    assert offences == []


WIRE = ("grpc", "aetcd", "google")
# etcdkit's own wire, and the two packages that make gRPC channels for users' services
SPEAK_GRPC = ("_wire/", "cluster/grpc/", "naming/grpc.py")


def test_only_the_wire_folder_imports_grpc_or_protobuf() -> None:
    offences = []
    for path in sorted(SRC.rglob("*.py")):
        where = str(path.relative_to(SRC))
        if where.startswith(SPEAK_GRPC):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            offences += [f"{where}:{node.lineno}: {n}" for n in names if n.split(".")[0] in WIRE]
    assert offences == []
