"""A bounded three-stage pipeline over numbered items: read in a pool, model in order, write in a pool.

Decoding, the model and encoding overlap: a reader pool decodes the next items while the calling
thread runs the model on the current group, and a writer pool encodes finished items. Memory is
bounded by a budget in pixels: no new read starts while the items read and not yet written hold
``budget`` pixels or more (so at most ``budget`` plus the reads in flight, at most ``2 x workers``
of them, are held at once). The model stage sees items strictly in input order (an adapting
model learns from them in that order), may take several consecutive items as one group (same
``key``, at most ``group_frames`` frames), and a group that fails is retried item by item so that
a failure is charged to its own item only. Results come back in input order.

``workers == 0`` runs everything in the calling thread, one item after another (the reference).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class StageTimes:
    """Seconds spent in each stage, summed over items (stages overlap, so they exceed the wall)."""

    read: float = 0.0
    model: float = 0.0
    write: float = 0.0
    peak_pixels: int = 0  # most pixels held between read and written at any moment
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            setattr(self, stage, getattr(self, stage) + seconds)

    def as_dict(self) -> dict[str, float]:
        return {"read_s": round(self.read, 3), "model_s": round(self.model, 3),
                "write_s": round(self.write, 3), "peak_pixels": self.peak_pixels}


@dataclass
class Stages(Generic[T]):
    """What the pipeline runs.

    ``read(i) -> item``; ``pixels(item)`` (its share of the memory budget); ``key(item)``: items
    with equal non-None keys may share one model call; ``frames(item)``; ``model(items) ->
    outputs`` (one per item, called in input order from the calling thread); ``write(item,
    output) -> record``; ``fail(i, exc)`` turns any stage's exception into a failure record
    (it may re-raise to stop the run).
    """

    read: Callable[[int], T]
    model: Callable[[Sequence[T]], Sequence[Any]]
    write: Callable[[T, Any], Any]
    fail: Callable[[int, BaseException], Any]
    pixels: Callable[[T], int]
    key: Callable[[T], Hashable | None] = lambda item: None
    frames: Callable[[T], int] = lambda item: 1


class _Gauge:
    """Pixels held between a finished read and a finished write; waits for it to go down."""

    def __init__(self, times: StageTimes) -> None:
        self.held = 0
        self.times = times
        self.cond = threading.Condition()

    def add(self, n: int) -> None:
        with self.cond:
            self.held += n
            self.times.peak_pixels = max(self.times.peak_pixels, self.held)
            self.cond.notify_all()

    def wait_below(self, budget: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.held < budget, timeout=1.0)


def run(n: int, stages: Stages[T], workers: int, budget: int, group_frames: int = 1,
        done: Callable[[], None] | None = None, times: StageTimes | None = None) -> list[Any]:
    """Run items ``0..n-1`` through ``stages``; returns each item's record or failure, in order.

    ``done()`` is called once per finished item (progress bars), from any thread.
    """
    times = times or StageTimes()
    results: list[Any] = [None] * n
    if workers <= 0:
        for i in range(n):
            results[i] = _one(i, stages, times)
            if done:
                done()
        return results
    return _Run(n, stages, workers, budget, group_frames, done, times, results).go()


def _timed(times: StageTimes, stage: str, fn: Callable[..., Any], *a: Any) -> Any:
    t0 = time.perf_counter()
    try:
        return fn(*a)
    finally:
        times.add(stage, time.perf_counter() - t0)


def _one(i: int, stages: Stages[T], times: StageTimes) -> Any:
    try:
        item = _timed(times, "read", stages.read, i)
        out = _timed(times, "model", stages.model, [item])[0]
        return _timed(times, "write", stages.write, item, out)
    except Exception as e:
        return stages.fail(i, e)


class _Run(Generic[T]):
    def __init__(self, n: int, stages: Stages[T], workers: int, budget: int, group_frames: int,
                 done: Callable[[], None] | None, times: StageTimes, results: list[Any]) -> None:
        self.n, self.stages, self.workers, self.budget = n, stages, workers, max(1, budget)
        self.group_frames, self.done, self.times, self.results = group_frames, done, times, results
        self.gauge = _Gauge(times)
        self.pending: deque[tuple[int, Future]] = deque()
        self.next = 0

    def go(self) -> list[Any]:
        with ThreadPoolExecutor(self.workers, "same-fast-read") as self.readers, \
                ThreadPoolExecutor(self.workers, "same-fast-write") as self.writers:
            writes: list[Future] = []
            while self.pending or self.next < self.n:
                self._top_up()
                if not self.pending:  # over budget: a write finishing frees room
                    self.gauge.wait_below(self.budget)
                    continue
                group = self._group()
                if not group:
                    continue
                writes += self._model(group)
            for w in writes:
                w.result()
        return self.results

    def _read(self, i: int) -> T:
        item = _timed(self.times, "read", self.stages.read, i)
        self.gauge.add(self.stages.pixels(item))
        return item

    def _top_up(self) -> None:
        while (self.next < self.n and len(self.pending) < 2 * self.workers
               and self.gauge.held < self.budget):
            self.pending.append((self.next, self.readers.submit(self._read, self.next)))
            self.next += 1

    def _take(self) -> tuple[int, T] | None:
        """The next item in order, or None when its read failed (recorded as failed)."""
        i, fut = self.pending.popleft()
        try:
            return i, fut.result()
        except Exception as e:
            self._finish(i, self.stages.fail, i, e)
            return None

    def _group(self) -> list[tuple[int, T]]:
        first = self._take()
        if first is None:
            return []
        group = [first]
        key = self.stages.key(first[1])
        frames = self.stages.frames(first[1])
        while key is not None and self.pending and frames < self.group_frames:
            self._top_up()
            i, fut = self.pending[0]
            try:
                item = fut.result()
            except Exception:
                break  # taken (and recorded) as the next group
            f = self.stages.frames(item)
            if self.stages.key(item) != key or frames + f > self.group_frames:
                break
            self.pending.popleft()
            group.append((i, item))
            frames += f
        return group

    def _model(self, group: list[tuple[int, T]]) -> list[Future]:
        items = [it for _, it in group]
        try:
            outs = _timed(self.times, "model", self.stages.model, items)
        except Exception as e:
            if len(group) == 1:
                i, it = group[0]
                self._release(it)
                self._finish(i, self.stages.fail, i, e)
                return []
            out: list[Future] = []
            for g in group:  # charge the failure to the item(s) that cause it
                out += self._model([g])
            return out
        return [self.writers.submit(self._write, i, it, y)
                for (i, it), y in zip(group, outs, strict=True)]

    def _write(self, i: int, item: T, y: Any) -> None:
        try:
            rec = _timed(self.times, "write", self.stages.write, item, y)
            self._finish(i, lambda r: r, rec)
        except Exception as e:
            self._finish(i, self.stages.fail, i, e)
        finally:
            self._release(item)

    def _release(self, item: T) -> None:
        self.gauge.add(-self.stages.pixels(item))

    def _finish(self, i: int, make: Callable[..., Any], *args: Any) -> None:
        self.results[i] = make(*args)
        if self.done:
            self.done()
