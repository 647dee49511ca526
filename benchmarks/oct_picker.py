"""The OCT picker judged by what it is for (issue #25): does it tell implausible pseudo-labels
and harmful ones from the rest?

For every scan of ``--data`` under each ``--shift`` (each scan degraded with its own seed, as in
``oct_eval.py``), the teacher (``--model``, oct-lite) enhances the whole frame centred in a
zero-padded square (what adaptation's whole-frame views give it) and the picker scores its image
and structure outputs. Two questions, each with bootstrap 95 % intervals over scans:

1. *Planted failures*: the teacher's outputs on the same scans heavily corrupted (noise-flooded,
   patch-scrambled, washed out: ``lab.planted``, the families the fundus and ultrasound pickers
   are judged on) should rank below its outputs on the real degraded scans. AUROC of the
   picker's plausibility over all families and per family, and of each assessor alone
   (IQA: ``p_good / p_good threshold``; ISD: ``threshold / score``).
2. *Harmful pseudo-labels*: a teacher output whose SSIM against the clean scan (paper protocol,
   grey) is below its degraded input's would pull the student the wrong way. The share of them
   the picker rejects, against the share of the helpful ones it rejects, and the AUROC of
   plausibility for helpful over harmful.

Thresholds are the checkpoint's (ISD: 99th percentile of its training masks; P(good) 0.6, the
grey-modality default), fixed before any run. Selection patients (``--data Kermany-select``,
shifts ``oct`` and ``select-oct-speckle``) judge changes; reporting patients (the default,
shifts ``oct`` and ``oct-shift``) report.

    .venv/bin/python benchmarks/oct_picker.py --data Kermany-select --shift oct \\
        --shift select-oct-speckle --out benchmarks/results/2026-12-06-cpu-oct-picker-selection.json
    .venv/bin/python benchmarks/oct_picker.py \\
        --out benchmarks/results/2026-12-06-cpu-oct-picker.json
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(1, str(_ROOT.parent))  # the lab's planted families
from oct_adapt import SHIFT  # noqa: E402
from oct_eval import _u8, load_scans, run_info, save  # noqa: E402

from lab.planted import auroc, planted  # noqa: E402
from same_fast.degrade import PRESETS  # noqa: E402
from same_fast.eval import score_pair  # noqa: E402
from same_fast.models import load_model  # noqa: E402
from same_fast.picker import load_picker  # noqa: E402

FAMILIES = ("noise", "scramble", "washout")


def padded(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """``(1, H, W)`` in [0, 1] centred in a zero square whose side is the long side rounded up
    to ``multiple`` -> ``((1, 1, S, S), (top, left, H, W))``."""
    _, h, w = x.shape
    s = -(-max(h, w) // multiple) * multiple
    top, left = (s - h) // 2, (s - w) // 2
    out = torch.zeros(1, 1, s, s)
    out[0, :, top:top + h, left:left + w] = x
    return out, (top, left, h, w)


def teacher(model: torch.nn.Module, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's (image in [-1, 1], structure logits) on a padded frame in [0, 1]."""
    with torch.no_grad():
        return model(x01 * 2 - 1)


def judge(picker: Any, y: torch.Tensor, s: torch.Tensor) -> dict[str, float]:
    sc = picker.scores(y, s)
    return {"plausibility": float(sc["plausibility"][0]), "p_good": float(sc["p_good"][0]),
            "isd": float(sc["isd"][0]), "accepted": bool(float(sc["weights"][0]) > 0.5)}


def _margins(rows: list[dict[str, float]], picker: Any, key: str) -> np.ndarray:
    if key == "all":
        return np.array([r["plausibility"] for r in rows])
    if key == "iqa":
        return np.array([r["p_good"] / picker.p_good for r in rows])
    return np.array([picker.isd_threshold / max(r["isd"], 1e-12) for r in rows])


def boot_auroc(pos: list[list[float]], neg: list[list[float]], n: int, rng: np.random.Generator
               ) -> list[float]:
    """95 % percentile interval of the AUROC, resampling scans (each scan's positives and
    negatives together)."""
    vals = []
    k = len(pos)
    for _ in range(n):
        idx = rng.integers(0, k, k)
        p = np.concatenate([pos[i] for i in idx]) if k else np.array([])
        q = np.concatenate([neg[i] for i in idx]) if k else np.array([])
        if len(p) and len(q):
            vals.append(auroc(p, q))
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if vals else []


def run_shift(model: torch.nn.Module, picker: Any, scans: list[dict[str, Any]], seed: int,
              n_boot: int) -> dict[str, Any]:
    mult = int(model.multiple)
    rows = []
    g = torch.Generator().manual_seed(seed + 7)
    for sc in scans:
        xp, (t, l, h, w) = padded(sc["degraded"], mult)
        y, s = teacher(model, xp)
        real = judge(picker, y, s)
        out01 = ((y[0, :, t:t + h, l:l + w] + 1) / 2).clamp(0, 1)
        gt = _u8(sc["clean"])
        ssim_out = score_pair(_u8(out01), gt, None, "paper").ssim
        ssim_in = score_pair(_u8(sc["degraded"]), gt, None, "paper").ssim
        fams = planted(sc["degraded"][None], g)
        neg = {}
        for fam in FAMILIES:
            fp, _ = padded(fams[fam][0], mult)
            neg[fam] = judge(picker, *teacher(model, fp))
        rows.append({"file": sc["file"], "class": sc["class"], "ssim_input": ssim_in,
                     "ssim_teacher": ssim_out, "harmful": ssim_out < ssim_in, **real,
                     "planted": neg})
    rng = np.random.default_rng(0)
    res: dict[str, Any] = {"scans": len(rows),
                           "accept_real": float(np.mean([r["accepted"] for r in rows]))}
    # 1. planted failures
    plant: dict[str, Any] = {}
    for key in ("all", "iqa", "isd"):
        pos = _margins(rows, picker, key)
        for fams in (FAMILIES, *[(f,) for f in FAMILIES]):
            name = key if len(fams) > 1 else f"{key}:{fams[0]}"
            negs = [_margins([r["planted"][f] for f in fams], picker, key) for r in rows]
            plant[name] = {"auroc": auroc(pos, np.concatenate(negs)),
                           "ci95": boot_auroc([[p] for p in pos], negs, n_boot, rng)}
    plant["accept_planted"] = {f: float(np.mean([r["planted"][f]["accepted"] for r in rows]))
                               for f in FAMILIES}
    res["planted"] = plant
    # 2. harmful pseudo-labels
    harm = [r for r in rows if r["harmful"]]
    helpful = [r for r in rows if not r["harmful"]]
    hm: dict[str, Any] = {"harmful": len(harm), "helpful": len(helpful),
                         "harmful_rejected": float(np.mean([not r["accepted"] for r in harm]))
                         if harm else None,
                         "helpful_rejected": float(np.mean([not r["accepted"] for r in helpful]))
                         if helpful else None}
    if harm and helpful:
        pos = [[r["plausibility"]] if not r["harmful"] else [] for r in rows]
        negs = [[r["plausibility"]] if r["harmful"] else [] for r in rows]
        hm["auroc"] = auroc(np.array([r["plausibility"] for r in helpful]),
                            np.array([r["plausibility"] for r in harm]))
        hm["ci95"] = boot_auroc(pos, negs, n_boot, rng)
    res["harmful"] = hm
    res["rows"] = rows
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="oct-lite")
    ap.add_argument("--picker", default="oct-picker")
    ap.add_argument("--data", default="Kermany-report")
    ap.add_argument("--shift", action="append", choices=("oct", "oct-shift",
                                                         "select-oct-speckle"),
                    help="repeat; default: oct and oct-shift")
    ap.add_argument("--seed", type=int, default=0, help="degradation seed")
    ap.add_argument("--max-per-class", type=int, default=0)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    info = run_info(a.model, argv)
    model, _ = load_model(a.model)
    model.eval()
    picker = load_picker(a.picker)
    res: dict[str, Any] = {**info, "picker": a.picker, "data": a.data,
                           "p_good": picker.p_good, "isd_threshold": picker.isd_threshold,
                           "seeds": {"degrade": a.seed, "planted": a.seed + 7, "bootstrap": 0},
                           "shifts": {}}
    for name in a.shift or ["oct", "oct-shift"]:
        shift = SHIFT if name == "oct-shift" else PRESETS[name]
        scans = load_scans(a.data, shift, a.seed, a.max_per_class)
        r = run_shift(model, picker, scans, a.seed, a.boot)
        r["shift"] = dataclasses.asdict(shift)
        res["shifts"][name] = r
        p, hm = r["planted"], r["harmful"]
        print(f"{name} ({r['scans']} scans): accepts {r['accept_real']:.0%} of real pseudo-labels"
              f"; planted AUROC {p['all']['auroc']:.3f} [{p['all']['ci95'][0]:.3f}, "
              f"{p['all']['ci95'][1]:.3f}] (IQA {p['iqa']['auroc']:.3f}, ISD "
              f"{p['isd']['auroc']:.3f}; noise {p['all:noise']['auroc']:.3f}, scramble "
              f"{p['all:scramble']['auroc']:.3f}, washout {p['all:washout']['auroc']:.3f})",
              flush=True)
        print(f"  harmful pseudo-labels: {hm['harmful']} of {r['scans']}; rejects "
              f"{hm['harmful_rejected']} of them, {hm['helpful_rejected']} of the helpful"
              + (f"; AUROC {hm['auroc']:.3f}" if "auroc" in hm else ""), flush=True)
    save(res, a.out)
    return res


if __name__ == "__main__":
    main()
