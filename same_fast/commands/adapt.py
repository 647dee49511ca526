"""``same-fast adapt -m MODEL -i DIR -o CKPT``: adapt an enhancer to a clinic's unlabeled images."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

HELP = "adapt an enhancer to unlabeled target images (SAME teacher-student + picker)"


# The flag of each AdaptConfig field this command exposes (type, default and help: the field's).
FLAGS = {
    "mode": "--mode", "picker": "--picker", "picker_calibrate": "--picker-calibrate",
    "picker_share_auto": "--no-picker-share-auto", "skip_unmeasured": "--always-adapt",
    "ema": "--ema", "lr": "--lr", "batch": "--batch", "size": "--size", "schedule": "--schedule",
    "w_l1": "--w-l1", "w_struct": "--w-struct", "w_entropy": "--w-entropy", "w_ssim": "--w-ssim",
    "gate_entropy": "--no-gate-entropy", "redegrade": "--no-redegrade",
    "redegrade_preset": "--redegrade-preset", "redegrade_strength": "--redegrade-strength",
    "every": "--every", "buffer": "--buffer", "serve": "--serve",
    "min_acceptance": "--min-acceptance", "max_drift": "--max-drift", "safety": "--on-collapse",
    "hash_every": "--audit-hash-every", "seed": "--seed",
}
LENGTH = {"epochs": "--epochs", "steps": "--steps"}  # one or the other


def add_arguments(p: argparse.ArgumentParser) -> None:
    from same_fast.adapt.config import AdaptConfig, add_flags

    p.add_argument("-m", "--model", required=True, help="shipped model name or checkpoint path")
    p.add_argument("-i", "--input", required=True, metavar="DIR",
                   help="folder of target images or DICOM files (unlabeled)")
    p.add_argument("-o", "--output", required=True, metavar="CKPT", help="adapted checkpoint")
    p.add_argument("--mask", metavar="DIR", help="field-of-view masks paired by name")
    d = AdaptConfig()
    add_flags(p.add_mutually_exclusive_group(), LENGTH, d)
    add_flags(p, FLAGS, d)
    p.add_argument("--p-good", type=float, default=None,
                   help="the picker's IQA threshold (default: the checkpoint's)")
    p.add_argument("--soft-picker", action="store_true", help="soft weights instead of 0/1")
    p.add_argument("--audit", metavar="FILE", help="audit log (default: CKPT.audit.jsonl)")
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from same_fast.adapt.audit import AuditLog
    from same_fast.adapt.config import AUTO_REDEGRADE, AdaptConfig, from_args
    from same_fast.adapt.frames import load_frames
    from same_fast.adapt.loop import adapt_offline
    from same_fast.adapt.online import OnlineAdapter
    from same_fast.adapt.safety import SafetyConfig
    from same_fast.models import load_model, save_model
    from same_fast.picker import PickerConfig, picker_config_dict, resolve_picker

    flags = {**LENGTH, **FLAGS}
    cfg = from_args(args, flags, AdaptConfig()).check(flags)
    model, meta = load_model(args.model, args.device)
    modality = str(meta.get("modality", "fundus"))
    cfg = dataclasses.replace(cfg, modality=modality).resolved()
    picker = resolve_picker(cfg.picker, modality, args.device,
                            PickerConfig(p_good=args.p_good, soft=args.soft_picker,
                                         calibrate=cfg.picker_calibrate))
    skipped: list[dict[str, str]] = []
    frames, fovs, names = load_frames(args.input, model.in_channels, args.mask, args.device,
                                      skipped)
    for s in skipped:  # one line each, as enhance reports its failed files; the rest adapt
        sys.stderr.write(f"same-fast: error: {s['error']} (skipped)\n")
    audit_path = args.audit or str(Path(args.output).with_suffix("")) + ".audit.jsonl"
    t0 = time.perf_counter()
    bar = _bar(cfg, len(frames))
    with AuditLog(audit_path, hash_every=cfg.hash_every) as audit:
        if cfg.mode == "offline":
            def cb(step: int, total: int, rec: dict, student: object) -> None:
                if not bar.disable:
                    bar.total = total
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}",
                                    accepted=f"{rec['accepted']:.0f}/{rec['batch']:.0f}")

            result = adapt_offline(model, frames, picker, cfg, fovs, audit, cb)
            adapted = result.student if cfg.serve == "student" else result.teacher
            history = result.history
            extra = {"steps": len(history),
                     "acceptance": None if result.skipped else result.acceptance,
                     "skipped": result.skipped, "student_view": result.view}
            if result.view is not None and cfg.redegrade_with() == AUTO_REDEGRADE:
                sys.stderr.write(f"same-fast: note: read off the target: {result.view}\n")
            if result.skipped:
                sys.stderr.write(f"same-fast: note: {result.skipped}\n")
        else:
            ad = OnlineAdapter(model, picker, cfg, SafetyConfig.of(cfg), audit)
            for k, f in enumerate(frames):
                ad.observe(f, None if fovs is None else fovs[k])
                if not bar.disable:
                    st = ad.stats()
                    bar.update(1)
                    acc = st["acceptance"]
                    bar.set_postfix(steps=st["steps"], loss=f"{st['last_loss'] or 0:.4f}",
                                    acceptance="-" if acc is None else f"{acc:.2f}")
            adapted = ad.served.eval()
            history = ad.history
            extra = {k: v for k, v in ad.stats().items() if k != "last_loss"}
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    prov = dict(meta.get("provenance") or {}) if isinstance(meta.get("provenance"), dict) else {}
    save_model(args.output, adapted, modality=modality,
               provenance={"command": "same-fast adapt", "source_model": str(args.model),
                           "source_provenance": prov, "target": str(args.input),
                           "frames": len(frames), "skipped": skipped},
               adaptation={"config": cfg.to_dict(), "picker": cfg.picker,
                           "picker_config": None if picker is None else picker_config_dict(picker),
                           "seconds": seconds, **extra})
    acc = extra.get("acceptance")
    last = history[-1]["loss"] if history else float("nan")
    print(f"adapted {args.model} on {len(frames)} frame(s) ({cfg.mode}, {len(history)} steps, "
          f"acceptance {'n/a' if acc is None else f'{acc:.2f}'}, last loss {last:.4f}, "
          f"{seconds:.1f} s) -> {args.output}; audit log {audit_path}"
          + (f"; {len(skipped)} file(s) skipped" if skipped else ""))
    return 2 if skipped else 0


def _bar(cfg, n_frames: int):
    from same_fast.progress import progress_bar

    total = n_frames if cfg.mode == "online" else (cfg.steps or None)
    return progress_bar(total=total, desc=f"adapt ({cfg.mode})",
                        unit="frame" if cfg.mode == "online" else "step")
