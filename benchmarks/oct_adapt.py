"""OCT adaptation (issue #25): oct-lite adapted offline to reporting scans under a shift that
neither its training nor the re-degradation knows.

The shift (``SHIFT``, fixed before any adaptation run): fewer looks and coarser speckle grain
than the ``oct`` preset draws, and a lateral blur always on and wider than its range; the other
families as in ``oct``. The student's re-degraded view uses the ``oct`` preset itself (the
training preset, which does not know the shift). ``--recipe fixed``: no picker (mean teacher
with the re-degraded view), settings fixed in advance (``ADAPT``), no oracle: the clean scans
are read only to score. Reports the SSIM/PSNR of oct-lite and of the adapted student on the same shifted
scans (paper protocol, grey), per class, and the share of scans the adaptation makes worse.

    .venv/bin/python benchmarks/oct_adapt.py --out benchmarks/results/2026-12-06-cpu-oct-adapt.json
    .venv/bin/python benchmarks/oct_adapt.py --recipe default \
        --out benchmarks/results/2026-12-06-cpu-oct-adapt-default.json

``--recipe default`` is what ``same-fast adapt -m oct-lite`` does with no options; ``--recipe
oracle`` (ORACLE, reported apart) is the default with the shift's own generator as the student's
view. Settings are chosen on the selection patients (``--data Kermany-select``) under the
selection shift ``--shift select-oct-speckle`` and on their clean scans (``--shift none``); the
test shift ``oct-shift`` is reported on the reporting patients. ``--online-frames N`` streams N
scans (drawn with replacement) through ``same-fast adapt --mode online``'s defaults instead and
scores the served model on every scan each ``--online-eval-every`` frames (the safety curve).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptation_shifts import _redegradation  # noqa: E402
from oct_eval import (  # noqa: E402
    CLASSES,
    bootstrap,
    load_scans,
    print_targets,
    run_info,
    save,
    score_model,
)

from same_fast.adapt.loop import AdaptConfig, adapt_offline  # noqa: E402
from same_fast.degrade import PRESETS  # noqa: E402
from same_fast.degrade.estimate import target_speckle  # noqa: E402
from same_fast.models import load_model  # noqa: E402
from same_fast.picker import picker_config_dict  # noqa: E402

SHIFT = dataclasses.replace(PRESETS["oct"], name="oct-shift", looks=(1.0, 1.5),
                            grain_sigma=(1.2, 2.0), p_blur=1.0, lateral_sigma=(3.0, 6.0))
ADAPT = dict(mode="offline", steps=200, batch=4, size=256, redegrade=True,
             redegrade_preset="oct", modality="oct", seed=0, picker="none")
# --recipe default: what `same-fast adapt -m oct-lite` does with no options (AdaptConfig's
# defaults: the re-degradation read off the target scans, 100 steps, --picker auto).
DEFAULT = dict(mode="offline", modality="oct", seed=0)


def resolve(spec: str | None, cfg: AdaptConfig) -> Any:
    """The picker ``same-fast adapt`` would use for ``spec`` (``None``: the recipe's own,
    ``auto`` under the default recipe, none under the fixed one)."""
    from same_fast.picker import PickerConfig, resolve_picker

    return resolve_picker(spec if spec is not None else cfg.picker, "oct", "cpu",
                          PickerConfig(calibrate=cfg.picker_calibrate))


def compare(src: list[dict[str, Any]], ada: list[dict[str, Any]], n_boot: int, seed: int
            ) -> dict[str, Any]:
    """Per class and overall: source and adapted means, the gain with its 95 % interval and
    the share of scans made worse (SSIM)."""
    rng = np.random.default_rng(seed)
    out = {}
    for group in ("all", *CLASSES):
        idx = [i for i, r in enumerate(src) if group == "all" or r["class"] == group]
        if not idx:
            continue
        s = np.array([src[i]["ssim"] for i in idx])
        a = np.array([ada[i]["ssim"] for i in idx])
        ps = np.array([src[i]["psnr"] for i in idx])
        pa = np.array([ada[i]["psnr"] for i in idx])
        out[group] = {"n": len(idx), "ssim_input": float(np.mean([src[i]["ssim_input"]
                                                                  for i in idx])),
                      "ssim_source": float(s.mean()), "ssim_adapted": float(a.mean()),
                      "ssim_gain": float((a - s).mean()),
                      "ssim_gain_ci95": bootstrap(a - s, n_boot, rng),
                      "psnr_source": float(ps.mean()), "psnr_adapted": float(pa.mean()),
                      "share_worse": float((a < s).mean())}
    return out


def run_online(model: torch.nn.Module, scans: list[dict[str, Any]],
               src: list[dict[str, Any]], frames_n: int, every: int, seed: int,
               picker_spec: str | None = None, calibrate: float | None = None
               ) -> dict[str, Any]:
    """Online adaptation (``AdaptConfig(mode="online")``'s defaults, its picker unless
    ``picker_spec`` names one; ``calibrate``: its share, as ``--picker-calibrate``) over a
    stream of ``frames_n`` scans drawn with replacement; the curve of the served model's gain."""
    from same_fast.adapt.online import OnlineAdapter

    cfg = AdaptConfig(mode="online", modality="oct", seed=seed)
    if calibrate is not None:
        cfg = dataclasses.replace(cfg, picker_calibrate=calibrate)
    picker = resolve(picker_spec, cfg)
    ad = OnlineAdapter(model, picker, cfg)
    order = torch.randint(0, len(scans), (frames_n,),
                          generator=torch.Generator().manual_seed(seed + 1)).tolist()
    s = np.array([r["ssim"] for r in src])
    ps = np.array([r["psnr"] for r in src])
    curve = []
    for k, i in enumerate(order, 1):
        ad.observe(scans[i]["degraded"])
        if k % every == 0 or k == frames_n:
            ada, _ = score_model(ad.served, scans, identity=False)
            a = np.array([r["ssim"] for r in ada])
            pa = np.array([r["psnr"] for r in ada])
            curve.append({"frames": k, "steps": ad.steps, "gain_ssim": float((a - s).mean()),
                          "gain_psnr": float((pa - ps).mean()),
                          "share_worse": float((a < s).mean()), "resets": ad.resets,
                          "frozen": ad.frozen})
            print(f"  frame {k}: {curve[-1]['gain_ssim']:+.4f} SSIM, "
                  f"{curve[-1]['gain_psnr']:+.2f} dB, worse {curve[-1]['share_worse']:.0%}, "
                  f"steps {ad.steps}", flush=True)
    return {"config": {k: v for k, v in dataclasses.asdict(cfg).items()
                       if not isinstance(v, tuple)},
            "picker": None if picker is None else picker_config_dict(picker),
            "student_view": ad.stats()["student_view"], "curve": curve,
            "ends_below_source": curve[-1]["gain_ssim"] < 0,
            "min_gain_ssim": min(c["gain_ssim"] for c in curve)}


def grid(path: Path, src: list[dict[str, Any]], ada: list[dict[str, Any]],
         src_trios: list[np.ndarray], ada_trios: list[np.ndarray], label: str) -> None:
    """One row per class, its scan of median adaptation gain: clean (reference), shifted input,
    oct-lite, adapted; each titled with its SSIM and PSNR against the clean scan."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    classes = [c for c in CLASSES if any(r["class"] == c for r in src)]
    fig, axes = plt.subplots(len(classes), 4, figsize=(16, 3.3 * len(classes)), squeeze=False)
    for i, cls in enumerate(classes):
        idx = [k for k, r in enumerate(src) if r["class"] == cls]
        gains = np.array([ada[k]["ssim"] - src[k]["ssim"] for k in idx])
        k = idx[int(np.argsort(gains)[len(gains) // 2])]
        s, a = src[k], ada[k]
        panels = [(src_trios[k][0], f"{cls} {s['file']}: clean (reference)"),
                  (src_trios[k][1], f"shifted input: SSIM {s['ssim_input']:.3f}, "
                                    f"{s['psnr_input']:.1f} dB"),
                  (src_trios[k][2], f"oct-lite: SSIM {s['ssim']:.3f}, {s['psnr']:.1f} dB"),
                  (ada_trios[k][2], f"adapted ({label}): SSIM {a['ssim']:.3f}, "
                                    f"{a['psnr']:.1f} dB")]
        for j, (img, title) in enumerate(panels):
            axes[i, j].imshow(img, cmap="gray", vmin=0, vmax=255)
            axes[i, j].set_title(title, fontsize=9)
            axes[i, j].axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def contaminate(scans: list[dict[str, Any]], share: float, seed: int) -> list[dict[str, Any]]:
    """Mark ``round(share x n)`` scans (drawn with ``seed``) ungradable: their ``degraded`` is
    replaced by a planted beyond-rescue version (noise, scramble, washout in turn). Returns
    what was done to which scan."""
    if not share:
        return []
    if not 0 < share < 1:
        raise SystemExit(f"--ungradable must be in (0, 1), got {share}")
    sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the lab's families
    from lab.planted import planted

    g = torch.Generator().manual_seed(seed + 11)
    idx = sorted(torch.randperm(len(scans), generator=g)[:round(share * len(scans))].tolist())
    done = []
    for k, i in enumerate(idx):
        fam = ("noise", "scramble", "washout")[k % 3]
        sc = scans[i]
        sc["degraded"] = planted(sc["degraded"][None], g)[fam][0]
        sc["ungradable"] = fam
        done.append({"file": sc["file"], "family": fam})
    return done


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="oct-lite")
    ap.add_argument("--data", default="Kermany-report")
    ap.add_argument("--seed", type=int, default=0, help="degradation seed")
    ap.add_argument("--recipe", choices=("fixed", "default", "oracle"), default="fixed",
                    help="fixed: ADAPT (the oct preset as the re-degradation, 200 steps); "
                         "default: same-fast adapt's defaults (DEFAULT); oracle: the default "
                         "with the shift itself as the student's view (ORACLE)")
    ap.add_argument("--shift", choices=("oct-shift", "select-oct-speckle", "oct", "none"),
                    default="oct-shift", help="oct-shift: the test shift (SHIFT); "
                    "select-oct-speckle: the selection shift; oct: the training preset; none: "
                    "the clean scans")
    ap.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--lr", type=float, default=None,
                    help="offline: the student's Adam rate (default: the modality's, AdaptConfig)")
    ap.add_argument("--view-gain", type=float, default=1.0,
                    help="recipe default: the speckle view at this times the strength read "
                         "(a selection probe; the product uses 1)")
    ap.add_argument("--ignore-floor", action="store_true",
                    help="recipe default: add the speckle read even where it is no coarser than "
                         "the source's training scans (a selection probe: why the floor exists)")
    ap.add_argument("--picker", default=None,
                    help="a shipped picker, a checkpoint, auto or none (default: the recipe's: "
                         "auto for default and oracle, none for fixed)")
    ap.add_argument("--picker-calibrate", type=float, default=None, metavar="SHARE",
                    help="as same-fast adapt's flag: the picker also accepts the best SHARE of "
                         "the target's pseudo-labels; 0 = its absolute thresholds alone "
                         "(default: adapt's; offline, a share set from the target's own scores "
                         "unless the picker keeps its thresholds, as oct-picker does)")
    ap.add_argument("--ungradable", type=float, default=0.0, metavar="SHARE",
                    help="a contaminated clinic: this share of the target scans (drawn with "
                         "the seed) is replaced, before adaptation, by beyond-rescue versions "
                         "(lab.planted's noise-flooded, patch-scrambled and washed-out families "
                         "in turn); scores cover the other scans only")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--online-frames", type=int, default=0,
                    help="stream this many scans through online adaptation instead")
    ap.add_argument("--online-eval-every", type=int, default=250)
    ap.add_argument("--max-per-class", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--grid", default=None, metavar="PNG",
                    help="offline: per class, the scan of median adaptation gain as clean, "
                         "shifted, oct-lite and adapted, labelled (matplotlib)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = run_info(args.model, argv)  # the commit the run starts from
    model, _ = load_model(args.model)
    shift = SHIFT if args.shift == "oct-shift" else PRESETS.get(args.shift, SHIFT)
    scans = load_scans(args.data, shift, args.seed, args.max_per_class)
    if args.shift == "none":
        for sc in scans:
            sc["degraded"] = sc["clean"]
    junk = contaminate(scans, args.ungradable, args.seed)
    frames = [sc["degraded"] for sc in scans]  # what the clinic's folder holds
    scans = [sc for sc in scans if "ungradable" not in sc]  # what is scored
    src, src_trios = score_model(model, scans, identity=False)
    base = ADAPT if args.recipe == "fixed" else DEFAULT
    cfg = AdaptConfig(**base)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    if args.lr is not None:
        cfg = dataclasses.replace(cfg, lr=args.lr)
    if args.picker_calibrate is not None:  # naming it turns the automatic share off
        cfg = dataclasses.replace(cfg, picker_calibrate=args.picker_calibrate,
                                  picker_share_auto=False)
    if args.online_frames:
        if junk:
            raise SystemExit("--ungradable is for offline runs")
        res = {**info, "data": args.data, "mode": "online",
               "shift": None if args.shift == "none" else dataclasses.asdict(shift),
               "seeds": {"degrade": args.seed, "adapt": 0, "stream": 1},
               **run_online(model, scans, src, args.online_frames, args.online_eval_every, 0,
                            args.picker, args.picker_calibrate)}
        save(res, args.out)
        return res
    view: Any = None  # the student's view replaced for this run (None: adapt's own)
    if args.recipe == "oracle":
        if args.shift == "none":
            raise SystemExit("the oracle recipe needs a shift")
        view = shift
    elif args.recipe == "default" and (args.view_gain != 1.0 or args.ignore_floor):
        read = target_speckle(frames)
        view = dataclasses.replace(read, strength=read.strength * args.view_gain,
                                   floor=0.0 if args.ignore_floor else read.floor)
    picker = resolve(args.picker, cfg)
    if view is None:
        result = adapt_offline(model, frames, picker, cfg)
    else:
        with _redegradation(view):
            result = adapt_offline(model, frames, picker, cfg)
    ada, ada_trios = score_model(result.student, scans, identity=False)
    if args.grid:
        grid(Path(args.grid), src, ada, src_trios, ada_trios,
             "ORACLE view" if args.recipe == "oracle" else f"{args.recipe} recipe")
    summary = compare(src, ada, args.boot, 0)
    a = summary["all"]
    res = {**info, "data": args.data,
           "shift": None if args.shift == "none" else dataclasses.asdict(shift),
           "recipe": args.recipe, "oracle": args.recipe == "oracle",
           "view_gain": args.view_gain, "ignore_floor": args.ignore_floor,
           "ungradable": junk or None,
           "student_view": result.view, "skipped": result.skipped,
           "adapt": dataclasses.asdict(cfg.resolved()),
           "picker": None if picker is None else picker_config_dict(picker),
           "seeds": {"degrade": args.seed, "adapt": cfg.seed, "bootstrap": 0},
           "summary": summary,
           "targets": {"ssim_gain>=0.01": {"value": a["ssim_gain"], "met": a["ssim_gain"] >= 0.01},
                       "share_worse<=20%": {"value": a["share_worse"],
                                            "met": a["share_worse"] <= 0.20}},
           "loss_first_last": [result.history[0]["loss"], result.history[-1]["loss"]]
           if result.history else None,
           "acceptance": result.acceptance if result.history and picker is not None else None,
           "rows": [{**r, "ssim_adapted": q["ssim"], "psnr_adapted": q["psnr"]}
                    for r, q in zip(src, ada, strict=True)]}
    save(res, args.out)
    for g, s in summary.items():
        print(f"{g:7s} n={s['n']:3d} SSIM input {s['ssim_input']:.3f} oct-lite "
              f"{s['ssim_source']:.3f} adapted {s['ssim_adapted']:.3f} ({s['ssim_gain']:+.4f} "
              f"[{s['ssim_gain_ci95'][0]:+.4f}, {s['ssim_gain_ci95'][1]:+.4f}]) worse "
              f"{s['share_worse']:.0%}")
    if res["oracle"]:
        print("ORACLE: the student's view is the shift's own generator (not a recipe)")
    print(f"student's view: {result.view}" + (f"; skipped: {result.skipped}" if result.skipped
                                              else ""))
    print_targets(res)
    return res


if __name__ == "__main__":
    main()
