"""Classical enhancement baselines the evaluation compares against (no learning, no adaptation).

``clahe``: contrast-limited adaptive histogram equalisation (scikit-image) of the lightness
(CIE L* of Lab for colour, the intensity for grey), the usual non-learned fundus and ultrasound
enhancement.
"""
from __future__ import annotations

import numpy as np
import torch


def clahe(x01: torch.Tensor, clip_limit: float = 0.01, tiles: int = 8,
          fov: torch.Tensor | None = None) -> torch.Tensor:
    """CLAHE of each image of ``x01`` (N, C, H, W) float in [0, 1], C in {1, 3}; same shape and
    device out. ``tiles``: tiles per side; ``clip_limit``: scikit-image's normalised clip limit.
    ``fov`` (N, 1, H, W): the output is black outside it."""
    from skimage import color, exposure

    arr = x01.detach().to("cpu", torch.float64).clamp(0, 1).numpy()
    out = np.empty_like(arr)
    for i, img in enumerate(arr):
        k = (max(8, img.shape[1] // tiles), max(8, img.shape[2] // tiles))
        if img.shape[0] == 1:
            out[i, 0] = exposure.equalize_adapthist(img[0], kernel_size=k, clip_limit=clip_limit)
        else:
            lab = color.rgb2lab(np.moveaxis(img, 0, -1))
            lab[..., 0] = 100.0 * exposure.equalize_adapthist(lab[..., 0] / 100.0, kernel_size=k,
                                                              clip_limit=clip_limit)
            out[i] = np.moveaxis(np.clip(color.lab2rgb(lab), 0, 1), -1, 0)
    y = torch.from_numpy(out).to(device=x01.device, dtype=x01.dtype)
    if fov is not None:
        y = y * (fov > 0.5).to(y)
    return y
