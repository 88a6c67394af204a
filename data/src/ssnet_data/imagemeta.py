"""``ImageMeta``: the geometry of one LArCV1 ``Image2D``, without ROOT.

LArCV1 stores an image's meta as origin (top-left corner: smallest x = first wire, largest y = latest tick),
width and height in detector units, row and column counts, and the wire plane.  ``dump()`` reproduces the
text that the genuine ``larcv::ImageMeta::dump()`` prints, byte for byte: C++ ``std::ostream`` prints doubles
with its default format, which is C's ``%g`` (6 significant digits), and ends the line with ``std::endl``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ssnet_common.errors import ProtocolError

INVALID_PLANE = 65535
"""``larcv::kINVALID_PLANE``: the plane of a meta that belongs to no plane."""

_MAX_USHORT = 65535
_MAX_ULONG = 2**64 - 1

_NUM = r"[-+0-9.eEinfINFa]+"
_DUMP_RE = re.compile(
    r"Plane (\d{1,20}) \(rows,cols\) = \((\d{1,20}),(\d{1,20})\) \.\.\. "
    rf"Left Top \(({_NUM}),({_NUM})\) \.\.\. Right Bottom \(({_NUM}),({_NUM})\)\n",
    re.ASCII,
)


def format_double(value: float) -> str:
    """Format a double as C++ ``std::ostream << double`` does by default (``%g``, precision 6)."""
    if math.isnan(value):
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"
    return "%g" % value  # noqa: UP031 - %g is exactly the C semantics we reproduce


@dataclass(frozen=True)
class ImageMeta:
    """Geometry of one Image2D, with the fields and meaning of ``larcv::ImageMeta`` (LArCV1)."""

    width: float
    height: float
    rows: int
    cols: int
    origin_x: float
    origin_y: float
    plane: int = INVALID_PLANE

    def __post_init__(self) -> None:
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ULONG:
                raise ValueError(f"ImageMeta.{name} must be an integer in [0, 2**64), got {value!r}")
        if isinstance(self.plane, bool) or not isinstance(self.plane, int) or not 0 <= self.plane <= _MAX_USHORT:
            raise ValueError(f"ImageMeta.plane must be an integer in [0, 65535], got {self.plane!r}")
        for name in ("width", "height", "origin_x", "origin_y"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"ImageMeta.{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))

    # Corners and pixel size, as larcv1 defines them.
    @property
    def min_x(self) -> float:
        return self.origin_x

    @property
    def max_x(self) -> float:
        return self.origin_x + self.width

    @property
    def max_y(self) -> float:
        return self.origin_y

    @property
    def min_y(self) -> float:
        return self.origin_y - self.height

    @property
    def pixel_width(self) -> float:
        return self.width / self.cols if self.cols else 0.0

    @property
    def pixel_height(self) -> float:
        return self.height / self.rows if self.rows else 0.0

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)``: the shape of the image's pixel array, row 0 at the top."""
        return (self.rows, self.cols)

    def dump(self) -> str:
        """The exact text of genuine ``larcv::ImageMeta::dump()`` (ends with a newline)."""
        return (
            f"Plane {self.plane} (rows,cols) = ({self.rows},{self.cols}) ... "
            f"Left Top ({format_double(self.min_x)},{format_double(self.max_y)}) ... "
            f"Right Bottom ({format_double(self.max_x)},{format_double(self.min_y)})\n"
        )

    @classmethod
    def parse(cls, text: str) -> ImageMeta:
        """Parse the text of ``dump()``.  Raises :class:`ProtocolError` on anything else.

        The dump prints 6 significant digits, so coordinates that need more do not survive the trip exactly.
        """
        meta, end = cls.parse_prefix(text, 0)
        if end != len(text):
            raise ProtocolError(f"trailing text after ImageMeta dump: {text[end:end + 40]!r}")
        return meta

    @classmethod
    def parse_prefix(cls, text: str, pos: int) -> tuple[ImageMeta, int]:
        """Parse one dump starting at ``pos``; return the meta and the position just after its newline."""
        match = _DUMP_RE.match(text, pos)
        if match is None:
            raise ProtocolError(f"not an ImageMeta dump: {text[pos:pos + 100]!r}")
        plane, rows, cols = (int(g) for g in match.group(1, 2, 3))
        try:
            left, top, right, bottom = (float(g) for g in match.group(4, 5, 6, 7))
            meta = cls(
                width=right - left, height=top - bottom, rows=rows, cols=cols,
                origin_x=left, origin_y=top, plane=plane,
            )
        except ValueError as exc:
            raise ProtocolError(f"invalid ImageMeta dump {match.group(0)!r}: {exc}") from None
        return meta, match.end()
