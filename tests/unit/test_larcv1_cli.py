"""``ssnet-larcv1 dump``: what it prints equals what the genuine library reports (the shared manifest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ssnet_client.larcv1_cli import main

pytest.importorskip("uproot", reason="reading LArCV1 files needs uproot")

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO.parent / "shared" / "data" / "larcv1"


def sample(name: str) -> Path:
    path = SAMPLES / name
    if not path.is_file():
        pytest.skip(f"shared LArCV1 sample {path} not found (CI keeps ../shared beside the checkout)")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("common/src", "data/src", "client/src"))}
    return subprocess.run(
        [sys.executable, "-m", "ssnet_client.larcv1_cli", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )


def assert_same_as_manifest(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["producers_in_file"] == want["producers_in_file"]
    assert (got["tree"], got["branch"], got["n_entries"]) == (want["tree"], want["branch"], want["n_entries"])
    assert len(got["entries"]) == len(want["entries"])
    for entry, want_entry in zip(got["entries"], want["entries"]):
        images = entry.pop("images")
        want_images = want_entry["images"]
        assert entry == {key: want_entry[key] for key in entry}
        assert len(images) == len(want_images)
        for image, want_image in zip(images, want_images):
            assert image.pop("sum_f64") == pytest.approx(want_image["sum_f64"], rel=1e-12)
            assert image == {key: want_image[key] for key in image}  # every other field exactly


@pytest.mark.parametrize("name", ["ssnet_sample_512.root", "ssnet_sample_fullevent.root"])
def test_json_dump_matches_the_manifest(name: str) -> None:
    path = sample(name)
    result = run_cli("dump", str(path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    manifest = json.loads(sample("manifest.json").read_text())["files"][name]
    assert report["file"] == str(path)
    assert list(report["producers"]) == ["wire"]
    assert_same_as_manifest(
        {**report["producers"]["wire"], "producers_in_file": report["producers_in_file"]},
        manifest["producers"]["wire"],
    )


def test_text_dump_shows_ids_images_and_meta(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dump", str(sample("ssnet_sample_512.root")), "--producer", "wire"]) == 0
    out = capsys.readouterr().out
    assert "producer wire (tree image2d_wire_tree): 10 entries" in out
    assert "entry 0: run 5007 subrun 101 event 3001, 3 images" in out
    assert "image 2: plane 2, 512 rows x 512 cols" in out
    assert "Plane 2 (rows,cols) = (512,512) ... Left Top (168,5616) ... Right Bottom (680,2544)" in out
    assert "d62fe1311b298152cc075c6f7209edf493545f4efa730d7b58eed95effdece18" in out
    assert out.count("\n  entry ") == 10


def test_missing_file_is_one_line_on_stderr_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.root"
    result = run_cli("dump", str(missing))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"ssnet-larcv1: error: file {str(missing)!r}: no such file\n"


def test_unknown_producer_lists_the_producers_present(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dump", str(sample("ssnet_sample_512.root")), "--producer", "segment"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no Image2D producer 'segment' in the file (it has: wire)" in captured.err
    assert "Traceback" not in captured.err


def test_usage_errors_exit_2() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage: ssnet-larcv1" in result.stderr
    assert run_cli("dump").returncode == 2


def test_help_explains_every_option() -> None:
    result = run_cli("dump", "--help")
    assert result.returncode == 0
    for option in ("FILE", "--producer P", "--json", "--verbose"):
        assert option in result.stdout
