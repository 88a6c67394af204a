"""Provenance: what produced a network's output (network, weights, engine, device, precision, software).

A worker that runs a network describes itself once, as a JSON object (its *record*)::

    {"software": "ssnet-worker 0.1.0", "engine": "onnx", "device": "cpu", "precision": "float32",
     "output_dtype": "float16", "prototxt": {"file": "net.prototxt", "sha256": "..."},
     "weights": {"0": {"file": "plane0.caffemodel", "sha256": "..."}, "1": {...}}, ...}

and sends it with every reply as one extra frame after the image products (:func:`encode_frame`: ``PRV1`` and
the compact JSON, at most :data:`MAX_FRAME` bytes; :mod:`ssnet_data.larcv1msg` places and finds it).  The job
that writes the output counts, per plane, the events each distinct record produced (:class:`ProvenanceLog`; a
record's ``weights`` narrowed to the plane's file), and stores the log in the output file as a ``TNamed`` named
:data:`OBJECT_NAME` whose title is the JSON (:meth:`ProvenanceLog.to_json`): uproot and ROOT both read it.  Two
records for one plane (two weight files, or two engines) are a disagreement, which the job's summary names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Tuple

from ssnet_common.errors import ProtocolError
from ssnet_common.protocol import Frame, frame_bytes, frame_len

MAGIC = b"PRV1"
MAX_FRAME = 16384
OBJECT_NAME = "ssnet_provenance"  # the TNamed in an output file
FORMAT = 1  # version of the layout :meth:`ProvenanceLog.to_json` writes
Record = Dict[str, Any]


def file_digest(path: Any) -> str:
    """sha256 of a file's bytes, hex (read in blocks: caffemodels are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_frame(frame: Frame) -> bool:
    return frame_len(frame) >= len(MAGIC) and frame_bytes(frame)[:len(MAGIC)] == MAGIC


def encode_frame(record: Mapping[str, Any]) -> bytes:
    data = MAGIC + json.dumps(record, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(data) > MAX_FRAME:
        raise ValueError(f"a provenance record may take {MAX_FRAME} bytes, this one takes {len(data)}")
    return data


def decode_frame(frame: Frame) -> Record:
    """The record of a provenance frame; :class:`ProtocolError` if it is not one."""
    if frame_len(frame) > MAX_FRAME:
        raise ProtocolError(f"provenance frame larger than {MAX_FRAME} bytes")
    raw = frame_bytes(frame)
    if not raw.startswith(MAGIC):
        raise ProtocolError(f"provenance frame must start with {MAGIC!r}")
    try:
        record = json.loads(raw[len(MAGIC):].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"provenance frame is not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise ProtocolError("provenance frame must hold a JSON object")
    return record


def for_plane(record: Mapping[str, Any], plane: int) -> Record:
    """The record as it concerns one plane: ``weights`` narrowed to that plane's file (None if it has none)."""
    narrowed = {key: value for key, value in record.items() if key != "weights"}
    weights = record.get("weights")
    if isinstance(weights, Mapping):
        narrowed["weights"] = weights.get(str(plane))
    return narrowed


def _key(record: Mapping[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


class ProvenanceLog:
    """Per plane, the distinct records that produced a job's output and how many events each produced."""

    def __init__(self) -> None:
        self._counts: Dict[Tuple[int, str], int] = {}

    def add(self, plane: int, record: Mapping[str, Any], events: int = 1) -> None:
        key = (plane, _key(for_plane(record, plane)))
        self._counts[key] = self._counts.get(key, 0) + events

    def __bool__(self) -> bool:
        return bool(self._counts)

    def entries(self) -> List[Record]:
        """``{"plane": p, "events": n, "record": {...}}`` per plane and record, planes in order."""
        return [{"plane": plane, "events": events, "record": json.loads(key)}
                for (plane, key), events in sorted(self._counts.items())]

    def disagreements(self) -> List[str]:
        """One sentence per plane that more than one record produced: what differs between them."""
        by_plane: Dict[int, List[Tuple[Record, int]]] = {}
        for item in self.entries():
            by_plane.setdefault(item["plane"], []).append((item["record"], item["events"]))
        found = []
        for plane, records in by_plane.items():
            if len(records) < 2:
                continue
            keys = sorted({key for record, _ in records for key in record
                           if len({_key({"v": r.get(key)}) for r, _ in records}) > 1})
            variants = "; ".join(f"{describe(record, keys)} for {events} event(s)" for record, events in records)
            found.append(f"workers disagree on plane {plane}: {variants}")
        return found

    def to_json(self, **context: Any) -> str:
        """The log as stored in an output file, with ``context`` (the job: service, inputs, client software)."""
        return json.dumps({"format": FORMAT, **context, "planes": self.entries(),
                           "disagreements": self.disagreements()}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ProvenanceLog:
        """A log from :meth:`to_json`'s text (an output or checkpoint file's), to go on counting."""
        try:
            data = json.loads(text)
            log = cls()
            for item in data["planes"]:
                log._counts[(int(item["plane"]), _key(item["record"]))] = int(item["events"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a provenance log: {exc}") from None
        return log


_ORDER = ("weights", "prototxt", "engine", "device", "precision", "output_dtype", "software")  # what matters first


def describe(record: Mapping[str, Any], keys: Optional[List[str]] = None) -> str:
    """A record in one line (only ``keys`` when given): weights and prototxt by file name and short digest."""
    parts = []
    for key in keys if keys is not None else sorted(record, key=lambda k: (_ORDER.index(k) if k in _ORDER
                                                                            else len(_ORDER), k)):
        value = record.get(key)
        if isinstance(value, Mapping) and "sha256" in value:
            value = f"{value.get('file')} (sha256 {str(value['sha256'])[:12]})"
        parts.append(f"{key} {value}")
    return ", ".join(parts)


__all__ = ["MAGIC", "MAX_FRAME", "OBJECT_NAME", "ProvenanceLog", "decode_frame", "describe", "encode_frame",
           "file_digest", "for_plane", "is_frame"]
