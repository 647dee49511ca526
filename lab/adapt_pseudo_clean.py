"""An adaptation variant tried and not kept: pseudo-clean re-degradation.

    python -m lab.adapt_pseudo_clean [--split DRIVE] [--redegrade fundus-cataract]
        [--strength 1.0] [--steps 300] [--mix 0] [--n-images 0] [--json FILE]

The target images (DRIVE, degraded with ``--target``, as the adaptation experiment does) are
enhanced by an EMA teacher; the student gets ``redegrade(teacher(view))`` and learns to return
``teacher(view)`` (0.9 L1 + 0.1 structure BCE), so it is trained on pairs of the target camera's
content with a known degradation on top, instead of matching the teacher on the same view.
``--mix`` adds the plain teacher-student consistency on the view with that weight. Every 100
steps it prints SSIM/PSNR (paper protocol, in the FOV mask) of student and teacher on the
degraded target images. Default split: the DRIVE *training* images (the validation split;
never tune on DRIVE test).

Measured 2026-12-03 (2-core CPU, 1 thread, 300-400 steps, batch 4, 128 px views): source
0.9044 / 22.93 dB; with the target's own family (``fundus-cataract``) at strength 1.0 the
teacher reached 0.9092 / 23.10 at step 100 and 0.9103 / 23.01 at 200, then fell (0.9085 /
22.64 at 300); strength 0.5: 0.9093 / 22.95 at 200; with the source's family
(``fundus-shen2020``, no knowledge of the target): 0.9061 / 22.86 at 200, then worse; with
``--mix 1``: 0.9069 / 23.00 at 400. The student itself loses PSNR throughout (22.12 at 200).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def main(argv: list[str] | None = None) -> int:
    from lab.images import load_drive_test
    from same_fast.adapt.augment import AugmentConfig, random_views, redegrade
    from same_fast.degrade import degrade
    from same_fast.eval.protocol import image_scores
    from same_fast.models import load_model
    from same_fast.nn import enhance

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="DRIVE", choices=["DRIVE", "DRIVE-test"])
    p.add_argument("--target", default="fundus-cataract", help="degradation of the target set")
    p.add_argument("--redegrade", default="fundus-cataract", help="preset on the pseudo-labels")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=100, help="evaluate every N steps")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--mix", type=float, default=0.0)
    p.add_argument("--view", type=int, default=128)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--n-images", type=int, default=0)
    p.add_argument("--model", default="fundus-lite")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    d = load_drive_test(a.size, a.n_images, a.split)
    clean, fov = d["clean"], d["fov"]
    g = torch.Generator().manual_seed(a.seed)
    x = degrade(clean, a.target, g, fov)
    model, _ = load_model(a.model)

    def score(net: torch.nn.Module) -> tuple[float, float]:
        s = image_scores(enhance(net, x, fov, batch_size=4), clean, fov)
        return (float(np.mean([r["ssim"] for r in s])), float(np.mean([r["psnr"] for r in s])))

    rows = [{"step": 0, "source": score(model)}]
    print(f"source ssim {rows[0]['source'][0]:.4f} psnr {rows[0]['source'][1]:.2f}", flush=True)
    student, teacher = copy.deepcopy(model), copy.deepcopy(model)
    for q in teacher.parameters():
        q.requires_grad_(False)
    opt = torch.optim.Adam(student.parameters(), lr=a.lr)
    aug = AugmentConfig(size=a.view)
    frames, fovs = list(x), list(fov)

    def loss_fn(y, s, y_t, s_t):
        return 0.9 * (y - y_t).abs().mean() + 0.1 * F.binary_cross_entropy_with_logits(
            s, torch.sigmoid(s_t))

    t0 = time.perf_counter()
    for i in range(a.steps):
        idx = torch.randperm(len(frames), generator=g)[:4].tolist()
        v = random_views([frames[j] for j in idx], aug, g, [fovs[j] for j in idx])
        teacher.eval()
        with torch.no_grad():
            y_t, s_t = teacher(v * 2 - 1)
        student.train()
        y, s = student(redegrade(((y_t + 1) / 2).clamp(0, 1), a.redegrade, a.strength, g) * 2 - 1)
        loss = loss_fn(y, s, y_t, s_t)
        if a.mix > 0:
            y, s = student(v * 2 - 1)
            loss = loss + a.mix * loss_fn(y, s, y_t, s_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
                pt.mul_(a.ema).add_(ps, alpha=1 - a.ema)
        if (i + 1) % a.every == 0 or i + 1 == a.steps:
            r = {"step": i + 1, "student": score(student), "teacher": score(teacher)}
            rows.append(r)
            print(f"step {i + 1}: student ssim {r['student'][0]:.4f} psnr "
                  f"{r['student'][1]:.2f}; teacher ssim {r['teacher'][0]:.4f} psnr "
                  f"{r['teacher'][1]:.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"options": vars(a), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
