"""The hand-off between serving and a server's adapter (thread or process): ``FrameInbox``.

Serving puts each batch's frames in and never waits; when the adapter falls behind, the oldest
unseen frames are dropped and counted. The adapter side takes them in chunks: ``chunk`` frames,
or whatever waited ``handoff_s`` since the first of them arrived, so it wakes a few times a
second beside the serving thread instead of after every batch.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

# How long a partial chunk waits for the rest before it is handed off anyway.
HANDOFF_S = 0.05


def served_frames(batch: np.ndarray | torch.Tensor) -> list[np.ndarray] | list[torch.Tensor]:
    """A served batch as its frames, copied: ``(N, H, W, C)`` uint8/uint16 frames (what
    ``ServedModel.frame_step`` observes) stay integer; ``(N, C, H, W)`` float [0, 1] tensors
    (library callers) stay float. Conversion to the adapter's float happens on its side."""
    if isinstance(batch, np.ndarray):
        return list(np.array(batch, copy=True))
    return [f.detach().clone() for f in batch]


class FrameInbox:
    """A bounded buffer of served frames, put by serving and taken in chunks by the adapter.

    capacity: frames held (the oldest unseen one goes when full); chunk: frames per hand-off
    (at most ``capacity``). ``cv`` is the condition both sides wait on; a caller may wait on it
    for its own signals too (``wake`` notifies).
    """

    def __init__(self, capacity: int, chunk: int, handoff_s: float = HANDOFF_S) -> None:
        self.frames: deque[Any] = deque(maxlen=max(1, int(capacity)))
        self.chunk = max(1, min(int(chunk), int(capacity)))
        self.handoff_s = handoff_s
        self.cv = threading.Condition()
        self.observed = 0
        self.skipped = 0

    def put(self, frames: list[Any]) -> None:
        """Queue frames (never waits for the adapter)."""
        with self.cv:
            first = not self.frames
            for f in frames:
                if len(self.frames) == self.frames.maxlen:
                    self.skipped += 1  # the adapter is behind: the oldest unseen frame goes
                self.frames.append(f)
                self.observed += 1
            # Wake the adapter for a chunk's first frame (it arms the hand-off timer) and when a
            # chunk is complete; frames in between only queue.
            if first or len(self.frames) >= self.chunk:
                self.cv.notify()

    def clear(self) -> None:
        with self.cv:
            self.frames.clear()

    def wake(self) -> None:
        """Wake a waiting ``take`` (after changing what its ``interrupt`` reads)."""
        with self.cv:
            self.cv.notify_all()

    def take(self, idle_s: float | None, interrupt: Callable[[], bool] = lambda: False
             ) -> list[Any]:
        """Wait for a chunk and take it: ``chunk`` frames, or fewer that waited ``handoff_s``.

        Returns [] when ``interrupt()`` (read under ``cv``) turns true, leaving the frames, or
        after ``idle_s`` seconds without any frame (None: wait until there are some).
        """
        with self.cv:
            deadline: float | None = None
            while True:
                if interrupt():
                    return []
                n = len(self.frames)
                now = time.monotonic()
                if n and deadline is None:
                    deadline = now + self.handoff_s
                if n >= self.chunk or (n and now >= deadline):
                    break
                timed_out = not self.cv.wait(deadline - now if n else idle_s)
                if timed_out and not self.frames and idle_s is not None:
                    return []
            out = list(self.frames)
            self.frames.clear()
            return out
