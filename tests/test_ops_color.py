"""same_fast.ops colour spaces agree with scikit-image (torch path), with gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2hsv, rgb2lab

from same_fast.errors import InputError
from same_fast.ops import rgb_to_hsv, rgb_to_lab


def images(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    # Edge cases: black, white, grey, ties between channels, tiny values under the sRGB knee.
    x[0, :, 0, 0] = 0.0
    x[0, :, 0, 1] = 1.0
    x[0, :, 0, 2] = 0.5
    x[0, 1, 1, 0] = x[0, 0, 1, 0]
    x[0, 2, 1, 1] = x[0, 1, 1, 1]
    x[0, :, 1, 2] = torch.tensor([0.01, 0.003, 0.02])
    return x


def skimage_apply(fn, x: torch.Tensor) -> np.ndarray:
    return np.stack([fn(im.permute(1, 2, 0).numpy()) for im in x]).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("shape", [(1, 3, 4), (3, 7, 5), (2, 16, 33)])
def test_match_skimage(shape: tuple[int, int, int]) -> None:
    x = images(*shape, seed=sum(shape))
    np.testing.assert_allclose(rgb_to_hsv(x).numpy(), skimage_apply(rgb2hsv, x), atol=1e-10)
    np.testing.assert_allclose(rgb_to_lab(x).numpy(), skimage_apply(rgb2lab, x), atol=1e-8)
    x32 = x.float()
    np.testing.assert_allclose(rgb_to_hsv(x32).numpy(), skimage_apply(rgb2hsv, x), atol=2e-5)
    np.testing.assert_allclose(rgb_to_lab(x32).numpy(), skimage_apply(rgb2lab, x), atol=2e-3)


def test_lab_is_differentiable() -> None:
    x = (torch.rand(1, 3, 4, 4, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: rgb_to_lab(t), (x,))


def test_rejects_bad_shapes() -> None:
    with pytest.raises(InputError):
        rgb_to_hsv(torch.rand(1, 1, 4, 4))
    with pytest.raises(InputError):
        rgb_to_lab(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
