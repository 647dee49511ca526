"""How much a fundus_cross_camera verdict moves with the degradation's draw (issue #20).

    python benchmarks/draw_spread.py RUN_SEED0.json RUN_SEED1.json ... [--reference fundus-lite]
        [--camera DRIVE] [--json FILE]

Each run is one ``fundus_cross_camera.py --seed S`` of the same arms, camera and conditions: the
same photographs degraded by another draw of the same preset. Per condition and arm it prints
each draw's mean SSIM gain over the degraded input and share of photographs below it, the
arm's difference to ``--reference`` per draw (what a selection rule compares), and the same
pooled over every photograph and draw (the mean gain; the share below over all pairs), with a
bootstrap 95 % interval over photographs of the pooled difference (each photograph's
difference averaged over its draws). It reads stored runs only: no data, no model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _gains(run: dict[str, Any], camera: str, cond: str, arm: str) -> dict[str, float]:
    """Per photograph: the arm's SSIM gain over the degraded input."""
    rows = run["cameras"][camera][cond]["rows"]
    return {r["name"]: r[arm]["ssim"] - r["degraded"]["ssim"] for r in rows}


def spread(runs: list[dict[str, Any]], camera: str, reference: str, seed: int = 0
           ) -> dict[str, Any]:
    """Per condition and arm: each draw's gain, share below and difference to ``reference``,
    and the same pooled over draws (``bootstrap_ci`` over photographs for the difference)."""
    from same_fast.eval import bootstrap_ci

    seeds = [r["provenance"]["seeds"]["degradation"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"draw_spread: the runs must be distinct draws, got seeds {seeds}")
    first = runs[0]["cameras"].get(camera)
    if first is None:
        raise SystemExit(f"draw_spread: no camera {camera} in the first run")
    out: dict[str, Any] = {"camera": camera, "reference": reference, "seeds": seeds,
                           "conditions": {}}
    for cond in first:
        if cond == "identity":  # no draw: the clean photographs themselves
            continue
        # the arms every run scored (a run may carry more)
        arms = [k for k in first[cond]["rows"][0]
                if isinstance(first[cond]["rows"][0][k], dict) and k != "degraded"
                and not k.startswith("ceiling") and k != "vessel_dice"
                and all(k in r["cameras"][camera][cond]["rows"][0] for r in runs)]
        if reference not in arms:
            raise SystemExit(f"draw_spread: no arm {reference} under {cond}")
        per: dict[str, Any] = {}
        ref = [_gains(r, camera, cond, reference) for r in runs]
        names = sorted(ref[0])
        for arm in arms:
            g = [_gains(r, camera, cond, arm) for r in runs]
            if any(sorted(x) != names for x in g):
                raise SystemExit(f"draw_spread: the runs score different photographs ({cond})")
            mat = np.array([[x[n] for n in names] for x in g])  # draws x photographs
            rmat = np.array([[x[n] for n in names] for x in ref])
            diff = (mat - rmat).mean(0)  # each photograph's difference, over its draws
            per[arm] = {
                "per_draw": [{"seed": s, "gain_ssim": float(m.mean()),
                              "share_below": float((m < 0).mean()),
                              "minus_reference": float(m.mean() - rm.mean()),
                              "below_minus_reference": int((m < 0).sum() - (rm < 0).sum())}
                             for s, m, rm in zip(seeds, mat, rmat, strict=True)],
                "pooled": {"gain_ssim": float(mat.mean()), "share_below": float((mat < 0).mean()),
                           "minus_reference": bootstrap_ci(diff, seed=seed),
                           "below_minus_reference": int((mat < 0).sum() - (rmat < 0).sum())},
            }
        out["conditions"][cond] = per
    return out


def main(argv: list[str] | None = None) -> int:
    from same_fast.benchsuites.common import write_json
    from same_fast.eval import provenance

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="fundus_cross_camera JSONs, one per seed")
    p.add_argument("--reference", default="fundus-lite")
    p.add_argument("--camera", default="DRIVE")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    runs = [json.loads(f.read_text()) for f in a.runs]
    res = spread(runs, a.camera, a.reference)
    for cond, per in res["conditions"].items():
        for arm, v in per.items():
            draws = "  ".join(f"s{d['seed']} {d['gain_ssim']:+.4f} ({d['share_below']:.0%}, "
                              f"{d['minus_reference']:+.4f}, {d['below_minus_reference']:+d})"
                              for d in v["per_draw"])
            pl = v["pooled"]
            m = pl["minus_reference"]
            print(f"{cond:16s} {arm:14s} {draws}  pooled {pl['gain_ssim']:+.4f} "
                  f"({pl['share_below']:.0%}, {m['mean']:+.4f} [{m['lo']:+.4f}, {m['hi']:+.4f}], "
                  f"{pl['below_minus_reference']:+d})")
    # the runs' rows of this camera are kept whole: the record stands without the run files
    kept = [{"provenance": r["provenance"], "arms": r.get("arms"),
             "rows": {c: v["rows"] for c, v in r["cameras"][a.camera].items()}} for r in runs]
    write_json(a.json, {"provenance": provenance({"bootstrap": 0}),
                        "run_files": [str(f) for f in a.runs], **res, "runs": kept})
    return 0


if __name__ == "__main__":
    sys.exit(main())
