"""The Python API: ``same_fast.load_model(name)`` -> an Enhancer for numpy images, its
adaptation entry point, ``create_backend``, and the docstring examples (run here as doctests)."""
from __future__ import annotations

import doctest
import subprocess
import sys

import numpy as np
import pytest

import same_fast
from same_fast.errors import InputError


@pytest.fixture(scope="module")
def fundus():
    return same_fast.load_model("fundus-lite")


def test_public_names_resolve_and_import_same_fast_stays_light():
    for name in same_fast.__all__:
        assert getattr(same_fast, name) is not None
    code = "import sys, same_fast; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "False"
    with pytest.raises(AttributeError):
        same_fast.nope  # noqa: B018


def test_uint8_rgb_comes_back_the_same_shape_and_dtype_and_enhanced(fundus, retina):
    import torch

    from same_fast.degrade import degrade
    from same_fast.io import to_array, to_tensor

    clean = retina[::8, ::8][:160, :160]
    g = torch.Generator().manual_seed(0)
    bad = to_array(degrade(to_tensor(clean)[None], "fundus-shen2020", g)[0])
    out = fundus.enhance(bad)
    assert out.shape == bad.shape and out.dtype == np.uint8
    assert not np.array_equal(out, bad)


def test_uint16_grey_and_a_one_pixel_image(fundus):
    grey = (np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 100)
    out = fundus.enhance(grey)
    assert out.shape == (30, 20) and out.dtype == np.uint16
    one = fundus.enhance(np.array([[[10, 200, 30]]], np.uint8))
    assert one.shape == (1, 1, 3) and one.dtype == np.uint8
    assert fundus.enhance(np.zeros((1, 1), np.uint16)).shape == (1, 1)


def test_mask_blacks_out_the_outside_and_alpha_passes_through(fundus):
    rng = np.random.default_rng(0)
    rgba = rng.integers(30, 220, (24, 24, 4), dtype=np.uint8)
    mask = np.zeros((24, 24), bool)
    mask[4:20, 4:20] = True
    out = fundus.enhance(rgba, mask)
    assert out.shape == rgba.shape
    assert np.array_equal(out[..., 3], rgba[..., 3])
    assert out[~mask][:, :3].max() == 0 and out[mask][:, :3].max() > 0


@pytest.mark.parametrize("image, mask, message", [
    (np.zeros((4, 4), np.float32), None, "uint8 or uint16"),
    (np.zeros((4, 4, 2), np.uint8), None, "C = 1, 3 or 4"),
    (np.zeros((2, 4, 4, 3), np.uint8), None, "H x W"),
    (np.zeros((4, 4), np.uint8), np.ones((3, 3)), "mask shape"),
])
def test_bad_input_is_a_clear_error(fundus, image, mask, message):
    with pytest.raises(InputError, match=message):
        fundus.enhance(image, mask)


def test_adapt_returns_a_new_enhancer_and_leaves_the_source(fundus, tmp_path):
    import torch

    before = {k: v.clone() for k, v in fundus.network.state_dict().items()}
    scans = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), np.uint8) for i in range(2)]
    adapted = fundus.adapt(scans, picker="none", steps=2, batch=2, size=64, lr=1e-3)
    assert adapted is not fundus and adapted.modality == "fundus"
    assert all(torch.equal(before[k], v) for k, v in fundus.network.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in adapted.network.state_dict().items())
    assert adapted.metadata["adaptation"]["config"]["steps"] == 2
    assert adapted.metadata["adaptation"]["config"]["lr"] == 1e-3
    assert fundus.adapt(scans, picker="none", steps=1, batch=2, size=64
                        ).metadata["adaptation"]["config"]["lr"] == 2e-3  # fundus's rate
    # random pixels read as strong noise: the view says so
    assert "the student's view gets noise" in adapted.metadata["adaptation"]["student_view"]
    back = same_fast.load_model(adapted.save(tmp_path / "a.safetensors"))
    assert np.array_equal(back.enhance(scans[0]), adapted.enhance(scans[0]))


def test_create_backend_serves_the_loaded_network(fundus):
    backend = same_fast.create_backend("torch", fundus.network)
    frames = np.zeros((1, 32, 32, 3), np.uint8)
    assert backend.enhance_frames(frames).shape == frames.shape


@pytest.mark.parametrize("module", ["same_fast.enhancer", "same_fast.adapt.config"])
def test_docstring_examples_run(module):
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 1


def test_the_readme_python_example_runs_and_the_readme_stays_short():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    block = text.split("## Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) <= 6
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102
    assert scope["enhanced"].shape == scope["image"].shape
    assert scope["enhanced"].dtype == scope["image"].dtype
