"""Shared test configuration: where the repository and the read-only shared material are."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """``../shared`` beside the checkout (CI has it); tests that need it are skipped without it."""
    if not (SHARED / "data" / "larcv1" / "manifest.json").is_file():
        pytest.skip(f"shared material not found at {SHARED}")
    return SHARED
