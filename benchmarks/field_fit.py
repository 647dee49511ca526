"""Can SAMENet's light field learn a degradation's smooth gain and offset, and on which cameras?

    python benchmarks/field_fit.py --train IDRiD,HRF,FIVES,skimage-retina --val DRIVE \
        --val IDRiD-test [--steps 4000] [--size 256] [--max-images 80] [--json FILE]

The light-field block alone (``SAMENet(field=True)``'s ``_Field``, no U-Net) is trained under
direct supervision (the loss ``train-source --lambda-field`` adds, here counted inside the FOV
only, and nothing else): whole frames of the
``--train`` cameras at ``--size`` px, degraded as ``train-source``'s fundus recipe degrades them
(``fundus-shen2020``, the tone target, palette and gamma augmentation, identity pairs), loss =
L1 inside the FOV between the field's output and the target; Adam with a cosine rate, and the
EMA of the weights is what is scored. Each ``--val`` camera is then scored on fixed draws
(seed ``--seed`` + 1000): the mean L1 to the target of the degraded input itself (identity),
of the learned field's output, and of the oracle field (the best per-cell gain and offset,
fitted with the target known: ``fundus_cross_camera.oracle_field``), and the learned field's
change to clean frames; each error is also split into cells wholly inside the FOV and the rim
(``regions``). ``--frame pad`` trains on whole photographs padded to a square, ``--shading-aug``
and ``--contrast-aug`` add train-source's augmentations, ``--camera-balance`` its draw of the
cameras, ``--save`` keeps the scored field's weights. ``--pool`` gives the field its batch's
per-cell median as well (``_Field(pool=True)``: a camera's own light, which one frame does not
tell); each batch is then one camera's frames, distinct images where it has enough, in training
(``--by-camera`` draws so without the pool: the control) and in scoring. The question it
answers is whether the field can *infer* the smooth part of a degradation from the image on a
camera it did not train on (the oracle says how much of the error that part is). Means carry
bootstrap 95 % intervals over frames; the JSON records the git commit, the seeds and the command.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _oracle_field() -> Any:
    from same_fast.benchsuites.common import sibling_script

    return sibling_script(__file__, "fundus_cross_camera").oracle_field


def _config(size: int, clean_prob: float, shading_aug: float = 0.0, contrast_aug: float = 0.0,
            camera_balance: float = 1.0) -> Any:
    import json

    from same_fast.train.source import SourceConfig

    recipe = json.loads((Path(__file__).resolve().parents[1] / "same_fast" / "weights"
                         / "fundus-lite.recipe.json").read_text())
    return SourceConfig(data="", out="", size=size, load_size=size, zoom=(1.0, 1.0), batch=8,
                        target=recipe["target"], color_aug=recipe["color_aug"],
                        gamma_aug=recipe["gamma_aug"], clean_prob=clean_prob,
                        shading_aug=shading_aug, contrast_aug=contrast_aug,
                        camera_balance=camera_balance)


def _field_l1(out01: torch.Tensor, ref: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
    """Per-frame mean absolute error inside the FOV, in [0, 1] units."""
    return ((out01 - ref).abs() * fov).sum((1, 2, 3)) / (fov.sum((1, 2, 3)) * ref.shape[1])


def regions(fov: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(interior, rim)`` masks of the FOV: interior pixels lie in a ``factor``-px cell that,
    with its eight neighbours, is wholly inside the FOV (a field read there never sees the
    black outside); the rim is the rest of the FOV."""
    outside = 1.0 - F.avg_pool2d(fov, factor, ceil_mode=True).eq(1.0).float()
    near = F.max_pool2d(outside, 3, 1, 1)
    h, w = fov.shape[-2:]
    interior = (1.0 - F.interpolate(near, scale_factor=factor, mode="nearest")[..., :h, :w]) * fov
    return interior, fov - interior


def camera_batch(group: list, cfg: Any, g: torch.Generator) -> dict[str, torch.Tensor]:
    """One batch of a camera's frames, each degraded as ``make_batch`` degrades it: distinct
    images where the camera has enough (a pooled field must not read one image twice)."""
    from same_fast.train.source import make_batch

    n = len(group)
    idx = (torch.randperm(n, generator=g)[:cfg.batch] if n >= cfg.batch
           else torch.randint(n, (cfg.batch,), generator=g)).tolist()
    one = dataclasses.replace(cfg, batch=1, camera_balance=1.0)
    parts = [make_batch([group[i]], one, g, torch.device("cpu")) for i in idx]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def score(field: torch.nn.Module, samples: list, size: int, frames: int, seed: int,
          factor: int, oracle: Any, distinct: bool = False) -> dict[str, Any]:
    from same_fast.eval import bootstrap_ci
    from same_fast.train.source import make_batch

    def run(net: torch.nn.Module, y: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (net(y * 2 - 1) + 1) * 0.5 * fov

    g = torch.Generator().manual_seed(seed)
    cols: dict[str, list[float]] = {"identity": [], "field": [], "oracle": [], "clean_change": []}
    # pixel sums per region, so the interior/rim split is an error per pixel of that region
    parts = {f"{r}_{k}": 0.0 for r in ("interior", "rim")
             for k in ("pixels", "identity", "field", "oracle")}
    cfg = _config(size, 0.0)
    for _ in range(max(1, frames // cfg.batch)):
        b = (camera_batch(samples, cfg, g) if distinct
             else make_batch(samples, cfg, g, torch.device("cpu")))
        y, ref, fov = b["degraded"], b["clean"], b["fov"]
        outs = {"identity": y, "field": run(field, y, fov), "oracle": oracle(y, ref, fov, factor)}
        for k, o in outs.items():
            cols[k] += _field_l1(o, ref, fov).tolist()
        for name, m in zip(("interior", "rim"), regions(fov, factor), strict=True):
            parts[f"{name}_pixels"] += float(m.sum()) * ref.shape[1]
            for k, o in outs.items():
                parts[f"{name}_{k}"] += float(((o - ref).abs() * m).sum())
        cols["clean_change"] += _field_l1(run(field, ref, fov), ref, fov).tolist()
    out = {k: bootstrap_ci(np.array(v), seed=seed) for k, v in cols.items()}
    ident, fld, orc = (np.array(cols[k]) for k in ("identity", "field", "oracle"))
    out["share_of_error_removed"] = float(1 - fld.mean() / ident.mean())
    out["oracle_share_of_error_removed"] = float(1 - orc.mean() / ident.mean())
    out["share_of_frames_worse"] = float(np.mean(fld > ident))
    out["n"] = len(ident)
    for name in ("interior", "rim"):
        px = max(parts[f"{name}_pixels"], 1.0)
        out[name] = {"share_of_fov": parts[f"{name}_pixels"]
                     / max(parts["interior_pixels"] + parts["rim_pixels"], 1.0)}
        out[name] |= {k: parts[f"{name}_{k}"] / px for k in ("identity", "field", "oracle")}
    return out


def main(argv: list[str] | None = None) -> int:
    from same_fast.benchsuites.common import write_json
    from same_fast.eval import provenance
    from same_fast.nn.samenet import _Field
    from same_fast.train.source import FRAMES, load_samples, make_batch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, help="data spec of the training cameras")
    p.add_argument("--val", action="append", required=True, help="a camera to score (repeat)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--max-images", type=int, default=80, help="per training set (0: all)")
    p.add_argument("--factor", type=int, default=16, help="the field's cell (pixels)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--frames", type=int, default=64, help="scored frames per camera")
    p.add_argument("--shading-aug", type=float, default=0.0,
                   help="train-source's --shading-aug in training (scoring frames never have it)")
    p.add_argument("--contrast-aug", type=float, default=0.0,
                   help="train-source's --contrast-aug in training (scoring frames never have it)")
    p.add_argument("--camera-balance", type=float, default=1.0,
                   help="train-source's --camera-balance in training (1: every image alike)")
    p.add_argument("--frame", default="crop", choices=FRAMES,
                   help="train-source's --frame for the training frames (scored frames are "
                        "always centre squares, so that runs compare on the same frames)")
    p.add_argument("--by-camera", action="store_true",
                   help="each training batch from one camera (drawn as --camera-balance says)")
    p.add_argument("--pool", action="store_true",
                   help="the field is also told the per-cell median over its batch (one camera's "
                        "frames; implies --by-camera; scored batches are one camera's frames)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.add_argument("--save", type=Path, help="also write the scored (EMA) field's weights here")
    a = p.parse_args(argv)
    if not 0.0 <= a.camera_balance <= 1.0:
        p.error(f"--camera-balance must be in [0, 1], got {a.camera_balance}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    groups = [grp for _, grp in load_samples(a.train, 3, a.size, "fundus", a.max_images, a.frame)]
    train = [s for grp in groups for s in grp]
    by_camera = a.by_camera or a.pool
    # a camera is drawn with probability proportional to its number of images ** balance
    draw = torch.tensor([len(grp) ** a.camera_balance for grp in groups], dtype=torch.float64)
    field = _Field(3, width=a.width, factor=a.factor, pool=a.pool)
    ema = copy.deepcopy(field)
    opt = torch.optim.Adam(field.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps)
    cfg = _config(a.size, 0.2, a.shading_aug, a.contrast_aug, a.camera_balance)
    g = torch.Generator().manual_seed(a.seed)
    t0, curve, run = time.perf_counter(), [], 0.0
    for step in range(1, a.steps + 1):
        if by_camera:
            b = camera_batch(groups[int(torch.multinomial(draw, 1, generator=g))], cfg, g)
        else:
            b = make_batch(train, cfg, g, torch.device("cpu"))
        out = (field(b["degraded"] * 2 - 1) + 1) * 0.5 * b["fov"]
        loss = (out - b["clean"]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for e, w in zip(ema.parameters(), field.parameters(), strict=True):
                e.lerp_(w, 0.005)
        v = float(loss.detach())
        run = v if step == 1 else 0.98 * run + 0.02 * v
        if step % 500 == 0 or step == a.steps:
            curve.append({"step": step, "train_l1": run, "time_s": time.perf_counter() - t0})
            print(f"step {step}: train L1 {run:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    oracle = _oracle_field()
    res: dict[str, Any] = {
        "provenance": provenance({"training": a.seed, "scoring": a.seed + 1000,
                                  "bootstrap": a.seed + 1000}),
        "train": a.train, "train_images": len(train), "settings": vars(a) | {"json": str(a.json)},
        "curve": curve, "cameras": {}}
    for cam in a.val:
        samples = [s for _, grp in load_samples(cam, 3, a.size, "fundus", a.max_images)
                   for s in grp]
        r = score(ema, samples, a.size, a.frames, a.seed + 1000, a.factor, oracle, by_camera)
        res["cameras"][cam] = r
        print(f"{cam:12s} n={r['n']:3d}  L1 identity {r['identity']['mean']:.4f}  field "
              f"{r['field']['mean']:.4f} [{r['field']['lo']:.4f}, {r['field']['hi']:.4f}]  "
              f"oracle {r['oracle']['mean']:.4f}  removed {r['share_of_error_removed']:.0%} "
              f"(oracle {r['oracle_share_of_error_removed']:.0%}), worse "
              f"{r['share_of_frames_worse']:.0%}, clean change {r['clean_change']['mean']:.4f}",
              flush=True)
        print(f"{'':12s} interior ({r['interior']['share_of_fov']:.0%} of the FOV): identity "
              f"{r['interior']['identity']:.4f} field {r['interior']['field']:.4f} oracle "
              f"{r['interior']['oracle']:.4f};  rim: identity {r['rim']['identity']:.4f} field "
              f"{r['rim']['field']:.4f} oracle {r['rim']['oracle']:.4f}", flush=True)
    if a.save:
        torch.save({"state_dict": ema.state_dict(), "settings": vars(a) | {"json": str(a.json),
                    "save": str(a.save)}}, a.save)
    write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
