"""OCT evaluation (issue #25): the reporting patients' B-scans under the ``oct`` preset, enhanced.

Every scan of ``--data`` (default ``Kermany-report``: patients never trained on nor used to pick
the checkpoint) is read at its own size, degraded once with the ``oct`` preset (a generator per
scan, seeded from ``--seed`` and the file name, so a scan's degradation does not depend on which
others are evaluated), enhanced with ``--model``, and scored against the scan as exported under
the paper protocol on greyscale (``same_fast.eval.score_pair``: 256x256, 7x7 uniform SSIM). The
clean scan through the model gives the identity check. Per class (CNV, DME, DRUSEN, NORMAL) and
overall: means, bootstrap 95 % intervals (percentile, ``--boot`` resamples of the images), the
share of scans the model leaves below their degraded input, and the issue's targets.

    .venv/bin/python benchmarks/oct_eval.py --model oct-lite \\
        --out benchmarks/results/2026-12-06-cpu-oct-source.json \\
        --grid benchmarks/results/2026-12-06-cpu-oct-source.png
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from same_fast.degrade import degrade
from same_fast.eval import score_pair
from same_fast.io import load, to_tensor
from same_fast.models import load_model, resolve
from same_fast.nn import enhance
from same_fast.train.source import data_folders

CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
TARGETS = {"ssim_gain": 0.05, "psnr_gain": 2.0, "max_share_below": 0.10, "identity_ssim": 0.95}


def scan_seed(seed: int, name: str) -> int:
    """The degradation seed of one scan: ``seed`` and the file name, stable across subsets."""
    return seed * 1_000_003 + zlib.crc32(name.encode())


def _u8(t: torch.Tensor) -> np.ndarray:
    """``(1, H, W)`` float in [0, 1] -> ``(H, W, 1)`` uint8."""
    return (t.clamp(0, 1).movedim(0, -1).numpy() * 255 + 0.5).astype(np.uint8)


def load_scans(data: str, preset: str, seed: int, max_per_class: int = 0
               ) -> list[dict[str, Any]]:
    """Every scan of ``data``: ``{"file", "class", "seed", "clean", "degraded"}`` (``(1, H, W)``
    float in [0, 1]), degraded by ``preset`` with the scan's own seed."""
    scans = []
    for _set, _root, files, _m, _f in data_folders(data):
        for f in files[:max_per_class] if max_per_class else files:
            clean = to_tensor(load(f).frames[0])[:1]
            g = torch.Generator().manual_seed(scan_seed(seed, f.name))
            scans.append({"file": f.name, "class": f.name.split("-")[0],
                          "seed": scan_seed(seed, f.name), "clean": clean,
                          "degraded": degrade(clean[None], preset, g)[0]})
    return scans


def score_model(model: torch.nn.Module, scans: list[dict[str, Any]], identity: bool = True
                ) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Per-scan rows (input, output and, with ``identity``, clean-through-the-model scores) and
    each scan's ``[clean, degraded, enhanced]`` uint8 trio."""
    rows, trios = [], []
    for sc in scans:
        with torch.no_grad():
            out = enhance(model, sc["degraded"][None])[0]
        gt, deg = _u8(sc["clean"]), _u8(sc["degraded"])
        s_in = score_pair(deg, gt, None, "paper")
        s_out = score_pair(_u8(out), gt, None, "paper")
        row = {"file": sc["file"], "class": sc["class"], "width": gt.shape[1],
               "height": gt.shape[0], "seed": sc["seed"], "ssim_input": s_in.ssim,
               "psnr_input": s_in.psnr, "ssim": s_out.ssim, "psnr": s_out.psnr}
        if identity:
            with torch.no_grad():
                ident = enhance(model, sc["clean"][None])[0]
            s_id = score_pair(_u8(ident), gt, None, "paper")
            row.update(identity_ssim=s_id.ssim, identity_psnr=s_id.psnr)
        rows.append(row)
        trios.append(np.stack([gt[..., 0], deg[..., 0], _u8(out)[..., 0]]))
    return rows, trios


def evaluate(model_name: str, data: str, preset: str, seed: int, max_per_class: int = 0
             ) -> tuple[list[dict[str, Any]], dict[str, list[np.ndarray]]]:
    """Per-scan rows and, per class, one ``[clean, degraded, enhanced]`` example per scan."""
    model, _meta = load_model(model_name)
    rows, trios = score_model(model, load_scans(data, preset, seed, max_per_class))
    images: dict[str, list[np.ndarray]] = {}
    for r, t in zip(rows, trios, strict=True):
        images.setdefault(r["class"], []).append(t)
    return rows, images


def bootstrap(values: np.ndarray, n: int, rng: np.random.Generator) -> list[float]:
    """Percentile 95 % interval of the mean over ``n`` resamples of ``values``."""
    idx = rng.integers(0, len(values), size=(n, len(values)))
    means = values[idx].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def summarise(rows: list[dict[str, Any]], n_boot: int, boot_seed: int) -> dict[str, Any]:
    """Means, intervals and shares per class and overall."""
    rng = np.random.default_rng(boot_seed)
    out = {}
    for group in ("all", *CLASSES):
        sel = [r for r in rows if group == "all" or r["class"] == group]
        if not sel:
            continue
        col = {k: np.array([r[k] for r in sel], float) for k in sel[0]
               if isinstance(sel[0][k], float)}
        d_ssim = col["ssim"] - col["ssim_input"]
        d_psnr = col["psnr"] - col["psnr_input"]
        out[group] = {
            "n": len(sel),
            **{k: float(v.mean()) for k, v in col.items()},
            "ssim_gain": float(d_ssim.mean()), "ssim_gain_ci95": bootstrap(d_ssim, n_boot, rng),
            "psnr_gain": float(d_psnr.mean()), "psnr_gain_ci95": bootstrap(d_psnr, n_boot, rng),
            "ssim_ci95": bootstrap(col["ssim"], n_boot, rng),
            "share_below_input_ssim": float((d_ssim < 0).mean()),
            "share_below_input_psnr": float((d_psnr < 0).mean()),
        }
        if "identity_ssim" in col:
            out[group].update(
                identity_ssim_ci95=bootstrap(col["identity_ssim"], n_boot, rng),
                identity_ssim_min=float(col["identity_ssim"].min()))
    return out


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the measured value and whether it is met."""
    a = summary["all"]
    worst = min((summary[c]["ssim_gain"], summary[c]["psnr_gain"], c)
                for c in CLASSES if c in summary)
    return {
        "ssim_gain>=0.05": {"value": a["ssim_gain"], "met": a["ssim_gain"] >= TARGETS["ssim_gain"]},
        "psnr_gain>=2dB": {"value": a["psnr_gain"], "met": a["psnr_gain"] >= TARGETS["psnr_gain"]},
        "share_below_input<=10%": {"value": a["share_below_input_ssim"],
                                   "met": a["share_below_input_ssim"] <= TARGETS["max_share_below"]},
        "no_class_below_input": {
            "value": {c: [summary[c]["ssim_gain"], summary[c]["psnr_gain"]]
                      for c in CLASSES if c in summary},
            "met": worst[0] > 0 and worst[1] > 0},
        "identity_ssim>=0.95": {"value": a["identity_ssim"],
                                "met": a["identity_ssim"] >= TARGETS["identity_ssim"]},
    }


def grid(path: Path, rows: list[dict[str, Any]], images: dict[str, list[np.ndarray]]) -> None:
    """One row per class (its scan of median SSIM gain): clean, degraded, enhanced, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    classes = [c for c in CLASSES if c in images]
    fig, axes = plt.subplots(len(classes), 3, figsize=(12, 3.3 * len(classes)), squeeze=False)
    for i, cls in enumerate(classes):
        sel = [r for r in rows if r["class"] == cls]
        gains = np.array([r["ssim"] - r["ssim_input"] for r in sel])
        k = int(np.argsort(gains)[len(gains) // 2])
        r, trio = sel[k], images[cls][k]
        titles = (f"{cls} {r['file']}: clean (reference)",
                  f"degraded (oct): SSIM {r['ssim_input']:.3f}, {r['psnr_input']:.1f} dB",
                  f"enhanced: SSIM {r['ssim']:.3f}, {r['psnr']:.1f} dB")
        for j in range(3):
            axes[i, j].imshow(trio[j], cmap="gray", vmin=0, vmax=255)
            axes[i, j].set_title(titles[j], fontsize=9)
            axes[i, j].axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(summary: dict[str, Any]) -> str:
    """The per-class table (Markdown): input and output means, gains with 95 % intervals,
    share below input, identity SSIM."""
    lines = ["| class | n | SSIM input | SSIM oct-lite | SSIM gain [95 % CI] | PSNR input | "
             "PSNR oct-lite | PSNR gain [95 % CI] | below input | identity SSIM (min) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for g, s in summary.items():
        ci, cp = s["ssim_gain_ci95"], s["psnr_gain_ci95"]
        lines.append(
            f"| {g} | {s['n']} | {s['ssim_input']:.3f} | {s['ssim']:.3f} | {s['ssim_gain']:+.3f} "
            f"[{ci[0]:+.3f}, {ci[1]:+.3f}] | {s['psnr_input']:.2f} | {s['psnr']:.2f} | "
            f"{s['psnr_gain']:+.2f} [{cp[0]:+.2f}, {cp[1]:+.2f}] | "
            f"{s['share_below_input_ssim']:.0%} | {s.get('identity_ssim', float('nan')):.3f} "
            f"({s.get('identity_ssim_min', float('nan')):.3f}) |")
    return "\n".join(lines)


def _git() -> dict[str, Any]:
    def run(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    return {"commit": run("rev-parse", "HEAD"),
            "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def save(res: dict[str, Any], out: str | None) -> None:
    """Write a run's results JSON (when ``out`` is given)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=1) + "\n")


def print_targets(res: dict[str, Any]) -> None:
    for k, v in res["targets"].items():
        print(f"{k}: {'met' if v['met'] else 'NOT met'}")


def run_info(model: str, argv: list[str] | None) -> dict[str, Any]:
    """Date, git commit, the command line and the model file's hash of a run."""
    return {"date": dt.date.today().isoformat(), "git": _git(),
            "command": " ".join(["python", *sys.argv]) if argv is None
            else f"{Path(sys.argv[0]).name} main({argv!r})",
            "model": model, "model_sha256": hashlib.sha256(resolve(model).read_bytes()).hexdigest()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="oct-lite")
    ap.add_argument("--data", default="Kermany-report")
    ap.add_argument("--degrade", default="oct")
    ap.add_argument("--seed", type=int, default=0, help="degradation seed")
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--boot-seed", type=int, default=0)
    ap.add_argument("--max-per-class", type=int, default=0, help="0: every scan")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="results JSON (default: print only)")
    ap.add_argument("--grid", default=None, help="labelled before/after PNG")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, images = evaluate(args.model, args.data, args.degrade, args.seed, args.max_per_class)
    summary = summarise(rows, args.boot, args.boot_seed)
    res = {
        **run_info(args.model, argv), "data": args.data, "degrade": args.degrade,
        "protocol": "paper (greyscale)",
        "seeds": {"degrade": args.seed, "bootstrap": args.boot_seed,
                  "per_scan": "seed * 1000003 + crc32(file name)"},
        "bootstrap": args.boot, "summary": summary, "targets": targets(summary), "rows": rows,
    }
    save(res, args.out)
    if args.grid:
        grid(Path(args.grid), rows, images)
    print(markdown(summary))
    for g, s in summary.items():
        print(f"{g:7s} n={s['n']:3d} SSIM {s['ssim_input']:.3f} -> {s['ssim']:.3f} "
              f"({s['ssim_gain']:+.3f} [{s['ssim_gain_ci95'][0]:+.3f}, "
              f"{s['ssim_gain_ci95'][1]:+.3f}])  PSNR {s['psnr_input']:.2f} -> {s['psnr']:.2f} "
              f"({s['psnr_gain']:+.2f})  below {s['share_below_input_ssim']:.0%}  "
              f"identity {s['identity_ssim']:.3f}")
    print_targets(res)
    return res


if __name__ == "__main__":
    main()
