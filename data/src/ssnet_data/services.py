"""How sub-service names are made: the one rule that jobs, workers and the local runner share.

A job can fan a request out to per-plane services (``ssnet`` -> ``ssnet_plane0``, ``ssnet_plane1``, ...) or to
per-shard services (``batch`` -> ``batch_shard0``, ...); workers register under the same names.
"""

from __future__ import annotations

import re
from typing import Optional

from ssnet_common.protocol import validate_service_name

PLANE = "plane"
SHARD = "shard"


def sub_service(service: str, kind: str, index: int) -> str:
    """``<service>_<kind><index>``, checked as the broker checks service names."""
    if index < 0:
        raise ValueError(f"{kind} index must be 0 or more, got {index}")
    return validate_service_name(f"{service}_{kind}{index}")


def plane_service(service: str, plane: int) -> str:
    """The service of one plane's workers: ``ssnet`` -> ``ssnet_plane<plane>``."""
    return sub_service(service, PLANE, plane)


def parse_sub_service(service: str, kind: str) -> Optional[tuple[str, int]]:
    """``(base, index)`` of ``<base>_<kind><index>``; None for a name without that suffix.

    ValueError for a name that has the suffix but no number after it (``ssnet_planeX``).
    """
    base, sep, suffix = service.rpartition(f"_{kind}")
    if not sep or not base:
        return None
    if not re.fullmatch(r"\d+", suffix):
        raise ValueError(f"service {service!r}: expected {base}_{kind}<number>")
    return base, int(suffix)
