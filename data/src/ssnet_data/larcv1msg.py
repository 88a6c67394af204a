"""The LArCV1 image message that ``SimpleLArCV1Client`` and the LArCV1 workers speak.

A message is a list of image products.  Each product travels as the triplet of the original design::

    [name]                                    producer (request) or output name (reply), UTF-8
    [meta dump + ":(run,subrun,event)"]       one line pair per event of the batch, joined by "\\n"
    [array]                                   ndarray codec: header frame + data frame, shape (k, rows, cols)

so one triplet is four frames.  A reply from a worker that runs a network ends with one more frame, its
provenance record (:mod:`ssnet_data.provenance`).  With a batch of ``k`` events the array stacks the same image
(same plane position) of ``k`` events, and the meta frame carries ``k`` metas and event ids in the same order::

    Plane 0 (rows,cols) = (512,512) ... Left Top (392,7488) ... Right Bottom (904,4416)
    :(5007,101,3001)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from ssnet_common.errors import ProtocolError
from ssnet_common.protocol import Frame, frame_bytes, frame_len
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.ndarray import DEFAULT_MAX_NBYTES, array_codec, decode_array, encode_array
from ssnet_data.provenance import Record, decode_frame, encode_frame, is_frame

if TYPE_CHECKING:
    from numpy.typing import NDArray

_MAX_U64 = 2**64 - 1
_IDS_RE = re.compile(r":\((\d+),(\d+),(\d+)\)")
MAX_NAME = 255
MAX_META_TEXT = 1 << 20


@dataclass(frozen=True)
class EventId:
    """run, subrun, event of one LArCV1 entry (unsigned 64-bit each)."""

    run: int
    subrun: int
    event: int

    def __post_init__(self) -> None:
        for value in (self.run, self.subrun, self.event):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_U64:
                raise ValueError(f"run/subrun/event must be integers in [0, 2**64), got {self}")

    def __str__(self) -> str:
        return f"({self.run},{self.subrun},{self.event})"


def format_meta_text(items: Sequence[tuple[ImageMeta, EventId]]) -> str:
    """The meta frame's text for a batch: ``dump() + ":(run,subrun,event)"`` per event, joined by newlines."""
    return "\n".join(f"{meta.dump()}:{ids}" for meta, ids in items)


def parse_meta_text(text: str) -> tuple[tuple[ImageMeta, EventId], ...]:
    """Inverse of :func:`format_meta_text`; :class:`ProtocolError` on anything else."""
    items: list[tuple[ImageMeta, EventId]] = []
    pos = 0
    while True:
        meta, pos = ImageMeta.parse_prefix(text, pos)
        match = _IDS_RE.match(text, pos)
        if match is None:
            raise ProtocolError(f"ImageMeta dump not followed by ':(run,subrun,event)': {text[pos:pos + 40]!r}")
        try:
            ids = EventId(*(int(g) for g in match.groups()))
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        items.append((meta, ids))
        pos = match.end()
        if pos == len(text):
            return tuple(items)
        if text[pos] != "\n":
            raise ProtocolError(f"unexpected text after event ids: {text[pos:pos + 40]!r}")
        pos += 1


@dataclass(frozen=True)
class ImageProduct:
    """One triplet: ``name``, per-event (meta, ids), and the pixels of shape ``(k, rows, cols)``.

    ``items[i]`` describes ``array[i]``; every meta has ``rows, cols == array.shape[1:]``.
    """

    name: str
    items: tuple[tuple[ImageMeta, EventId], ...]
    array: NDArray[Any]

    def __post_init__(self) -> None:
        if not self.name or len(self.name.encode("utf-8")) > MAX_NAME:
            raise ProtocolError(f"image product name must be 1..{MAX_NAME} bytes, got {self.name[:40]!r}")
        if not self.items:
            raise ProtocolError(f"image product {self.name!r} has no meta")
        array = self.array
        if array.ndim == 2 and len(self.items) == 1:
            array = array[np.newaxis]
            object.__setattr__(self, "array", array)
        if array.ndim != 3 or array.shape[0] != len(self.items):
            raise ProtocolError(
                f"image product {self.name!r}: array shape {array.shape} does not match "
                f"{len(self.items)} meta(s); expected (k, rows, cols) with k = number of metas"
            )
        for meta, ids in self.items:
            if meta.shape != array.shape[1:]:
                raise ProtocolError(
                    f"image product {self.name!r} event {ids}: meta says (rows,cols) = {meta.shape}, "
                    f"array has {array.shape[1:]}"
                )

    @property
    def metas(self) -> tuple[ImageMeta, ...]:
        return tuple(meta for meta, _ in self.items)

    @property
    def ids(self) -> tuple[EventId, ...]:
        return tuple(ids for _, ids in self.items)


def encode_images(products: Sequence[ImageProduct], compression: Optional[str] = None,
                  provenance: Optional[Mapping[str, Any]] = None) -> list[Frame]:
    """Frames of a LArCV1 image message (four per product), and the provenance frame when one is given."""
    frames: list[Frame] = []
    for product in products:
        frames.append(product.name.encode("utf-8"))
        frames.append(format_meta_text(product.items).encode("ascii"))
        frames.extend(encode_array(product.array, compression))
    if provenance is not None:
        frames.append(encode_frame(provenance))
    return frames


def decode_images(frames: Sequence[Frame], max_nbytes: int = DEFAULT_MAX_NBYTES) -> list[ImageProduct]:
    """Products of a LArCV1 image message (a provenance frame is checked and left out)."""
    return decode_message(frames, max_nbytes)[0]


def decode_message(frames: Sequence[Frame], max_nbytes: int = DEFAULT_MAX_NBYTES
                   ) -> tuple[list[ImageProduct], Optional[Record]]:
    """Products of a LArCV1 image message and its provenance record (None without one); :class:`ProtocolError`
    if the frames are not such a message."""
    provenance = None
    if len(frames) % 4 == 1 and is_frame(frames[-1]):
        provenance = decode_frame(frames[-1])
        frames = frames[:-1]
    if not frames or len(frames) % 4:
        raise ProtocolError(f"a LArCV1 image message has 4 frames per product, got {len(frames)} frames")
    return _products(frames, max_nbytes), provenance


def message_codec(frames: Sequence[Frame]) -> Optional[str]:
    """The codec of a LArCV1 image message's arrays (that of its first product), so that a worker answers in
    the codec it was sent; :class:`ProtocolError` if the first array header is not valid."""
    if len(frames) < 4:
        raise ProtocolError(f"a LArCV1 image message has 4 frames per product, got {len(frames)} frames")
    return array_codec(frames[2])


def _products(frames: Sequence[Frame], max_nbytes: int) -> list[ImageProduct]:
    products = []
    for i in range(0, len(frames), 4):
        name_frame, meta_frame, header, data = frames[i:i + 4]
        if frame_len(meta_frame) > MAX_META_TEXT:
            raise ProtocolError(f"meta frame of product {i // 4} is larger than {MAX_META_TEXT} bytes")
        try:
            name = frame_bytes(name_frame).decode("utf-8")
            text = frame_bytes(meta_frame).decode("ascii")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"product {i // 4}: name or meta frame is not text: {exc}") from None
        products.append(ImageProduct(name, parse_meta_text(text), decode_array(header, data, max_nbytes)))
    return products
