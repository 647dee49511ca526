"""Synthetic degradations (SPEC section 2): named, seeded, batched tensor presets on CPU or GPU.

``degrade(x01, preset, generator, fov)`` takes ``(N, C, H, W)`` float in [0, 1] and returns a
degraded batch of the same shape, device and range; every parameter is drawn per image from
``generator`` (pass one on the tensors' device for speed; a CPU generator also works with CUDA
tensors) and outside ``fov`` stays black. Presets: ``fundus-shen2020``, ``fundus-cataract``,
``gray`` (OCT and ultrasound illumination, blur, noise), ``ultrasound-speckle`` and
``sensor-noise`` (Poisson-Gaussian camera noise, outside the SPEC's families), ``oct``
(retinal OCT B-scans: speckle, blur, shadows, signal loss, motion, JPEG) and
``fundus-local`` (Shen et al.'s families without the global colour factors).
``generic-mix`` (the default re-degradation of adaptation) and three test shifts fixed in advance
(``shift-noise-jpeg``, ``shift-haze-gamma``, ``shift-blur-light``) live in ``shifts.py``.
``degrade_with_tone`` also returns the tone-kept target: the clean image through the same
global colour factors only (the training target of an enhancer that keeps the input's tone). Their ranges
are dataclass fields: ``dataclasses.replace(PRESETS["gray"], p_blur=0.0)`` holds a family out.
"""
from __future__ import annotations

import torch

from same_fast.degrade.presets import (
    OCT,
    PRESETS,
    Cataract,
    Gray,
    Preset,
    SensorNoise,
    Shen2020,
    UltrasoundSpeckle,
)
from same_fast.degrade.shifts import SHIFT_PRESETS, SHIFTS
from same_fast.errors import InputError

# the clinic shifts and the generic re-degradation (shifts.py) join the source presets' registry
PRESETS.update(SHIFT_PRESETS)

__all__ = ["OCT", "PRESETS", "SHIFTS", "Cataract", "Gray", "Preset", "SensorNoise", "Shen2020",
           "UltrasoundSpeckle", "degrade", "degrade_with_tone", "get_preset"]


def get_preset(preset: str | Preset) -> Preset:
    """A preset by name (or the preset itself); unknown names list the known ones."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise InputError(f"unknown degradation preset '{preset}' "
                             f"(choose from {', '.join(sorted(PRESETS))})")
        return PRESETS[preset]
    if not hasattr(preset, "apply"):
        raise InputError(f"not a degradation preset: {preset!r}")
    return preset


def _check(x01: torch.Tensor, fov: torch.Tensor | None) -> None:
    if x01.dim() != 4 or not x01.is_floating_point():
        raise InputError(f"degrade expects float (N, C, H, W), got {x01.dtype} {tuple(x01.shape)}")
    if fov is not None:
        m = fov if fov.dim() == 4 else fov.unsqueeze(1)
        if m.shape[0] != x01.shape[0] or m.shape[-2:] != x01.shape[-2:]:
            raise InputError(f"FOV mask shape {tuple(fov.shape)} does not fit {tuple(x01.shape)}")


def degrade(x01: torch.Tensor, preset: str | Preset, generator: torch.Generator | None = None,
            fov: torch.Tensor | None = None) -> torch.Tensor:
    """Degrade ``(N, C, H, W)`` float in [0, 1] with ``preset``; same shape, range and device.

    ``fov``: optional ``(N, 1, H, W)`` or ``(N, H, W)`` mask; outside it the result is black.
    Deterministic for a given generator state (same seed, same device -> same output).
    """
    p = get_preset(preset)
    _check(x01, fov)
    with torch.no_grad():
        return p.apply(x01.clamp(0, 1), generator, fov)


def degrade_with_tone(x01: torch.Tensor, preset: str | Preset,
                      generator: torch.Generator | None = None,
                      fov: torch.Tensor | None = None, keep_blur: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(degraded, tone)``: ``degrade``'s output (the same draws) and the clean image through
    the degradation's global colour factors alone. Presets without global colour factors that
    an enhancer should keep (every preset but the fundus ones) return the clean image as tone.
    ``keep_blur`` (fundus presets): the tone keeps the sample's blur as well.
    """
    p = get_preset(preset)
    if keep_blur and not hasattr(p, "apply_with_tone"):
        raise InputError(f"keep_blur: preset '{p.name}' has no tone to keep the blur in")
    if not hasattr(p, "apply_with_tone"):
        y = degrade(x01, p, generator, fov)
        x = x01.clamp(0, 1)
        if fov is not None:
            x = x * (fov if fov.dim() == 4 else fov.unsqueeze(1)).to(x.dtype)
        return y, x
    _check(x01, fov)
    with torch.no_grad():
        return p.apply_with_tone(x01.clamp(0, 1), generator, fov,
                                 **({"keep_blur": True} if keep_blur else {}))
