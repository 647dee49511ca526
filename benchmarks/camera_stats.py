"""What the fundus cameras' clean photographs look like to a network that reads 16-px cells.

    python benchmarks/camera_stats.py --camera DRIVE --camera IDRiD --camera HRF --camera FIVES \
        --camera skimage-retina [--size 256] [--frame crop] [--max-images 30] [--json FILE]

Per camera, on its clean photographs loaded as ``train-source`` loads them (``--frame``: centre
squares or whole photographs padded, at ``--size`` px): the share of the frame inside the field
of view, the share of ``--cell``-px cells that straddle its edge (the rim a field reads), and per
channel the mean over cells wholly inside the FOV of the cell's spread divided by its mean (how
much local detail the camera holds: a veil lowers it, and so does a soft camera). Means carry
bootstrap 95 % intervals over images; the JSON records the git commit and the command. No
degradation, no model: it describes the data that session 20's guesses were about.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def camera_stats(samples: list, cell: int, seed: int = 0) -> dict[str, Any]:
    from same_fast.eval import bootstrap_ci

    fov_share, rim_share, ratio = [], [], []
    for s in samples:
        im = s.image.float() / 255.0
        fov = s.fov.float() if s.fov is not None else torch.ones(1, *im.shape[-2:])
        fov_share.append(float(fov.mean()))
        cover = F.avg_pool2d(fov[None], cell)[0, 0]
        rim_share.append(float(((cover > 0) & (cover < 1)).float().mean()))
        mean = F.avg_pool2d(im[None], cell)[0]
        spread = (F.avg_pool2d(im[None] ** 2, cell)[0] - mean ** 2).clamp_min(0).sqrt()
        inside = cover >= 1.0
        if inside.any():
            ratio.append((spread / mean.clamp_min(0.01))[:, inside].mean(1).tolist())
    out: dict[str, Any] = {"n": len(samples),
                           "fov_share": bootstrap_ci(np.array(fov_share), seed=seed),
                           "rim_cell_share": bootstrap_ci(np.array(rim_share), seed=seed)}
    r = np.array(ratio)
    out["spread_over_mean"] = {ch: bootstrap_ci(r[:, k], seed=seed) if len(r) else None
                               for k, ch in enumerate("RGB"[:r.shape[1] if len(r) else 3])}
    return out


def main(argv: list[str] | None = None) -> int:
    from same_fast.benchsuites.common import write_json
    from same_fast.eval import provenance
    from same_fast.train.source import FRAMES, load_samples

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--camera", action="append", required=True, help="a data spec (repeat)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frame", default="crop", choices=FRAMES)
    p.add_argument("--cell", type=int, default=16)
    p.add_argument("--max-images", type=int, default=30, help="per camera (0: all)")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    res: dict[str, Any] = {"provenance": provenance({"bootstrap": 0}),
                           "settings": vars(a) | {"json": str(a.json)}, "cameras": {}}
    for cam in a.camera:
        samples = [s for _, grp in load_samples(cam, 3, a.size, "fundus", a.max_images, a.frame)
                   for s in grp]
        r = res["cameras"][cam] = camera_stats(samples, a.cell)
        ratio = " ".join(f"{ch} {v['mean']:.3f}" for ch, v in r["spread_over_mean"].items() if v)
        print(f"{cam:15s} n={r['n']:3d}  FOV {r['fov_share']['mean']:.2f} of the frame, rim cells "
              f"{r['rim_cell_share']['mean']:.1%}; spread/mean per cell: {ratio}", flush=True)
    write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
