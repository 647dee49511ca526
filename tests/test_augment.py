"""The one random-view helper: a drawn window crops and flips an image and its mask alike."""
from __future__ import annotations

import torch

from same_fast.adapt.augment import AugmentConfig, random_views, random_window


def test_a_window_crops_image_and_mask_alike_and_is_seeded():
    x = torch.arange(2 * 6 * 8, dtype=torch.float32).view(2, 6, 8)
    a = random_window(6, 8, 3, 4, torch.Generator().manual_seed(5), hflip=1.0, vflip=0.0)
    b = random_window(6, 8, 3, 4, torch.Generator().manual_seed(5), hflip=1.0, vflip=0.0)
    assert a == b and a.hflip and not a.vflip
    assert 0 <= a.y0 <= 3 and 0 <= a.x0 <= 4
    v = a.apply(x)
    assert v.shape == (2, 3, 4)
    assert torch.equal(v, x[:, a.y0:a.y0 + 3, a.x0:a.x0 + 4].flip(-1))
    assert torch.equal(a.apply(x[:1]), v[:1])  # a mask gets the same box and flips


def test_views_are_masked_by_their_own_window():
    g = torch.Generator().manual_seed(0)
    img = torch.ones(3, 40, 40)
    fov = torch.zeros(1, 40, 40)
    views = random_views([img], AugmentConfig(size=16), g, [fov])
    assert views.shape == (1, 3, 16, 16) and float(views.abs().max()) == 0.0
