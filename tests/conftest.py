"""Shared fixtures: real scans (scikit-image's retina, pydicom's ultrasound files, shared/data)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from same_fast.data import data_root


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test runs torch on one intra-op thread.

    The suite's networks are tiny: extra threads buy nothing and, on a 2-core CI machine also
    running a server or a subprocess, cost 10-25x in oversubscription.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data sets (CI always has them); skip with a reason where a user's machine lacks them."""
    root = data_root()
    if root is None:
        pytest.skip("no data folder: set SAME_FAST_DATA or place shared/data beside the checkout")
    return root


@pytest.fixture(scope="session")
def retina() -> np.ndarray:
    """scikit-image's real 1411x1411 RGB fundus photograph (CC0), uint8 (H, W, 3)."""
    from skimage import data

    return data.retina()


@pytest.fixture(scope="session")
def dicom_file():
    """Path of one of pydicom's bundled test files, by name."""
    from pydicom.data import get_testdata_file

    def get(name: str) -> Path:
        p = get_testdata_file(name, download=False)
        if p is None:
            raise FileNotFoundError(f"pydicom test file {name} is not bundled")
        return Path(p)

    return get


@pytest.fixture(scope="session")
def toy_bscan():
    """A toy OCT B-scan, no data needed: two bright layers (``thick`` px, ``gap`` px apart)
    over a dim retina, a layer top that waves by ``wave`` px (default h / 20) across the width
    (``phase`` shifts it), speckle of 4 looks. Returns (float (H, W) in [0, 1], the bright-layer mask)."""
    def make(h: int, w: int, rng: np.random.Generator, top: float, thick: int, gap: int,
             phase: float = 0.0, wave: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        yy, xx = np.mgrid[:h, :w]
        t = top + (h / 20 if wave is None else wave) * np.sin(xx / w * 3 + phase)
        layers = ((yy > t) & (yy < t + thick)) | ((yy > t + gap) & (yy < t + gap + thick))
        lin = 0.08 + 0.15 * ((yy > t) & (yy < t + gap + thick)) + 0.5 * layers
        return np.clip(lin * rng.gamma(4.0, 1 / 4.0, (h, w)), 0, 1), layers

    return make


@pytest.fixture
def bench_script():
    """Load ``benchmarks/<name>.py`` as a module (the scripts are not a package)."""
    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses in the script look their module up there
        spec.loader.exec_module(mod)
        return mod
    return load


@pytest.fixture
def reject_all_picker(tmp_path):
    """A tiny grey picker checkpoint whose absolute rule rejects every sample (no structure
    score is below its ISD threshold of -1e9); returns its path as a string."""
    import torch

    from same_fast.nn.iqa import IQANet
    from same_fast.nn.isd import StructureVAE
    from same_fast.picker import save_picker

    torch.manual_seed(0)
    return str(save_picker(tmp_path / "reject_all.safetensors", IQANet(1, width=4, depth=2, size=32),
                           StructureVAE(size=16, latent=4, width=4), -1e9, "ultrasound"))
