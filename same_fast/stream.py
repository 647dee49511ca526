"""The Python front of the streaming loop (``same_fast._stream``, C++).

Frames go in with :meth:`StreamLoop.submit` from any thread; each returns a
``concurrent.futures.Future`` (or calls ``on_result``) and results are delivered strictly in
submission order. Batching, back-pressure and reordering run in C++ with the GIL released; only
the model step runs Python.

A *frame step* is the unit the loop calls: ``step(frames: list) -> list`` of the same length.
:func:`tensor_step` builds one from a *model step*: a callable taking float32 ``(N, C, H, W)``
in [0, 1] and returning the same shape and range (what ``same_fast.nn.enhance`` does); frames
are ``(H, W, C)`` uint8/uint16 numpy arrays and outputs keep their shape and dtype (each output
is a view into its group's output batch).

Example::

    with StreamLoop(tensor_step(model_step), max_batch=4, max_delay_ms=2) as loop:
        futures = [loop.submit(frame) for frame in frames]
        outputs = [f.result() for f in futures]
        print(loop.stats()["p99_s"])
"""
from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from same_fast.errors import SameFastError

OK, ERROR, DROPPED, CANCELLED = 0, 1, 2, 3
STATUS_NAMES = {OK: "ok", ERROR: "error", DROPPED: "dropped", CANCELLED: "cancelled"}


class StreamError(SameFastError):
    """A frame that did not come back enhanced (model error, dropped, cancelled)."""

    def __init__(self, message: str, status: int, seq: int) -> None:
        super().__init__(message)
        self.status = status
        self.seq = seq


class FrameFailed(StreamError):
    """The model step raised for this frame's batch (other batches are unaffected)."""


class FrameDropped(StreamError):
    """The frame was evicted from a full queue under the ``drop_oldest`` policy."""


class FrameCancelled(StreamError):
    """The loop was closed without draining while the frame still waited in the queue."""


class QueueFull(SameFastError):
    """``submit`` could not enqueue within its timeout (``block`` policy)."""


class LoopClosed(SameFastError):
    """``submit`` after ``close``."""


_EXC = {ERROR: FrameFailed, DROPPED: FrameDropped, CANCELLED: FrameCancelled}


@dataclass
class LoopConfig:
    """Queueing and batching policy; fields map to ``same-fast serve`` flags.

    capacity: frames that may wait in the queue (not counting batches being computed).
    max_batch: most frames per model call. max_delay_ms: longest a frame waits for a batch to fill.
    policy: ``block`` (submit waits, then raises QueueFull) or ``drop_oldest`` (the oldest waiting
    frame is evicted and reported as dropped). workers: threads calling the model step.
    """

    capacity: int = 64
    max_batch: int = 4
    max_delay_ms: float = 2.0
    policy: str = "block"
    workers: int = 1


@dataclass(frozen=True)
class Outcome:
    """What ``on_result`` receives for every accepted frame, in submission order."""

    seq: int
    status: int  # OK, ERROR, DROPPED, CANCELLED
    value: Any  # the step's output when status is OK, else None
    error: str | None
    latency_s: float  # submit -> in-order release, seconds
    meta: Any

    @property
    def ok(self) -> bool:
        return self.status == OK


_live: weakref.WeakSet[StreamLoop] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # Worker threads call into Python; they must stop before the interpreter finalises.
    for loop in list(_live):
        loop.close(drain=False)


class StreamLoop:
    """Bounded, batching, order-preserving stream of frames through a frame step.

    step: ``step(frames: list) -> list`` (same length), called from worker threads.
    on_result: optional ``callback(Outcome)``, called in submission order from one dispatcher
    thread (keep it short; it delays later results).
    """

    def __init__(self, step: Callable[[list], Sequence], config: LoopConfig | None = None,
                 on_result: Callable[[Outcome], None] | None = None, **overrides: Any) -> None:
        from same_fast import _stream

        cfg = config or LoopConfig()
        if overrides:
            cfg = LoopConfig(**{**cfg.__dict__, **overrides})
        self.config = cfg
        self._on_result = on_result
        self._step = step
        try:
            self._loop = _stream.Loop(self._call_step, cfg.capacity, cfg.max_batch,
                                      cfg.max_delay_ms, cfg.policy, cfg.workers)
        except ValueError as e:
            raise SameFastError(f"stream loop: {e}") from None
        self._closed = False
        self._lock = threading.Lock()
        self._dispatcher = threading.Thread(target=self._dispatch, name="same-fast-dispatch",
                                            daemon=True)
        self._dispatcher.start()
        _live.add(self)

    def _call_step(self, frames: list) -> Sequence:
        return self._step(frames)

    def submit(self, frame: Any, meta: Any = None, timeout: float | None = None) -> Future:
        """Enqueue one frame; the future resolves to the step's output for it.

        timeout: seconds to wait while the queue is full (``block`` policy); None waits forever,
        0 never waits. Raises QueueFull or LoopClosed. The future fails with FrameFailed,
        FrameDropped or FrameCancelled when the frame does not come back enhanced.
        """
        from same_fast import _stream

        fut: Future = Future()
        fut.meta = meta  # type: ignore[attr-defined]
        try:
            fut.seq = self._loop.submit(  # type: ignore[attr-defined]
                frame, fut, -1.0 if timeout is None else float(timeout))
        except _stream.QueueFull as e:
            raise QueueFull(str(e)) from None
        except _stream.Closed as e:
            raise LoopClosed(str(e)) from None
        return fut

    def _dispatch(self) -> None:
        loop = self._loop
        while True:
            items = loop.drain(0.2, 1024)
            if not items:
                if self._closed and loop.stats()["closed"] and self._finished():
                    return
                continue
            for seq, status, value, error, latency, fut in items:
                meta = getattr(fut, "meta", None)
                # A caller may cancel its future (a client that went away). Claiming the future
                # first closes that race; a cancelled one is skipped, since nobody waits for it.
                # Setting a result on it would raise and kill this thread, stalling every stream.
                if fut.set_running_or_notify_cancel():
                    if status == OK:
                        fut.set_result(value)
                    else:
                        fut.set_exception(_EXC[status](error or STATUS_NAMES[status], status, seq))
                if self._on_result is not None:
                    try:
                        self._on_result(Outcome(seq, status, value, error, latency, meta))
                    except Exception:  # a faulty callback must not stop delivery of later frames
                        pass

    def _finished(self) -> bool:
        s = self._loop.stats()
        return (s["queue_depth"] == 0 and s["in_flight"] == 0 and s["waiting_output"] == 0
                and s["reorder_pending"] == 0)

    def stats(self) -> dict[str, Any]:
        """Counters and latency percentiles (seconds, over the last LATENCY_WINDOW frames)."""
        return dict(self._loop.stats())

    def reset_latency(self) -> None:
        """Forget latency samples (e.g. after warm-up); frame counters are kept."""
        self._loop.reset_latency()

    def close(self, drain: bool = True, timeout: float | None = 30.0) -> None:
        """Stop accepting frames; with ``drain`` finish every queued frame, else cancel them.

        Every accepted frame's future is resolved when this returns (unless ``timeout`` seconds
        pass while waiting for the dispatcher).
        """
        with self._lock:
            self._closed = True
        self._loop.close(drain)
        if threading.current_thread() is not self._dispatcher:
            self._dispatcher.join(timeout)
        _live.discard(self)

    def __enter__(self) -> StreamLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(drain=True)


def run_grouped(frames: list, model_step: Callable[[Any], Any],
                observe: Callable[[np.ndarray], None] | None = None,
                frames_step: Callable[[np.ndarray], np.ndarray] | None = None
                ) -> list[np.ndarray]:
    """Run a model over ``(H, W, C)`` uint8/uint16 frames, grouped by shape and dtype.

    Frames of equal shape and dtype go through the model together as one ``(N, H, W, C)``
    batch, so a batch may mix sizes; outputs keep each frame's shape and dtype. With
    ``frames_step`` (``Backend.enhance_frames``: integer batch -> integer batch) the batch goes
    to it as it is; else through ``model_step`` (float ``(N, C, H, W)`` in [0, 1] -> same),
    with the conversions of ``same_fast.io.to_tensor``/``to_array``.
    ``observe`` (online adaptation) receives each group's integer batch after it is served.
    """
    from same_fast.io.convert import to_array, to_tensor

    out: list[Any] = [None] * len(frames)
    groups: dict[tuple, list[int]] = {}
    for i, f in enumerate(frames):
        groups.setdefault((f.shape, f.dtype.str), []).append(i)
    for idx in groups.values():
        batch = np.stack([frames[i] for i in idx])
        if frames_step is not None:
            y = frames_step(batch)
            if y.shape != batch.shape or y.dtype != batch.dtype:
                raise RuntimeError(f"frame step changed {batch.shape} {batch.dtype} -> "
                                   f"{y.shape} {y.dtype}")
        else:
            import torch

            with torch.inference_mode():
                x = to_tensor(batch)
                yt = model_step(x)
                if tuple(yt.shape) != tuple(x.shape):
                    raise RuntimeError(f"model step changed the shape {tuple(x.shape)} -> "
                                       f"{tuple(yt.shape)}")
                y = to_array(yt, batch.dtype)
        if observe is not None:
            observe(batch)
        for j, i in enumerate(idx):
            out[i] = y[j]
    return out


def tensor_step(model_step: Callable[[Any], Any]) -> Callable[[list], list]:
    """Wrap a model step on float ``(N, C, H, W)`` [0, 1] tensors into a frame step
    (see ``run_grouped``)."""

    def step(frames: list) -> list:
        return run_grouped(frames, model_step)

    return step
