"""How well pickers tell real pseudo-labels from planted implausible ones, side by side.

    python -m lab.picker_auroc --experiment busi-speckle \
        --picker ultrasound-picker --picker runs/us-picker-gan.safetensors \
        [--seeds 0,1,2] [--dataset DRIVE] [--n-images 0] [--json FILE]

For each picker (a shipped name or a checkpoint) and each seed: the experiment's images degraded
with its preset (drawn with that seed), the experiment's source model as the teacher, and the
same three planted families the adaptation experiment uses (noise, scramble, washout). Prints the
AUROC over all families, per family and per assessor alone, averaged over the seeds, and the
picker's acceptance of the real pseudo-labels. The pickers see identical images and teacher
outputs, so a difference between two of them is theirs alone. Used to judge the ISD's VAE-GAN
term (``same-fast train-picker --isd-adversarial``); the README's picker section has the numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from lab.config import EXPERIMENTS, make_config
    from lab.images import experiment_images
    from lab.planted import picker_separation
    from same_fast.models import load_model
    from same_fast.picker import load_picker

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", choices=sorted(EXPERIMENTS), default="busi-speckle")
    p.add_argument("--picker", action="append", required=True, metavar="PICKER",
                   help="shipped name or checkpoint; repeat to compare")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated degradation seeds")
    p.add_argument("--model", default="", help="teacher (default: the experiment's source model)")
    p.add_argument("--dataset", default="", help="override the experiment's dataset "
                   "(DRIVE = the validation split)")
    p.add_argument("--n-images", type=int, default=0, help="0 = all")
    p.add_argument("--size", type=int, default=0, help="evaluation side (0 = the experiment's)")
    p.add_argument("--json", default="", metavar="FILE")
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    over: dict[str, object] = {"n_images": a.n_images}
    if a.model:
        over["model"] = a.model
    if a.dataset:
        over["dataset"] = a.dataset
    if a.size:
        over["size"] = a.size
    cfg = make_config(a.experiment, **over)
    model, meta = load_model(cfg.model)
    pickers = {name: load_picker(name) for name in a.picker}
    t0 = time.perf_counter()
    runs: dict[str, list[dict]] = {name: [] for name in pickers}
    for seed in seeds:
        _, degraded = experiment_images(dataclasses.replace(cfg, seed=seed), meta)
        for name, picker in pickers.items():
            runs[name].append(picker_separation(model, picker, degraded, seed + 7))
    keys = list(runs[a.picker[0]][0]["auroc"])
    summary = {name: {"auroc": {k: float(np.mean([r["auroc"][k] for r in rs])) for k in keys},
                      "auroc_min_all": float(min(r["auroc"]["all"] for r in rs)),
                      "accept_real": float(np.mean([r["accept_real"] for r in rs]))}
               for name, rs in runs.items()}
    head = "| picker | AUROC all (min) | " + " | ".join(k for k in keys if k != "all") \
        + " | accepts real |"
    print(f"{a.experiment} ({cfg.dataset}, {degraded.shape[0]} images, seeds {seeds})")
    print(head)
    print("|" + "---|" * (len(keys) + 2))
    for name, s in summary.items():
        print(f"| {name} | {s['auroc']['all']:.3f} ({s['auroc_min_all']:.3f}) | "
              + " | ".join(f"{s['auroc'][k]:.3f}" for k in keys if k != "all")
              + f" | {100 * s['accept_real']:.0f} % |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"experiment": a.experiment, "dataset": cfg.dataset,
                       "images": int(degraded.shape[0]), "seeds": seeds,
                       "seconds": time.perf_counter() - t0, "summary": summary, "runs": runs},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
