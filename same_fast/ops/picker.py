"""Pseudo-label picker scoring: per-sample reductions to a 0/1 weight vector, on the device.

Inputs for N samples (SPEC section 4):
- ``structure``: the teacher's structure probabilities, (N, ...) in [0, 1];
- ``recon``: the irregular-structure detector's reconstruction of it, same shape, in [0, 1];
- ``mu``, ``logvar``: the detector's latent Gaussian, (N, D) each (optional);
- ``iqa_logits``: the image-quality assessor's logits, (N, K) (optional).
Per sample:
- ``recon_error`` = mean squared error between ``structure`` and ``recon``;
- ``kl`` = mean over the D latent dims of KL(N(mu, exp(logvar)) || N(0, 1));
- ``score`` = ``recon_error + kl_weight * kl`` (the ISD score; lower is more plausible);
- ``entropy`` = mean binary entropy of ``structure`` in bits (a diagnostic);
- ``p_good`` = softmax(iqa_logits)[good_class];
- ``weight`` = 1 when (no ISD threshold or score <= isd_threshold) and (no IQA logits, or
  p_good > iqa_threshold and good_class is the arg-max), else 0.
Everything stays on the device: no host round trip and no boolean indexing.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from same_fast.errors import InputError
from same_fast.ops._backend import resolve

_LN2 = math.log(2.0)
_EPS = 1e-7  # clamps probabilities away from 0 and 1 inside the entropy's logs


class PickerScores(NamedTuple):
    """Per-sample results, each (N,) float32 on the inputs' device."""

    weights: torch.Tensor
    score: torch.Tensor
    recon_error: torch.Tensor
    kl: torch.Tensor
    entropy: torch.Tensor
    p_good: torch.Tensor


def picker_weights(structure: torch.Tensor, recon: torch.Tensor,
                   iqa_logits: torch.Tensor | None = None, mu: torch.Tensor | None = None,
                   logvar: torch.Tensor | None = None, *, isd_threshold: float | None = None,
                   iqa_threshold: float = 0.8, kl_weight: float = 1.0, good_class: int = 0,
                   backend: str | None = None) -> PickerScores:
    """Score a batch and return its weights (see the module doc for every formula).

    The Triton path reduces everything in one kernel launch (one program per sample).
    """
    n = structure.shape[0]
    if recon.shape != structure.shape:
        raise InputError(f"picker: structure {tuple(structure.shape)} and reconstruction "
                         f"{tuple(recon.shape)} differ in shape")
    if (mu is None) != (logvar is None):
        raise InputError("picker: give both mu and logvar, or neither")
    if mu is not None and (mu.shape != logvar.shape or mu.dim() != 2 or mu.shape[0] != n):
        raise InputError(f"picker: mu and logvar must both be (N, D) with N={n}")
    if iqa_logits is not None:
        if iqa_logits.dim() != 2 or iqa_logits.shape[0] != n:
            raise InputError(f"picker: iqa_logits must be (N, K) with N={n}, got "
                             f"{tuple(iqa_logits.shape)}")
        if not 0 <= good_class < iqa_logits.shape[1]:
            raise InputError(f"picker: good_class {good_class} is not one of "
                             f"{iqa_logits.shape[1]} IQA classes")
    thr = math.inf if isd_threshold is None else float(isd_threshold)
    if resolve(backend, structure) == "triton":
        from same_fast.kernels import picker as k

        return PickerScores(*k.picker_scores(structure, recon, iqa_logits, mu, logvar, thr,
                                             float(iqa_threshold), float(kl_weight),
                                             int(good_class)))
    return _picker_torch(structure, recon, iqa_logits, mu, logvar, thr, iqa_threshold,
                         kl_weight, good_class)


def _picker_torch(structure: torch.Tensor, recon: torch.Tensor, iqa_logits: torch.Tensor | None,
                  mu: torch.Tensor | None, logvar: torch.Tensor | None, thr: float,
                  iqa_threshold: float, kl_weight: float, good_class: int) -> PickerScores:
    n = structure.shape[0]
    s = structure.reshape(n, -1).float()
    r = recon.reshape(n, -1).float()
    recon_error = (s - r).square().mean(1)
    p = s.clamp(_EPS, 1.0 - _EPS)
    entropy = -(p * torch.log(p) + (1.0 - p) * torch.log1p(-p)).mean(1) / _LN2
    if mu is not None:
        mu, logvar = mu.float(), logvar.float()
        kl = (-0.5 * (1.0 + logvar - mu.square() - logvar.exp())).mean(1)
    else:
        kl = torch.zeros_like(recon_error)
    score = recon_error + kl_weight * kl
    accept = score <= thr
    if iqa_logits is not None:
        probs = F.softmax(iqa_logits.float(), dim=1)
        p_good = probs[:, good_class]
        accept = accept & (p_good > iqa_threshold) & (probs.argmax(1) == good_class)
    else:
        p_good = torch.ones_like(recon_error)
    return PickerScores(accept.float(), score, recon_error, kl, entropy, p_good)
