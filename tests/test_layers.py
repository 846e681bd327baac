"""The layers' import direction, as docs/architecture.md states it, read from the source.

    mitransfer (v1, protocol)  ←  gateway.core  ←  gateway.store  ←  gateway.service  ←  gateway.app
                               ←  clients          ←  gateway.devtools  ←  gateway/cli.py

The core imports no gRPC, database, Prometheus or network module; the reference client imports
nothing from the gateway, and inside the gateway only the developer tools and the entry point
import the client; the protocol helpers import only the standard library, protobuf,
cryptography and (for SM2, an optional extra) tongsuopy. Every import counts: at module level,
inside functions, under `if TYPE_CHECKING:`. A violation names the file, the line, the statement and the rule it breaks.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "clients", "mitransfer")
HIGHER_THAN_CORE = ("gateway.store", "gateway.service", "gateway.app", "gateway.devtools", "gateway.cli")


@dataclass(frozen=True)
class Rule:
    """Modules under `layer` (except those under `unless`) may not import any of `forbidden`.

    A name ending in "*" forbids every top-level module starting so (`grpc*`: grpc, grpc_status…);
    any other name forbids that module and everything under it.
    """

    layer: str
    forbidden: tuple[str, ...]
    unless: tuple[str, ...] = ()

    def covers(self, module: str) -> bool:
        return _under(module, self.layer) and not any(_under(module, u) for u in self.unless)

    def breaks(self, imported: str) -> str | None:
        for name in self.forbidden:
            if name.endswith("*") and imported.split(".")[0].startswith(name[:-1]):
                return name
            if not name.endswith("*") and _under(imported, name):
                return name
        return None


RULES = (
    Rule("gateway.core", ("grpc*", "google.rpc", "psycopg*", "sqlite3", "prometheus_client", "socket", "asyncio",
                          "http", "urllib", *HIGHER_THAN_CORE)),
    Rule("gateway.store", ("grpc*", "prometheus_client", *HIGHER_THAN_CORE[1:])),
    Rule("gateway.service", HIGHER_THAN_CORE[2:]),
    Rule("gateway.app", HIGHER_THAN_CORE[3:]),
    Rule("gateway.devtools", HIGHER_THAN_CORE[4:]),
    # The developer tools and the entry point that wires every layer's commands may drive the
    # reference client; nothing else of the gateway depends on it.
    Rule("gateway", ("clients",), unless=("gateway.devtools", "gateway.cli")),
    Rule("clients", ("gateway",)),
    Rule("mitransfer", ("gateway", "clients")),
)
# What the protocol helpers may import besides the standard library: a platform copies them.
# tongsuopy is the optional `sm` extra, imported on first use of the SM2 suite only.
PROTOCOL_DEPENDENCIES = ("mitransfer", "google.protobuf", "cryptography", "tongsuopy")


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@dataclass(frozen=True)
class Import:
    path: str    # relative to the root: gateway/core/case.py
    line: int
    module: str     # the importing module: gateway.core.case
    target: str     # what it imports, absolute: gateway.core.messages
    statement: str  # as written: "from gateway.core.messages import BusinessMessage"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path, path: Path) -> Iterator[Import]:
    """Every import in one file, relative ones made absolute; `from a import b` counts as a and a.b."""
    module = module_name(root, path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    rel = str(path.relative_to(root))
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(rel, node.lineno, module, alias.name, ast.unparse(node))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield Import(rel, node.lineno, module, base, ast.unparse(node))
            for alias in node.names:
                yield Import(rel, node.lineno, module, f"{base}.{alias.name}", ast.unparse(node))


def violations(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """One line per import statement and rule it breaks: file:line `statement`: the rule."""
    found: set[str] = set()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for imp in imports(root, path):
                broken = [f"{rule.layer} may not import {name}" for rule in RULES
                          if rule.covers(imp.module) and (name := rule.breaks(imp.target))]
                if _under(imp.module, "mitransfer.protocol") and not _protocol_may_import(imp.target):
                    broken.append("mitransfer.protocol imports only the standard library, "
                                  + ", ".join(PROTOCOL_DEPENDENCIES))
                found.update(f"{imp.path}:{imp.line} `{imp.statement}`: {why}" for why in broken)
    return sorted(found)


def _protocol_may_import(target: str) -> bool:
    top = target.split(".")[0]
    return top == "__future__" or top in sys.stdlib_module_names or any(
        _under(target, d) for d in PROTOCOL_DEPENDENCIES)


def test_every_import_points_down() -> None:
    found = violations(ROOT)
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_the_packages_are_where_the_rules_expect_them() -> None:
    """A rule over a package that moved would pass without checking anything."""
    for rule in RULES:
        assert (ROOT / rule.layer.replace(".", "/")).is_dir(), rule.layer
    for name in HIGHER_THAN_CORE:
        path = ROOT / name.replace(".", "/")
        assert path.is_dir() or path.with_suffix(".py").is_file(), name


BAD_TREE = {
    "gateway/__init__.py": "",
    "gateway/core/__init__.py": "",
    "gateway/core/late.py": "def f() -> None:\n    import grpc.aio\n",
    "gateway/core/relative.py": "from ..store import engines\n",
    "gateway/core/typed.py": "from typing import TYPE_CHECKING\n"
                             "if TYPE_CHECKING:\n    from prometheus_client import Counter\n",
    "gateway/store/__init__.py": "from gateway import service\n",
    "gateway/service/__init__.py": "import gateway.cli\n",
    "gateway/app/__init__.py": "from gateway.devtools.bench import harness\nimport clients.signing\n",
    "gateway/devtools/__init__.py": "import clients\nimport asyncio\n",
    "gateway/devtools/bench.py": "from gateway.cli import main\n",
    "gateway/core/network.py": "import socket\nfrom google.rpc import status_pb2\n",
    "gateway/cli.py": "from clients import builders\n",
    "clients/__init__.py": "from gateway.core.messages import parse\n",
    "mitransfer/protocol/__init__.py": "import grpc\nfrom clients import errors\n",
}


def test_the_check_names_each_violation(tmp_path: Path) -> None:
    """The checker itself, on a tree that breaks every rule once (and the exempt modules)."""
    for name, text in BAD_TREE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = "\n".join(violations(tmp_path))
    for expected in [
        "gateway/core/late.py:2 `import grpc.aio`: gateway.core may not import grpc*",
        "gateway/core/relative.py:1 `from ..store import engines`: gateway.core may not import gateway.store",
        "gateway/core/typed.py:3 `from prometheus_client import Counter`: gateway.core may not import "
        "prometheus_client",
        "gateway/store/__init__.py:1 `from gateway import service`: gateway.store may not import gateway.service",
        "gateway/service/__init__.py:1 `import gateway.cli`: gateway.service may not import gateway.cli",
        "gateway/app/__init__.py:1 `from gateway.devtools.bench import harness`: gateway.app may not import "
        "gateway.devtools",
        "gateway/app/__init__.py:2 `import clients.signing`: gateway may not import clients",
        "gateway/devtools/bench.py:1 `from gateway.cli import main`: gateway.devtools may not import gateway.cli",
        "gateway/core/network.py:1 `import socket`: gateway.core may not import socket",
        "gateway/core/network.py:2 `from google.rpc import status_pb2`: gateway.core may not import google.rpc",
        "clients/__init__.py:1 `from gateway.core.messages import parse`: clients may not import gateway",
        "mitransfer/protocol/__init__.py:2 `from clients import errors`: mitransfer may not import clients",
        "mitransfer/protocol/__init__.py:1 `import grpc`: mitransfer.protocol imports only the standard library",
    ]:
        assert expected in found, found
    assert "gateway/devtools/__init__.py" not in found and "gateway/cli.py" not in found


@pytest.mark.parametrize(("source", "package", "expected"), [
    ("from . import x", "gateway/core/a.py", {"gateway.core", "gateway.core.x"}),
    ("from .. import store", "gateway/core/a.py", {"gateway", "gateway.store"}),
    ("from .sibling import y", "gateway/core/__init__.py", {"gateway.core.sibling", "gateway.core.sibling.y"}),
])
def test_relative_imports_are_made_absolute(tmp_path: Path, source: str, package: str, expected: set[str]) -> None:
    path = tmp_path / package
    path.parent.mkdir(parents=True)
    path.write_text(source)
    assert {i.target for i in imports(tmp_path, path)} == expected
