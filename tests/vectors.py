"""Locate the public DC-09 vectors: shared/protocols/vectors.json beside the project when it is
there (the current version), else the copy kept in tests/data/dc09_vectors.json, so a clone
anywhere runs every vector test (none is skipped for want of the file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "protocols" / "vectors.json"
_COPY = Path(__file__).resolve().parent / "data" / "dc09_vectors.json"
VECTORS_PATH = _SHARED if _SHARED.exists() else _COPY


def load_vectors() -> dict[str, Any]:
    """vectors.json as a dict; skips the calling test when the file is missing."""
    if not VECTORS_PATH.exists():
        pytest.skip(f"missing {VECTORS_PATH} (shared/protocols/vectors.json beside the project)")
    data: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return data


def frame_vectors() -> list[dict[str, Any]]:
    if not VECTORS_PATH.exists():
        return []
    return list(json.loads(VECTORS_PATH.read_text(encoding="utf-8"))["frames"])


def encrypted_vectors() -> list[dict[str, Any]]:
    if not VECTORS_PATH.exists():
        return []
    return list(json.loads(VECTORS_PATH.read_text(encoding="utf-8"))["encrypted"])
