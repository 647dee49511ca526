"""Pseudo-label picker scoring: per-sample reductions to a weight vector, on the device.

Inputs for N samples (SPEC section 4):
- ``structure``: the teacher's structure probabilities, (N, ...) in [0, 1];
- ``recon``: the irregular-structure detector's reconstruction of it, same shape, in [0, 1];
- ``mu``, ``logvar``: the detector's latent Gaussian, (N, D) each (optional);
- ``iqa_logits``: the image-quality assessor's logits, (N, K) (optional).

Per sample (one reference semantics; the torch path and the Triton kernel both implement it):
- ``recon_error``, by ``recon_error=``:
  ``"mse"``: mean over elements of (structure - recon)^2;
  ``"bernoulli_kl"``: mean over elements of KL(Bernoulli(x) || Bernoulli(p)) =
  x log(x / p) + (1 - x) log((1 - x) / (1 - p)), with x = structure and p = recon both clamped
  to [1e-6, 1 - 1e-6] (``StructureVAE.score``'s reconstruction error);
- ``kl`` = mean over the D latent dims of KL(N(mu, exp(logvar)) || N(0, 1)) =
  0.5 (mu^2 + exp(logvar) - 1 - logvar); 0 without mu/logvar;
- ``score`` = ``recon_error + kl_weight * kl`` (the ISD score; lower is more plausible);
- ``entropy`` = mean binary entropy of ``structure`` in bits, clamped to [1e-7, 1 - 1e-7]
  (a diagnostic);
- ``p_good`` = softmax(iqa_logits)[good_class]; ``good_top`` = 1 where good_class is the arg-max
  (the first maximal index wins a tie, as ``torch.argmax``); both 1 without logits.

The decision uses two gates: the ISD gate is on when ``use_isd`` and ``isd_threshold`` is given,
the IQA gate when ``use_iqa`` and ``iqa_logits`` are given.
- ``weights``, hard (``soft=False``): 1.0 when every gate that is on accepts, else 0.0.
  ISD accepts ``score <= isd_threshold`` (``isd_compare="<="``) or ``score < isd_threshold``
  (``"<"``, the picker's rule); IQA accepts ``p_good > iqa_threshold`` and ``good_top``.
- ``weights``, soft: the product over the gates that are on of
  ISD ``sigmoid((isd_threshold - score) / (t * isd_threshold))`` and
  IQA ``sigmoid((p_good - iqa_threshold) / (t * iqa_threshold))``, t = max(temperature, 1e-6)
  (``good_top`` is not used); 1.0 when no gate is on.
- ``plausibility`` = the minimum over the gates that are on of ``p_good / iqa_threshold`` and
  ``isd_threshold / max(score, 1e-8)``; 1.0 when no gate is on. Higher = more acceptable; a
  continuous ranking (AUROC), not a decision.
Everything stays on the device: no host round trip and no boolean indexing.
:func:`picker_decision` is the decision stage alone, from per-sample scores already computed.
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
_KL_EPS = 1e-6  # clamps both Bernoulli parameters of the reconstruction KL (StructureVAE.score)
RECON_ERRORS = ("mse", "bernoulli_kl")
ISD_COMPARES = ("<=", "<")


class PickerScores(NamedTuple):
    """Per-sample results, each (N,) float32 on the inputs' device."""

    weights: torch.Tensor
    score: torch.Tensor
    recon_error: torch.Tensor
    kl: torch.Tensor
    entropy: torch.Tensor
    p_good: torch.Tensor
    good_top: torch.Tensor
    plausibility: torch.Tensor


def picker_weights(structure: torch.Tensor, recon: torch.Tensor,
                   iqa_logits: torch.Tensor | None = None, mu: torch.Tensor | None = None,
                   logvar: torch.Tensor | None = None, *, isd_threshold: float | None = None,
                   iqa_threshold: float = 0.8, kl_weight: float = 1.0, good_class: int = 0,
                   recon_error: str = "mse", isd_compare: str = "<=", soft: bool = False,
                   temperature: float = 0.05, use_iqa: bool = True, use_isd: bool = True,
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
    if recon_error not in RECON_ERRORS:
        raise InputError(f"picker: recon_error must be one of {', '.join(RECON_ERRORS)}, got "
                         f"{recon_error!r}")
    if isd_compare not in ISD_COMPARES:
        raise InputError(f"picker: isd_compare must be '<=' or '<', got {isd_compare!r}")
    isd_gate = bool(use_isd) and isd_threshold is not None
    iqa_gate = bool(use_iqa) and iqa_logits is not None
    isd_thr = float(isd_threshold) if isd_gate else 0.0
    if resolve(backend, structure) == "triton":
        from same_fast.kernels import picker as k

        t = max(float(temperature), 1e-6)
        return PickerScores(*k.picker_scores(
            structure, recon, iqa_logits, mu, logvar, kl_weight=float(kl_weight),
            good=int(good_class), bernoulli=recon_error == "bernoulli_kl",
            isd_gate=isd_gate, isd_thr=isd_thr, isd_width=t * isd_thr,
            strict=isd_compare == "<", iqa_gate=iqa_gate, iqa_thr=float(iqa_threshold),
            iqa_width=t * float(iqa_threshold), soft=bool(soft)))
    return _picker_torch(structure, recon, iqa_logits, mu, logvar, isd_gate, isd_thr,
                         float(iqa_threshold), iqa_gate, float(kl_weight), int(good_class),
                         recon_error, isd_compare, bool(soft), float(temperature))


def picker_decision(score: torch.Tensor, p_good: torch.Tensor, good_top: torch.Tensor, *,
                    isd_threshold: float | None = None, iqa_threshold: float = 0.8,
                    isd_compare: str = "<=", soft: bool = False, temperature: float = 0.05,
                    use_iqa: bool = True, use_isd: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The decision stage of :func:`picker_weights` alone: ``(weights, plausibility)``, (N,) each.

    From per-sample ``score``, ``p_good`` and ``good_top`` (N,) float, as ``picker_weights``
    returns them; the IQA gate is on when ``use_iqa`` (the scores are taken to come with logits).
    Torch only: it is O(N) elementwise work, and the fused kernel does the same inline.
    """
    if isd_compare not in ISD_COMPARES:
        raise InputError(f"picker: isd_compare must be '<=' or '<', got {isd_compare!r}")
    isd_gate = bool(use_isd) and isd_threshold is not None
    return _decide(score, p_good, good_top, isd_gate,
                   float(isd_threshold) if isd_gate else 0.0, float(iqa_threshold),
                   bool(use_iqa), isd_compare, bool(soft), float(temperature))


def _decide(score: torch.Tensor, p_good: torch.Tensor, good_top: torch.Tensor, isd_gate: bool,
            isd_thr: float, iqa_thr: float, iqa_gate: bool, isd_compare: str, soft: bool,
            temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    # Written term for term as Picker's original rule (same float operations in the same order),
    # so the shipped pickers' calibrated thresholds keep giving the same weights.
    w = torch.ones_like(score)
    parts = []
    if iqa_gate:
        if soft:
            w = w * torch.sigmoid((p_good - iqa_thr) / (max(temperature, 1e-6) * iqa_thr))
        else:
            w = w * (p_good > iqa_thr).float() * good_top
        parts.append(p_good / iqa_thr)
    if isd_gate:
        if soft:
            w = w * torch.sigmoid((isd_thr - score) / (max(temperature, 1e-6) * isd_thr))
        else:
            ok = score < isd_thr if isd_compare == "<" else score <= isd_thr
            w = w * ok.float()
        parts.append(isd_thr / score.clamp_min(1e-8))
    plaus = torch.stack(parts, 0).amin(0) if parts else torch.ones_like(score)
    return w, plaus


def _picker_torch(structure: torch.Tensor, recon: torch.Tensor, iqa_logits: torch.Tensor | None,
                  mu: torch.Tensor | None, logvar: torch.Tensor | None, isd_gate: bool,
                  isd_thr: float, iqa_thr: float, iqa_gate: bool, kl_weight: float,
                  good_class: int, recon_error: str, isd_compare: str, soft: bool,
                  temperature: float) -> PickerScores:
    n = structure.shape[0]
    s = structure.reshape(n, -1).float()
    r = recon.reshape(n, -1).float()
    if recon_error == "bernoulli_kl":
        x = s.clamp(_KL_EPS, 1 - _KL_EPS)
        p = r.clamp(_KL_EPS, 1 - _KL_EPS)
        err = (x * (x / p).log() + (1 - x) * ((1 - x) / (1 - p)).log()).mean(1)
    else:
        err = (s - r).square().mean(1)
    pe = s.clamp(_EPS, 1.0 - _EPS)
    entropy = -(pe * torch.log(pe) + (1.0 - pe) * torch.log1p(-pe)).mean(1) / _LN2
    if mu is not None:
        mu, logvar = mu.float(), logvar.float()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean(1)
    else:
        kl = torch.zeros_like(err)
    score = err + kl_weight * kl
    if iqa_logits is not None:
        probs = F.softmax(iqa_logits.float(), dim=1)
        p_good = probs[:, good_class]
        good_top = (probs.argmax(1) == good_class).float()
    else:
        p_good, good_top = torch.ones_like(err), torch.ones_like(err)
    w, plaus = _decide(score, p_good, good_top, isd_gate, isd_thr, iqa_thr, iqa_gate,
                       isd_compare, soft, temperature)
    return PickerScores(w, score, err, kl, entropy, p_good, good_top, plaus)
