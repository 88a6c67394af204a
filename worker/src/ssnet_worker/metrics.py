"""Prometheus metrics of one worker process (base units, ``_total`` counters, no high-cardinality labels).

:class:`WorkerMetrics` are every worker's; :class:`GpuCollector` adds, for a worker on a CUDA device, the GPU's
utilisation and memory, read from NVML (``pynvml``, the ``nvidia-ml-py`` package) at scrape time.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Iterator, Mapping, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from ssnet_common.metrics import LATENCY_BUCKETS

log = logging.getLogger(__name__)

OK = "ok"
ERROR = "error"
HEARTBEATS = "ssnet_worker_heartbeats"  # a counter: exposed as ..._total
BROKER_HEARTBEAT_AGE = "ssnet_worker_broker_heartbeat_age_seconds"


class WorkerMetrics:
    """The worker's metrics, registered in ``registry`` and bound to ``service``.

    ``ssnet_worker_requests_total{service,outcome}``     requests answered, outcome ``ok`` or ``error``
    ``ssnet_worker_errors_total{service}``               errors: ``handle`` raised, a malformed message from the
                                                         broker, a failed send
    ``ssnet_worker_processing_seconds{service}``         time spent in ``handle`` (histogram)
    ``ssnet_worker_heartbeats_total{direction}``         heartbeats ``sent`` to and ``received`` from the broker
    ``ssnet_worker_reconnects_total{service}``           connections to the broker replaced (silence, DISCONNECT)
    ``ssnet_worker_busy{service}``                       1 while a request is being processed
    ``ssnet_worker_broker_heartbeat_age_seconds{service}`` time since the broker was last heard from
    """

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.registry = registry
        requests = Counter(
            "ssnet_worker_requests", "Requests answered, by outcome (ok or error)",
            ["service", "outcome"], registry=registry,
        )
        self.requests_ok = requests.labels(service, OK)
        self.requests_error = requests.labels(service, ERROR)
        self.errors = Counter(
            "ssnet_worker_errors", "Errors: handler exceptions, malformed broker messages, failed sends",
            ["service"], registry=registry,
        ).labels(service)
        self.processing_seconds = Histogram(
            "ssnet_worker_processing_seconds", "Time spent handling one request",
            ["service"], buckets=LATENCY_BUCKETS, registry=registry,
        ).labels(service)
        heartbeats = Counter(
            HEARTBEATS, "Heartbeats exchanged with the broker, by direction (sent or received)",
            ["direction"], registry=registry,
        )
        self.heartbeats_sent = heartbeats.labels("sent")
        self.heartbeats_received = heartbeats.labels("received")
        self.reconnects = Counter(
            "ssnet_worker_reconnects", "Broker connections replaced after silence or a DISCONNECT",
            ["service"], registry=registry,
        ).labels(service)
        self.busy = Gauge(
            "ssnet_worker_busy", "1 while the worker processes a request, else 0", ["service"], registry=registry,
        ).labels(service)
        self.broker_heartbeat_age = Gauge(
            BROKER_HEARTBEAT_AGE, "Seconds since the last message from the broker",
            ["service"], registry=registry,
        ).labels(service)

    def request_done(self, ok: bool, seconds: float) -> None:
        self.processing_seconds.observe(seconds)
        if ok:
            self.requests_ok.inc()
        else:
            self.requests_error.inc()
            self.errors.inc()


# ------------------------------------------------------------------------------------------------- GPU
def nvml_handle(nvml: Any, index: int, visible: Optional[str]) -> Any:
    """The NVML handle of CUDA device ``index`` as this process numbers it: the ``index``-th entry of
    ``visible`` (``CUDA_VISIBLE_DEVICES``: NVML indices, or GPU-/MIG- UUIDs or their prefixes), or NVML's device
    ``index`` when ``visible`` is None.  :class:`LookupError` when no such device is visible.  NVML numbers GPUs
    in PCI order, CUDA fastest first: on a machine of mixed GPUs, set ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (or use
    UUIDs) so that both agree."""
    if visible is None:
        return nvml.nvmlDeviceGetHandleByIndex(index)
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if index >= len(entries):
        raise LookupError(f"cuda:{index} is not among CUDA_VISIBLE_DEVICES={visible!r}")
    entry = entries[index]
    if entry.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(entry))
    for number in range(nvml.nvmlDeviceGetCount()):  # CUDA takes a unique prefix of a UUID too
        handle = nvml.nvmlDeviceGetHandleByIndex(number)
        if _text(nvml.nvmlDeviceGetUUID(handle)).startswith(entry):
            return handle
    return nvml.nvmlDeviceGetHandleByUUID(entry)  # a MIG instance, or NVML says why not


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuCollector:
    """The GPU of one CUDA device (``device``: ``cuda:N``), read from NVML when Prometheus asks.

    ``ssnet_worker_gpu_utilization_ratio{device,uuid}``         time the GPU was busy (0-1, NVML's sample period)
    ``ssnet_worker_gpu_memory_utilization_ratio{device,uuid}``  time its memory was read or written (0-1)
    ``ssnet_worker_gpu_memory_used_bytes{device,uuid}``         memory in use, by every process on the GPU
    ``ssnet_worker_gpu_memory_total_bytes{device,uuid}``        memory the GPU has

    A scrape that NVML cannot answer gives no GPU samples (one warning logged, then debug lines).
    """

    def __init__(self, nvml: Any, handle: Any, device: str) -> None:
        self.nvml = nvml
        self.handle = handle
        self.device = device
        try:
            self.uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        except Exception:
            self.uuid = ""
        self._warned = False

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        try:
            rates = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
        except Exception as exc:  # pynvml.NVMLError (a lost GPU, a driver reload): no samples, never a failed scrape
            (log.debug if self._warned else log.warning)("NVML does not answer for %s: %s", self.device, exc)
            self._warned = True
            return
        labels = [self.device, self.uuid]
        busy, memory_busy, used, total = self._families()
        busy.add_metric(labels, rates.gpu / 100.0)
        memory_busy.add_metric(labels, rates.memory / 100.0)
        used.add_metric(labels, float(memory.used))
        total.add_metric(labels, float(memory.total))
        yield from (busy, memory_busy, used, total)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        labels = ["device", "uuid"]
        return (
            GaugeMetricFamily("ssnet_worker_gpu_utilization_ratio",
                              "Share of the last sample period in which the GPU ran a kernel (NVML)", labels=labels),
            GaugeMetricFamily("ssnet_worker_gpu_memory_utilization_ratio",
                              "Share of the last sample period in which GPU memory was read or written (NVML)",
                              labels=labels),
            GaugeMetricFamily("ssnet_worker_gpu_memory_used_bytes", "GPU memory in use, by all processes (NVML)",
                              labels=labels),
            GaugeMetricFamily("ssnet_worker_gpu_memory_total_bytes", "GPU memory in all (NVML)", labels=labels),
        )


def register_gpu_metrics(registry: CollectorRegistry, index: int, environ: Mapping[str, str] = os.environ,
                         nvml: Optional[Any] = None) -> Optional[GpuCollector]:
    """Register a :class:`GpuCollector` for CUDA device ``index`` (through ``CUDA_VISIBLE_DEVICES`` in
    ``environ``); ``nvml``: the NVML module (default: ``import pynvml``).  Without pynvml, or when NVML does not
    start or has no such device: one warning, no GPU metrics, and None; the worker runs on."""
    device = f"cuda:{index}"
    try:
        if nvml is None:
            nvml = importlib.import_module("pynvml")
        nvml.nvmlInit()
        handle = nvml_handle(nvml, index, environ.get("CUDA_VISIBLE_DEVICES"))
    except ImportError:
        log.warning("no GPU metrics for %s: pynvml is not installed (pip install nvidia-ml-py)", device)
        return None
    except Exception as exc:  # pynvml.NVMLError: no driver, no library, no such device
        log.warning("no GPU metrics for %s: NVML: %s", device, exc or type(exc).__name__)
        return None
    collector = GpuCollector(nvml, handle, device)
    registry.register(collector)
    log.info("GPU metrics for %s (%s) from NVML", device, collector.uuid or "uuid unknown")
    return collector
