"""``same-fast demo [-o DIR]``: degrade, enhance, adapt and enhance again, on embedded data only.

Fundus: scikit-image's real retina photograph, cut into four quadrant tiles, under camera noise
(``sensor-noise``: no preset that trained ``fundus-lite`` adds noise) or, with
``--fundus-shift fundus-cataract``, cataract haze. Ultrasound: pydicom's bundled echo cine
(``examples_ybr_color.dcm``), frames in grey, under a speckle stronger than the training range;
``ultrasound-lite`` never saw an echocardiogram. Both shifts were fixed before the current
recipe existed. For each: the shipped source model enhances, then SAME adapts offline with the
default recipe of ``same-fast adapt`` (``AdaptConfig``'s defaults: the student's view
re-degraded as the case's own images tell: noise at their estimated level, and JPEG at their own
quality when they are JPEGs, else a mild JPEG pass;
the shipped picker, its calibration share set from the case's own score distribution,
``picker.auto_calibrate``); nothing is set from the shift that made the case. Only the budget
is the demo's own (``--steps``, ``--view``). The adapted model enhances again. Writes
``<modality>.png`` (rows: tiles or frames; columns: input, source output, adapted output, clean;
SSIM/PSNR under each panel), ``progress.png`` (SSIM and picker acceptance against the step, one
axis per metric) when matplotlib (the ``plot`` extra) is installed, ``summary.json`` (every
number) and prints a short table. No downloads, no shared data.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

HELP = "enhance and adapt an embedded example end to end"
FUNDUS_SHIFTS = ("sensor-noise", "fundus-cataract")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from same_fast.adapt.loop import AdaptConfig

    p.add_argument("-o", "--out", default="same-fast-demo", metavar="DIR", help="output folder")
    p.add_argument("--steps", type=int, default=400, help="adaptation steps per modality")
    p.add_argument("--view", type=int, default=128, help="adaptation view side (px)")
    p.add_argument("--frames", type=int, default=8, help="ultrasound frames used")
    p.add_argument("--modality", choices=["fundus", "ultrasound", "both"], default="both")
    p.add_argument("--eval-every", type=int, default=20, help="steps between quality probes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fundus-shift", choices=FUNDUS_SHIFTS, default="sensor-noise",
                   help="the fundus target shift: camera noise (never seen in source training) "
                        "or cataract haze (partly seen)")
    p.add_argument("--picker-calibrate", default="auto", metavar="SHARE",
                   help="the picker also learns from the best SHARE of each case's own "
                        "pseudo-labels: auto (set from their score distribution, as adapt "
                        "does) or a number in [0, 1) (0 = the absolute thresholds alone)")
    p.add_argument("--serve", choices=["student", "teacher"], default=AdaptConfig().serve,
                   help="the adapted model that enhances afterwards")
    p.add_argument("--fundus-model", default="fundus-lite", help="enhancer name or checkpoint")
    p.add_argument("--ultrasound-model", default="ultrasound-lite")
    p.add_argument("--fundus-picker", default="fundus-picker",
                   help="picker name, path, auto (the modality's) or none")
    p.add_argument("--ultrasound-picker", default="ultrasound-picker")


def fundus_tiles(side: int = 256):
    """The scikit-image retina as four quadrant tiles: clean (4, 3, side, side) in [0, 1] and
    FOV masks (4, 1, side, side)."""
    import torch
    import torch.nn.functional as F
    from skimage import data

    from same_fast.io import to_tensor

    x = F.interpolate(to_tensor(data.retina())[None], size=(2 * side, 2 * side), mode="area")[0]
    fov = (x.amax(0, keepdim=True) > 0.06).float()
    tiles = [t[:, i * side:(i + 1) * side, j * side:(j + 1) * side]
             for t in (x * fov, fov) for i in range(2) for j in range(2)]
    return torch.stack(tiles[:4]), torch.stack(tiles[4:])


def echo_frames(n: int, multiple: int = 32):
    """The first ``n`` frames of pydicom's echo cine in grey, cropped to multiples of
    ``multiple``: (n, 1, H, W) in [0, 1]."""
    from pydicom.data import get_testdata_file

    from same_fast.io import load, to_tensor

    frames = to_tensor(load(get_testdata_file("examples_ybr_color.dcm")).frames[:n])
    g = frames.mean(1, keepdim=True)
    h, w = g.shape[-2] // multiple * multiple, g.shape[-1] // multiple * multiple
    y0, x0 = (g.shape[-2] - h) // 2, (g.shape[-1] - w) // 2
    return g[..., y0:y0 + h, x0:x0 + w].contiguous()


def _picker(name: str, modality: str, calibrate: float | None) -> tuple[Any, str]:
    """(picker or None, what was used). ``calibrate`` None leaves the share to
    ``adapt_offline`` (``picker_share_auto``: from the case's own pseudo-label scores)."""
    from same_fast.errors import CheckpointError
    from same_fast.picker import resolve_picker

    try:
        picker = resolve_picker(name, modality)
    except CheckpointError as e:  # keep the demo running: say so in the summary
        return None, f"none ({e})"
    if picker is None:
        return None, "none"
    if calibrate is not None:
        picker.set_calibration(calibrate)
    return picker, name


def run_case(modality: str, clean, fov, preset, model_name: str, picker_name: str, steps: int,
             view: int, eval_every: int, seed: int, calibrate: float | None = None,
             serve: str = "student") -> tuple[dict[str, Any], list]:
    """Degrade, enhance, adapt with the default recipe, enhance again; returns (numbers,
    [input, source, adapted, clean]).

    calibrate: the picker's calibration share (None = from the case's own scores, as
    ``same-fast adapt`` does); serve: the model that enhances after adapting."""
    import numpy as np
    import torch

    from same_fast.adapt.loop import AdaptConfig, adapt_offline, redegradation
    from same_fast.degrade import degrade
    from same_fast.eval.protocol import image_scores
    from same_fast.models import load_model
    from same_fast.nn import enhance
    from same_fast.picker import picker_config_dict

    model, meta = load_model(model_name)
    g = torch.Generator().manual_seed(seed)
    x = degrade(clean, preset, g, fov)
    picker, picker_used = _picker(picker_name, modality, calibrate)
    t0 = time.perf_counter()
    src = enhance(model, x, fov, batch_size=4)
    t_src = time.perf_counter() - t0
    curve: list[dict[str, float]] = []

    def cb(step: int, total: int, rec: dict, served) -> None:
        entry = {"step": step, "accepted": rec["accepted"] / rec["batch"], "loss": rec["loss"]}
        if step % eval_every == 0 or step == total:
            was = served.training
            y = enhance(served, x, fov, batch_size=4)
            served.train(was)
            entry["ssim"] = float(np.mean([r["ssim"] for r in image_scores(y, clean, fov)]))
        curve.append(entry)

    cfg = AdaptConfig(steps=steps, batch=4, size=view, seed=seed, modality=modality, serve=serve,
                      picker_share_auto=calibrate is None)
    fovs = None if fov is None else list(fov)
    t0 = time.perf_counter()
    res = adapt_offline(model, list(x), picker, cfg, fovs, callback=cb)
    t_adapt = time.perf_counter() - t0
    ada = enhance(res.student if serve == "student" else res.teacher, x, fov, batch_size=4)
    scores = {k: image_scores(v, clean, fov) for k, v in (("input", x), ("source", src),
                                                          ("adapted", ada))}
    mean = {k: {m: float(np.mean([r[m] for r in v])) for m in ("ssim", "psnr")}
            for k, v in scores.items()}
    numbers = {
        "modality": modality, "model": model_name, "picker": picker_used, "images": len(x),
        "size": list(x.shape[-2:]), "steps": steps, "view": view, "serve": serve,
        "student_view": repr(redegradation(cfg, list(x), fovs)),
        "picker_share_auto": cfg.picker_share_auto,
        "picker_config": None if picker is None else picker_config_dict(picker),
        "mean": mean, "per_image": scores, "skipped": res.skipped,
        "acceptance": None if res.skipped else res.acceptance,
        "negative_adaptation": float(np.mean([a["ssim"] < s["ssim"] for a, s in
                                              zip(scores["adapted"], scores["source"],
                                                  strict=True)])),
        "curve": curve, "seconds": {"enhance_source": t_src, "adapt": t_adapt},
        "model_provenance": meta.get("provenance"),
    }
    return numbers, [x, src, ada, clean]


def _grid(path: Path, case: dict[str, Any], rows: list, n: int = 4) -> bool:
    """Labelled grid: one row per tile or frame, columns input / source / adapted / clean."""
    from same_fast.eval.figures import image_grid

    n = min(n, rows[0].shape[0])
    per = case["per_image"]
    caps = [[f"SSIM {per[k][i]['ssim']:.3f} · {per[k][i]['psnr']:.2f} dB"
             for k in ("input", "source", "adapted")] + ["reference"] for i in range(n)]
    unit = "tile" if case["modality"] == "fundus" else "frame"
    return image_grid(path, [[r[i] for r in rows] for i in range(n)],
                      ["degraded input", f"source model ({case['model']})",
                       f"adapted ({case['steps']} steps, {case['serve']})", "clean"],
                      [f"{unit} {i + 1}" for i in range(n)], caps,
                      title=f"same-fast demo: {case['modality']}")


def plot_curves(path: Path, cases: dict[str, dict[str, Any]]) -> bool:
    """SSIM of the served model and the picker's acceptance against the adaptation step: one
    axis per metric, one labelled curve per case, the source model's SSIM dashed."""
    from same_fast.eval.figures import curve_panels

    ssim, acc, ref = [], [], []
    for name, c in cases.items():
        pts = c["curve"]
        ss = [(p["step"], p["ssim"]) for p in pts if "ssim" in p]
        src = c["mean"]["source"]["ssim"]
        colour = {"fundus": "tab:red", "ultrasound": "tab:blue"}.get(name)
        ssim.append({"x": [0] + [s for s, _ in ss], "y": [src] + [v for _, v in ss],
                     "label": f"{name}, adapted ({c['serve']})", "color": colour, "marker": "."})
        ref.append({"y": src, "label": f"{name}, source model", "color": colour})
        # acceptance per step is a multiple of 1/batch: a running mean over ~5 % of the steps
        k = max(1, len(pts) // 20)
        a = [p["accepted"] for p in pts]
        acc.append({"x": [p["step"] for p in pts],
                    "y": [sum(a[max(0, i - k + 1):i + 1]) / len(a[max(0, i - k + 1):i + 1])
                          for i in range(len(a))],
                    "label": f"{name} (mean of {k} steps)", "color": colour})
    return curve_panels(path, [
        {"ylabel": "SSIM against the clean images", "title": "quality", "curves": ssim,
         "hlines": ref},
        {"ylabel": "share of views the picker accepted", "title": "picker", "ylim": (0, 1.02),
         "curves": acc}], "adaptation step", title="same-fast demo: adaptation progress")


def _share(spec: str) -> float | None:
    """--picker-calibrate's value -> a share, or None for auto."""
    from same_fast.errors import InputError
    from same_fast.picker import PickerConfig

    if spec == "auto":
        return None
    try:
        share = float(spec)
    except ValueError:
        raise InputError(f"--picker-calibrate must be auto or a number, got '{spec}'") from None
    PickerConfig(calibrate=share).check()
    return share


def run(args: argparse.Namespace) -> int:
    import torch

    from same_fast.degrade import PRESETS
    from same_fast.degrade.presets import SPECKLE_BEYOND_TRAINING
    from same_fast.errors import CheckpointError
    from same_fast.eval.figures import pyplot

    share = _share(args.picker_calibrate)
    t_all = time.perf_counter()
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases: dict[str, dict[str, Any]] = {}
    grids: dict[str, list] = {}
    skipped: dict[str, str] = {}
    common = (args.steps, args.view, args.eval_every, args.seed, share, args.serve)
    if args.modality in ("fundus", "both"):
        try:
            clean, fov = fundus_tiles()
            cases["fundus"], grids["fundus"] = run_case(
                "fundus", clean, fov, args.fundus_shift, args.fundus_model, args.fundus_picker,
                *common)
        except CheckpointError as e:  # a model missing from this install: run the other case
            skipped["fundus"] = str(e)
    if args.modality in ("ultrasound", "both"):
        try:
            clean = echo_frames(args.frames)
            preset = dataclasses.replace(PRESETS["ultrasound-speckle"], **SPECKLE_BEYOND_TRAINING)
            cases["ultrasound"], grids["ultrasound"] = run_case(
                "ultrasound", clean, None, preset, args.ultrasound_model, args.ultrasound_picker,
                *common)
        except CheckpointError as e:
            skipped["ultrasound"] = str(e)
    for name, why in skipped.items():
        sys.stderr.write(f"same-fast demo: skipped {name}: {why}\n")
    if not cases:
        raise CheckpointError("no demo case could run: " + "; ".join(skipped.values()))
    if pyplot() is None:
        print("same-fast demo: matplotlib is not installed (pip install 'same-fast[plot]'): "
              "no PNG figures, the numbers are in summary.json")
    else:
        for name, rows in grids.items():
            _grid(out / f"{name}.png", cases[name], rows)
        plot_curves(out / "progress.png", cases)
    summary = {"cases": cases, "skipped": skipped, "seconds": time.perf_counter() - t_all,
               "data": {"fundus": "skimage.data.retina() (CC0), 4 quadrant tiles, "
                                  f"{args.fundus_shift} shift",
                        "ultrasound": "pydicom examples_ybr_color.dcm (echo cine), grey, "
                                      "speckle beyond the training range"}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"{'case':<11} {'input SSIM/PSNR':>16} {'source':>16} {'adapted':>16} {'accept':>7}")
    for name, c in cases.items():
        m = c["mean"]
        cols = [f"{m[k]['ssim']:.4f}/{m[k]['psnr']:5.2f}" for k in ("input", "source", "adapted")]
        acc = "skipped" if c["acceptance"] is None else f"{c['acceptance']:.2f}"
        print(f"{name:<11} {cols[0]:>16} {cols[1]:>16} {cols[2]:>16} {acc:>7}")
    for name, c in cases.items():
        if c.get("skipped"):
            print(f"{name}: adaptation skipped: {c['skipped']}")
    print(f"wrote {out}/summary.json and figures in {summary['seconds']:.0f} s")
    return 0
