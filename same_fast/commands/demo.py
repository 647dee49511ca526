"""``same-fast demo [-o DIR]``: degrade, enhance, adapt and enhance again, on embedded data only.

Fundus: scikit-image's real retina photograph, cut into four quadrant tiles, under camera noise
(``sensor-noise``: no preset that trained ``fundus-lite`` adds noise) or, with
``--fundus-shift fundus-cataract``, cataract haze. Ultrasound: pydicom's bundled echo cine
(``examples_ybr_color.dcm``), frames in grey, under a speckle stronger than the training range;
``ultrasound-lite`` never saw an echocardiogram. For each: the shipped source model enhances,
SAME adapts offline (the shipped picker, calibrated to the case's own pseudo-labels because
both pickers rate nearly all of them below their absolute thresholds; the student learns from a
view with the case's kind of degradation added again), and the adapted teacher (the EMA of the
student, steadier than the student from step to step) enhances again. Writes
``<modality>.png`` (rows: input, source output, adapted output, clean), ``progress.png`` (SSIM
and picker acceptance over the adaptation steps), ``summary.json`` (every number) and prints a
short table. No downloads, no shared data.
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

# The student's re-degraded view for each fundus shift, (preset, strength): the target's own kind
# of degradation added again (Noisier2Noise for noise); haze gets none (a cataract-family view
# made the DRIVE experiment worse).
FUNDUS_VIEWS = {"sensor-noise": ("sensor-noise", 1.0), "fundus-cataract": ("", 0.0)}
ULTRASOUND_VIEW = ("ultrasound-speckle", 0.6)
DEFAULT_SERVE = "teacher"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", default="same-fast-demo", metavar="DIR", help="output folder")
    p.add_argument("--steps", type=int, default=400, help="adaptation steps per modality")
    p.add_argument("--view", type=int, default=128, help="adaptation view side (px)")
    p.add_argument("--frames", type=int, default=8, help="ultrasound frames used")
    p.add_argument("--modality", choices=["fundus", "ultrasound", "both"], default="both")
    p.add_argument("--eval-every", type=int, default=20, help="steps between quality probes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fundus-shift", choices=sorted(FUNDUS_VIEWS), default="sensor-noise",
                   help="the fundus target shift: camera noise (never seen in source training) "
                        "or cataract haze (partly seen)")
    p.add_argument("--redegrade", default="auto", metavar="STRENGTH",
                   help="strength of the student's re-degraded view: auto (each case's own: "
                        "sensor-noise 1.0 for the noisy fundus, ultrasound-speckle 0.6 for the "
                        "echo, none for haze), or a number for both cases (0 = the paper's "
                        "recipe, the same view for teacher and student)")
    p.add_argument("--picker-calibrate", type=float, default=0.5, metavar="SHARE",
                   help="also learn from the best SHARE of each case's own pseudo-labels (0 = "
                        "the picker's absolute thresholds alone, which reject nearly all here)")
    p.add_argument("--serve", choices=["student", "teacher"], default=DEFAULT_SERVE,
                   help="the adapted model that enhances afterwards")
    p.add_argument("--fundus-model", default="fundus-lite", help="enhancer name or checkpoint")
    p.add_argument("--ultrasound-model", default="ultrasound-lite")
    p.add_argument("--fundus-picker", default="fundus-picker", help="picker name, path or none")
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


def run_case(modality: str, clean, fov, preset, model_name: str, picker_name: str, steps: int,
             view: int, eval_every: int, seed: int, redegrade: float = 0.0,
             redegrade_preset: str = "", calibrate: float = 0.0, serve: str = "student"
             ) -> tuple[dict[str, Any], list]:
    """Degrade, enhance, adapt, enhance again; returns (numbers, [input, source, adapted, clean]).

    redegrade: strength of the student's re-degraded view (0 = the paper's recipe) of preset
    ``redegrade_preset`` ("" = the modality's default); calibrate: the picker's calibration
    share (``PickerConfig.calibrate``); serve: the model that enhances after adapting."""
    import numpy as np
    import torch

    from same_fast.adapt.loop import AdaptConfig, adapt_offline
    from same_fast.degrade import degrade
    from same_fast.errors import CheckpointError
    from same_fast.eval.protocol import image_scores
    from same_fast.models import load_model
    from same_fast.nn import enhance
    from same_fast.picker import PickerConfig, load_picker, picker_config_dict

    model, meta = load_model(model_name)
    picker, picker_used = None, "none"
    if picker_name != "none":
        try:
            picker = load_picker(picker_name, config=PickerConfig(calibrate=calibrate))
            picker_used = picker_name
        except CheckpointError as e:  # keep the demo running: say so in the summary
            picker_used = f"none ({e})"
    g = torch.Generator().manual_seed(seed)
    x = degrade(clean, preset, g, fov)
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

    cfg = AdaptConfig(steps=steps, batch=4, size=view, seed=seed, modality=modality,
                      redegrade=redegrade > 0, redegrade_strength=redegrade,
                      redegrade_preset=redegrade_preset, serve=serve)
    t0 = time.perf_counter()
    res = adapt_offline(model, list(x), picker, cfg, None if fov is None else list(fov),
                        callback=cb)
    t_adapt = time.perf_counter() - t0
    ada = enhance(res.student if serve == "student" else res.teacher, x, fov, batch_size=4)
    scores = {k: image_scores(v, clean, fov) for k, v in (("input", x), ("source", src),
                                                          ("adapted", ada))}
    mean = {k: {m: float(np.mean([r[m] for r in v])) for m in ("ssim", "psnr")}
            for k, v in scores.items()}
    numbers = {
        "modality": modality, "model": model_name, "picker": picker_used, "images": len(x),
        "size": list(x.shape[-2:]), "steps": steps, "view": view, "redegrade": redegrade,
        "redegrade_preset": cfg.redegrade_preset, "serve": serve,
        "picker_config": None if picker is None else picker_config_dict(picker),
        "mean": mean, "per_image": scores, "acceptance": res.acceptance,
        "negative_adaptation": float(np.mean([a["ssim"] < s["ssim"] for a, s in
                                              zip(scores["adapted"], scores["source"],
                                                  strict=True)])),
        "curve": curve, "seconds": {"enhance_source": t_src, "adapt": t_adapt},
        "model_provenance": meta.get("provenance"),
    }
    return numbers, [x, src, ada, clean]


def _grid(path: Path, rows: list, n: int = 4) -> None:
    import torch

    from same_fast.io import to_array, write_image

    n = min(n, rows[0].shape[0])
    img = torch.cat([torch.cat([r[i] for i in range(n)], -1) for r in rows], -2)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    write_image(path, to_array(img))


def plot_curves(path: Path, cases: dict[str, dict[str, Any]]) -> None:
    """A small line chart (PIL only): SSIM (solid) and acceptance (dotted) against step."""
    from PIL import Image, ImageDraw

    w, h, pad = 640, 360, 40
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    d.rectangle([pad, pad, w - pad, h - pad], outline="black")
    colours = {"fundus": (200, 40, 40), "ultrasound": (40, 80, 200)}
    y = 12
    for name, c in cases.items():
        pts = c["curve"]
        total = max(1, pts[-1]["step"] if pts else 1)
        ss = [(p["step"], p["ssim"]) for p in pts if "ssim" in p]
        lo = min([v for _, v in ss] + [c["mean"]["source"]["ssim"]]) - 0.01
        hi = max([v for _, v in ss] + [c["mean"]["source"]["ssim"]]) + 0.01

        def xy(step: float, v: float, lo: float = lo, hi: float = hi, total: int = total):
            return (pad + (w - 2 * pad) * step / total,
                    h - pad - (h - 2 * pad) * (v - lo) / max(hi - lo, 1e-6))

        col = colours.get(name, (0, 0, 0))
        if len(ss) > 1:
            d.line([xy(s, v) for s, v in [(0, c["mean"]["source"]["ssim"])] + ss], fill=col,
                   width=2)
        # acceptance per step is a multiple of 1/batch: a running mean over ~5 % of the steps
        # shows its trend (dots, one per step)
        k = max(1, len(pts) // 20)
        acc = [p["accepted"] for p in pts]
        for i, p in enumerate(pts):
            win = acc[max(0, i - k + 1):i + 1]
            px, py = xy(p["step"], sum(win) / len(win), 0.0, 1.0)
            d.ellipse([px - 1, py - 1, px + 1, py + 1], fill=col)
        d.text((pad + 4, y), f"{name}: SSIM {lo:.3f}..{hi:.3f} (line), picker acceptance "
               f"0..1 (dots, mean of {k} steps)", fill=col)
        y += 14
    d.text((w // 2 - 40, h - pad + 8), "adaptation step", fill="black")
    im.save(path)


def _view(spec: str, auto: tuple[str, float]) -> tuple[str, float]:
    """--redegrade's value for one case -> (preset, strength)."""
    from same_fast.errors import InputError

    if spec == "auto":
        return auto
    try:
        strength = float(spec)
    except ValueError:
        raise InputError(f"--redegrade must be auto or a number, got '{spec}'") from None
    if not strength >= 0:
        raise InputError(f"--redegrade must be >= 0, got {strength}")
    return auto[0], strength


def run(args: argparse.Namespace) -> int:
    import torch

    from same_fast.degrade import PRESETS
    from same_fast.degrade.presets import SPECKLE_BEYOND_TRAINING
    from same_fast.errors import CheckpointError
    from same_fast.picker import PickerConfig

    fundus_view = _view(args.redegrade, FUNDUS_VIEWS[args.fundus_shift])
    echo_view = _view(args.redegrade, ULTRASOUND_VIEW)
    PickerConfig(calibrate=args.picker_calibrate).check()
    t_all = time.perf_counter()
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    if args.modality in ("fundus", "both"):
        try:
            clean, fov = fundus_tiles()
            cases["fundus"], rows = run_case(
                "fundus", clean, fov, args.fundus_shift, args.fundus_model, args.fundus_picker,
                args.steps, args.view, args.eval_every, args.seed, fundus_view[1],
                fundus_view[0], args.picker_calibrate, args.serve)
            _grid(out / "fundus.png", rows)
        except CheckpointError as e:  # a model missing from this install: run the other case
            skipped["fundus"] = str(e)
    if args.modality in ("ultrasound", "both"):
        try:
            clean = echo_frames(args.frames)
            preset = dataclasses.replace(PRESETS["ultrasound-speckle"], **SPECKLE_BEYOND_TRAINING)
            cases["ultrasound"], rows = run_case(
                "ultrasound", clean, None, preset, args.ultrasound_model, args.ultrasound_picker,
                args.steps, args.view, args.eval_every, args.seed, echo_view[1], echo_view[0],
                args.picker_calibrate, args.serve)
            _grid(out / "ultrasound.png", rows)
        except CheckpointError as e:
            skipped["ultrasound"] = str(e)
    for name, why in skipped.items():
        sys.stderr.write(f"same-fast demo: skipped {name}: {why}\n")
    if not cases:
        raise CheckpointError("no demo case could run: " + "; ".join(skipped.values()))
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
        print(f"{name:<11} {cols[0]:>16} {cols[1]:>16} {cols[2]:>16} {c['acceptance']:>7.2f}")
    print(f"wrote {out}/summary.json and PNGs in {summary['seconds']:.0f} s")
    return 0
