"""The engine fidelity tests (tests/fidelity) inside the worker image, with genuine pycaffe and OpenCV 4.5 DNN."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO, shared_or_skip

pytestmark = pytest.mark.container


def test_fidelity_tests_pass_in_the_worker_image(engine: None) -> None:
    shared_or_skip("models", "tiny")
    result = subprocess.run([str(REPO / "tests" / "fidelity" / "run-in-worker-image.sh"), "-q"], capture_output=True,
                            text=True, timeout=900, check=False)
    sys.stdout.write(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and "skipped" not in summary and "failed" not in summary, summary
