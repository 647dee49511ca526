"""Clinic shifts beyond the source presets, and the generic re-degradation of adaptation.

Two kinds of preset live here, kept apart on purpose (issue #21: no re-degradation may be the
generator of the shift it is judged on):

- ``generic-mix``: the student's re-degraded view in adaptation when nothing is known about the
  target: mild noise, blur, JPEG and tone, each with its own probability. Fixed before any
  target was looked at; it is no test shift's generator.
- ``select-noise-jpeg``: a selection shift (sensor noise saved as JPEG at an export quality),
  for choosing settings on DRIVE's training images; never reported. ``select-light-blur``
  (defocus and light from one side), the same for the light and blur estimates.
- Test shifts, fixed in advance (2026-12-06, before any adaptation result on them was seen) and
  never used as a re-degradation: ``shift-noise-jpeg`` (Poisson-Gaussian sensor noise, then JPEG
  at low quality), ``shift-haze-gamma`` (a smooth, spatially varying veil toward a warm white,
  then a darkening gamma), ``shift-blur-light`` (defocus blur, then a vignette of uneven light).

All take ``(N, C, H, W)`` float in [0, 1] and a generator, draw their parameters per image, scale
spatial ones from 512 px, and keep outside ``fov`` black, like the presets in ``presets.py``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from same_fast.degrade import ops
from same_fast.degrade.presets import OCT, Range, randn_from, scale_factor, uniform


def _gamma(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(0).pow(gamma.view(-1, 1, 1, 1))


@dataclass(frozen=True)
class GenericMix:
    """The default re-degradation of the student's view: each family with its probability.

    Gaussian noise (std ``noise_std``), blur (``blur_sigma`` px at 512), JPEG (``jpeg_quality``)
    and tone (gamma ``exp(U(-a, a))`` and contrast factor); mild on purpose, since the student
    learns to map the re-degraded view to the teacher's output on the original.
    """

    name: str = "generic-mix"
    p_noise: float = 0.6
    noise_std: Range = (0.005, 0.03)
    p_blur: float = 0.4
    blur_sigma: Range = (0.5, 2.0)
    p_jpeg: float = 0.4
    jpeg_quality: Range = (30.0, 80.0)
    p_tone: float = 0.5
    gamma_log: float = 0.2
    contrast: Range = (0.85, 1.15)
    reference_px: int = 512

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        n, d = x.shape[0], x.device
        use = {k: (uniform(g, n, (0, 1), d) < p).view(-1, 1, 1, 1)
               for k, p in (("tone", self.p_tone), ("blur", self.p_blur),
                            ("noise", self.p_noise), ("jpeg", self.p_jpeg))}
        gamma = torch.exp(uniform(g, n, (-self.gamma_log, self.gamma_log), d))
        contrast = uniform(g, n, self.contrast, d)
        sigma = uniform(g, n, self.blur_sigma, d) * scale_factor(x, self.reference_px)
        std = uniform(g, n, self.noise_std, d).view(-1, 1, 1, 1)
        quality = uniform(g, n, self.jpeg_quality, d)
        noise = randn_from(g, x)
        y = torch.where(use["tone"], ops.adjust_contrast(_gamma(x, gamma), contrast), x)
        y = torch.where(use["blur"], ops.blur(y, sigma), y).clamp(0, 1)
        y = torch.where(use["noise"], y + std * noise, y).clamp(0, 1)
        y = torch.where(use["jpeg"], ops.jpeg(y, quality), y)
        return ops.keep_fov(y.clamp(0, 1), fov)


@dataclass(frozen=True)
class NoiseJpeg:
    """Test shift: a dim sensor (Poisson-Gaussian noise) whose frames are saved as low-quality
    JPEG: ``y = jpeg(x + sqrt(shot x + read^2) n, quality)``."""

    name: str = "shift-noise-jpeg"
    shot: Range = (0.003, 0.006)
    read: Range = (0.015, 0.03)
    jpeg_quality: Range = (25.0, 45.0)

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        n, d = x.shape[0], x.device
        shot = uniform(g, n, self.shot, d).view(-1, 1, 1, 1)
        read = uniform(g, n, self.read, d).view(-1, 1, 1, 1)
        quality = uniform(g, n, self.jpeg_quality, d)
        y = (x + torch.sqrt(shot * x + read ** 2) * randn_from(g, x)).clamp(0, 1)
        y = ops.keep_fov(y, fov)
        return ops.keep_fov(ops.jpeg(y, quality), fov)


@dataclass(frozen=True)
class HazeGamma:
    """Test shift: a veil that thickens away from a random centre (``y = x (1 - a v) + a v c``
    with ``v`` a smooth ramp in [``floor``, 1] and ``c`` a warm white per channel), then a gamma
    that darkens the mid-tones."""

    name: str = "shift-haze-gamma"
    strength: Range = (0.25, 0.4)
    floor: float = 0.5
    center_offset: float = 0.25
    veil_colour: Range = (0.8, 1.0)
    gamma: Range = (1.2, 1.5)

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        d = x.device
        cy = (0.5 + uniform(g, n, (-self.center_offset, self.center_offset), d)) * h
        cx = (0.5 + uniform(g, n, (-self.center_offset, self.center_offset), d)) * w
        a = uniform(g, n, self.strength, d).view(-1, 1, 1, 1)
        colour = torch.stack([uniform(g, n, self.veil_colour, d) for _ in range(c)], 1).view(n, c, 1, 1)
        gamma = uniform(g, n, self.gamma, d)
        dist = ops.distance(h, w, cy, cx)
        v = dist / dist.amax((2, 3), keepdim=True).clamp_min(1e-6)
        v = self.floor + (1 - self.floor) * v
        y = x * (1 - a * v) + a * v * colour
        return ops.keep_fov(_gamma(ops.keep_fov(y, fov), gamma).clamp(0, 1), fov)


@dataclass(frozen=True)
class BlurLight:
    """Test shift: defocus (Gaussian blur of ``blur_sigma`` px at 512) and a vignette of uneven
    light, ``x (1 - s r^2)`` with ``r`` the distance from a random centre over the half-diagonal.
    """

    name: str = "shift-blur-light"
    blur_sigma: Range = (2.0, 4.0)
    vignette: Range = (0.3, 0.5)
    center_offset: float = 0.2
    reference_px: int = 512

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        d = x.device
        sigma = uniform(g, n, self.blur_sigma, d) * scale_factor(x, self.reference_px)
        cy = (0.5 + uniform(g, n, (-self.center_offset, self.center_offset), d)) * h
        cx = (0.5 + uniform(g, n, (-self.center_offset, self.center_offset), d)) * w
        s = uniform(g, n, self.vignette, d).view(-1, 1, 1, 1)
        r = ops.distance(h, w, cy, cx) / (0.5 * (h * h + w * w) ** 0.5)
        y = ops.blur(x, sigma) * (1 - s * r.clamp(0, 1) ** 2)
        return ops.keep_fov(y.clamp(0, 1), fov)


@dataclass(frozen=True)
class SelectNoiseJpeg:
    """Selection shift (DRIVE *training* images only, for choosing adaptation settings; never
    reported): ``sensor-noise``, then the frame saved as JPEG at a usual export quality. Added
    2026-12-06 to check the JPEG-aware re-degradation (``degrade.estimate``) before it was run
    on any test shift; its quality range lies above the test shift's on purpose."""

    name: str = "select-noise-jpeg"
    jpeg_quality: Range = (60.0, 85.0)

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        from same_fast.degrade.presets import SensorNoise

        y = SensorNoise().apply(x, g, fov)
        quality = uniform(g, x.shape[0], self.jpeg_quality, x.device)
        return ops.keep_fov(ops.jpeg(y, quality), fov)


@dataclass(frozen=True)
class SelectLightBlur:
    """Selection shift (DRIVE *training* images only, for choosing adaptation settings; never
    reported): a camera out of focus (a pillbox defocus kernel of radius ``defocus`` px at 512)
    lit from one side (``x (1 - s t)``, ``t`` a linear ramp from 0 to 1 across the frame in a
    random direction). Added 2026-12-06 to choose the light and blur estimates of
    ``degrade.estimate`` before they were run on any test shift; its kernel and its light field
    differ in form from the test shift ``shift-blur-light`` (Gaussian blur, radial vignette) on
    purpose."""

    name: str = "select-light-blur"
    defocus: Range = (1.5, 4.0)
    slope: Range = (0.25, 0.5)
    reference_px: int = 512

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        d = x.device
        radius = uniform(g, n, self.defocus, d) * scale_factor(x, self.reference_px)
        angle = uniform(g, n, (0.0, 2 * math.pi), d)
        s = uniform(g, n, self.slope, d).view(-1, 1, 1, 1)
        y = ops.pillbox_blur(x, radius)
        yy, xx = ops.grid(h, w, d)
        t = ((xx / w - 0.5) * angle.cos().view(-1, 1, 1, 1)
             + (yy / h - 0.5) * angle.sin().view(-1, 1, 1, 1))
        t = (t - t.amin((2, 3), keepdim=True)) / (t.amax((2, 3), keepdim=True)
                                                  - t.amin((2, 3), keepdim=True)).clamp_min(1e-6)
        return ops.keep_fov((y * (1 - s * t)).clamp(0, 1), fov)


# Selection shift for OCT (Kermany *selection* patients only; never reported): the ``oct``
# preset with fewer looks, coarser grain and a wider lateral blur than it draws, each range
# between the preset's and the test shift's of ``benchmarks/oct_adapt.py`` (added 2026-12-06
# to choose the OCT speckle view of ``degrade.estimate`` before it ran on any test scan).
SELECT_OCT_SPECKLE = dataclasses.replace(OCT(), name="select-oct-speckle", looks=(1.2, 2.5),
                                         grain_sigma=(0.9, 1.5), p_blur=1.0,
                                         lateral_sigma=(2.0, 4.0))

SHIFTS = (NoiseJpeg(), HazeGamma(), BlurLight())
SHIFT_PRESETS = {p.name: p for p in (GenericMix(), SelectNoiseJpeg(), SelectLightBlur(),
                                     SELECT_OCT_SPECKLE, *SHIFTS)}
