"""The Singularity/Apptainer definition files and their build script.

Apptainer cannot be installed here, so every ``singularity/*.def`` is parsed with a real parser (spython's
``SingularityParser``) and checked: it bootstraps from the local Docker engine (``docker-daemon``) an image that
the project's ``docker/`` builds, so one Dockerfile stays the source of truth, and it runs the right command.
``singularity/build.sh`` runs with a stand-in for ``apptainer`` that records what it was asked to build.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SINGULARITY = REPO / "singularity"
DOCKER = REPO / "docker"
DEFINITIONS = sorted(SINGULARITY.glob("*.def"))
COMMAND = {"broker": "ssnet-broker", "client": "ssnet-client", "worker": "ssnet-worker", "worker-cpu": "ssnet-worker"}


def built_images() -> set[str]:
    """``repository:tag`` of every image ``docker/`` builds: images named literally in its files, and
    ``ssnet-<dir>:<tag>`` for each ``docker/<dir>/Dockerfile`` and each tag ``docker/build.sh`` gives
    ``${SSNET_IMAGE_TAG}`` (its default, or a value documented as ``SSNET_IMAGE_TAG=<tag>``)."""
    texts = [p.read_text(errors="replace") for p in DOCKER.rglob("*") if p.is_file()]
    images = {m for text in texts for m in re.findall(r"\bssnet-[a-z0-9-]+:[A-Za-z0-9._-]+", text)}
    tags = {m for text in texts for m in re.findall(r"\$\{SSNET_IMAGE_TAG:-([A-Za-z0-9._-]+)\}", text)}
    tags |= {m for text in texts for m in re.findall(r"\bSSNET_IMAGE_TAG=([A-Za-z0-9._-]+)", text)}
    images |= {f"ssnet-{d.parent.name}:{tag}" for d in DOCKER.glob("*/Dockerfile") for tag in tags}
    return images


def header(path: Path) -> dict[str, str]:
    """The ``Key: value`` lines before the first section."""
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("%"):
            break
        match = re.match(r"^(\w+):\s*(\S.*)$", line)
        if match:
            fields[match.group(1).lower()] = match.group(2).strip()
    return fields


def test_the_three_images_have_definitions() -> None:
    assert {p.stem for p in DEFINITIONS} >= {"broker", "client", "worker"}


@pytest.mark.parametrize("path", DEFINITIONS, ids=lambda p: p.name)
def test_definition_parses_and_names_an_image_the_project_builds(path: Path) -> None:
    parsers = pytest.importorskip("spython.main.parse.parsers", reason="spython (requirements-dev.txt) not installed")
    recipe = parsers.SingularityParser(str(path)).recipe  # raises on a bootstrap agent that is not docker
    assert list(recipe) == ["spython-base"], "one stage"
    stage = recipe["spython-base"]
    fields = header(path)
    assert fields["bootstrap"] in ("docker-daemon", "docker-archive")
    assert stage.fromHeader == fields["from"].lower()
    images = built_images()
    assert fields["from"] in images, f"{path.name}: {fields['from']} is not an image docker/ builds ({sorted(images)})"
    assert stage.cmd == f'exec {COMMAND[path.stem]} "$@"', "the runscript runs the service with the arguments"
    assert stage.test, "%test checks the command is there at build time"
    text = path.read_text()
    assert re.search(r"^%help$", text, re.MULTILINE)
    if path.stem == "worker":
        assert fields["from"].endswith(":gpu") and "--nv" in text and ":ro" in text


def test_build_script_builds_each_definition(tmp_path: Path) -> None:
    """build.sh with a stand-in runner: one `build` per image, SIF names as the Slurm scripts expect them, and
    --archive rewrites the bootstrap to a `docker save` tar file."""
    fake = tmp_path / "apptainer"
    fake.write_text('#!/bin/bash\necho "$*" >> "$FAKE_LOG"\ndef=${@: -1}\ncp "$def" "$FAKE_LOG.${def##*/}"\n'
                    'touch "${@: -2:1}"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "SINGULARITY": str(fake), "FAKE_LOG": str(tmp_path / "log")}
    env.pop("SSNET_SLURM_IMAGES", None)
    out = tmp_path / "images"
    result = subprocess.run([str(SINGULARITY / "build.sh"), "--out", str(out)], env=env, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.sif")) == ["ssnet-broker.sif", "ssnet-client.sif", "ssnet-worker.sif"]
    calls = (tmp_path / "log").read_text().splitlines()
    assert [c.split()[-1] for c in calls] == [str(SINGULARITY / f"{n}.def") for n in ("broker", "client", "worker")]

    archive = tmp_path / "tars"
    archive.mkdir()
    (archive / "ssnet-worker_cpu.tar").touch()
    result = subprocess.run([str(SINGULARITY / "build.sh"), "--out", str(out), "--cpu", "--archive", str(archive),
                             "worker", "--", "--fakeroot"], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    last = (tmp_path / "log").read_text().splitlines()[-1].split()
    assert last[:3] == ["build", "--force", "--fakeroot"] and last[3] == str(out / "ssnet-worker-cpu.sif")
    rewritten = header(tmp_path / "log.worker-cpu.def")  # the definition it was given (a temporary copy)
    assert rewritten == {"bootstrap": "docker-archive", "from": str(archive / "ssnet-worker_cpu.tar")}


def test_build_script_says_when_there_is_no_runner(tmp_path: Path) -> None:
    # no Docker engine either (where one answers, build.sh runs Apptainer in a container)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = subprocess.run([str(SINGULARITY / "build.sh"), "--out", str(tmp_path)], env=env, capture_output=True,
                            text=True, check=False)
    if result.returncode == 0:
        pytest.skip("apptainer or singularity is installed in /usr/bin here")
    assert result.returncode == 1
    assert "neither apptainer nor singularity is installed" in result.stderr


@pytest.mark.parametrize("script", [
    *sorted(p for p in (SINGULARITY / "slurm").iterdir() if p.is_file() and p.suffix not in (".md",)),
    SINGULARITY / "build.sh", REPO / "scripts" / "slurm-local.sh", REPO / "scripts" / "slurm-cluster.sh",
    REPO / "docker" / "slurm-node" / "entrypoint.sh",
], ids=lambda p: str(p.relative_to(REPO)))
def test_shell_scripts_parse(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
