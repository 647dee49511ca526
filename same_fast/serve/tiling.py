"""A per-batch pixel budget: frames go to the model in groups of at most ``budget`` pixels, and a
frame larger than the budget is enhanced in overlapping tiles.

The model's memory grows with the pixels of one call (fundus-lite on the CPU: ~0.28 GB per
megapixel, so one 4000x4000 frame alone took ~4.5 GB); the budget bounds it whatever the frame
size. A tile is the frame's window around its core with ``margin`` pixels of real context on
each side (windows at the border shift inward, so every tile of a frame has one shape and tiles
batch together); only the core of each enhanced tile is kept. A model whose output at a pixel
depends on more than ``margin`` pixels around it (a whole-image context block, a deep receptive
field) differs slightly from a whole-frame pass near core edges.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

FramesStep = Callable[[list[np.ndarray]], list[np.ndarray]]


def run_budgeted(frames: list[np.ndarray], step: FramesStep, budget: int,
                 margin: int = 64) -> list[np.ndarray]:
    """``step`` over ``frames`` (``(H, W, C)`` arrays) in calls of at most ``budget`` pixels;
    outputs in input order, same shapes and dtypes."""
    out: list[np.ndarray | None] = [None] * len(frames)
    group: list[int] = []
    pixels = 0

    def flush() -> None:
        nonlocal pixels
        if group:
            for i, y in zip(group, step([frames[i] for i in group]), strict=True):
                out[i] = y
            group.clear()
            pixels = 0

    for i, f in enumerate(frames):
        px = f.shape[0] * f.shape[1]
        if px > budget:
            out[i] = run_tiled(f, step, budget, margin)
            continue
        if pixels + px > budget:
            flush()
        group.append(i)
        pixels += px
    flush()
    return out  # type: ignore[return-value]


def tile_windows(height: int, width: int, budget: int, margin: int
                 ) -> tuple[tuple[int, int], tuple[int, int], list[tuple[int, int, int, int]]]:
    """Window shape ``(wh, ww)`` (``wh * ww <= budget``), core shape, and every tile's
    ``(window_y, window_x, core_y, core_x)``; cores tile the frame exactly."""
    side = max(1, math.isqrt(budget))
    wh = min(height, side)
    ww = min(width, max(1, budget // wh))
    m = min(margin, max(0, (min(wh, ww) - 1) // 4))  # a core of at least half the window
    core_h = wh if wh == height else wh - 2 * m
    core_w = ww if ww == width else ww - 2 * m
    tiles = []
    for cy in range(0, height, core_h):
        wy = min(max(cy - m, 0), height - wh)
        for cx in range(0, width, core_w):
            wx = min(max(cx - m, 0), width - ww)
            tiles.append((wy, wx, cy, cx))
    return (wh, ww), (core_h, core_w), tiles


def run_tiled(frame: np.ndarray, step: FramesStep, budget: int, margin: int = 64) -> np.ndarray:
    """Enhance one ``(H, W, C)`` frame in overlapping tiles of at most ``budget`` pixels."""
    h, w = frame.shape[:2]
    (wh, ww), (core_h, core_w), tiles = tile_windows(h, w, budget, margin)
    out = np.empty_like(frame)
    per_call = max(1, budget // (wh * ww))
    for chunk in _chunks(tiles, per_call):
        ys = step([np.ascontiguousarray(frame[wy:wy + wh, wx:wx + ww]) for wy, wx, _, _ in chunk])
        for (wy, wx, cy, cx), y in zip(chunk, ys, strict=True):
            ch, cw = min(core_h, h - cy), min(core_w, w - cx)
            out[cy:cy + ch, cx:cx + cw] = y[cy - wy:cy - wy + ch, cx - wx:cx - wx + cw]
    return out


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
