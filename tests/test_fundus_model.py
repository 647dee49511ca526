"""The shipped fundus model keeps good images as they are and its card says what it is
(issue #20). Runs without the shared data folder: scikit-image's CC0 retina is the photograph."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from same_fast.eval import score_pair
from same_fast.models import card, load_model
from same_fast.nn import enhance
from same_fast.train.source import estimate_fov


def _retina(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    from skimage import data

    x = torch.from_numpy(data.retina()).permute(2, 0, 1)[None].float() / 255
    x = (F.interpolate(x, size=(side, side), mode="area") * 255).round() / 255
    fov = estimate_fov(x[0])[None].float()
    return x * fov, fov


def _u8(t: torch.Tensor) -> np.ndarray:
    return (t[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def test_fundus_lite_leaves_a_clean_photograph_nearly_unchanged():
    """Identity: a clean photograph through fundus-lite keeps SSIM >= 0.98 against itself
    (paper protocol), at the sizes users send, and its global colour stays the input's."""
    model, _ = load_model("fundus-lite")
    for side in (512, 1024):
        x, fov = _retina(side)
        with torch.no_grad():
            y = enhance(model, x, fov)
        s = score_pair(_u8(y), _u8(x), fov[0, 0].numpy() > 0.5, "paper")
        assert s.ssim >= 0.98, (side, s.ssim)
        m = fov[0, 0] > 0.5
        shift = (y[0][:, m].mean(1) - x[0][:, m].mean(1)).abs().max()
        assert shift < 4 / 255, (side, shift)  # no repainting toward a training palette


def test_every_shipped_weight_has_a_card():
    from same_fast.models import WEIGHTS_DIR

    for w in sorted(WEIGHTS_DIR.glob("*.safetensors")):
        text = card(w.stem)
        assert text.startswith(f"# {w.stem}"), w.stem
        assert "Not for diagnostic use" in text or "not for diagnostic use" in text, w.stem
