"""Server metrics in a ``prometheus_client`` registry of their own (one per server).

Time is split as Triton Inference Server splits it: ``same_fast_inference_queue_duration_seconds``
(accepted -> its batch starts), ``same_fast_inference_compute_infer_duration_seconds`` (one
model call, per batch), and ``same_fast_request_duration_seconds`` (request received -> reply
handed to the socket, per frame). Metrics about the model carry a ``model`` label; the stream
loop's and adaptation's state is read at scrape time; the process collector adds
``process_*`` (CPU, resident memory, open files).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds; a frame round trip on loopback spans ~1 ms (identity) to seconds (paper on CPU).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """What the handlers and the serving step record; ``render`` writes the exposition."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        m = ["model"]
        self._frames = Counter("same_fast_frames", "Frames enhanced and returned.", m,
                               registry=r).labels(model)
        self._errors = Counter("same_fast_errors", "Frames or requests answered with an error, "
                               "by kind (docs/SERVING.md).", ["kind"], registry=r)
        self._request = Histogram("same_fast_request_duration_seconds", "Request received -> "
                                  "reply handed to the socket, per frame.", m,
                                  buckets=LATENCY_BUCKETS, registry=r).labels(model)
        self._queue = Histogram("same_fast_inference_queue_duration_seconds", "Frame accepted "
                                "-> its batch starts in the model.", m, buckets=LATENCY_BUCKETS,
                                registry=r).labels(model)
        self._compute = Histogram("same_fast_inference_compute_infer_duration_seconds", "One "
                                  "model call (a batch), seconds.", m, buckets=LATENCY_BUCKETS,
                                  registry=r).labels(model)
        self._batch = Histogram("same_fast_inference_batch_size", "Frames per model call.", m,
                                buckets=BATCH_BUCKETS, registry=r).labels(model)
        self._streams = Gauge("same_fast_stream_connections", "Open WebSocket streams.",
                              registry=r)
        self._opened = Counter("same_fast_stream_connections_opened", "WebSocket streams "
                               "accepted.", registry=r)
        self.connections = 0

    def frame_done(self, seconds: float) -> None:
        self._frames.inc()
        self._request.observe(seconds)

    def error(self, kind: str) -> None:
        self._errors.labels(kind).inc()

    def connection(self, delta: int) -> None:
        self.connections += delta
        self._streams.set(self.connections)
        if delta > 0:
            self._opened.inc(delta)

    def batch(self, queue_seconds: list[float], compute_seconds: float, frames: int) -> None:
        """One model call: each frame's queue wait, the call's time and size."""
        for q in queue_seconds:
            self._queue.observe(q)
        self._compute.observe(compute_seconds)
        self._batch.observe(frames)

    def watch(self, state: Callable[[], tuple[dict, dict, dict | None]]) -> None:
        """Read ``state() -> (loop stats, model.describe(), adaptation.describe() or None)`` at
        every scrape."""
        self.registry.register(_StateCollector(self.model, state))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, model: str, state: Callable[[], tuple[dict, dict, dict | None]]) -> None:
        self.model, self.state = model, state

    def collect(self) -> Iterator[Any]:
        loop, model, adaptation = self.state()
        a = adaptation or {}

        def family(kind: type, name: str, help_: str, value: float) -> Any:
            f = kind(name, help_, labels=["model"])
            f.add_metric([self.model], float(value))
            return f

        g, c = GaugeMetricFamily, CounterMetricFamily
        yield family(g, "same_fast_loop_queue_depth", "Frames waiting in the batching queue.",
                     loop.get("queue_depth", 0))
        yield family(g, "same_fast_loop_in_flight", "Frames inside a model call.",
                     loop.get("in_flight", 0))
        yield family(c, "same_fast_loop_dropped", "Frames dropped by the drop_oldest policy.",
                     loop.get("dropped", 0))
        yield family(c, "same_fast_loop_batches", "Model calls.", loop.get("batches", 0))
        yield family(c, "same_fast_loop_failed_batches", "Model calls that raised.",
                     loop.get("failed_batches", 0))
        yield family(g, "same_fast_weights_version", "Version of the served weights "
                     "(0 = source).", model.get("weights_version", 0))
        yield family(c, "same_fast_adaptation_steps", "Online adaptation steps taken.",
                     a.get("steps", 0))
        yield family(g, "same_fast_adaptation_acceptance", "Mean picker weight of adapted "
                     "samples.", a.get("acceptance") or 0.0)
        yield family(c, "same_fast_adaptation_resets", "Resets to the source weights "
                     "(requested or by the safety monitor).", a.get("resets") or 0)
        yield family(g, "same_fast_adaptation_frozen", "1 when adaptation is frozen or off.",
                     0 if a.get("state") == "adapting" else 1)
