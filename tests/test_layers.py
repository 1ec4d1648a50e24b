"""The pure core imports no I/O framework, and lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dnsd"
PURE = ["config", "names", "records", "store", "rrsets", "zone", "wire"]
ORDER = ["config", "names", "records", "store", "rrsets", "zone", "wire"]
FORBIDDEN = ("asyncio", "aiohttp", "kubernetes", "socket", "dnsd.app", "dnsd.transports", "dnsd.sources")


PURE_FROM_SOCKET = {"AF_INET", "AF_INET6", "inet_pton", "inet_ntop"}
"""Address conversions between text and packed bytes: pure functions that live in `socket`
(names.py packs every address of every watch event, and `ipaddress` costs ten times as much)."""


def imports_of(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "socket" and {alias.name for alias in node.names} <= PURE_FROM_SOCKET:
                continue
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_no_io(module: str) -> None:
    bad = {name for name in imports_of(module) if name.split(".")[0] in FORBIDDEN or name.startswith(FORBIDDEN)}
    assert not bad, f"dnsd.{module} imports {bad}"


@pytest.mark.parametrize("module", ORDER)
def test_layers_only_import_downwards(module: str) -> None:
    higher = {f"dnsd.{m}" for m in ORDER[ORDER.index(module) + 1 :]}
    assert not imports_of(module) & higher
