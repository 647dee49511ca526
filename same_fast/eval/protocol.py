"""Evaluation protocols over pairs of images and over folders.

``paper`` (the SAME paper's numbers): both images converted to 8-bit, resized to 256x256
(bilinear, Pillow), both multiplied by the ground-truth FOV mask (resized nearest) when one is
given, then SSIM (7x7 uniform window, data_range 255, mean over channels) and PSNR (data_range
255) over the whole 256x256 image.

``native``: both images at their own resolution (they must match), converted to 8-bit; with a
mask, SSIM and PSNR are averaged over mask pixels only (SSIM: inside the border crop).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from same_fast.errors import InputError
from same_fast.eval.metrics import psnr, ssim
from same_fast.io import list_images, load, load_mask, pair_by_name

PROTOCOLS = ("paper", "native")
PAPER_SIZE = 256


@dataclass
class ImageScore:
    name: str
    ssim: float
    psnr: float


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` uint8/uint16 -> uint8 without alpha (uint16 scaled by 255/65535, rounded)."""
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.dtype == np.uint16:
        arr = np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(f"unsupported image dtype {arr.dtype}")
    return arr


def _resize(arr: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    resample = Image.NEAREST if nearest else Image.BILINEAR
    if arr.ndim == 3 and arr.shape[-1] == 1:
        return np.asarray(Image.fromarray(arr[..., 0]).resize((size, size), resample))[..., None]
    return np.asarray(Image.fromarray(arr).resize((size, size), resample))


def prepare(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None, protocol: str
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Apply a protocol's preprocessing; returns uint8 ``(H, W, C)`` images and a bool mask."""
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol '{protocol}' (use {' or '.join(PROTOCOLS)})")
    p, g = to_uint8(pred), to_uint8(gt)
    if p.shape[-1] != g.shape[-1]:
        raise InputError(f"prediction has {p.shape[-1]} channel(s), ground truth {g.shape[-1]}")
    if mask is not None and mask.shape != g.shape[:2]:
        raise InputError(f"mask is {mask.shape[1]}x{mask.shape[0]}, ground truth is "
                         f"{g.shape[1]}x{g.shape[0]}")
    if protocol == "native":
        if p.shape != g.shape:
            raise InputError(f"prediction is {p.shape[1]}x{p.shape[0]}, ground truth is "
                             f"{g.shape[1]}x{g.shape[0]} (the native protocol needs equal sizes)")
        return p, g, mask
    p, g = _resize(p, PAPER_SIZE), _resize(g, PAPER_SIZE)
    if mask is not None:
        m = _resize(mask.astype(np.uint8) * 255, PAPER_SIZE, nearest=True) > 127
        p = p * m[..., None].astype(np.uint8)
        g = g * m[..., None].astype(np.uint8)
        mask = m
    return p, g, mask


def score_pair(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
               protocol: str = "paper", name: str = "") -> ImageScore:
    """SSIM and PSNR of one prediction against its reference under ``protocol``."""
    p, g, m = prepare(pred, gt, mask, protocol)
    region = m if protocol == "native" else None  # paper: masked by multiplication, whole image
    return ImageScore(name, ssim(p, g, 255.0, "uniform", region), psnr(p, g, 255.0, region))


def _single(path: Path) -> np.ndarray:
    loaded = load(path)
    if loaded.frames.shape[0] != 1:
        raise InputError(f"{path}: has {loaded.frames.shape[0]} frames; eval takes single images")
    return loaded.frames[0]


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, mask_dir: str | Path | None = None,
                     protocol: str = "paper", progress: bool = False) -> dict[str, Any]:
    """Score every ground-truth image against the prediction of the same name.

    Returns ``{"protocol", "n", "ssim", "psnr", "per_image": [{"name", "ssim", "psnr"}]}``;
    an infinite PSNR (identical images) is reported as ``None`` in ``per_image`` and excluded
    from nothing: the mean is then ``None`` too, which is the honest answer.
    """
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol '{protocol}' (use {' or '.join(PROTOCOLS)})")
    gts = list_images(gt_dir)
    if not gts:
        raise InputError(f"{gt_dir}: no images")
    pairs = pair_by_name(gts, pred_dir, required=True)
    masks = {it.path: it.partner for it in pair_by_name(gts, mask_dir)} if mask_dir else {}
    from same_fast.progress import progress_bar

    iterator = progress_bar(pairs, progress, desc=f"eval ({protocol})", unit="img", leave=False)
    scores = []
    for item in iterator:
        gt = _single(item.path)
        mask = load_mask(masks[item.path], gt.shape[:2]) if masks else None
        scores.append(score_pair(_single(item.partner), gt, mask, protocol, item.name))
    ssims = [s.ssim for s in scores]
    psnrs = [s.psnr for s in scores]
    mean_psnr = float(np.mean(psnrs))
    return {
        "protocol": protocol,
        "n": len(scores),
        "ssim": float(np.mean(ssims)),
        "psnr": None if math.isinf(mean_psnr) else mean_psnr,
        "per_image": [_finite(asdict(s)) for s in scores],
    }


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}


def image_scores(pred: Any, clean: Any, fov: Any = None) -> list[dict[str, float]]:
    """Per image of a batch: the ``paper`` protocol's ``ssim``/``psnr`` and the ``native`` ones
    inside the FOV (``ssim_fov``/``psnr_fov``; the paper ones again without a FOV).

    ``pred``, ``clean``: ``(N, C, H, W)`` float tensors in [0, 1] (any device); ``fov``:
    ``(N, 1, H, W)`` {0, 1} or None.
    """
    from same_fast.io import to_array

    out = []
    for i in range(pred.shape[0]):
        m = None if fov is None else fov[i, 0].cpu().numpy() > 0.5
        p, g = to_array(pred[i].cpu()), to_array(clean[i].cpu())
        a = score_pair(p, g, m, "paper")
        b = score_pair(p, g, m, "native") if m is not None else a
        out.append({"ssim": a.ssim, "psnr": a.psnr, "ssim_fov": b.ssim, "psnr_fov": b.psnr})
    return out
