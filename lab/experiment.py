"""The evaluation harness of SAME (SPEC section 6): does adaptation help on a shift the source
never saw?

``run_experiment(name, out_dir, quick)`` runs one named experiment (``lab.config.EXPERIMENTS``)
and writes ``results.json``, ``results.md`` (a Markdown table) and a PNG grid of examples.

- ``drive-cataract``: the 20 DRIVE test images at 256 x 256, degraded with ``fundus-cataract``
  (``fundus-lite`` was trained on ``fundus-shen2020`` only); downstream vessel segmentation by a
  frozen small U-Net trained here on clean HRF + FIVES images (CC BY).
- ``drive-noise``, ``drive-noise-mixed`` (30 % ungradable images): camera noise, a shift no
  fundus preset trains on.
- ``busi-speckle``: BUSI images held out of source training (by the source model's recorded
  split when present), degraded with ultrasound speckle stronger and coarser than the training
  range.

Reported: paper-protocol SSIM / PSNR (256, 8-bit, x FOV, 7x7 uniform SSIM, channel mean), the
same inside the FOV only, the per-image negative-adaptation rate (SSIM below the source model's)
and how many of those the picker would have rejected, the picker's acceptance during adaptation
and its AUROC separating real pseudo-labels from planted implausible ones (``lab.planted``), and
vessel Dice / IoU / F1 / kappa pooled over FOV pixels.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lab.config import ADAPTED, EXTRA, METHODS, make_config
from lab.images import experiment_images
from lab.planted import picker_separation, teacher_outputs
from lab.report import curve, grid, jsonable, markdown
from lab.segmenter import cached_segmenter, segment
from same_fast.errors import InputError
from same_fast.eval.protocol import image_scores
from same_fast.nn import enhance


def run_experiment(name: str, out_dir: str | Path | None = None, quick: bool = False,
                   progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Run experiment ``name``; write results.json, results.md and examples.png to ``out_dir``
    (default ``experiments/<name>``). Returns the results dict (every number)."""
    from lab.baselines import clahe
    from same_fast.adapt.loop import AdaptConfig, adapt_offline
    from same_fast.adapt.online import OnlineAdapter, enhance_adaptive
    from same_fast.adapt.safety import SafetyConfig
    from same_fast.engine.machine import environment
    from same_fast.models import load_model
    from same_fast.picker import PickerConfig, load_picker, picker_config_dict

    cfg = make_config(name, quick, **overrides)
    out = Path(out_dir) if out_dir else Path("experiments") / name
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    log = print if progress else (lambda *a, **k: None)
    model, meta = load_model(cfg.model)
    picker = load_picker(cfg.picker, config=PickerConfig(
        soft=cfg.picker_soft, p_good=cfg.picker_p_good if cfg.picker_p_good > 0 else None,
        calibrate=cfg.picker_calibrate))
    data, degraded = experiment_images(cfg, meta)
    clean, fov = data["clean"], data["fov"]
    frames = list(degraded)
    fovs = None if fov is None else list(fov)
    outputs: dict[str, torch.Tensor] = {"degraded": degraded}
    timings: dict[str, float] = {}

    def timed(key: str, fn):
        t0 = time.perf_counter()
        r = fn()
        timings[key] = time.perf_counter() - t0
        log(f"[{name}] {key}: {timings[key]:.1f} s")
        return r

    outputs["clahe"] = timed("clahe", lambda: clahe(degraded, fov=fov))
    outputs["source"] = timed("source", lambda: enhance(model, degraded, fov, batch_size=4))
    acfg = AdaptConfig(steps=cfg.steps, batch=cfg.batch, size=cfg.view, lr=cfg.lr,
                       seed=cfg.seed, modality=cfg.modality, schedule=cfg.schedule, ema=cfg.ema,
                       w_entropy=cfg.w_entropy, w_struct=cfg.w_struct, serve=cfg.serve,
                       redegrade_preset=cfg.redegrade_preset)
    arms = {a.strip() for a in cfg.arms.split(",") if a.strip()} or set(ADAPTED + EXTRA)
    unknown = arms - set(ADAPTED + EXTRA)
    if unknown:
        raise InputError(f"unknown arms {sorted(unknown)} (choose from {ADAPTED + EXTRA})")
    runs: dict[str, Any] = {}

    def offline(arm: str, pick: Any, c: Any) -> None:
        if arm in arms:
            if pick is not None:  # each arm calibrates on its own teacher's outputs
                pick.reset_calibration()
            r = runs[arm] = timed(arm, lambda: adapt_offline(model, frames, pick, c, fovs))
            outputs[arm] = enhance(r.student if cfg.serve == "student" else r.teacher,
                                   degraded, fov, batch_size=4)

    offline("mean_teacher", None, acfg)
    offline("same_offline", picker, acfg)
    if cfg.redegrade:
        rcfg = dataclasses.replace(acfg, redegrade=True,
                                   redegrade_strength=cfg.redegrade_strength)
        offline("mean_teacher_redegrade", None, rcfg)
        offline("same_redegrade", picker, rcfg)
    ocfg = dataclasses.replace(acfg, mode="online", every=cfg.online_every,
                               steps_per_update=cfg.online_steps_per_update,
                               buffer=cfg.online_buffer)
    adapters: dict[str, OnlineAdapter] = {}

    def online(arm: str, c: Any) -> None:
        if arm not in arms:
            return
        picker.reset_calibration()
        # reset (not freeze) on collapse: a frozen student keeps the weights that collapsed
        ad = adapters[arm] = OnlineAdapter(model, picker, c,
                                           SafetyConfig(action=cfg.online_on_collapse))

        def run() -> torch.Tensor:
            ys = []
            for k, y in enumerate(enhance_adaptive(model, frames, adapter=ad)):
                ys.append(y if fov is None else y * fov[k])
            return torch.stack(ys)

        outputs[arm] = timed(arm, run)

    online("same_online", ocfg)
    if cfg.redegrade:
        online("same_online_redegrade", dataclasses.replace(
            ocfg, redegrade=True, redegrade_strength=cfg.redegrade_strength))
    same, mt, red = runs.get("same_offline"), runs.get("mean_teacher"), runs.get("same_redegrade")

    # quality
    methods = [m for m in METHODS + EXTRA if m in outputs]
    per_image = {m: image_scores(outputs[m], clean, fov) for m in methods}
    table: dict[str, dict[str, Any]] = {}
    usable = [i for i in range(len(frames)) if i not in set(data["ungradable"])]
    for m in methods:
        rows = per_image[m]
        table[m] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        if data["ungradable"]:
            for k in ("ssim", "psnr"):
                table[m][f"{k}_usable"] = float(np.mean([rows[i][k] for i in usable]))
    # picker: decisions on the real pseudo-labels, AUROC against planted implausible ones
    y_t, s_t = teacher_outputs(model, degraded)
    picker.reset_calibration()  # accept_real and the planted ones: the absolute rule
    real = picker.scores(y_t, s_t)
    w_real = picker.weights_from_scores(real)
    picker_res: dict[str, Any] = {"config": picker_config_dict(picker),
                                  "accept_real": float(w_real.mean()),
                                  "acceptance_offline": same.acceptance if same else None,
                                  "acceptance_offline_curve": curve(same.history) if same else [],
                                  "acceptance_redegrade": red.acceptance if red else None,
                                  "acceptance_online": online_stats(adapters, "same_online").get(
                                      "acceptance"),
                                  "acceptance_online_redegrade": online_stats(
                                      adapters, "same_online_redegrade").get("acceptance"),
                                  "online": online_stats(adapters, "same_online"),
                                  "online_redegrade": online_stats(adapters,
                                                                    "same_online_redegrade")}
    sep = picker_separation(model, picker, degraded, cfg.seed + 7, (y_t, s_t),
                            data["ungradable"])
    picker_res["auroc"], picker_res["accept_planted"] = sep["auroc"], sep["accept_planted"]
    # sample-wise negative adaptation
    src_ssim = np.array([r["ssim"] for r in per_image["source"]])
    rejected = (w_real < 0.5).numpy()
    for m in [a for a in ADAPTED + EXTRA if a in outputs]:
        s = np.array([r["ssim"] for r in per_image[m]])
        neg = s < src_ssim
        table[m]["negative_rate"] = float(neg.mean())
        table[m]["negative_rejected_by_picker"] = int((neg & rejected).sum())
        table[m]["delta_ssim"] = float(np.mean(s - src_ssim))
        table[m]["delta_psnr"] = table[m]["psnr"] - table["source"]["psnr"]
    # downstream vessels
    downstream = None
    if cfg.downstream and data["vessels"] is not None:
        from same_fast.eval.metrics import binary_scores

        seg, seg_info = timed("segmenter", lambda: cached_segmenter(cfg, out))
        gt = data["vessels"][:, 0].numpy() > 0.5
        m_fov = fov[:, 0].numpy() > 0.5
        downstream = {"segmenter": seg_info, "scores": {}}
        for m in ["clean"] + methods:
            x = clean if m == "clean" else outputs[m]
            pred = segment(seg, x)[:, 0].numpy() > 0.5
            downstream["scores"][m] = binary_scores(pred, gt, m_fov)
    targets = {"picker_auroc>=0.9": picker_res["auroc"]["all"] >= 0.9}
    for arm, mt_arm in (("same_offline", "mean_teacher"),
                        ("same_redegrade", "mean_teacher_redegrade")):
        if arm not in table or mt_arm not in table:
            continue
        r = table[arm]
        targets[f"{arm}: ssim_gain>=0.01"] = r["ssim"] - table["source"]["ssim"] >= 0.01
        targets[f"{arm}: psnr_gain>=0.5dB"] = r["psnr"] - table["source"]["psnr"] >= 0.5
        targets[f"{arm}: negative_rate<0.2"] = r["negative_rate"] < 0.2
        targets[f"{arm}: beats {mt_arm}"] = r["ssim"] > table[mt_arm]["ssim"]
    result = {
        "experiment": name, "config": jsonable(dataclasses.asdict(cfg)),
        "quick": quick, "images": data["names"], "n": len(data["names"]),
        "model": {"name": cfg.model, "provenance": meta.get("provenance")},
        "ungradable": [data["names"][i] for i in data["ungradable"]],
        "table": table, "per_image": per_image, "picker": picker_res,
        "downstream": downstream, "targets": targets, "timings_s": timings,
        "adaptation": {"mean_teacher_last_loss": mt.history[-1]["loss"] if mt and mt.history
                       else None,
                       "same_last_loss": same.history[-1]["loss"] if same and same.history
                       else None,
                       "same_redegrade_acceptance": red.acceptance if red else None},
        "seconds": time.perf_counter() - t_start,
    }
    if "heldout_from_metadata" in data:
        result["heldout_from_metadata"] = data["heldout_from_metadata"]
    result["environment"] = environment()
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    md = markdown(result)
    (out / "results.md").write_text(md)
    # columns: degraded, source, each SAME arm that ran (offline, re-degraded view), clean
    shown = [m for m in ("same_offline", "same_redegrade") if m in outputs] or [methods[-1]]
    grid(out / "examples.png", [outputs[m] for m in ("degraded", "source", *shown)]
          + [clean], cfg.examples)
    log(md)
    return result


def online_stats(adapters: dict[str, Any], arm: str) -> dict[str, Any]:
    """An online arm's adapter counters, without its last loss ({} when the arm did not run)."""
    if arm not in adapters:
        return {}
    return {k: v for k, v in adapters[arm].stats().items() if k != "last_loss"}

