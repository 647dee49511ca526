"""same_fast.eval against scikit-image (to 1e-6) and against hand-counted binary scores."""
from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from same_fast import io
from same_fast.errors import InputError
from same_fast.eval import binary_scores, evaluate_folders, psnr, score_pair, ssim
from same_fast.eval.protocol import prepare


def _degrade(img: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = img.astype(np.int32) + rng.integers(-25, 26, size=img.shape)
    return np.clip(noisy * 0.9 + 10, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("window", ["uniform", "gaussian"])
@pytest.mark.parametrize("shape", [(31, 45), (64, 64, 3), (101, 77, 1)])
def test_ssim_and_psnr_match_skimage(window, shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, size=shape).astype(np.uint8)
    b = _degrade(a, 1)
    kw = dict(data_range=255, channel_axis=-1 if len(shape) == 3 else None)
    if window == "gaussian":
        kw.update(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    ref = structural_similarity(a, b, **kw)
    assert abs(ssim(a, b, 255, window) - ref) < 1e-6
    assert abs(psnr(a, b, 255) - peak_signal_noise_ratio(a, b, data_range=255)) < 1e-6


def test_identical_images():
    a = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    assert psnr(a, a) == float("inf")


def test_masked_metrics_use_mask_pixels_only():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    b = a.copy()
    b[:, 32:] = rng.integers(0, 256, (64, 32))  # only the right half differs
    left = np.zeros((64, 64), bool)
    left[:, :24] = True  # far from the differing half, beyond the 7x7 window
    assert ssim(a, b, mask=left) == pytest.approx(1.0)
    assert psnr(a, b, mask=left) == float("inf")
    right = ~left
    assert ssim(a, b, mask=right) < ssim(a, b)
    with pytest.raises(InputError, match="empty"):
        ssim(a, b, mask=np.zeros_like(left))


def test_drive_paper_and_native_protocols_match_skimage(data_dir, tmp_path):
    d = data_dir / "fundus/DRIVE/test"
    names = ["01_test", "02_test", "03_test"]
    (tmp_path / "pred").mkdir()
    for i, n in enumerate(names):
        io.write_image(tmp_path / "pred" / f"{n}.png",
                       _degrade(io.read_image(d / "images" / f"{n}.tif"), i))
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    for n in names:  # a reference folder holding just these three (no copies into the repo)
        (gt_dir / f"{n}.tif").symlink_to(d / "images" / f"{n}.tif")
    for protocol in ("paper", "native"):
        result = evaluate_folders(tmp_path / "pred", gt_dir, d / "fov", protocol)
        assert result["n"] == 3 and result["protocol"] == protocol
        for row, n in zip(result["per_image"], names, strict=True):
            gt = io.read_image(d / "images" / f"{n}.tif")
            pred = io.read_image(tmp_path / "pred" / f"{n}.png")
            fov = io.load_mask(d / "fov" / f"{n}_mask.gif")
            p, g, m = prepare(pred, gt, fov, protocol)
            if protocol == "paper":
                assert p.shape == (256, 256, 3)
                assert not p[~m].any() and not g[~m].any()  # outside the FOV is black in both
                ref_ssim = structural_similarity(p, g, data_range=255, channel_axis=-1)
                ref_psnr = peak_signal_noise_ratio(g, p, data_range=255)
            else:
                assert p.shape == gt.shape
                # native: skimage's full SSIM map, averaged inside the FOV (border cropped)
                maps = [structural_similarity(p[..., c], g[..., c], data_range=255, full=True)[1]
                        for c in range(3)]
                crop = (slice(3, -3), slice(3, -3))
                ref_ssim = np.mean([s[crop][m[crop]].mean() for s in maps])
                ref_psnr = 10 * np.log10(255**2 / np.mean(
                    (p.astype(float) - g.astype(float))[m] ** 2))
            assert abs(row["ssim"] - ref_ssim) < 1e-6
            assert abs(row["psnr"] - ref_psnr) < 1e-6
        assert result["ssim"] == pytest.approx(np.mean([r["ssim"] for r in result["per_image"]]))


def test_protocol_errors():
    a = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(InputError, match="native protocol needs equal sizes"):
        score_pair(a, np.zeros((41, 40, 3), np.uint8), protocol="native")
    with pytest.raises(InputError, match="channel"):
        score_pair(a, np.zeros((40, 40, 1), np.uint8))
    with pytest.raises(InputError, match="unknown protocol"):
        score_pair(a, a, protocol="fancy")
    # uint16 predictions are compared in 8-bit: the same picture scores the same
    b = (a.astype(np.uint16) * 257)
    assert score_pair(b, a).ssim == pytest.approx(1.0)


def test_binary_scores_by_hand():
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
    gt = np.array([[1, 0, 0, 0], [1, 1, 0, 0]], bool)
    # TP=2, FP=1, FN=1, TN=4
    s = binary_scores(pred, gt)
    assert s["dice"] == pytest.approx(4 / 6)
    assert s["iou"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(4 / 6)
    po, pe = 6 / 8, (3 * 3 + 5 * 5) / 64
    assert s["kappa"] == pytest.approx((po - pe) / (1 - pe))
    mask = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], bool)  # first row: TP=1, FP=1, TN=2
    assert binary_scores(pred, gt, mask)["dice"] == pytest.approx(2 / 3)
    empty = np.zeros((4, 4), bool)
    assert binary_scores(empty, empty) == {"dice": 1.0, "iou": 1.0, "f1": 1.0, "kappa": 1.0}


def test_eval_json_contract(tmp_path, retina):
    from same_fast.cli import main

    for sub in ("pred", "gt"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        crop = retina[300 + 50 * i:556 + 50 * i, 300:556]
        io.write_image(tmp_path / "gt" / f"im{i}.png", crop)
        io.write_image(tmp_path / "pred" / f"im{i}.png", _degrade(crop, i))
    out = tmp_path / "r.json"
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r) >= {"ssim", "psnr", "n", "per_image"} and r["n"] == 2
    assert [p["name"] for p in r["per_image"]] == ["im0", "im1"]
    assert all(set(p) == {"name", "ssim", "psnr"} for p in r["per_image"])
    assert 0 < r["ssim"] < 1 and 10 < r["psnr"] < 40
