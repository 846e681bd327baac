"""The layers' dependency direction, as docs/architecture.md states it: core ← store ← service ←
app ← devtools ← cli; the core imports no gRPC, database, Prometheus or network module; the
reference client imports nothing from the gateway, and only the developer tools import the client."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each part of the code and the first-party packages it must not import (a prefix matches the
# package and everything under it).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "gateway/core": ("gateway.store", "gateway.service", "gateway.app", "gateway.devtools", "gateway.cli",
                     "clients", "grpc", "grpc_status", "grpc_health", "grpc_reflection", "google.rpc",
                     "psycopg", "psycopg_pool", "sqlite3", "prometheus_client", "socket", "asyncio", "http",
                     "urllib"),
    "gateway/store": ("gateway.service", "gateway.app", "gateway.devtools", "gateway.cli", "clients", "grpc",
                      "prometheus_client"),
    "gateway/service": ("gateway.app", "gateway.devtools", "gateway.cli", "clients"),
    "gateway/app": ("gateway.devtools", "gateway.cli", "clients"),
    "gateway/devtools": ("gateway.cli",),
    "clients": ("gateway",),
    "mitransfer": ("gateway", "clients"),
}


def imported(source: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in a file, relative imports resolved against its package."""
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    package = source.relative_to(root).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join((*base, node.module) if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from gateway import app` imports gateway.app
                yield node.lineno, f"{module}.{alias.name}"


def violations(root: Path, part: str, forbidden: tuple[str, ...]) -> list[str]:
    """Every import under `root/part` of a module in `forbidden`, as "file:line imports module"."""
    found = []
    for source in sorted((root / part).rglob("*.py")):
        for line, module in imported(source, root):
            for prefix in forbidden:
                if module == prefix or module.startswith(prefix + "."):
                    found.append(f"{source.relative_to(root)}:{line} imports {module}")
    return found


@pytest.mark.parametrize(("part", "forbidden"), FORBIDDEN.items(), ids=list(FORBIDDEN))
def test_no_import_points_the_wrong_way(part: str, forbidden: tuple[str, ...]) -> None:
    assert any((ROOT / part).rglob("*.py"))
    assert violations(ROOT, part, forbidden) == []


def test_the_check_sees_every_form_of_import(tmp_path: Path) -> None:
    core = tmp_path / "gateway" / "core"
    core.mkdir(parents=True)
    (core / "a.py").write_text("import grpc.aio\n", encoding="utf-8")
    (core / "b.py").write_text("from ..store import sql\n", encoding="utf-8")
    (core / "c.py").write_text("def f() -> None:\n    from gateway import app\n", encoding="utf-8")
    (core / "d.py").write_text("from gateway.core import errors\nimport grpcio_like\n", encoding="utf-8")
    found = violations(tmp_path, "gateway/core", FORBIDDEN["gateway/core"])
    assert [f.split(" imports ")[1] for f in found] == ["grpc.aio", "gateway.store", "gateway.store.sql", "gateway.app"]
