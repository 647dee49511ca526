"""A real target clinic: CSDI's cataract photographs as an unlabelled folder (issue #21, item 5).

    SAME_FAST_DATA=../shared/data python benchmarks/csdi_clinic.py [--model fundus-lite]
        [--picker fundus-picker] [--steps 300] [--side 512] [--every 1] [--seed 0]
        [--threads 1] [--json FILE] [--figures docs/results] [--tag csdi]

CSDI (``fundus/CSDI``: 147 real colour fundus photographs of cataract patients and normals with
a 0-10 cataract severity score; research use only, never for shipped weights) has no clean
counterpart, so nothing here is scored against a reference. Every ``--every``-th image sorted by
file name is read, resized (area) so its longer side is ``--side``, and masked by its FOV
(``train.source.estimate_fov``, its largest connected region: no corner marks). The source
model adapts offline on those images alone with the default recipe of ``same-fast adapt``
(``AdaptConfig()`` at ``--steps``: the student's view re-degraded at the noise level estimated
from the images, the fundus picker with its calibration share set from the images' own score
distribution); the severity scores are read only afterwards, for the report.

Per image, for the input, the source model's output and the adapted model's output:
- the fundus picker's IQA network (``same_fast.nn.iqa``, trained on clean photographs and graded
  synthetic degradations): P(good) and its class (good / usable / reject);
- ``eval.noref``: variance of the Laplacian (fine detail; noise raises it too) and RMS contrast
  inside the FOV eroded by 8 px, and Immerkaer's noise estimate (``degrade.estimate``).
Means with bootstrap 95 % intervals per severity band (score < 4, 4 to 6.5, >= 7) and overall,
paired differences adapted minus source, the IQA class counts per band, and Spearman's rank
correlation between severity and each measure. Labelled before/after grids (the lowest, median
and highest score of each band) go to ``--figures``; every number to the JSON.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

BANDS = (("0-3.5", 0.0, 4.0), ("4-6.5", 4.0, 7.0), ("7-10", 7.0, 11.0))
STAGES = ("input", "source", "adapted")
MEASURES = ("p_good", "laplacian_var", "rms_contrast", "noise_sigma")
ROOT = Path(__file__).resolve().parents[1]


def band_of(score: float) -> str:
    return next(name for name, lo, hi in BANDS if lo <= score < hi)


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """The largest 8-connected region of a (1, H, W) mask: a photograph's disc without the
    bright corner marks that thresholding also keeps (47 of CSDI's 147 images have them)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask[0].numpy() > 0, structure=np.ones((3, 3)))
    if n <= 1:
        return mask.float()
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, range(1, n + 1))
    return torch.from_numpy(lab == 1 + int(np.argmax(sizes)))[None].float()


def load_clinic(folder: Path, side: int, every: int
                ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str], np.ndarray]:
    """Images (3, H, W) in [0, 1] times their FOV (longer side ``side``), FOVs (1, H, W),
    names and severity scores: every ``every``-th row of scores.csv sorted by file name."""
    import torch.nn.functional as F

    from same_fast.io import read_image, to_tensor
    from same_fast.train.source import estimate_fov

    with open(folder / "scores.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["staged_file"])[::every]
    images, fovs, names, scores = [], [], [], []
    for r in rows:
        x = to_tensor(read_image(folder / "images" / r["staged_file"])).float()
        h, w = x.shape[-2:]
        k = side / max(h, w)
        x = F.interpolate(x[None], size=(round(h * k), round(w * k)), mode="area")[0]
        fov = largest_component(estimate_fov(x))
        images.append(x * fov)
        fovs.append(fov)
        names.append(Path(r["staged_file"]).stem)
        scores.append(float(r["cataract_score_0_10"]))
    return images, fovs, names, np.array(scores)


def measure(picker: Any, images: list[torch.Tensor], fovs: list[torch.Tensor]) -> dict[str, Any]:
    """Per-image no-reference measures of ``images`` ((C, H, W) in [0, 1], FOV-masked)."""
    from same_fast.degrade.estimate import noise_sigma
    from same_fast.eval.noref import laplacian_variance, rms_contrast
    from same_fast.nn.iqa import CLASSES

    out: dict[str, list] = {m: [] for m in MEASURES} | {"iqa_class": []}
    with torch.no_grad():
        for x, f in zip(images, fovs, strict=True):
            x, f = x[None], f[None]
            prob = torch.softmax(picker.iqa(x), 1)[0]
            out["p_good"].append(float(prob[0]))
            out["iqa_class"].append(CLASSES[int(prob.argmax())])
            out["laplacian_var"].append(float(laplacian_variance(x, f)[0]))
            out["rms_contrast"].append(float(rms_contrast(x, f)[0]))
            out["noise_sigma"].append(float(noise_sigma(x, f)[0]))
    return {k: (v if k == "iqa_class" else np.array(v)) for k, v in out.items()}


def spearman_ci(a: np.ndarray, b: np.ndarray, seed: int, n: int = 1000) -> dict[str, float]:
    """Spearman's rho of (a, b), its p-value and a bootstrap 95 % interval over images."""
    from scipy.stats import spearmanr

    rho, p = spearmanr(a, b)
    rng = np.random.default_rng(seed)
    boot = [spearmanr(a[i], b[i])[0] for i in (rng.integers(0, a.size, a.size) for _ in range(n))]
    lo, hi = np.nanquantile(boot, [0.025, 0.975])
    return {"rho": float(rho), "p": float(p), "lo": float(lo), "hi": float(hi)}


def summarise(per: dict[str, dict[str, Any]], scores: np.ndarray, seed: int) -> dict[str, Any]:
    """Bootstrap means per band and stage, paired adapted - source differences, IQA class
    counts and severity correlations."""
    from same_fast.eval import bootstrap_ci
    from same_fast.nn.iqa import CLASSES

    bands = {name: np.array([band_of(s) == name for s in scores]) for name, _, _ in BANDS}
    bands["all"] = np.ones(scores.size, bool)
    out: dict[str, Any] = {"bands": {}, "spearman_severity": {}}
    for name, sel in bands.items():
        b: dict[str, Any] = {"n": int(sel.sum()), "severity_mean": float(scores[sel].mean())}
        for m in MEASURES:
            b[m] = {st: bootstrap_ci(per[st][m][sel], seed=seed) for st in STAGES}
            d = per["adapted"][m][sel] - per["source"][m][sel]
            b[m]["adapted_minus_source"] = bootstrap_ci(d, seed=seed)
            b[m]["share_adapted_lower"] = float(np.mean(d < 0))
        b["iqa_classes"] = {st: {c: int(sum(1 for k, v in enumerate(per[st]["iqa_class"])
                                            if sel[k] and v == c)) for c in CLASSES}
                            for st in STAGES}
        out["bands"][name] = b
    for m in MEASURES:
        out["spearman_severity"][m] = {st: spearman_ci(scores, per[st][m], seed) for st in STAGES}
    return out


def grids(folder: Path, tag: str, model_name: str, steps: int, stages: dict[str, list],
          per: dict[str, dict[str, Any]], names: list[str], scores: np.ndarray) -> list[str]:
    """One labelled PNG per severity band: the band's lowest, median and highest score
    (ties by name), columns input / source model / adapted."""
    from same_fast.eval.figures import image_grid

    written = []
    cols = ["input", f"source model ({model_name})", f"adapted ({steps} steps)"]
    for name, _, _ in BANDS:
        idx = sorted((i for i in range(len(names)) if band_of(scores[i]) == name),
                     key=lambda i: (scores[i], names[i]))
        if not idx:
            continue
        pick = sorted({idx[0], idx[len(idx) // 2], idx[-1]}, key=idx.index)
        rows = [[stages[st][i] for st in STAGES] for i in pick]
        titles = [f"{names[i]}\nseverity {scores[i]:g}" for i in pick]
        caps = [[f"P(good) {per[st]['p_good'][i]:.2f} · {per[st]['iqa_class'][i]} · "
                 f"LapVar {per[st]['laplacian_var'][i] * 1e4:.1f}e-4" for st in STAGES]
                for i in pick]
        path = folder / f"{tag}-band-{name}.png"
        if image_grid(path, rows, cols, titles, caps,
                      title=f"CSDI, severity band {name}: before and after adaptation"):
            written.append(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path))
    return written


def enhance_each(model: torch.nn.Module, images: list[torch.Tensor], fovs: list[torch.Tensor]
                 ) -> list[torch.Tensor]:
    from same_fast.nn import enhance

    return [enhance(model, x[None], f[None])[0] for x, f in zip(images, fovs, strict=True)]


def print_tables(s: dict[str, Any]) -> None:
    """The report's tables, as Markdown."""
    def ci(v: dict[str, float], scale: float = 1.0, fmt: str = ".3f") -> str:
        return (f"{v['mean'] * scale:{fmt}} [{v['lo'] * scale:{fmt}}, "
                f"{v['hi'] * scale:{fmt}}]")

    for m, scale, fmt in (("p_good", 1, ".3f"), ("laplacian_var", 1e4, ".2f"),
                          ("rms_contrast", 1, ".4f"), ("noise_sigma", 1e3, ".2f")):
        unit = {1e4: " (x 1e-4)", 1e3: " (x 1e-3)"}.get(scale, "")
        print(f"\n{m}{unit}\n| band | n | input | source | adapted | adapted - source | "
              "adapted lower |\n|---|---|---|---|---|---|---|")
        for name, b in s["bands"].items():
            d = b[m]
            print(f"| {name} | {b['n']} | " + " | ".join(ci(d[st], scale, fmt) for st in STAGES)
                  + f" | {ci(d['adapted_minus_source'], scale, '+' + fmt)} | "
                  f"{d['share_adapted_lower']:.0%} |")
    print("\nIQA class (good/usable/reject)\n| band | input | source | adapted |\n|---|---|---|---|")
    for name, b in s["bands"].items():
        print(f"| {name} | " + " | ".join("/".join(str(v) for v in b["iqa_classes"][st].values())
                                          for st in STAGES) + " |")
    print("\nSpearman rho, severity vs measure [95 % CI]\n| measure | input | source | adapted |"
          "\n|---|---|---|---|")
    for m, r in s["spearman_severity"].items():
        print(f"| {m} | " + " | ".join(f"{r[st]['rho']:+.2f} [{r[st]['lo']:+.2f}, "
                                        f"{r[st]['hi']:+.2f}]" for st in STAGES) + " |")


def main(argv: list[str] | None = None) -> int:
    from same_fast.adapt.loop import AdaptConfig, adapt_offline, redegradation
    from same_fast.data import require_data_root
    from same_fast.eval import provenance
    from same_fast.models import load_model
    from same_fast.picker import auto_calibrate, load_picker

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fundus-lite", help="source model name or checkpoint")
    p.add_argument("--picker", default="fundus-picker")
    p.add_argument("--data", type=Path, help="the CSDI folder (default: <data root>/fundus/CSDI)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--side", type=int, default=512, help="longer image side after resizing")
    p.add_argument("--every", type=int, default=1, help="every k-th image by name (subsample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.add_argument("--figures", type=Path, default=ROOT / "docs" / "results")
    p.add_argument("--tag", default="csdi", help="prefix of the figure files")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    folder = a.data or require_data_root() / "fundus" / "CSDI"
    date = dt.datetime.now(dt.timezone.utc).date().isoformat()
    out_json = a.json or ROOT / "benchmarks" / "results" / f"{date}-cpu-csdi-clinic.json"
    prov = provenance({"adaptation": a.seed, "bootstrap": a.seed})  # the commit that ran
    t0 = time.perf_counter()
    images, fovs, names, scores = load_clinic(folder, a.side, a.every)
    model, meta = load_model(a.model)
    cfg = AdaptConfig(steps=a.steps, seed=a.seed, modality="fundus")
    picker = load_picker(a.picker)
    share = auto_calibrate(picker, model, images, fovs)
    preset = redegradation(cfg, images, fovs)  # what adapt_offline will use: for the record
    print(f"{len(images)} images, calibration share {share:.2f}, student view {preset}",
          flush=True)
    t1 = time.perf_counter()
    r = adapt_offline(model, images, picker, cfg, fovs)
    t_adapt = time.perf_counter() - t1
    adapted = r.student if cfg.serve == "student" else r.teacher
    stages = {"input": images, "source": enhance_each(model, images, fovs),
              "adapted": enhance_each(adapted, images, fovs)}
    judge = load_picker(a.picker)  # an uncalibrated copy: its IQA is the quality model
    per = {st: measure(judge, v, fovs) for st, v in stages.items()}
    summary = summarise(per, scores, a.seed)
    figures = grids(a.figures, a.tag, a.model, a.steps, stages, per, names, scores)
    res = {
        "provenance": prov,
        "data": {"folder": "fundus/CSDI", "images": len(images),
                 "subsample": f"every {a.every}-th image of scores.csv sorted by file name",
                 "side": a.side, "licence": "research use only (see SOURCE.txt)"},
        "model": a.model, "model_provenance": meta.get("provenance"), "picker": a.picker,
        "adapt_config": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in dataclasses.asdict(cfg).items()},
        "calibrate_share": share, "student_view": repr(preset), "skipped": r.skipped,
        "acceptance": None if r.skipped else r.acceptance,
        "seconds": {"adapt": round(t_adapt, 1), "total": round(time.perf_counter() - t0, 1)},
        "bands": [{"name": n, "lo": lo, "hi_exclusive": hi} for n, lo, hi in BANDS],
        "summary": summary, "figures": figures,
        "rows": [{"name": names[i], "severity": float(scores[i]),
                  **{f"{st}_{m}": (per[st][m][i] if m == "iqa_class" else round(
                      float(per[st][m][i]), 7)) for st in STAGES for m in (*MEASURES, "iqa_class")}}
                 for i in range(len(names))],
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(res, indent=1) + "\n")
    print(f"acceptance {r.acceptance:.2f}, adapt {t_adapt:.0f} s; wrote {out_json} and "
          f"{', '.join(figures) or 'no figures (matplotlib missing)'}")
    print_tables(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
