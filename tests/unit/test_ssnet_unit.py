"""SSNet worker configuration and preprocessing, without sockets or engines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssnet_common.errors import ConfigError
from ssnet_worker.ssnet import ModelSet, Preprocessing, planes_for_service

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "net.prototxt").write_text("name: 'x'")
    for plane in range(3):
        (tmp_path / f"p{plane}.caffemodel").write_bytes(b"")
    return tmp_path


def test_models_json_names_the_files(model_dir: Path) -> None:
    (model_dir / "models.json").write_text(json.dumps(
        {"prototxt": "net.prototxt", "weights": {"0": "p0.caffemodel", "1": "p1.caffemodel", "2": "p2.caffemodel"}}))
    models = ModelSet.from_options(str(model_dir), None, None)
    assert models.prototxt == model_dir / "net.prototxt"
    assert models.weights == {p: model_dir / f"p{p}.caffemodel" for p in range(3)}


def test_weights_option_per_plane_or_one_for_all(model_dir: Path) -> None:
    models = ModelSet.from_options(str(model_dir), None, ["p2.caffemodel", "p1.caffemodel", "p0.caffemodel"])
    assert models.prototxt.name == "net.prototxt"  # the only .prototxt in the directory
    assert [models.weights[p].name for p in range(3)] == ["p2.caffemodel", "p1.caffemodel", "p0.caffemodel"]
    single = ModelSet.from_options(str(model_dir), "net.prototxt", ["p0.caffemodel"])
    assert {w.name for w in single.weights.values()} == {"p0.caffemodel"} and set(single.weights) == {0, 1, 2}


@pytest.mark.parametrize(
    ("prototxt", "weights", "config", "message"),
    [
        (None, None, None, "name the weights"),
        ("missing.prototxt", ["p0.caffemodel"], None, "network description"),
        (None, ["p0.caffemodel", "nope.caffemodel"], None, "weights of plane 1"),
        (None, None, "{not json", "models.json"),
        (None, None, '{"weights": {"zero": "p0.caffemodel"}}', "plane numbers"),
    ],
)
def test_bad_model_options(model_dir: Path, prototxt: str | None, weights: list[str] | None, config: str | None,
                           message: str) -> None:
    if config is not None:
        (model_dir / "models.json").write_text(config)
    with pytest.raises(ConfigError, match=message):
        ModelSet.from_options(str(model_dir), prototxt, weights)


def test_planes_for_service() -> None:
    assert planes_for_service("ssnet", None, [0, 1, 2]) == (0, 1, 2)
    assert planes_for_service("ssnet", [2], [0, 1, 2]) == (2,)
    assert planes_for_service("ssnet_plane1", None, [0, 1, 2]) == (1,)
    for service, planes in (("ssnet_plane1", [0]), ("ssnet_planeX", None), ("ssnet", [5])):
        with pytest.raises(ConfigError):
            planes_for_service(service, planes, [0, 1, 2])


def test_preprocessing_thresholds_and_clips_a_copy() -> None:
    image = np.array([[0, 9.99, 10, 499, 500, 501, 1e4]], np.float32)
    image.flags.writeable = False  # as received: a read-only view of the frame
    out = Preprocessing().apply(image)
    assert out.tolist() == [[0, 0, 10, 499, 500, 500, 500]]
    assert Preprocessing(enabled=False).apply(image).tolist() == image.tolist()
