"""Locate the shared public DC-09 vectors (CI clones the repo with shared/ beside it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "protocols" / "vectors.json"


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
