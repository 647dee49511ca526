"""Adaptation views: random resize-crop and flips, and the optional re-degraded student view.

The reference resizes by 1.1-1.35x and crops back to the input size, with a vertical flip that
only fires together with the horizontal one (a bug); here the two flips are independent.
Teacher and student see the same geometric view (SPEC section 5, step 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """size: side of the square views (pixels); scale: zoom range (crop side =
    min(short side, size) / s, resized to size); hflip / vflip: independent flip probabilities.
    frame_fraction > 0: the crop side is that fraction of the short side instead (the paper's
    views cover about 80 % of the frame), resized to size. whole: the whole frame at its own
    scale, zero-padded to a square whose side is the batch's largest rounded up to
    ``multiple`` (resized only past ``max_whole``), for networks with whole-image context,
    whose summary of the frame a crop would change; ``size`` does not apply; flips still do.
    (Measured on the echo demo: whole frames resized to the view size cost ultrasound-lite
    0.145 SSIM; speckle seen at another scale than inference teaches the wrong texture.)"""

    size: int = 256
    scale: tuple[float, float] = (1.1, 1.35)
    hflip: float = 0.5
    vflip: float = 0.5
    frame_fraction: float = 0.0
    whole: bool = False
    multiple: int = 32
    max_whole: int = 1024


def _u(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


@dataclass(frozen=True)
class Window:
    """A crop box and flips, drawn once and applied to any tensors of the same image (an image
    and its mask): rows ``y0:y0+h``, columns ``x0:x0+w``, then the flips."""

    y0: int
    x0: int
    h: int
    w: int
    hflip: bool
    vflip: bool

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        """The window of ``t`` (..., H, W), flipped."""
        v = t[..., self.y0:self.y0 + self.h, self.x0:self.x0 + self.w]
        if self.hflip:
            v = v.flip(-1)
        if self.vflip:
            v = v.flip(-2)
        return v


def random_window(h: int, w: int, ch: int, cw: int, g: torch.Generator, hflip: float = 0.5,
                  vflip: float = 0.5, place: bool = True) -> Window:
    """A ``ch`` x ``cw`` box at a uniform position in an ``h`` x ``w`` image and independent
    flips with probabilities ``hflip`` / ``vflip``, drawn from the CPU generator ``g`` in that
    order (``place`` False: the box at the origin, only the flips drawn). The one random-view
    helper: adaptation views, picker training and the lab's segmenter patches crop with it."""
    y0 = int(torch.randint(0, h - ch + 1, (), generator=g)) if place else 0
    x0 = int(torch.randint(0, w - cw + 1, (), generator=g)) if place else 0
    return Window(y0, x0, ch, cw, _u(g) < hflip, _u(g) < vflip)


def random_views(images: list[torch.Tensor], config: AugmentConfig, g: torch.Generator,
                 fovs: list[torch.Tensor | None] | None = None, with_masks: bool = False
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One random view of each image, stacked: (N, C, size, size) float in [0, 1].

    images: (C, H, W) float tensors in [0, 1] (sizes may differ), on any one device.
    fovs: optional (1, H, W) masks; each view is multiplied by its cropped mask.
    with_masks: also return the views' field of view (N, 1, size, size) in {0, 1} (ones where
    an image has no mask; zero in the padding of whole-frame views).
    Parameters come from the CPU generator ``g`` (the same seed gives the same views anywhere).
    """
    if config.whole:
        return _whole_views(images, config, g, fovs, with_masks)
    out, masks = [], []
    for i, x in enumerate(images):
        _, h, w = x.shape
        s = config.scale[0] + (config.scale[1] - config.scale[0]) * _u(g)
        fov = fovs[i] if fovs is not None and fovs[i] is not None else None
        m = (fov if fov is not None else torch.ones(1, h, w, device=x.device))[None].float()
        if config.frame_fraction > 0:
            side = max(2, int(round(min(h, w) * config.frame_fraction)))
        else:
            # a patch at native scale zoomed by s (the reference's resize-then-crop); images
            # smaller than the view are zoomed whole
            side = max(2, int(round(min(h, w, config.size) / s)))
        win = random_window(x.shape[-2], x.shape[-1], side, side, g, config.hflip, config.vflip)
        mv = win.apply(m)
        v = win.apply(x[None]).float() * mv.to(x.device, torch.float32)
        big = v.shape[-1] > config.size
        v = F.interpolate(v, size=(config.size, config.size), mode="bilinear",
                          align_corners=False, antialias=big)
        out.append(v.clamp(0, 1))
        if with_masks:
            masks.append((F.interpolate(mv, size=(config.size, config.size), mode="nearest")
                          > 0.5).to(v.dtype))
    views = torch.cat(out)
    return (views, torch.cat(masks)) if with_masks else views


def _whole_views(images: list[torch.Tensor], config: AugmentConfig, g: torch.Generator,
                 fovs: list[torch.Tensor | None] | None, with_masks: bool
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Whole frames at their own scale, centred in zero-padded squares of one side, flipped."""
    k = max(1, config.multiple)
    side = max(max(x.shape[-2:]) for x in images)
    side = -(-side // k) * k
    out, masks = [], []
    for i, x in enumerate(images):
        _, h, w = x.shape
        fov = fovs[i] if fovs is not None and fovs[i] is not None else None
        m = (fov if fov is not None else torch.ones(1, h, w, device=x.device))[None].float()
        top, left = (side - h) // 2, (side - w) // 2
        pad = (left, side - w - left, top, side - h - top)
        v = F.pad(x[None].float() * m.to(x.device), pad)
        mv = F.pad(m, pad)
        if _u(g) < config.hflip:
            v, mv = v.flip(-1), mv.flip(-1)
        if _u(g) < config.vflip:
            v, mv = v.flip(-2), mv.flip(-2)
        out.append(v.clamp(0, 1))
        masks.append(mv)
    views, vmasks = torch.cat(out), torch.cat(masks)
    cap = max(k, config.max_whole // k * k)
    if side > cap:  # bound the cost: frames this large are brought down to the cap
        views = F.interpolate(views, size=(cap, cap), mode="bilinear", align_corners=False,
                              antialias=True)
        vmasks = (F.interpolate(vmasks, size=(cap, cap), mode="nearest") > 0.5).float()
    return (views, vmasks.to(views.dtype)) if with_masks else views


def redegrade(x01: torch.Tensor, preset: Any, strength: float, g: torch.Generator
              ) -> torch.Tensor:
    """A mild re-degradation of a view for the student (the SRTTA-style option of SPEC section 5).

    Returns x + strength * (degrade(x, preset) - x): the preset's corruption scaled (below 1
    milder, above 1 stronger: fundus's automatic view runs at 1.5, ``AdaptConfig.view_strength``),
    so the student learns to undo a little more than the clinic's own degradation. Background
    (pixels that are black in every channel) stays black.
    """
    from same_fast.degrade import degrade

    fov = (x01.amax(1, keepdim=True) > 0.02).to(x01.dtype)
    d = degrade(x01, preset, generator=g, fov=fov)
    return (x01 + strength * (d - x01)).clamp(0, 1)
