"""same_fast.ops SSIM: the reference is pinned to scikit-image and pytorch-msssim; the fast path
is pinned to the reference in value and gradient (float64 and float32)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_msssim import ssim as msssim_ssim
from skimage.metrics import structural_similarity

from same_fast.errors import InputError
from same_fast.ops import SSIMLoss, l1_ssim_loss, ssim, ssim_loss, ssim_reference

SHAPES = [(1, 1, 11, 11), (1, 3, 16, 16), (2, 3, 23, 17), (5, 1, 12, 31), (3, 2, 40, 13)]


def pair(shape: tuple, seed: int, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype)
    y = (x + 0.2 * torch.randn(shape, generator=g, dtype=dtype)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("shape", SHAPES[1:4])
def test_reference_matches_skimage_and_pytorch_msssim(shape: tuple) -> None:
    x, y = pair(shape, 1)
    ours = ssim_reference(x, y, data_range=1.0)
    sk = [structural_similarity(a.numpy(), b.numpy(), channel_axis=0, gaussian_weights=True,
                                sigma=1.5, use_sample_covariance=False, data_range=1.0)
          for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(ours.numpy(), sk, rtol=0, atol=1e-10)
    pm = msssim_ssim(x, y, data_range=1.0, size_average=False)
    torch.testing.assert_close(ours, pm, rtol=0, atol=1e-6)  # its window is float32
    # data_range scales the constants exactly as in the peers.
    pm255 = msssim_ssim(x * 255, y * 255, data_range=255.0, size_average=False)
    torch.testing.assert_close(ssim_reference(x * 255, y * 255, data_range=255.0), pm255,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_fast_path_value_and_gradients_float64(shape: tuple) -> None:
    x, y = pair(shape, 2)
    x.requires_grad_()
    y.requires_grad_()
    weights = torch.rand(shape[0], dtype=torch.float64)
    fast = ssim(x, y, backend="torch")
    ref = ssim_reference(x, y)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    g_fast = torch.autograd.grad((fast * weights).sum(), (x, y))
    g_ref = torch.autograd.grad((ref * weights).sum(), (x, y))
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # Gradient with respect to one input only (the usual loss case), each side.
    (gx,) = torch.autograd.grad((ssim(x, y.detach()) * weights).sum(), (x,))
    torch.testing.assert_close(gx, g_ref[0], rtol=0, atol=1e-12)
    (gy,) = torch.autograd.grad((ssim(x.detach(), y) * weights).sum(), (y,))
    torch.testing.assert_close(gy, g_ref[1], rtol=0, atol=1e-12)


def test_fast_path_float32_and_window_options() -> None:
    x, y = pair((2, 3, 33, 29), 3, torch.float32)
    x.requires_grad_()
    for window, sigma in ((11, 1.5), (7, 1.0), (3, 0.8)):
        fast = ssim(x, y, window=window, sigma=sigma)
        ref = ssim_reference(x, y, window=window, sigma=sigma)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
        ga = torch.autograd.grad(fast.sum(), x)[0]
        gb = torch.autograd.grad(ref.sum(), x)[0]
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def test_gradcheck_fast_path() -> None:
    x, y = pair((1, 1, 11, 13), 4)  # tiny: gradcheck perturbs every input element twice
    assert torch.autograd.gradcheck(lambda a: ssim(a, y), (x.requires_grad_(),))


def test_identical_images_and_losses() -> None:
    x, y = pair((2, 3, 20, 20), 5, torch.float32)
    torch.testing.assert_close(ssim(x, x), torch.ones(2), rtol=0, atol=1e-6)
    torch.testing.assert_close(ssim_loss(x, y), 1 - ssim_reference(x, y).mean())
    assert ssim_loss(x, y, reduction="none").shape == (2,)
    l1 = (x - y).abs().mean((1, 2, 3))
    expect = 0.3 * l1 + 0.7 * (1 - ssim_reference(x, y))
    torch.testing.assert_close(l1_ssim_loss(x, y, w_l1=0.3, w_ssim=0.7, reduction="none"), expect)
    torch.testing.assert_close(SSIMLoss()(x, y), ssim_loss(x, y))
    torch.testing.assert_close(SSIMLoss(w_l1=0.3, w_ssim=0.7)(x, y), expect.mean())
    xr = x.clone().requires_grad_()
    l1_ssim_loss(xr, y).backward()
    assert torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0


def test_errors() -> None:
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(InputError):
        ssim(x, torch.rand(1, 1, 16, 15))
    with pytest.raises(InputError):
        ssim(torch.rand(1, 1, 10, 16), torch.rand(1, 1, 10, 16))
    with pytest.raises(InputError):
        ssim(x[0], x[0])
    with pytest.raises(InputError):
        ssim(x, x, window=4)
    with pytest.raises(InputError):
        ssim_loss(x, x, reduction="sum")


def test_fast_path_tiles_agree(monkeypatch) -> None:
    """Tiny tiles force several plane chunks and row bands (ragged last band) in the filter."""
    import sys

    mod = sys.modules["same_fast.ops.ssim"]
    monkeypatch.setattr(mod, "_TILE_BYTES", 4096)
    x, y = pair((2, 3, 37, 29), 6)
    x.requires_grad_()
    got = ssim(x, y)
    ref = ssim_reference(x, y)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), x)[0],
                               torch.autograd.grad(ref.sum(), x)[0], rtol=0, atol=1e-12)
