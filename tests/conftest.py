"""Shared test configuration: where the repository and the read-only shared material are."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """``../shared`` beside the checkout (CI has it); tests that need it are skipped without it."""
    if not (SHARED / "data" / "larcv1" / "manifest.json").is_file():
        pytest.skip(f"shared material not found at {SHARED}")
    return SHARED


def _only_py39_modules(path: Path) -> bool | None:
    """Under Python 3.9 (``make pytest39``; the worker image) only test modules marked ``py39`` are collected: the
    others import the broker and client packages, which need Python 3.10 and are not installed there."""
    if sys.version_info >= (3, 10) or path.suffix != ".py" or not path.name.startswith("test_"):
        return None
    return "pytest.mark.py39" not in path.read_text(encoding="utf-8") or None


if int(pytest.__version__.split(".")[0]) >= 7:
    def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
        return _only_py39_modules(collection_path)
else:  # pytest 6 (Debian bullseye's, in the worker image) names the argument path, a py.path
    def pytest_ignore_collect(path: Any, config: pytest.Config) -> bool | None:
        return _only_py39_modules(Path(str(path)))
