"""The lab's reports: the results table in Markdown, an image grid, acceptance curves."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lab.config import EXTRA, METHODS


def curve(history: list[dict[str, float]], bins: int = 10) -> list[float]:
    """Acceptance over adaptation, averaged in ``bins`` equal chunks of steps."""
    if not history:
        return []
    chunks = np.array_split(np.arange(len(history)), min(bins, len(history)))
    return [float(sum(history[i]["accepted"] for i in c) / sum(history[i]["batch"] for i in c))
            for c in chunks]


def jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` as plain JSON types (tuples become lists, anything else its string)."""
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def markdown(result: dict[str, Any]) -> str:
    """The results table in Markdown (quality, negative adaptation, downstream vessels)."""
    t, ds = result["table"], result.get("downstream")
    head = "| method | SSIM | PSNR (dB) | SSIM in FOV | PSNR in FOV | neg. adapt. |"
    sep = "|---|---|---|---|---|---|"
    usable = "ssim_usable" in t.get("source", {})
    if usable:
        head += " SSIM usable | PSNR usable |"
        sep += "---|---|"
    if ds:
        head += " Dice | IoU | F1 | kappa |"
        sep += "---|---|---|---|"
    lines = [f"### {result['experiment']} (n = {result['n']})", "", head, sep]
    for m in [m for m in METHODS + EXTRA if m in t]:
        r = t[m]
        neg = f"{100 * r['negative_rate']:.0f} %" if "negative_rate" in r else "-"
        row = (f"| {m} | {r['ssim']:.4f} | {r['psnr']:.2f} | {r['ssim_fov']:.4f} | "
               f"{r['psnr_fov']:.2f} | {neg} |")
        if usable:
            row += f" {r['ssim_usable']:.4f} | {r['psnr_usable']:.2f} |"
        if ds:
            d = ds["scores"][m]
            row += f" {d['dice']:.4f} | {d['iou']:.4f} | {d['f1']:.4f} | {d['kappa']:.4f} |"
        lines.append(row)
    if ds:
        d = ds["scores"]["clean"]
        lines.append("| clean (upper bound) | 1 | inf | 1 | inf | - |"
                     + (" 1 | inf |" if usable else "")
                     + f" {d['dice']:.4f} | {d['iou']:.4f} | {d['f1']:.4f} | {d['kappa']:.4f} |")
    p = result["picker"]
    lines += ["", f"Picker: accepts {100 * p['accept_real']:.0f} % of the source teacher's "
              f"pseudo-labels; acceptance during SAME offline "
              f"{_pct(p['acceptance_offline'])}; AUROC against planted implausible "
              f"pseudo-labels {p['auroc']['all']:.3f} (noise {p['auroc']['noise']:.3f}, "
              f"scramble {p['auroc']['scramble']:.3f}, washout {p['auroc']['washout']:.3f}"
              + (f", the ungradable images' own {p['auroc']['ungradable']:.3f}"
                 if "ungradable" in p["auroc"] else "")
              + f"; IQA alone {p['auroc']['iqa_only']:.3f}, "
              f"ISD alone {p['auroc']['isd_only']:.3f})."]
    lines += ["", "Targets: " + "; ".join(f"{k} {'met' if v else 'NOT met'}"
                                           for k, v in result["targets"].items()), ""]
    return "\n".join(lines) + "\n"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f} %"


def grid(path: Path, rows: list[torch.Tensor], n: int) -> None:
    """A PNG of the first ``n`` images: one row per image, one column per tensor of ``rows``."""
    from same_fast.io import to_array, write_image

    n = min(n, rows[0].shape[0])
    if n <= 0:
        return
    tiles = [torch.cat([r[i] for r in rows], -1) for i in range(n)]
    img = torch.cat(tiles, -2)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    write_image(path, to_array(img.cpu()))
