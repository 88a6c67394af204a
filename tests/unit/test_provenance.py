"""Provenance records: the reply frame, the per-plane log a job keeps, its place in the output file (no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssnet_common.errors import LArCV1Error, ProtocolError
from ssnet_data.imagemeta import ImageMeta
from ssnet_data.larcv1 import LArCV1Writer, check_root_file, read_annotation
from ssnet_data.larcv1msg import EventId, ImageProduct, decode_images, decode_message, encode_images
from ssnet_data.provenance import MAX_FRAME, ProvenanceLog, decode_frame, encode_frame, file_digest, for_plane

RECORD = {"software": "ssnet-worker 0.1.0", "engine": "onnx", "device": "cpu", "precision": "float32",
          "prototxt": {"file": "net.prototxt", "sha256": "a" * 64},
          "weights": {"0": {"file": "p0.caffemodel", "sha256": "b" * 64},
                      "1": {"file": "p1.caffemodel", "sha256": "c" * 64}}}


def product() -> ImageProduct:
    meta = ImageMeta(width=3, height=4, rows=4, cols=3, origin_x=0, origin_y=8, plane=1)
    return ImageProduct("ssnet_shower", ((meta, EventId(1, 2, 3)),), np.ones((1, 4, 3), np.float16))


def test_a_reply_carries_its_record_after_the_products() -> None:
    frames = encode_images([product()], provenance=RECORD)
    assert len(frames) == 5
    products, record = decode_message(frames)
    assert record == RECORD and products[0].name == "ssnet_shower"
    assert len(decode_images(frames)) == 1  # readers of products only are not disturbed
    assert decode_message(encode_images([product()]))[1] is None


def test_bad_provenance_frames_are_refused() -> None:
    with pytest.raises(ValueError, match="may take"):
        encode_frame({"x": "y" * MAX_FRAME})
    for frame, message in ((b"PRV1" + b"{", "not JSON"), (b"PRV1[1]", "JSON object"),
                           (b"PRV1" + b" " * MAX_FRAME, "larger than")):
        with pytest.raises(ProtocolError, match=message):
            decode_frame(frame)
    frames = encode_images([product()])
    with pytest.raises(ProtocolError, match="4 frames per product"):
        decode_message([*frames, b"NOPE"])


def test_the_log_counts_events_per_plane_and_names_disagreements() -> None:
    log = ProvenanceLog()
    for _ in range(3):
        log.add(0, RECORD)
        log.add(1, RECORD)
    assert for_plane(RECORD, 1)["weights"] == {"file": "p1.caffemodel", "sha256": "c" * 64}
    assert [(e["plane"], e["events"]) for e in log.entries()] == [(0, 3), (1, 3)]
    assert log.disagreements() == []
    other = {**RECORD, "weights": {"0": {"file": "p0_v2.caffemodel", "sha256": "d" * 64}}}
    log.add(0, other, events=2)
    log.add(1, {**RECORD, "engine": "opencv"})  # no weights for plane 1 in this one, and another engine
    found = log.disagreements()
    assert len(found) == 2
    assert found[0].startswith("workers disagree on plane 0: weights p0.caffemodel (sha256 bbbbbbbbbbbb) for 3 "
                               "event(s); weights p0_v2.caffemodel (sha256 dddddddddddd) for 2 event(s)")
    assert "engine onnx" in found[1] and "engine opencv" in found[1]
    again = ProvenanceLog.from_json(log.to_json(service="ssnet"))
    assert again.entries() == log.entries()
    stored = json.loads(log.to_json(service="ssnet"))
    assert stored["service"] == "ssnet" and stored["disagreements"] == found and stored["format"] == 1
    with pytest.raises(ValueError, match="not a provenance log"):
        ProvenanceLog.from_json('{"planes": [{"plane": 0}]}')


def test_the_output_file_holds_the_record_as_a_tnamed(tmp_path: Path) -> None:
    path = tmp_path / "out.root"
    meta = product().items[0][0]
    with LArCV1Writer(path, ["ssnet_shower"]) as writer:
        writer.write_entry(1, 2, 3, {"ssnet_shower": [(meta, np.ones((4, 3), np.float32))]})
        writer.annotate("ssnet_provenance", "first")
        writer.annotate("ssnet_provenance", '{"planes": []}')  # the last text wins
        with pytest.raises(LArCV1Error, match="not a name"):
            writer.annotate("image2d_ssnet_shower_tree", "x")
    assert read_annotation(path, "ssnet_provenance") == '{"planes": []}'
    assert read_annotation(path, "nothing_here") is None
    assert read_annotation(path, "image2d_ssnet_shower_tree") is None  # a tree, not an annotation
    assert len(file_digest(path)) == 64


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    (b"", "not a ROOT file (empty)"),
    (b"hello, I am text\n", "not a ROOT file"),
])
def test_input_files_are_judged_in_the_users_words(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "in.root"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LArCV1Error, match=rf"in.root'?: {message.replace('(', '[(]').replace(')', '[)]')}$"):
        check_root_file(path)


def test_a_directory_and_a_truncated_copy(tmp_path: Path) -> None:
    with pytest.raises(LArCV1Error, match="a directory, not a file"):
        check_root_file(tmp_path)
    demo = Path(__file__).resolve().parents[2] / "data" / "demo" / "ssnet_demo.root"
    check_root_file(demo)
    cut = tmp_path / "cut.root"
    cut.write_bytes(demo.read_bytes()[:100_000])
    with pytest.raises(LArCV1Error, match=f"truncated: 100,000 of {demo.stat().st_size:,} bytes"):
        check_root_file(cut)
