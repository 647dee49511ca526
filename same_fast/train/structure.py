"""Structure masks read off clean images, for sets that come without any (OCT).

SAME's structure decoder and the picker's structure detector (ISD) learn from masks: vessel maps
for fundus, lesion maps for ultrasound. The Kermany OCT set has no layer annotations, so for OCT
the mask is read off the clean B-scan itself: its *hyper-reflective layers* (nerve fibre and
plexiform layers above, the RPE/photoreceptor complex below), the bright bands a B-scan's
anatomy is drawn with. They are found by intensity alone:

1. saturated export padding (the white wedges some Spectralis exports carry) is set aside;
2. the scan is smoothed anisotropically (``sigma`` = 2 px axially, 6 px laterally: speckle goes,
   layers stay) and split in two by Otsu's threshold over the unpadded pixels;
3. specks are opened away, components under 5 % of the largest dropped, holes filled.

The masks are a *pseudo* ground truth: good enough to teach a structure head where the layers
run and a VAE what a plausible layer map looks like, not a segmentation to measure anything by.
``write_structure_folder`` writes the ``images/`` + ``masks/`` layout that ``train-source`` and
``train-picker`` read.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

SIGMA = (2.0, 6.0)          # (axial, lateral) smoothing in pixels
SATURATED = 0.97            # export padding: pixels at least this bright, in blobs
MIN_COMPONENT = 0.05        # components smaller than this share of the largest are specks


def reflective_layers(scan: np.ndarray) -> np.ndarray:
    """The hyper-reflective layers of a clean grey B-scan ``(H, W)`` (or ``(H, W, C)``, averaged)
    as a bool mask ``(H, W)``; all False for a flat image. Integer scans are scaled by their
    type's range (uint8, uint16), float ones taken as values in [0, 1]."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    x = np.asarray(scan)
    # integer scans by their type's range; float ones are taken as values in [0, 1]
    scale = float(np.iinfo(x.dtype).max) if np.issubdtype(x.dtype, np.integer) else 1.0
    x = x.astype(np.float32) / scale
    if x.ndim == 3:
        x = x.mean(-1)
    if x.ndim != 2:
        raise ValueError(f"expected a (H, W) B-scan, got shape {np.asarray(scan).shape}")
    pad = ndi.binary_opening(x >= SATURATED, iterations=2)
    s = ndi.gaussian_filter(x, SIGMA)
    inside = s[~pad]
    if inside.size == 0 or float(inside.max() - inside.min()) < 1e-3:
        return np.zeros(x.shape, bool)
    m = (s > threshold_otsu(inside)) & ~pad
    m = ndi.binary_opening(m, np.ones((3, 3), bool))
    lab, n = ndi.label(m)
    if n:
        sizes = ndi.sum(m, lab, range(1, n + 1))
        m = np.isin(lab, np.flatnonzero(sizes >= MIN_COMPONENT * sizes.max()) + 1)
    return ndi.binary_fill_holes(m)


def write_structure_folder(files: Iterable[str | Path], out: str | Path) -> int:
    """Write ``out/images`` (links to ``files``) and ``out/masks/<stem>_mask.png`` (the
    reflective layers of each scan, 0/255) for ``train-source`` and ``train-picker``. Returns
    the number of scans. Existing entries are replaced, so a rerun gives the same folder."""
    from same_fast.io import load, write_image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    n = 0
    for f in map(Path, files):
        link = out / "images" / f.name
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(f.resolve(), link)
        frame = load(f).frames[0]
        m = reflective_layers(frame)
        write_image(out / "masks" / f"{f.stem}_mask.png", m.astype(np.uint8) * 255)
        n += 1
    return n
