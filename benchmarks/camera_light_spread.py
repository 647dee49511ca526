"""How much a camera's clean photographs differ in their own smooth light (issue #20).

    python benchmarks/camera_light_spread.py --camera IDRiD --camera HRF --camera FIVES \\
        --prior-from IDRiD,HRF,FIVES [--max-side 1024] [--seed 0] [--json FILE]

Per camera, every clean photograph's ``light_map`` (fundus_cross_camera: a per-channel Gaussian
light map in log units relative to the frame's own level, 64x64) and their ``light_spread`` (the
mean squared deviation from the per-cell median over frames, per channel and cell). A camera's
natural spread, per channel and ring of the FOV's radius (``cell_radius``: a share of it, so
common to cameras whose FOVs differ; a photograph's rim varies more than its centre), is the
mean of that over the ring's cells inside every frame's FOV, with a bootstrap 95 % interval over
frames (frames resampled, the spread recomputed). It is what the camera pool's garrote
(``camera_pool(prior=...)``) must not take for degradation. ``--prior-from`` names the cameras
whose largest spread, per channel and ring, is the prior (the cameras a shipped model trained
on: never a selection or test camera). Nothing here is degraded or enhanced.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _cross_camera() -> Any:
    from same_fast.benchsuites.common import sibling_script

    return sibling_script(__file__, "fundus_cross_camera")


def natural_spread(maps: torch.Tensor, radius: torch.Tensor, inside: torch.Tensor,
                   resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Per channel and ring of the FOV's radius, the mean over the inside cells of
    ``light_spread(maps)``, with a bootstrap 95 % interval over frames. ``maps`` is
    (N, 1, C, 64, 64); ``radius`` and ``inside`` as ``cell_radius`` gives them."""
    mod = _cross_camera()

    def rings(m: torch.Tensor) -> np.ndarray:
        return mod.radial_spread(mod.light_spread(m), radius, inside).numpy()

    est = rings(maps)
    rng = np.random.default_rng(seed)
    n = maps.shape[0]
    boot = np.stack([rings(maps[torch.from_numpy(rng.integers(0, n, n))])
                     for _ in range(resamples)])
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return {"frames": n, "cells": int(inside.sum()), "rings": est.shape[1],
            "per_channel": [{"mean": e.tolist(), "lo": a.tolist(), "hi": b.tolist()}
                            for e, a, b in zip(est, lo, hi, strict=True)]}


def camera_maps(images: Iterable[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The frames' light maps (N, 1, C, 64, 64), each cell's share of the FOV's radius and the
    cells inside every frame's FOV; ``images`` is read once, one at a time (only each frame's
    map and FOV are kept)."""
    mod = _cross_camera()
    maps, fovs = [], []
    for im in images:
        maps.append(mod.light_map(im["clean"], im["fov"]))
        fovs.append(im["fov"].to(torch.bool))
    if not maps:
        raise SystemExit("no photographs")
    radius, inside = mod.cell_radius([f.float() for f in fovs])
    if not inside.any():
        raise SystemExit("no cell lies inside every frame's FOV")
    return torch.stack(maps), radius, inside


def main(argv: list[str] | None = None) -> int:
    from same_fast.benchsuites.common import write_json
    from same_fast.eval import provenance

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--camera", action="append", required=True)
    p.add_argument("--prior-from", default="", help="comma-separated cameras (training cameras)")
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--max-images", type=int, default=0, help="per camera (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    prior_from = [c for c in a.prior_from.split(",") if c]
    if missing := [c for c in prior_from if c not in a.camera]:
        raise SystemExit(f"--prior-from names cameras not measured: {', '.join(missing)}")
    mod = _cross_camera()
    res: dict[str, Any] = {"provenance": provenance({"bootstrap": a.seed}),
                           "max_side": a.max_side, "cameras": {}}
    for cam in a.camera:
        images = mod.iter_camera(cam, a.max_side)
        if a.max_images:
            images = itertools.islice(images, a.max_images)
        maps, radius, inside = camera_maps(images)
        if maps.shape[0] < 3:
            raise SystemExit(f"camera {cam}: a spread needs at least 3 photographs, got {maps.shape[0]}")
        res["cameras"][cam] = s = natural_spread(maps, radius, inside, seed=a.seed)
        print(f"{cam:12s} n={s['frames']:3d} cells={s['cells']:4d}", flush=True)
        for c, v in zip("RGB", s["per_channel"], strict=False):
            print(f"  {c} by ring: " + " ".join(f"{m:.4f}" for m in v["mean"]), flush=True)
    if prior_from:
        prior = np.max([[v["mean"] for v in res["cameras"][c]["per_channel"]]
                        for c in prior_from], axis=0)
        res["prior"] = {"from": prior_from, "rule": "per channel and ring, the largest camera's",
                        "per_channel": prior.tolist()}
        print("prior (largest of " + ", ".join(prior_from) + "):", flush=True)
        for c, v in zip("RGB", prior, strict=False):
            print(f"  {c} by ring: " + " ".join(f"{m:.4f}" for m in v), flush=True)
    write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
