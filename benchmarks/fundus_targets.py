"""What issue #20's per-image targets ask, read off a stored cross-camera run (no data needed).

    python benchmarks/fundus_targets.py [benchmarks/results/2026-12-06-cpu-fundus-cross-camera.json ...]
        [--arm fundus-lite] [--ceiling ceiling_keep_colour|ceiling_keep_level|ceiling_keep_median]
        [--json FILE]

A file may also be a selection record that keeps several such runs under ``runs`` (as the
2026-12-07 selection JSONs do); every run in it that has the arm is read, and a case (camera and
condition) read twice keeps the later reading. ``--ceiling ceiling_keep_level`` (``_median``) measures
against the keep-colour ceiling brought to each degraded image's per-channel mean (median) inside
the FOV (runs scored from session 25 on carry them; see ``benchmarks/source_ceiling.py``).

For every camera and degraded condition of ``benchmarks/fundus_cross_camera.py``'s JSON:

- ``ceiling_below_input``: the images whose keep-colour ceiling (blur and the global colour
  factors left: what an enhancer that keeps the input's tone can reach) scores *below* the
  degraded input in SSIM. An enhancer that reached that ceiling on every image would still leave
  these images "below their input", so the share bounds what the "at most 10 % below" target can
  ask of a do-no-harm enhancer.
- per arm: the images it leaves below their input, and how many of them have the ceiling below
  too;
- per degradation type (``fundus-shen2020`` records each image's type): the mean SSIM gain of the
  arm and of the ceiling, i.e. where the distance to "half of the way" lies;
- the mean SSIM gain of the arm and of the ceiling, the share of the ceiling's gain the arm
  reaches, and under ``fundus-local`` the share of it that the fixed +0.03 SSIM target asks
  (the ceiling there leaves only blur: a camera whose degraded photographs keep most of their
  SSIM has little to gain, and a fixed target asks more of it).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
LOCAL_TARGET_SSIM = 0.03  # issue #20's fixed SSIM gain under fundus-local
DEFAULT_RUNS = ("2026-12-06-cpu-fundus-cross-camera.json",
                "2026-12-06-cpu-fundus-cross-camera-idrid-test.json")


def _family(kind: str) -> str:
    """An image's degradation type in three groups: cataract, blur (no cataract), other."""
    parts = kind.split("+")
    return "cataract" if "cataract" in parts else "blur" if "blur" in parts else "other"


def analyse(run: dict[str, Any], arm: str, ceiling: str = "ceiling_keep_colour") -> dict[str, Any]:
    """Per camera and condition: the ceiling-below-input images, the arm's below-input images,
    and (when types are recorded) the arm's and the ceiling's mean SSIM gain per family."""
    out: dict[str, Any] = {}
    for camera, conditions in run["cameras"].items():
        for cond, block in conditions.items():
            rows = [r for r in block.get("rows", []) if ceiling in r and arm in r]
            if not rows:
                continue
            gain = {r["name"]: r[arm]["ssim"] - r["degraded"]["ssim"] for r in rows}
            ceil = {r["name"]: r[ceiling]["ssim"] - r["degraded"]["ssim"] for r in rows}
            below_ceiling = sorted(n for n, g in ceil.items() if g < 0)
            below_arm = sorted(n for n, g in gain.items() if g < 0)
            fam: dict[str, list[str]] = defaultdict(list)
            for r in rows:
                if "type" in r:
                    fam[_family(r["type"])].append(r["name"])
            mean_gain, mean_ceil = sum(gain.values()) / len(rows), sum(ceil.values()) / len(rows)
            out[f"{camera}/{cond}"] = {
                "n": len(rows),
                "arm_gain_ssim": mean_gain,
                "ceiling_gain_ssim": mean_ceil,
                "arm_share_of_ceiling": mean_gain / mean_ceil if mean_ceil > 0 else None,
                "target_share_of_ceiling": (LOCAL_TARGET_SSIM / mean_ceil
                                            if cond == "fundus-local" and mean_ceil > 0 else None),
                "ceiling_below_input": below_ceiling,
                "share_ceiling_below_input": len(below_ceiling) / len(rows),
                "arm_below_input": below_arm,
                "share_arm_below_input": len(below_arm) / len(rows),
                "arm_below_where_ceiling_below": sorted(set(below_arm) & set(below_ceiling)),
                "families": {f: {"n": len(names),
                                 "arm_gain_ssim": sum(gain[n] for n in names) / len(names),
                                 "ceiling_gain_ssim": sum(ceil[n] for n in names) / len(names)}
                             for f, names in sorted(fam.items())},
            }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path,
                   help="cross-camera JSON files (default: the two stored runs of fundus-lite)")
    p.add_argument("--arm", default="fundus-lite", help="the arm to read (default: fundus-lite)")
    p.add_argument("--ceiling", default="ceiling_keep_colour",
                   choices=["ceiling_keep_colour", "ceiling_keep_level", "ceiling_keep_median"],
                   help="the ceiling to measure against (default: the issue's, ceiling_keep_colour)")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    runs = a.runs or [RESULTS / r for r in DEFAULT_RUNS]
    res: dict[str, Any] = {"arm": a.arm, "ceiling": a.ceiling, "runs": [str(r) for r in runs],
                           "cases": {}}
    for path in runs:
        try:
            run = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"fundus_targets: cannot read {path} ({e})") from None
        inner = run.get("runs") if isinstance(run, dict) and "cameras" not in run else None
        for one in inner.values() if isinstance(inner, dict) else [run]:
            if not isinstance(one, dict) or "cameras" not in one:
                raise SystemExit(f"fundus_targets: {path} holds no cross-camera run")
            res["cases"].update(analyse(one, a.arm, a.ceiling))
    for case, v in res["cases"].items():
        print(f"{case:30s} n={v['n']:3d}  ceiling below input {len(v['ceiling_below_input']):2d} "
              f"({v['share_ceiling_below_input']:.0%})  {a.arm} below {len(v['arm_below_input']):2d} "
              f"({v['share_arm_below_input']:.0%}), of which the ceiling too "
              f"{len(v['arm_below_where_ceiling_below'])}")
        share = v["arm_share_of_ceiling"]
        line = (f"    all       gain {v['arm_gain_ssim']:+.4f}  ceiling {v['ceiling_gain_ssim']:+.4f}"
                + (f"  ({share:.0%} of it)" if share is not None else ""))
        if v["target_share_of_ceiling"] is not None:
            line += f"  the +{LOCAL_TARGET_SSIM} target: {v['target_share_of_ceiling']:.0%} of it"
        print(line)
        for f, s in v["families"].items():
            print(f"    {f:9s} n={s['n']:2d}  gain {s['arm_gain_ssim']:+.4f}  "
                  f"ceiling {s['ceiling_gain_ssim']:+.4f}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
    sys.exit(0)
