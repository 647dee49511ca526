"""Full-reference and binary-map metrics on numpy arrays (float64 inside).

Images are ``(H, W)`` or ``(H, W, C)``; SSIM of a colour image is the mean over channels. The
SSIM here is scikit-image's ``structural_similarity`` definition, written out so that it can also
be restricted to a mask:
- ``window="uniform"``: 7x7 box, sample covariance (N/(N-1)), as scikit-image's default;
- ``window="gaussian"``: Gaussian sigma 1.5 truncated at 3.5 sigma (11x11), population
  covariance, as Wang et al. 2004 and ``gaussian_weights=True``.
Both filter with reflect padding and average the SSIM map after cropping (win-1)/2 pixels from
each border; with a mask, the average is over mask pixels inside that crop.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from same_fast.errors import InputError

K1, K2 = 0.01, 0.03


def _as_float(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim not in (2, 3):
        raise InputError(f"{name}: expected (H, W) or (H, W, C), got shape {a.shape}")
    return a.astype(np.float64, copy=False)


def _check_pair(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape != y.shape:
        raise InputError(f"images differ in shape: {x.shape} vs {y.shape}")


def _mask2d(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != shape[:2]:
        raise InputError(f"mask shape {m.shape} does not match image {shape[:2]}")
    m = m.astype(bool)
    if not m.any():
        raise InputError("mask is empty")
    return m


def psnr(x: np.ndarray, y: np.ndarray, data_range: float = 255.0,
         mask: np.ndarray | None = None) -> float:
    """PSNR in dB: ``10 log10(R^2 / MSE)``; MSE over all channels (of mask pixels when given).

    Identical images give ``inf``, as scikit-image does.
    """
    xf, yf = _as_float(x, "x"), _as_float(y, "y")
    _check_pair(xf, yf)
    m = _mask2d(mask, xf.shape)
    err = (xf - yf) ** 2
    mse = float(np.mean(err if m is None else err[m], dtype=np.float64))
    if mse == 0:
        return math.inf
    return float(10 * np.log10(data_range**2 / mse))


def _filter(window: str):
    if window == "uniform":
        return (lambda a: ndimage.uniform_filter(a, size=7)), 7, 49 / 48
    if window == "gaussian":
        # scikit-image's win_size for sigma 1.5, truncate 3.5: 2 * int(3.5 * 1.5 + 0.5) + 1 = 11
        return (lambda a: ndimage.gaussian_filter(a, sigma=1.5, truncate=3.5, mode="reflect")), 11, 1.0
    raise InputError(f"unknown SSIM window '{window}' (use 'uniform' or 'gaussian')")


def ssim_map(x: np.ndarray, y: np.ndarray, data_range: float, window: str = "uniform") -> np.ndarray:
    """The SSIM map of one channel ``(H, W)`` (no border crop)."""
    filt, _, cov_norm = _filter(window)
    ux, uy = filt(x), filt(y)
    uxx, uyy, uxy = filt(x * x), filt(y * y), filt(x * y)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(x: np.ndarray, y: np.ndarray, data_range: float = 255.0, window: str = "uniform",
         mask: np.ndarray | None = None) -> float:
    """Mean SSIM (over channels for colour), scikit-image's definition; see the module doc."""
    xf, yf = _as_float(x, "x"), _as_float(y, "y")
    _check_pair(xf, yf)
    _, win, _ = _filter(window)
    if min(xf.shape[:2]) < win:
        raise InputError(f"images of {xf.shape[1]}x{xf.shape[0]} are smaller than the "
                         f"{win}x{win} SSIM window")
    m = _mask2d(mask, xf.shape)
    pad = (win - 1) // 2
    if xf.ndim == 2:
        xf, yf = xf[..., None], yf[..., None]
    crop = (slice(pad, xf.shape[0] - pad), slice(pad, xf.shape[1] - pad))
    if m is not None:
        mc = m[crop]
        if not mc.any():
            raise InputError("mask has no pixels away from the image border")
    values = []
    for c in range(xf.shape[2]):
        s = ssim_map(xf[..., c], yf[..., c], data_range, window)[crop]
        values.append(s.mean(dtype=np.float64) if m is None else s[mc].mean(dtype=np.float64))
    return float(np.mean(values))


def _binary(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None) -> tuple[int, int, int, int]:
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if p.shape != g.shape:
        raise InputError(f"binary maps differ in shape: {p.shape} vs {g.shape}")
    if mask is not None:
        m = np.asarray(mask).astype(bool)
        if m.shape != p.shape:
            raise InputError(f"mask shape {m.shape} does not match maps {p.shape}")
        p, g = p[m], g[m]
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    tn = int(p.size - tp - fp - fn)
    return tp, fp, fn, tn


def dice(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """``2TP / (2TP + FP + FN)``; 1.0 when both maps are empty."""
    tp, fp, fn, _ = _binary(pred, gt, mask)
    d = 2 * tp + fp + fn
    return 1.0 if d == 0 else 2 * tp / d


def iou(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """``TP / (TP + FP + FN)``; 1.0 when both maps are empty."""
    tp, fp, fn, _ = _binary(pred, gt, mask)
    d = tp + fp + fn
    return 1.0 if d == 0 else tp / d


def f1(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Harmonic mean of precision and recall (equal to Dice for binary maps)."""
    tp, fp, fn, _ = _binary(pred, gt, mask)
    if tp + fp + fn == 0:
        return 1.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def cohen_kappa(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Cohen's kappa of two binary raters over pixels: ``(po - pe) / (1 - pe)``."""
    tp, fp, fn, tn = _binary(pred, gt, mask)
    n = tp + fp + fn + tn
    if n == 0:
        raise InputError("cohen_kappa: no pixels")
    po = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    if pe == 1.0:
        return 1.0 if po == 1.0 else 0.0
    return (po - pe) / (1 - pe)


def binary_scores(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Dice, IoU, F1 and kappa of one pair of binary maps (pixels inside ``mask`` when given)."""
    return {"dice": dice(pred, gt, mask), "iou": iou(pred, gt, mask), "f1": f1(pred, gt, mask),
            "kappa": cohen_kappa(pred, gt, mask)}
