"""Structure masks read off clean OCT B-scans (the hyper-reflective layers) and the folder
layout that train-source and train-picker read."""
import numpy as np
import pytest

from same_fast.io import read_image, write_image
from same_fast.train.structure import reflective_layers, write_structure_folder


@pytest.fixture()
def bscan(toy_bscan):
    """(uint8 scan 160 x 240, its bright-layer mask); optionally a white export wedge in the
    top-left corner."""
    def make(seed=0, pad=False):
        scan, layers = toy_bscan(160, 240, np.random.default_rng(seed), top=50, thick=12, gap=40)
        out = (scan * 255).astype(np.uint8)
        if pad:
            yy, xx = np.mgrid[:160, :240]
            out[(xx + yy) < 40] = 255
        return out, layers

    return make


@pytest.mark.parametrize("pad", [False, True])
def test_reflective_layers_finds_the_bright_bands_and_skips_export_padding(pad, bscan):
    scan, truth = bscan(pad=pad)
    m = reflective_layers(scan)
    assert m.shape == scan.shape and m.dtype == bool
    dice = 2 * (m & truth).sum() / (m.sum() + truth.sum())
    assert dice > 0.8
    yy, xx = np.mgrid[:scan.shape[0], :scan.shape[1]]
    assert not m[(xx + yy) < 30].any()          # the white wedge is not a layer
    assert not m[:30].any() and not m[-30:].any()  # vitreous and choroid floor stay out


def test_reflective_layers_of_a_flat_or_16_bit_scan(bscan):
    assert not reflective_layers(np.full((64, 64), 90, np.uint8)).any()
    scan, truth = bscan()
    m16 = reflective_layers(scan.astype(np.uint16) * 257)
    assert np.array_equal(m16, reflective_layers(scan))
    assert np.array_equal(reflective_layers(scan / 255.0), reflective_layers(scan))
    # a dark uint8 scan is still a uint8 scan (not read as values in [0, 1])
    assert not reflective_layers(np.ones((64, 64), np.uint8)).any()
    with pytest.raises(ValueError, match="B-scan"):
        reflective_layers(np.zeros((2, 3, 4, 5)))


def test_write_structure_folder_is_what_train_picker_reads(tmp_path, bscan):
    from same_fast.train.picker import load_structure_set

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        write_image(src / f"scan{i}.png", bscan(seed=i)[0])
    out = tmp_path / "set"
    assert write_structure_folder(sorted(src.glob("*.png")), out) == 3
    assert write_structure_folder(sorted(src.glob("*.png")), out) == 3  # a rerun replaces
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"scan{i}.png" for i in range(3)]
    mask = read_image(out / "masks" / "scan0_mask.png")
    assert set(np.unique(mask)) == {0, 255}
    s = load_structure_set([out], 1, 64)
    assert s.images.shape == (3, 1, 64, 64) and s.masks.shape == (3, 1, 64, 64)
    assert 0.05 < float(s.masks.mean()) < 0.5
