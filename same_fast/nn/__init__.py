"""Networks: the two-decoder enhancer (``SAMENet``) and its inference helper ``enhance``.

The adaptation engineer's IQA and structure VAE live beside it (``iqa.py``, ``isd.py``).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from same_fast.errors import InputError
from same_fast.nn.samenet import PRESETS, SAMENet, count_parameters

__all__ = ["PRESETS", "SAMENet", "count_parameters", "enhance", "pad_to_multiple"]


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect"
                    ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``(N, C, H, W)`` at the bottom/right so H and W divide by ``multiple``.

    Returns the padded tensor and the original ``(H, W)``. Reflect padding (replicate when the
    image is smaller than the pad) keeps the border statistics the network saw in training.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        # reflect needs pad < size; fall back to replicate for tiny inputs
        m = mode if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=m)
    return x, (h, w)


@torch.no_grad()
def enhance(model: torch.nn.Module, x01: torch.Tensor, fov: torch.Tensor | None = None,
            batch_size: int = 0) -> torch.Tensor:
    """Enhance a batch with the image decoder only (no structure decoder, no gradients).

    Args:
        model: a SAMENet (or any module with the same forward and ``.multiple``); it is put in
            eval mode (dropout off) and left there.
        x01: ``(N, C, H, W)`` float in [0, 1] on the model's device; any H, W.
        fov: optional field-of-view mask ``(N, 1, H, W)`` or ``(N, H, W)`` (bool or {0,1}); the
            output is black outside it ((y + 1) * m - 1 in [-1, 1] space).
        batch_size: run the network on at most this many images at a time (0 = all at once),
            to bound memory on large batches.

    Returns ``(N, C, H, W)`` float in [0, 1], same device and size as ``x01``.
    """
    if x01.dim() != 4:
        raise InputError(f"enhance expects (N, C, H, W), got shape {tuple(x01.shape)}")
    if 0 < batch_size < x01.shape[0]:
        return torch.cat([enhance(model, x01[i:i + batch_size],
                                  None if fov is None else fov[i:i + batch_size])
                          for i in range(0, x01.shape[0], batch_size)])
    model.eval()
    multiple = int(getattr(model, "multiple", 1))
    p = next(model.parameters(), None)
    x = x01.to(p.dtype) if p is not None and x01.is_floating_point() else x01.float()
    xp, (h, w) = pad_to_multiple(x * 2.0 - 1.0, multiple)
    try:
        y, _ = model(xp, structure=False)
    except TypeError:  # a stand-in module without the structure switch
        y, _ = model(xp)
    y = y[..., :h, :w]
    if fov is not None:
        m = fov.to(device=y.device, dtype=y.dtype)
        if m.dim() == 3:
            m = m[:, None]
        if m.shape[-2:] != (h, w):
            raise InputError(f"FOV mask size {tuple(m.shape[-2:])} != image size {(h, w)}")
        y = (y + 1.0) * (m > 0.5).to(y.dtype) - 1.0
    return ((y + 1.0) * 0.5).clamp_(0.0, 1.0)
