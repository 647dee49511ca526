"""ultrasound-lite on images kept apart from its selection (issue #20, ultrasound hygiene).

    python benchmarks/ultrasound_report.py [-m ultrasound-lite] [--seed 0] [--json FILE]

``ultrasound-lite`` was trained on BUSI + CCAUS minus 18 held-out images, and its checkpoint and
recipe were chosen by validation on those same 18, so numbers on them are selection numbers, not
a report. This scores it on:

- ``echo``: the 30 frames of pydicom's bundled echocardiography cine (``examples_ybr_color.dcm``,
  another scanner and anatomy, never used for training or selection), in grey;
- ``busi-selection``: the 14 held-out BUSI images, labelled as what they are (used for selection).

Each image is degraded with ``ultrasound-speckle`` at ``--seed`` (resized so the longer side is
at most 512), enhanced, and scored against the clean image under the paper protocol (grey,
256x256). Means carry bootstrap 95 % intervals over images; the JSON records the git commit, the
seeds and the command. Consecutive echo frames are near duplicates, so its interval is narrower
than 30 independent images would give.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F


def echo_frames() -> list[tuple[str, torch.Tensor]]:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    arr = pydicom.pixels.pixel_array(ds)  # converts YBR to RGB
    out = []
    for i, fr in enumerate(arr):
        x = torch.from_numpy(fr.astype(np.float32) / 255).mean(-1)[None, None]
        out.append((f"echo_{i:02d}", x))
    return out


def busi_heldout(model_meta: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    from same_fast.io import load, to_tensor
    from same_fast.train.source import data_folders, sample_name

    held = set(model_meta["provenance"]["held_out"])
    out = []
    for set_name, _root, files, _m, _f in data_folders("BUSI"):
        for f in files:
            if sample_name(set_name, f) in held:
                x = to_tensor(load(f).frames[0][..., :3])[None].float()
                out.append((f.stem, x.mean(1, keepdim=True)))
    return out


def _fit(x: torch.Tensor, side: int = 512) -> torch.Tensor:
    h, w = x.shape[-2:]
    s = min(1.0, side / max(h, w))
    if s < 1:
        x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="area")
    return (x * 255).round() / 255


def score_set(model: torch.nn.Module, images: list[tuple[str, torch.Tensor]], seed: int
              ) -> dict[str, Any]:
    from same_fast.degrade import degrade
    from same_fast.eval import bootstrap_ci, score_pair
    from same_fast.nn import enhance

    def u8(t: torch.Tensor) -> np.ndarray:
        return (t[0].clamp(0, 1).movedim(0, -1).numpy() * 255 + 0.5).astype(np.uint8)

    g = torch.Generator().manual_seed(seed)
    rows = []
    for name, x in images:
        x = _fit(x)
        y = degrade(x, "ultrasound-speckle", g)
        y = (y * 255).round() / 255
        with torch.no_grad():
            out = enhance(model, y)
        s_in, s_out = (score_pair(u8(t), u8(x), None, "paper") for t in (y, out))
        rows.append({"name": name, "input": [s_in.ssim, s_in.psnr], "enhanced": [s_out.ssim,
                                                                                  s_out.psnr]})
    inp = np.array([r["input"] for r in rows])
    enh = np.array([r["enhanced"] for r in rows])
    d = enh - inp
    return {"n": len(rows),
            "input": {"ssim": bootstrap_ci(inp[:, 0], seed=seed),
                      "psnr": bootstrap_ci(inp[:, 1], seed=seed)},
            "enhanced": {"ssim": bootstrap_ci(enh[:, 0], seed=seed),
                         "psnr": bootstrap_ci(enh[:, 1], seed=seed)},
            "gain_ssim": bootstrap_ci(d[:, 0], seed=seed),
            "gain_psnr": bootstrap_ci(d[:, 1], seed=seed),
            "share_below_input": float(np.mean(d[:, 0] < 0)), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    from same_fast.eval import provenance
    from same_fast.models import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", default="ultrasound-lite")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model, meta = load_model(a.model)
    res = {"provenance": provenance({"degradation": a.seed, "bootstrap": a.seed}),
           "model": a.model, "sets": {}}
    sets = {"echo (never trained or selected on)": echo_frames()}
    try:
        sets["busi-selection (used to choose the checkpoint)"] = busi_heldout(meta)
    except Exception as e:  # no data folder: the echo report stands alone
        res["busi_skipped"] = str(e)
    for name, images in sets.items():
        r = score_set(model, images, a.seed)
        res["sets"][name] = r
        print(f"{name}: n={r['n']} input {r['input']['ssim']['mean']:.4f}/"
              f"{r['input']['psnr']['mean']:.2f}  enhanced {r['enhanced']['ssim']['mean']:.4f}/"
              f"{r['enhanced']['psnr']['mean']:.2f}  gain {r['gain_ssim']['mean']:+.4f} "
              f"[{r['gain_ssim']['lo']:+.4f}, {r['gain_ssim']['hi']:+.4f}] "
              f"{r['gain_psnr']['mean']:+.2f} dB [{r['gain_psnr']['lo']:+.2f}, "
              f"{r['gain_psnr']['hi']:+.2f}]  below input {r['share_below_input']:.0%}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
