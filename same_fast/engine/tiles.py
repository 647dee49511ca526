"""A pixel budget for enhancement: frames larger than the budget are enhanced in tiles.

The enhancer's activations grow with the pixels it sees at once (``fundus-lite``: about 200
bytes per pixel on the CPU, so an 81 Mpx photo whole would need ~16 GB), and so do the float
copies of a frame. ``enhance_in_tiles`` cuts integer frames ``(F, H, W, C)`` over the budget
into overlapping tiles, hands each tile (still integer) to the enhancing function and stitches
the tile centres back, so that neither the network nor a float copy ever holds more than the
budget. Tiles start on multiples of the network's ``multiple`` so their down-sampling grid is
the whole frame's; the overlap (``margin``) hides the tile borders. A network that reaches
past the margin (whole-image ``context=True``, or the ~530 px light field of ``field=True``)
sees each tile's own context, so a tiled frame can differ slightly from an untiled one.
``batch_within`` sizes batches of whole frames to the same budget.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from same_fast.errors import InputError

#: Default pixels one forward pass may see (2**23 = 8.4 Mpx: an HRF photo whole, ~1.7 GB of
#: fundus-lite activations on the CPU).
DEFAULT_MAX_PIXELS = 2**23
#: Overlap around each tile, in pixels, rounded up to the network's multiple.
DEFAULT_MARGIN = 64

EnhanceFn = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


def batch_within(batch: int, height: int, width: int, max_pixels: int) -> int:
    """The largest batch <= ``batch`` whose frames together stay within ``max_pixels`` (>= 1)."""
    return max(1, min(batch, max_pixels // max(1, height * width)))


def enhance_in_tiles(frames: np.ndarray, fov: np.ndarray | None, fn: EnhanceFn,
                     max_pixels: int = DEFAULT_MAX_PIXELS, multiple: int = 1,
                     margin: int = DEFAULT_MARGIN) -> np.ndarray:
    """``fn(frames, fov)`` for ``(F, H, W, C)`` frames, in tiles when ``H * W > max_pixels``.

    ``fn`` maps integer frames (and an optional ``(H, W)`` bool mask) to frames of the same
    shape and dtype. A budget that leaves no room for a tile and its margin is an ``InputError``.
    """
    h, w = frames.shape[1:3]
    if h * w <= max_pixels:
        return fn(frames, fov)
    multiple = max(1, int(multiple))
    margin = multiple * math.ceil(max(0, margin) / multiple)
    side = (math.isqrt(max_pixels) - 2 * margin) // multiple * multiple
    if side < multiple:
        raise InputError(f"a pixel budget of {max_pixels} leaves no room for tiles of this "
                         f"network (margin {margin} px, multiple {multiple}); raise --tile-pixels")
    out = np.empty_like(frames)
    for y0 in range(0, h, side):
        for x0 in range(0, w, side):
            y1, x1 = min(y0 + side, h), min(x0 + side, w)
            ya, xa = max(0, y0 - margin), max(0, x0 - margin)
            yb, xb = min(h, y1 + margin), min(w, x1 + margin)
            r = fn(frames[:, ya:yb, xa:xb], None if fov is None else fov[ya:yb, xa:xb])
            out[:, y0:y1, x0:x1] = r[:, y0 - ya:y1 - ya, x0 - xa:x1 - xa]
    return out
