"""A pixel budget for one forward pass: large batches split, large frames enhanced in tiles.

The enhancer's activations grow with the pixels it sees at once (``fundus-lite``: about 200
bytes per pixel on the CPU, so an 81 Mpx photo would need ~16 GB). ``budgeted`` wraps any step
(a backend's ``enhance``, the torch model, an online adapter) so that no call sees more than
``max_pixels`` pixels: a batch is split into smaller batches, and a single frame over the
budget is cut into overlapping tiles whose centres are stitched back. Tiles start on multiples
of the network's ``multiple`` so their down-sampling grid is the whole frame's; the overlap
(``margin``) hides the tile borders. A network with whole-image context (``context=True``)
sees each tile's own context, so a tiled frame can differ slightly from an untiled one.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from same_fast.errors import InputError

Step = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]

#: Default pixels one forward pass may see (2**23 = 8.4 Mpx: an HRF photo whole, ~1.7 GB of
#: fundus-lite activations on the CPU).
DEFAULT_MAX_PIXELS = 2**23
#: Overlap around each tile, in pixels, rounded up to the network's multiple.
DEFAULT_MARGIN = 64


def budgeted(step: Step, max_pixels: int = DEFAULT_MAX_PIXELS, multiple: int = 1,
             margin: int = DEFAULT_MARGIN) -> Step:
    """``step`` that never sees more than ``max_pixels`` pixels (N x H x W) in one call."""
    multiple = max(1, int(multiple))
    margin = multiple * math.ceil(max(0, margin) / multiple)
    side = (math.isqrt(max_pixels) - 2 * margin) // multiple * multiple
    if side < multiple:
        raise InputError(f"a pixel budget of {max_pixels} leaves no room for tiles of this "
                         f"network (margin {margin} px, multiple {multiple}); raise it")

    def run(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n, _, h, w = t.shape
        if n * h * w <= max_pixels:
            return step(t, mask)
        per = max(1, max_pixels // (h * w))
        if n > 1:
            return torch.cat([run(t[i:i + per], None if mask is None else mask[i:i + per])
                              for i in range(0, n, per)])
        return _tiled(step, t, mask, side, margin)

    return run


def _tiled(step: Step, t: torch.Tensor, mask: torch.Tensor | None, side: int, margin: int
           ) -> torch.Tensor:
    """One frame ``(1, C, H, W)`` in tiles of ``side`` with ``margin`` of context around each."""
    h, w = t.shape[-2:]
    out: torch.Tensor | None = None
    for y0 in range(0, h, side):
        for x0 in range(0, w, side):
            y1, x1 = min(y0 + side, h), min(x0 + side, w)
            ya, xa = max(0, y0 - margin), max(0, x0 - margin)
            yb, xb = min(h, y1 + margin), min(w, x1 + margin)
            m = None if mask is None else mask[..., ya:yb, xa:xb]
            r = step(t[..., ya:yb, xa:xb], m)
            if out is None:
                out = r.new_empty((*r.shape[:2], h, w))
            out[..., y0:y1, x0:x1] = r[..., y0 - ya:y1 - ya, x0 - xa:x1 - xa]
    assert out is not None
    return out
