"""How much a coarse light model asks to move the light of clean photographs (issue #20).

    python benchmarks/coarse_gate.py --coarse H2.safetensors --side 280 \\
        --camera IDRiD --camera HRF --camera FIVES --skip IDRiD=24 [--max-images 40] \\
        [--quantile 0.95] [--max-side 1024] [--seed 0] [--json FILE]

A clean photograph needs no light moved. Per camera, each clean photograph's coarse reading
(fundus_cross_camera ``coarse_log_gain``: the coarse model on a copy whose shorter side is
``--side``, the per-channel log ratio of its output's smooth light to its input's) with its level
taken out (``centred``: what it would move within the frame), and over the lit cells of every
photograph, per channel, the ``--quantile`` of its size. The dead zone of a ``-gate`` pair
(fundus_cross_camera ``gate``) is the largest of those over the cameras, per channel: a request
no larger than clean photographs draw is left alone. Bootstrap 95 % intervals over photographs.

The cameras must be ones no selection or test reads: the coarse model's training cameras, with
the selection's photographs skipped (``--skip IDRiD=24``: IDRiD training's first 24 are a
selection camera's). A model reads its own training photographs more gently than a new camera's,
so the dead zone measured there is, if anything, too small (the gate too timid), not too large.
``--max-images`` takes that many photographs evenly spaced through the camera's sorted list.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _cross_camera() -> Any:
    from same_fast.benchsuites.common import sibling_script

    return sibling_script(__file__, "fundus_cross_camera")


def spaced(items: list[Any], n: int) -> list[Any]:
    """``n`` items evenly spaced through ``items`` (all of them when ``n`` is 0 or more)."""
    if n <= 0 or n >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def moved_light(net: Any, clean: torch.Tensor, fov: torch.Tensor, side: int) -> np.ndarray:
    """The size of what the coarse reading moves within the frame, per channel over the copy's
    lit cells: (C, cells) in log units."""
    mod = _cross_camera()
    log_gain, fs = mod.coarse_log_gain(net, clean, fov, side=side)
    _, within = mod.centred(log_gain, fs)
    lit = fs[0, 0] > 0.5
    return within[0][:, lit].abs().numpy()


def dead_zone(per_photo: list[np.ndarray], q: float, resamples: int = 200,
              seed: int = 0) -> dict[str, Any]:
    """The ``q`` quantile per channel of the pooled cells of ``per_photo`` ((C, cells) each),
    with a bootstrap 95 % interval over photographs."""
    def quantile(photos: list[np.ndarray]) -> np.ndarray:
        return np.quantile(np.concatenate(photos, 1), q, axis=1)

    est = quantile(per_photo)
    rng = np.random.default_rng(seed)
    n = len(per_photo)
    boot = np.stack([quantile([per_photo[i] for i in rng.integers(0, n, n)])
                     for _ in range(resamples)])
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return {"photographs": n, "quantile": q, "per_channel": est.tolist(), "lo": lo.tolist(),
            "hi": hi.tolist()}


def main(argv: list[str] | None = None) -> int:
    from same_fast.benchsuites.common import write_json
    from same_fast.eval import provenance
    from same_fast.models import load_model
    from same_fast.train.source import data_folders

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coarse", required=True, help="the coarse model's checkpoint")
    p.add_argument("--side", type=int, default=280)
    p.add_argument("--camera", action="append", required=True)
    p.add_argument("--skip", action="append", default=[], metavar="CAMERA=N",
                   help="leave out the camera's first N photographs (a selection's)")
    p.add_argument("--max-images", type=int, default=40, help="per camera, evenly spaced (0: all)")
    p.add_argument("--quantile", type=float, default=0.95)
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if not 0.5 <= a.quantile < 1.0:
        raise SystemExit(f"--quantile {a.quantile}: expected a value in [0.5, 1)")
    skip: dict[str, int] = {}
    for s in a.skip:
        cam, _, n = s.partition("=")
        if not n.isdigit():
            raise SystemExit(f"--skip {s}: expected CAMERA=N")
        skip[cam] = int(n)
    if a.threads:
        torch.set_num_threads(a.threads)
    coarse = Path(a.coarse)
    net, _meta = load_model(a.coarse)
    mod = _cross_camera()
    cameras: dict[str, Any] = {}
    for cam in a.camera:
        stems = [f.stem for *_, files, _m, _f in data_folders(cam) for f in files]
        keep = spaced(stems[skip.get(cam, 0):], a.max_images)
        if not keep:
            raise SystemExit(f"{cam}: no photographs left after --skip")
        names, moved = [], []
        for im in mod.iter_camera(cam, a.max_side, only=set(keep)):
            names.append(im["name"])
            moved.append(moved_light(net, im["clean"], im["fov"], a.side))
        cameras[cam] = {"names": names, **dead_zone(moved, a.quantile, seed=a.seed)}
        photos = names
        print(f"{cam:8s} n={len(photos):3d}  q{a.quantile:.2f} of the light moved per channel: "
              + "  ".join(f"{v:.4f} [{lo:.4f}, {hi:.4f}]" for v, lo, hi in zip(
                  cameras[cam]["per_channel"], cameras[cam]["lo"], cameras[cam]["hi"],
                  strict=True)))
    zone = np.max([c["per_channel"] for c in cameras.values()], axis=0)
    print("dead zone (largest over cameras):", "  ".join(f"{v:.4f}" for v in zone))
    if a.json:
        write_json(a.json, {
            "provenance": provenance(seeds={"bootstrap": a.seed}),
            "coarse": str(coarse), "coarse_sha256": (hashlib.sha256(coarse.read_bytes()).hexdigest()
                                                     if coarse.is_file() else a.coarse),
            "side": a.side, "quantile": a.quantile, "max_side": a.max_side, "skip": skip,
            "cameras": cameras, "dead_zone": zone.tolist()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
