"""What adaptation reads off a target's images, per camera and shift (issue #21).

    python benchmarks/target_estimates.py [--camera DRIVE ...] [--shift none ...] [--json FILE]

For each camera (its clean photographs at ``--size``) and each shift (a degradation preset at
``--seed``, ``none`` = the clean photographs), the estimators of ``same_fast.degrade.estimate``
per image (median and range over the images): the noise (Immerkaer), the JPEG quality (share
of images with a lattice), the blur at the edges (``blur_sigma``), and two readings of uneven
light that adaptation does *not* use, kept here to show why: the radial and the linear
coefficient of a fit of the log-luminance inside the FOV (``a + b.u + c.v + d.r^2`` on a 32 x 32
grid, ``u, v, r`` in units of the FOV's radius about its centre; ``radial`` = ``d``,
``linear`` = ``|(b, c)|``). Then what ``target_redegradation`` makes of the whole set, and
the blur that the rejected arm ``default-blur`` of ``adaptation_shifts.py`` would add.

``--oct``: the OCT speckle reading (``speckle_grain``: strength and axial grain, 10th, 50th
and 90th percentiles over the scans) on the clean scans of oct-lite's training and selection
patients and under the selection shift and the training preset on the selection patients; the
90th percentile of the training patients' axial grain is ``GRAIN_FLOOR``.

The defaults are what set that arm's blur floor: clean photographs of cameras outside every test set
(DRIVE's training images, HRF, FIVES, IDRiD's training split) and the selection shifts on
DRIVE's training images. Test shifts and cameras can be read too, after the floors are fixed.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

CAMERAS = ("DRIVE", "HRF", "FIVES", "IDRiD")
SELECTION_SHIFTS = ("none", "select-light-blur", "fundus-cataract", "sensor-noise",
                    "select-noise-jpeg")


def light_fit(x: torch.Tensor, fov: torch.Tensor, grid: int = 32) -> torch.Tensor:
    """``(N, 2)``: radial and linear coefficients of the log-luminance fit (module docstring)."""
    from same_fast.degrade import ops

    lum = ops.luminance(x)
    a = F.adaptive_avg_pool2d(lum * fov, grid)
    b = F.adaptive_avg_pool2d(fov, grid)
    v = torch.log((a / b.clamp_min(1e-6)).clamp_min(1e-3))
    out = []
    for i in range(x.shape[0]):
        inside = b[i, 0] > 0.9
        ys, xs = torch.nonzero(inside, as_tuple=True)
        yf, xf = ys.float() - ys.float().mean(), xs.float() - xs.float().mean()
        r = torch.sqrt(yf ** 2 + xf ** 2).max().clamp_min(1.0)
        u, w = xf / r, yf / r
        design = torch.stack([torch.ones_like(u), u, w, u * u + w * w], -1)
        coef = torch.linalg.lstsq(design, v[i, 0][inside][:, None]).solution[:, 0]
        out.append([float(coef[3]), float(torch.sqrt(coef[1] ** 2 + coef[2] ** 2))])
    return torch.tensor(out)


def _summary(v: torch.Tensor) -> dict[str, float]:
    v = v[~torch.isnan(v)]
    if v.numel() == 0:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": round(float(v.median()), 4), "min": round(float(v.min()), 4),
            "max": round(float(v.max()), 4)}


def read_case(camera: str, shift: str, size: int, seed: int, n: int) -> dict[str, Any]:
    from same_fast.degrade import degrade
    from same_fast.degrade.estimate import blur_sigma, jpeg_quality, noise_sigma, target_redegradation

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from adaptation_shifts import blurred_view, load_target

    clean, fov, names = load_target(camera, size, n)
    x = clean if shift == "none" else (
        degrade(clean, shift, torch.Generator().manual_seed(seed), fov) * 255).round() / 255
    q = torch.tensor([jpeg_quality(x[i], fov[i]) for i in range(len(x))])
    light = light_fit(x, fov)
    r = target_redegradation(list(x), list(fov))
    bv = blurred_view(list(x), list(fov), 1.0)
    return {"images": len(names), "noise": _summary(noise_sigma(x, fov)),
            "jpeg_share": round(float((~torch.isnan(q)).float().mean()), 3),
            "jpeg_quality": _summary(q), "blur": _summary(blur_sigma(x, fov)),
            "light_radial": _summary(light[:, 0]), "light_linear": _summary(light[:, 1]),
            "redegradation": {"measured": r.measured, "sigma": round(r.sigma, 4),
                              "p_jpeg": r.p_jpeg, "jpeg_quality": list(r.jpeg_quality)},
            # what the rejected arm default-blur would add (adaptation_shifts.py)
            "default_blur_px": round(getattr(bv, "blur", 0.0), 3)}


OCT_CASES = (("Kermany-train", "none"), ("Kermany-select", "none"),
             ("Kermany-select", "select-oct-speckle"), ("Kermany-select", "oct"))


def read_oct(data: str, shift: str, seed: int) -> dict[str, Any]:
    from same_fast.degrade.estimate import speckle_grain, target_speckle

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from oct_eval import load_scans

    scans = load_scans(data, "oct" if shift == "none" else shift, seed)
    xs = [sc["clean"] if shift == "none" else sc["degraded"] for sc in scans]
    read = torch.cat([speckle_grain(x[None]) for x in xs])
    q = torch.tensor([0.1, 0.5, 0.9])
    view = target_speckle(xs)
    return {"scans": len(xs),
            "strength_p10_p50_p90": [round(float(v), 4) for v in read[:, 0].quantile(q)],
            "axial_grain_p10_p50_p90": [round(float(v), 3) for v in read[:, 1].quantile(q)],
            "view": view.describe()}


def main(argv: list[str] | None = None) -> int:
    from same_fast.benchsuites.common import write_json
    from same_fast.eval import provenance

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--camera", action="append", default=None)
    p.add_argument("--shift", action="append", default=None)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--max-images", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--oct", action="store_true", help="the OCT speckle readings instead")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.oct:
        res: dict[str, Any] = {"provenance": provenance({"degradation": a.seed}), "cases": {}}
        for data, shift in OCT_CASES:
            c = res["cases"][f"{data}/{shift}"] = read_oct(data, shift, a.seed)
            print(f"{data + '/' + shift:34s} strength {c['strength_p10_p50_p90']}  axial grain "
                  f"{c['axial_grain_p10_p50_p90']}  -> {c['view']}", flush=True)
        write_json(a.json, res)
        return 0
    cameras = a.camera or list(CAMERAS)
    out: dict[str, Any] = {"provenance": provenance({"degradation": a.seed}), "size": a.size,
                           "cases": {}}
    for cam in cameras:
        # the selection shifts on the selection camera; the others are read clean
        shifts = a.shift or (list(SELECTION_SHIFTS) if cam == "DRIVE" else ["none"])
        for sh in shifts:
            c = read_case(cam, sh, a.size, a.seed, a.max_images)
            out["cases"][f"{cam}/{sh}"] = c
            rd = c["redegradation"]
            print(f"{cam + '/' + sh:28s} noise {c['noise']['median']:.4f}  jpeg {c['jpeg_share']:.2f}"
                  f"  blur {c['blur']['median']:.2f} [{c['blur']['min']:.2f}, {c['blur']['max']:.2f}]"
                  f"  light radial {c['light_radial']['median']:+.2f} linear "
                  f"{c['light_linear']['median']:.2f}  -> measured {rd['measured']} noise "
                  f"{rd['sigma']:.3f} p_jpeg {rd['p_jpeg']} (default-blur: "
                  f"{c['default_blur_px']:.2f} px)",
                  flush=True)
    write_json(a.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
