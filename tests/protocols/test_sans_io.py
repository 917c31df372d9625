"""protocols/ stays sans-I/O: no asyncio, sockets, threads or clock reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROTOCOLS = Path(__file__).resolve().parents[2] / "protocols"
FORBIDDEN_MODULES = {"asyncio", "socket", "selectors", "threading", "time", "uvloop", "ssl"}
FORBIDDEN_CALLS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("date", "today"),
    ("datetime", "today"),
}


def _sources() -> list[Path]:
    return sorted(PROTOCOLS.rglob("*.py"))


class TestSansIO:
    def test_protocols_package_has_modules(self) -> None:
        """The scan below actually sees the protocol modules."""
        assert len(_sources()) >= 3

    @pytest.mark.parametrize("path", _sources(), ids=lambda p: p.name)
    def test_module_imports_no_io(self, path: Path) -> None:
        """No module under protocols/ imports an I/O or clock module, or reads the clock."""
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
                assert not names & FORBIDDEN_MODULES, (
                    f"{path.name} imports {names & FORBIDDEN_MODULES}"
                )
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in FORBIDDEN_MODULES, (
                    f"{path.name}: {node.module}"
                )
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert (node.value.id, node.attr) not in FORBIDDEN_CALLS, (
                    f"{path.name} reads the clock: {node.value.id}.{node.attr}"
                )
