"""The pixel preprocessing every consumer of wire images applies: the SSNet worker before its net, the training
data workers before batching.  One function, so that inference and training see the same pixels."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from numpy.typing import NDArray


def threshold_clip(
    pixels: NDArray[Any], threshold: Optional[float] = None, clip: Optional[float] = None,
    *, out: Optional[NDArray[Any]] = None,
) -> NDArray[Any]:
    """Pixels below ``threshold`` set to 0 and above ``clip`` set to ``clip`` (a step that is None is skipped).

    Returns a new array, or ``out`` (which may be ``pixels`` itself) filled with the result.
    """
    result = np.array(pixels, copy=True) if out is None else out
    if out is not None and out is not pixels:
        np.copyto(result, pixels)
    if threshold is not None:
        result[result < threshold] = 0
    if clip is not None:
        np.minimum(result, clip, out=result)
    return result
