"""What a server process holds: the served model, the stream loop, adaptation and counters.

Front ends (the ASGI app, the pipe) call ``accept`` to validate and submit a frame and get a
future; the service knows nothing about HTTP.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import numpy as np

from same_fast.errors import InputError, SameFastError
from same_fast.serve.adaptation import OnlineAdaptation, ProcessAdaptation
from same_fast.serve.config import ServeConfig
from same_fast.serve.cpus import plan_adapter_cpus, serving_step
from same_fast.serve.metrics import Metrics
from same_fast.serve.model import ServedModel, load_served_model
from same_fast.serve.offload import CodecPool
from same_fast.stream import LoopClosed, LoopConfig, QueueFull, StreamLoop


class Busy(SameFastError):
    """The batching queue is full: the frame was refused (the client may retry)."""


class ShuttingDown(SameFastError):
    """The server has stopped its stream loop and takes no new frames."""


def _serving_threads(config: ServeConfig) -> int:
    """The backend's CPU threads (ONNX Runtime's intra-op pool): with the adapter placed on its
    own CPUs, as many as serving keeps, so no pool thread runs beside the adapter; else 0 (the
    backend's default)."""
    if config.adapt != "online":
        return 0
    plan = plan_adapter_cpus(config.adaptation.cpus, config.adaptation.threads)
    return len(plan.serving) if plan.adapter is not None else 0


class Service:
    """Model + loop + adaptation + metrics, shared by every connection of one process."""

    def __init__(self, config: ServeConfig, model: ServedModel | None = None) -> None:
        self.config = config.validate()
        self.model = model or load_served_model(config.model, config.backend, config.device,
                                                threads=_serving_threads(config),
                                                channels_last=config.channels_last)
        self.adaptation: OnlineAdaptation | ProcessAdaptation | None = None
        if config.adapt == "online":
            # A child process shares no GIL with serving (lower tail latency); a thread starts
            # faster and works for any torch module.
            cls = ProcessAdaptation if config.adapt_in == "process" else OnlineAdaptation
            self.adaptation = cls(self.model, config.adaptation)
        # With the adapter placed (--adapt-cpus), the loop's workers keep to the other CPUs.
        step = serving_step(self._step, self.adaptation.cpus if self.adaptation else None)
        self.loop = StreamLoop(step, LoopConfig(
            capacity=config.capacity, max_batch=config.max_batch,
            max_delay_ms=config.max_delay_ms, policy=config.policy, workers=config.workers))
        self.model.batch_pixels = config.max_batch_pixels
        self.metrics = Metrics(self.model_name)
        self.metrics.watch(lambda: (self.loop.stats(), self.model.describe(),
                                    self.adaptation.describe() if self.adaptation else None))
        self.codec = CodecPool(config.codec_threads)
        self.started = time.time()
        self.draining = False
        self.closed = False
        self._active = 0
        self._queued_pixels = 0
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        """The model's name in URLs and metrics labels: ``-m`` without folders or extension."""
        return model_name(self.model.name)

    # -- frames -------------------------------------------------------------------------------
    def _step(self, items: list) -> list:
        """The loop's frame step: frames from ``accept`` come as ``_Queued`` (their queue wait
        is measured), raw arrays (the pipe) as they are."""
        t0 = time.perf_counter()
        frames = [it.frame if isinstance(it, _Queued) else it for it in items]
        observe = self.adaptation.observe if self.adaptation else None
        out = self.model.frame_step(frames, observe)
        self.metrics.batch([t0 - it.t for it in items if isinstance(it, _Queued)],
                           time.perf_counter() - t0, len(frames))
        return out

    def accept(self, frame: np.ndarray, meta: Any = None) -> Future:
        """Submit one validated ``(H, W, C)`` frame; the future yields (array, version, hash).

        Never blocks: a full queue, or ``max_queued_pixels`` of frames already waiting or in the
        model, raises Busy; a closed service ShuttingDown. A draining service (SIGTERM) still
        takes frames from its open connections: every frame received is answered.
        """
        if self.closed:
            raise ShuttingDown("server is shutting down")
        h, w = frame.shape[:2]
        px = h * w
        if px > self.config.max_pixels:
            raise InputError(f"frame of {w}x{h} pixels is over the limit of "
                             f"{self.config.max_pixels}")
        with self._lock:
            # One frame always fits an empty queue, so a frame under max_pixels is never refused
            # for its size alone.
            if self._queued_pixels and self._queued_pixels + px > self.config.max_queued_pixels:
                raise Busy(f"server busy: {self._queued_pixels} pixels already queued (limit "
                           f"{self.config.max_queued_pixels})")
            self._queued_pixels += px
        try:
            fut = self.loop.submit(_Queued(frame, time.perf_counter()), meta, timeout=0)
        except (QueueFull, LoopClosed) as e:
            self._release_pixels(px)
            if isinstance(e, LoopClosed):
                raise ShuttingDown("server is shutting down") from None
            raise Busy(f"server busy: {self.config.capacity} frames already queued") from None
        fut.add_done_callback(lambda _: self._release_pixels(px))
        return fut

    def _release_pixels(self, px: int) -> None:
        with self._lock:
            self._queued_pixels -= px

    # -- lifecycle ----------------------------------------------------------------------------
    def enter(self) -> None:
        """A connection or request starts (SIGTERM waits for these to finish)."""
        with self._lock:
            self._active += 1

    def leave(self) -> None:
        with self._lock:
            self._active -= 1

    @property
    def active(self) -> int:
        return self._active

    def begin_drain(self) -> None:
        self.draining = True

    def idle(self) -> bool:
        s = self.loop.stats()
        return self._active == 0 and s["queue_depth"] == 0 and s["in_flight"] == 0

    def close(self) -> None:
        """Finish every accepted frame, then stop the adapter."""
        self.draining = True
        self.closed = True
        self.loop.close(drain=True)
        self.codec.close()
        if self.adaptation is not None:
            self.adaptation.close()

    # -- reports ------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        d = self.model.describe()
        d["adaptation"] = self.adaptation.describe() if self.adaptation else {"mode": "off"}
        cfg = self.config
        d["loop"] = {"max_batch": cfg.max_batch, "max_delay_ms": cfg.max_delay_ms,
                     "capacity": cfg.capacity, "policy": cfg.policy, "workers": cfg.workers}
        d["limits"] = {"max_message_bytes": cfg.max_message_bytes, "max_pixels": cfg.max_pixels,
                       "max_inflight": cfg.max_inflight, "max_connections": cfg.max_connections,
                       "max_batch_pixels": cfg.max_batch_pixels,
                       "max_queued_pixels": cfg.max_queued_pixels}
        return d

    def prometheus(self) -> bytes:
        """The Prometheus text exposition of this server's metrics."""
        return self.metrics.render()


class _Queued:
    """A frame in the stream loop with the time it was accepted (``perf_counter``)."""

    __slots__ = ("frame", "t")

    def __init__(self, frame: np.ndarray, t: float) -> None:
        self.frame, self.t = frame, t


def model_name(spec: str) -> str:
    """``-m`` as a URL-safe name: ``fundus-lite``; ``/x/y/model.safetensors`` -> ``model``;
    ``identity:delay_ms=5`` -> ``identity``."""
    import re
    from pathlib import PurePath

    base = spec.split(":", 1)[0] if not spec.endswith(".safetensors") else spec
    stem = PurePath(base).name
    if stem.endswith(".safetensors"):
        stem = stem[:-len(".safetensors")]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "model"


def tune_process(switch_interval_s: float = 0.0005) -> None:
    """Process settings for a latency-bound server.

    Python hands the GIL to a waiting thread only every ``sys.getswitchinterval()`` (5 ms by
    default), so the model worker could wait that long behind the event loop or the adapter;
    0.5 ms halved median stream latency in ``same-fast bench --suite stream``.
    """
    import sys

    sys.setswitchinterval(switch_interval_s)


def freeze_heap() -> int:
    """Exempt every object alive now from later garbage collections (``gc.freeze``); returns
    how many were frozen. Call once the model is loaded and warm.

    After start-up a server's heap is mostly modules, the model and torch's own objects (about
    300,000 of them with the torch backend; the stream bench reports how many it froze). A full
    collection walks all of them while every Python thread waits, the serving worker included:
    80-150 ms on the 2-core CI machine. It
    came in the third run of every torch 4-stream ``bench --suite stream`` case (p99/p50 about
    8, max 122-130 ms; frozen: 1.4-1.5, max 9-24 ms). Frozen objects are never walked again;
    objects made later are collected as before, and a frozen object that becomes unreachable
    without a reference cycle is still freed. An adapter thread (``--adapt-in thread``) makes
    ~130,000 lasting objects at its first steps (counted in a one-off probe), after the freeze;
    the default child process keeps them out of the server.
    """
    import gc

    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
