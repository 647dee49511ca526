"""pytest-benchmark: the C++ stream loop against a pure-Python queue doing the same job.

Run: ``pytest benchmarks/bench_stream.py --benchmark-only`` (not part of the test suite).
Both move 1,000 frames through a bounded queue, a worker thread that batches up to 8 frames and
calls the same step, and futures resolved in submission order. The step is trivial so the
numbers are the machinery's own overhead per frame. The end-to-end comparison with a model,
adaptation and frame rates is ``same-fast bench --suite stream``.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import pytest

from same_fast.stream import StreamLoop

N = 1000


def _step(frames):
    return frames


class PyLoop:
    """The peer: queue.Queue + one worker thread + Futures (order kept by a single worker)."""

    def __init__(self, capacity: int = 64, max_batch: int = 8) -> None:
        self.q: queue.Queue = queue.Queue(capacity)
        self.max_batch = max_batch
        self.t = threading.Thread(target=self._work, daemon=True)
        self.t.start()

    def _work(self) -> None:
        while True:
            first = self.q.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self.q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.q.put(None)
                    break
                batch.append(item)
            outs = _step([f for f, _ in batch])
            for (_, fut), out in zip(batch, outs, strict=True):
                fut.set_result(out)

    def submit(self, frame) -> Future:
        fut: Future = Future()
        self.q.put((frame, fut))
        return fut

    def close(self) -> None:
        self.q.put(None)
        self.t.join()


def _through(loop) -> None:
    futs = [loop.submit(i) for i in range(N)]
    assert futs[-1].result(30) == N - 1


@pytest.mark.benchmark(group="stream-loop-1000-frames")
def test_cpp_stream_loop(benchmark):
    loop = StreamLoop(_step, capacity=64, max_batch=8, max_delay_ms=0)
    benchmark(_through, loop)
    loop.close()


@pytest.mark.benchmark(group="stream-loop-1000-frames")
def test_python_queue_loop(benchmark):
    loop = PyLoop(capacity=64, max_batch=8)
    benchmark(_through, loop)
    loop.close()
