"""A CUDA worker's GPU metrics (``ssnet_worker.metrics.GpuCollector``), read from NVML at scrape time.

NVML cannot run here (no NVIDIA GPU or driver): :class:`FakeNVML` stands in for the ``pynvml`` module, with its
function names, so the collector's mapping of CUDA devices and its samples are checked against it.  The path
without NVML runs for real: this machine has no pynvml, or a pynvml whose NVML does not start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ssnet_worker.metrics import GpuCollector, nvml_handle, register_gpu_metrics

pytestmark = pytest.mark.py39  # runs on Python 3.9 too (make pytest39)

GIB = 1 << 30


class NVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


@dataclass
class FakeGPU:
    uuid: str
    gpu: int = 0  # utilisation, percent
    memory: int = 0
    used: int = 0
    total: int = 80 * GIB


class FakeNVML:
    """Stands in for the pynvml module (NVML cannot run here): the functions the collector calls, same names."""

    NVMLError = NVMLError

    def __init__(self, *gpus: FakeGPU, start: bool = True) -> None:
        self.gpus = list(gpus)
        self.start = start
        self.broken = False

    def nvmlInit(self) -> None:
        if not self.start:
            raise NVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGPU:
        if index >= len(self.gpus):
            raise NVMLError("Invalid Argument")
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGPU:
        raise NVMLError("Not Found")

    def nvmlDeviceGetUUID(self, handle: FakeGPU) -> str:
        return handle.uuid

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGPU) -> Any:
        if self.broken:
            raise NVMLError("GPU is lost")
        return SimpleNamespace(gpu=handle.gpu, memory=handle.memory)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGPU) -> Any:
        return SimpleNamespace(used=handle.used, total=handle.total, free=handle.total - handle.used)


def gpus() -> FakeNVML:
    return FakeNVML(FakeGPU("GPU-aaaa-0"), FakeGPU("GPU-bbbb-1"), FakeGPU("GPU-cccc-2"))


def samples(registry: CollectorRegistry) -> dict[str, tuple[dict[str, str], float]]:
    return {sample.name: (sample.labels, sample.value) for family in registry.collect() for sample in family.samples
            if sample.name.startswith("ssnet_worker_gpu_")}


@pytest.mark.parametrize(("index", "visible", "uuid"), [
    (1, None, "GPU-bbbb-1"),      # no CUDA_VISIBLE_DEVICES: CUDA's and NVML's numbers are the same
    (0, "2", "GPU-cccc-2"),       # cuda:0 is NVML's device 2
    (1, "2, 0", "GPU-aaaa-0"),
    (0, "GPU-bbbb", "GPU-bbbb-1"),  # a UUID, or a unique prefix of one
    (1, "GPU-cccc-2,GPU-aaaa-0", "GPU-aaaa-0"),
])
def test_cuda_index_maps_through_cuda_visible_devices(index: int, visible: str | None, uuid: str) -> None:
    nvml = gpus()
    assert nvml_handle(nvml, index, visible).uuid == uuid


@pytest.mark.parametrize(("index", "visible"), [(1, "0"), (0, ""), (0, "GPU-zzzz")])
def test_a_device_not_visible_is_an_error(index: int, visible: str) -> None:
    with pytest.raises((LookupError, NVMLError)):
        nvml_handle(gpus(), index, visible)


def test_samples_are_read_at_scrape_time() -> None:
    nvml = gpus()
    registry = CollectorRegistry()
    collector = register_gpu_metrics(registry, 0, {"CUDA_VISIBLE_DEVICES": "1"}, nvml=nvml)
    assert isinstance(collector, GpuCollector)
    gpu = nvml.gpus[1]
    gpu.gpu, gpu.memory, gpu.used = 87, 40, 3 * GIB
    labels = {"device": "cuda:0", "uuid": "GPU-bbbb-1"}
    assert samples(registry) == {
        "ssnet_worker_gpu_utilization_ratio": (labels, 0.87),
        "ssnet_worker_gpu_memory_utilization_ratio": (labels, 0.4),
        "ssnet_worker_gpu_memory_used_bytes": (labels, 3.0 * GIB),
        "ssnet_worker_gpu_memory_total_bytes": (labels, 80.0 * GIB),
    }
    gpu.gpu = 5
    assert samples(registry)["ssnet_worker_gpu_utilization_ratio"][1] == 0.05
    assert b"# TYPE ssnet_worker_gpu_memory_used_bytes gauge" in generate_latest(registry)


def test_a_scrape_nvml_cannot_answer_gives_no_gpu_samples_and_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    nvml = gpus()
    registry = CollectorRegistry()
    register_gpu_metrics(registry, 0, {}, nvml=nvml)
    nvml.broken = True
    with caplog.at_level(logging.DEBUG, logger="ssnet_worker.metrics"):
        assert samples(registry) == {} and samples(registry) == {}
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.DEBUG]
    nvml.broken = False
    assert len(samples(registry)) == 4


@pytest.mark.parametrize(("nvml", "environ", "reason"), [
    (FakeNVML(FakeGPU("GPU-a"), start=False), {}, "Driver Not Loaded"),
    (FakeNVML(FakeGPU("GPU-a")), {"CUDA_VISIBLE_DEVICES": ""}, "not among CUDA_VISIBLE_DEVICES"),
])
def test_nvml_that_fails_gives_one_warning_and_no_metrics(nvml: FakeNVML, environ: dict[str, str], reason: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    with caplog.at_level(logging.WARNING, logger="ssnet_worker.metrics"):
        assert register_gpu_metrics(registry, 0, environ, nvml=nvml) is None
    assert len(caplog.records) == 1 and reason in caplog.text
    assert samples(registry) == {}


def test_without_nvml_here_the_worker_runs_on_without_gpu_metrics(caplog: pytest.LogCaptureFixture) -> None:
    """For real: this machine has no NVIDIA driver, so pynvml is missing or its NVML does not start."""
    registry = CollectorRegistry()
    with caplog.at_level(logging.WARNING, logger="ssnet_worker.metrics"):
        assert register_gpu_metrics(registry, 0) is None
    assert len(caplog.records) == 1 and "no GPU metrics for cuda:0" in caplog.text, caplog.text
    assert samples(registry) == {}
