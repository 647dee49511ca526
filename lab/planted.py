"""Implausible pseudo-labels planted on purpose, and how well a picker tells them from real ones.

The negatives are a teacher's outputs on heavily corrupted inputs (noise-flooded,
patch-scrambled, washed out); the positives its outputs on the real degraded images.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve of scores where ``pos`` should rank above ``neg`` (ties = 1/2)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))



def planted(x01: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Heavily corrupted inputs whose teacher outputs are implausible pseudo-labels."""
    from same_fast.train.picker import gaussian_blur

    n, c, h, w = x01.shape
    noise = (x01 + 0.35 * torch.randn(x01.shape, generator=g)).clamp(0, 1)
    p = 16
    tiles = x01[..., :h // p * p, :w // p * p].unfold(2, p, p).unfold(3, p, p)
    th, tw = tiles.shape[2], tiles.shape[3]
    flat = tiles.reshape(n, c, th * tw, p, p)
    perm = torch.randperm(th * tw, generator=g)
    scr = flat[:, :, perm].reshape(n, c, th, tw, p, p).permute(0, 1, 2, 4, 3, 5)
    scrambled = x01.clone()
    scrambled[..., :th * p, :tw * p] = scr.reshape(n, c, th * p, tw * p)
    washed = (0.3 * gaussian_blur(x01, 8.0 * h / 256) + 0.7 * 0.8).clamp(0, 1)
    return {"noise": noise, "scramble": scrambled, "washout": washed}


def picker_separation(model: nn.Module, picker: Any, degraded: torch.Tensor, seed: int,
                      teacher: tuple[torch.Tensor, torch.Tensor] | None = None,
                      ungradable: list[int] | None = None) -> dict[str, Any]:
    """How well ``picker`` tells the teacher's real pseudo-labels from implausible ones.

    The positives are ``model``'s outputs on ``degraded`` (N, C, H, W) in [0, 1] (``teacher``:
    those outputs, when already computed); the negatives its outputs on the three planted
    corruptions of the same images (``planted``, seeded by ``seed``). Returns ``auroc`` per
    family, over all (``all``) and for each assessor alone (``iqa_only``, ``isd_only``),
    ``accept_planted``, the picker's acceptance of each family, and ``accept_real``, its
    acceptance of the real pseudo-labels.
    ``ungradable``: indices of images that are themselves beyond rescue (``drive-noise-mixed``):
    their real pseudo-labels count as a negative family (``ungradable``) instead of positives,
    and ``accept_real`` covers the usable ones.
    """
    y_t, s_t = teacher if teacher is not None else teacher_outputs(model, degraded)
    bad = sorted(set(ungradable or []))
    good = [i for i in range(len(degraded)) if i not in bad]
    real = picker.scores(y_t[good], s_t[good])
    fams = planted(degraded[good], torch.Generator().manual_seed(seed))
    pos = real["plausibility"].numpy()
    res: dict[str, Any] = {"auroc": {}, "accept_planted": {},
                           "accept_real": float(picker.weights_from_scores(real).mean())}
    outs = {fam: teacher_outputs(model, xin) for fam, xin in fams.items()}
    if bad:
        outs["ungradable"] = (y_t[bad], s_t[bad])
    negs = []
    for fam, (yp, sp) in outs.items():
        sc = picker.scores(yp, sp)
        negs.append(sc["plausibility"].numpy())
        res["auroc"][fam] = auroc(pos, negs[-1])
        res["accept_planted"][fam] = float(picker.weights_from_scores(sc).mean())
    res["auroc"]["all"] = auroc(pos, np.concatenate(negs))
    old = picker.config
    try:
        for part in ("iqa", "isd"):
            picker.config = dataclasses.replace(old, use_iqa=part == "iqa", use_isd=part == "isd")
            solo_pos = picker.scores(y_t[good], s_t[good])["plausibility"].numpy()
            solo_neg = np.concatenate([picker.scores(*o)["plausibility"].numpy()
                                       for o in outs.values()])
            res["auroc"][f"{part}_only"] = auroc(solo_pos, solo_neg)
    finally:
        picker.config = old
    return res


@torch.no_grad()
def teacher_outputs(model: nn.Module, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s image and structure outputs (in [-1, 1]) on ``x01`` (N, C, H, W) in [0, 1]."""
    from same_fast.nn import pad_to_multiple

    model.eval()
    xp, (h, w) = pad_to_multiple(x01 * 2 - 1, int(getattr(model, "multiple", 1)))
    y, s = model(xp)
    return y[..., :h, :w], s[..., :h, :w]

