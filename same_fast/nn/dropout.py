"""Dropout with a faster CPU mask.

``torch.nn.Dropout`` on the CPU draws one Mersenne-Twister number per element (its
``bernoulli_``); in a ``lite`` adaptation step (teacher and student both in train mode, four
dropout stages each) that was 12 % of the step. Here the CPU mask comes from 64-bit random
words cut into four 16-bit lanes, each kept when it is at or above ``p`` quantised to 1/65536
(``p = 0.1`` keeps with probability 0.899994 instead of 0.9): 2.5x faster for the same
semantics (zero with probability p, else scaled by 1 / (1 - p); identity in eval mode; the
draws come from torch's global generator, so ``torch.manual_seed`` reproduces them).

On other devices and while ``torch.compile`` traces, it is ``F.dropout`` (GPU Philox and
inductor's generated RNG are already fast).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

_LANES = 65536


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool keep-mask of ``shape`` on the CPU: True with probability ``1 - round(p * 65536) / 65536``."""
    n = 1
    for s in shape:
        n *= int(s)
    words = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64,
                          generator=generator)
    lanes = words.view(torch.int16)[:n].view(shape)
    return lanes >= int(round(p * _LANES)) - _LANES // 2


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout(p)`` (not in place) with the fast CPU mask."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return F.dropout(x, self.p, True)
        # One float mask with the scale folded in: forward and backward are one multiply each
        # (half the time of a torch.where on both passes).
        m = dropout_mask(x.shape, self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * m

    def extra_repr(self) -> str:
        return f"p={self.p}"
