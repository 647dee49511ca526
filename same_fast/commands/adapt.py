"""``same-fast adapt -m MODEL -i DIR -o CKPT``: adapt an enhancer to a clinic's unlabeled images."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

HELP = "adapt an enhancer to unlabeled target images (SAME teacher-student + picker)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from same_fast.adapt.loop import AdaptConfig
    from same_fast.adapt.safety import SafetyConfig
    from same_fast.degrade import PRESETS

    d, s = AdaptConfig(), SafetyConfig()
    p.add_argument("-m", "--model", required=True, help="shipped model name or checkpoint path")
    p.add_argument("-i", "--input", required=True, metavar="DIR",
                   help="folder of target images or DICOM files (unlabeled)")
    p.add_argument("-o", "--output", required=True, metavar="CKPT", help="adapted checkpoint")
    p.add_argument("--mask", metavar="DIR", help="field-of-view masks paired by name")
    p.add_argument("--mode", choices=["offline", "online"], default=d.mode)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, default=d.epochs, help="passes over the folder")
    g.add_argument("--steps", type=int, default=d.steps, help="optimizer steps (offline)")
    p.add_argument("--picker", default="auto",
                   help="picker checkpoint or shipped name, 'auto' (the model's modality) or "
                        "'none' (mean teacher without picker)")
    p.add_argument("--p-good", type=float, default=None, help="IQA threshold (default by modality)")
    p.add_argument("--soft-picker", action="store_true", help="soft weights instead of 0/1")
    p.add_argument("--picker-calibrate", type=float, default=0.0, metavar="SHARE",
                   help="the picker also accepts the best SHARE (0-1) of the target's own "
                        "recent pseudo-labels, for clinics the assessors rate low across the "
                        "board (0 = the absolute thresholds alone)")
    p.add_argument("--ema", type=float, default=d.ema)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--size", type=int, default=d.size, help="training view side (px)")
    p.add_argument("--schedule", choices=["constant", "paper"], default=d.schedule)
    p.add_argument("--w-l1", type=float, default=d.w_l1)
    p.add_argument("--w-struct", type=float, default=d.w_struct)
    p.add_argument("--w-entropy", type=float, default=d.w_entropy)
    p.add_argument("--w-ssim", type=float, default=d.w_ssim)
    p.add_argument("--no-gate-entropy", dest="gate_entropy", action="store_false",
                   help="keep the entropy term on batches where the picker kept nothing")
    p.add_argument("--redegrade", action="store_true", default=d.redegrade,
                   help="give the student a re-degraded view (SRTTA-style; on by default)")
    p.add_argument("--no-redegrade", dest="redegrade", action="store_false",
                   help="the paper's recipe: the student sees the teacher's view")
    p.add_argument("--redegrade-preset", default=d.redegrade_preset, metavar="PRESET",
                   choices=sorted(PRESETS),
                   help="degradation preset of the re-degraded view, implies --redegrade "
                        "(default: generic-mix, mild noise, blur, JPEG and tone fixed before any "
                        "target was seen)")
    p.add_argument("--redegrade-strength", type=float, default=d.redegrade_strength)
    p.add_argument("--every", type=int, default=d.every, help="online: adapt every k frames")
    p.add_argument("--buffer", type=int, default=d.buffer, help="online: frames kept")
    p.add_argument("--serve", choices=["student", "teacher"], default=d.serve,
                   help="which model is written / served")
    p.add_argument("--min-acceptance", type=float, default=s.min_acceptance)
    p.add_argument("--max-drift", type=float, default=s.max_drift)
    p.add_argument("--on-collapse", choices=["freeze", "reset"], default=s.action)
    p.add_argument("--audit", metavar="FILE", help="audit log (default: CKPT.audit.jsonl)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="cpu")


def resolve_picker(spec: str, modality: str, device: str, p_good: float | None = None,
                   soft: bool = False, calibrate: float = 0.0):
    """'none' -> None; 'auto' -> the shipped picker of ``modality``; else a name or path.
    ``p_good``, ``soft`` and ``calibrate`` override the checkpoint's decision settings."""
    from same_fast.errors import CheckpointError
    from same_fast.picker import SHIPPED, PickerConfig, load_picker

    if spec == "none":
        return None
    if spec == "auto":
        spec = f"{modality}-picker"
        if spec not in SHIPPED:
            raise CheckpointError(f"no shipped picker for modality '{modality}' "
                                  "(pass --picker CKPT or --picker none)")
    # p_good None: the checkpoint's threshold (load_picker fills it in); one load either way
    return load_picker(spec, device, PickerConfig(p_good=p_good, soft=soft, calibrate=calibrate))


def run(args: argparse.Namespace) -> int:
    from same_fast.adapt.audit import AuditLog
    from same_fast.adapt.frames import load_frames
    from same_fast.adapt.loop import AdaptConfig, adapt_offline
    from same_fast.adapt.online import OnlineAdapter
    from same_fast.adapt.safety import SafetyConfig
    from same_fast.models import load_model, save_model
    from same_fast.picker import picker_config_dict

    model, meta = load_model(args.model, args.device)
    modality = str(meta.get("modality", "fundus"))
    fields = {f.name for f in dataclasses.fields(AdaptConfig)}
    cfg = AdaptConfig(**{k: v for k, v in vars(args).items() if k in fields}, modality=modality)
    if cfg.redegrade_preset:  # naming the preset asks for the view
        cfg = dataclasses.replace(cfg, redegrade=True)
    cfg.check()
    picker = resolve_picker(args.picker, modality, args.device, args.p_good, args.soft_picker,
                            args.picker_calibrate)
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
                if bar is not None:
                    bar.total = total
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}",
                                    accepted=f"{rec['accepted']:.0f}/{rec['batch']:.0f}")

            result = adapt_offline(model, frames, picker, cfg, fovs, audit, cb)
            adapted = result.student if cfg.serve == "student" else result.teacher
            history = result.history
            extra = {"steps": len(history), "acceptance": result.acceptance}
        else:
            safety = SafetyConfig(min_acceptance=args.min_acceptance, max_drift=args.max_drift,
                                  action=args.on_collapse)
            ad = OnlineAdapter(model, picker, cfg, safety, audit)
            for k, f in enumerate(frames):
                ad.observe(f, None if fovs is None else fovs[k])
                if bar is not None:
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
               adaptation={"config": {k: (list(v) if isinstance(v, tuple) else v)
                                      for k, v in dataclasses.asdict(cfg).items()},
                           "picker": args.picker,
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
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    total = n_frames if cfg.mode == "online" else (cfg.steps or None)
    return tqdm(total=total, desc=f"adapt ({cfg.mode})", unit="frame" if cfg.mode == "online"
                else "step")
