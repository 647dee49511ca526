"""No-reference measures inside the FOV (``eval.noref``) and the results figures
(``eval.figures``): what they respond to, and real PNGs with matplotlib."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from same_fast.eval.figures import curve_panels, image_grid
from same_fast.eval.noref import laplacian_variance, luminance, rms_contrast


def _disc(size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    fov = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size * 0.45) ** 2).float()[None, None]
    stripes = 0.5 + 0.2 * torch.sin(xx * 1.0)[None, None].float()
    return stripes.expand(1, 3, size, size) * fov, fov


def test_laplacian_variance_falls_with_blur_and_ignores_the_fov_rim():
    x, fov = _disc()
    blurred = torch.nn.functional.avg_pool2d(x, 5, 1, 2) * fov
    sharp, soft = laplacian_variance(x, fov), laplacian_variance(blurred, fov)
    assert sharp[0] > 3 * soft[0] > 0
    flat = 0.5 * fov.expand(1, 3, -1, -1)
    # a flat disc: only the rim has edges, and the eroded mask leaves them out
    assert laplacian_variance(flat, fov)[0] < 1e-10 < laplacian_variance(flat, None)[0]


def test_rms_contrast_is_the_luminance_spread_inside_the_fov():
    x, fov = _disc()
    c = rms_contrast(x, fov)
    assert c.shape == (1,) and 0.1 < float(c[0]) < 0.16  # 0.2 / sqrt(2) for a sine
    assert float(rms_contrast(x * 0.5, fov)[0]) == pytest.approx(float(c[0]) / 2, rel=1e-5)
    assert luminance(x).shape == (1, 1, 96, 96)
    assert torch.allclose(luminance(x[:, :1]), x[:, :1])


def test_image_grid_and_curves_write_labelled_pngs(tmp_path):
    x, _ = _disc()
    rows = [[x[0], (x[0] * 255).byte().numpy().transpose(1, 2, 0), x[0, :1]],
            [np.zeros((40, 80, 3)), np.ones((40, 80)), x[0]]]
    path = tmp_path / "grid.png"
    assert image_grid(path, rows, ["a", "b", "c"], ["row 1", "row 2"],
                      [["x"] * 3, ["y"] * 3], title="t")
    w, h = Image.open(path).size
    assert w > 300 and h > 200
    path = tmp_path / "curves.png"
    assert curve_panels(path, [{"ylabel": "SSIM", "curves": [{"x": [0, 1], "y": [0.5, 0.6],
                                                              "label": "fundus"}],
                                "hlines": [{"y": 0.55, "label": "source"}]},
                               {"ylabel": "acceptance", "ylim": (0, 1),
                                "curves": [{"x": [0, 1], "y": [0.2, 0.4], "label": "u"}]}],
                        "step")
    assert Image.open(path).size[0] > 600
