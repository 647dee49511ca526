"""Offline adaptation of one clinic's folder into its own checkpoint and audit log.

``adapt_folder`` is the library form of ``same-fast adapt --mode offline``: every readable frame
under the folder (a bad file is skipped and reported), ``adapt.loop.adapt_offline`` with the
clinic's picker, the audit log appended as it goes, and the adapted model written atomically
(``models.save_model``) with its provenance. ``same_fast.distributed.adapt_clinics_on_ray`` runs
one call per clinic as a Ray task.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from same_fast.adapt.config import AdaptConfig


def adapt_folder(model: str, folder: str, output: str, config: AdaptConfig | None = None,
                 picker: str = "auto", mask: str | None = None, audit: str | None = None,
                 device: str = "cpu") -> dict[str, Any]:
    """Adapt ``model`` (a shipped name or checkpoint) to the images under ``folder``.

    Writes the adapted checkpoint to ``output`` and appends the audit log to ``audit`` (default
    ``<output without suffix>.audit.jsonl``). Returns what was done: steps, acceptance, seconds,
    frames, skipped files, the two paths.
    """
    from same_fast.adapt.audit import AuditLog
    from same_fast.adapt.frames import load_frames
    from same_fast.adapt.loop import adapt_offline
    from same_fast.models import load_model, save_model
    from same_fast.picker import picker_config_dict, resolve_picker

    net, meta = load_model(model, device)
    modality = str(meta.get("modality", "fundus"))
    cfg = dataclasses.replace(config or AdaptConfig(), mode="offline", modality=modality)
    cfg = cfg.check().resolved()
    chosen = resolve_picker(picker, modality, device)
    skipped: list[dict[str, str]] = []
    frames, fovs, _ = load_frames(folder, net.in_channels, mask, device, skipped)
    audit_path = audit or str(Path(output).with_suffix("")) + ".audit.jsonl"
    t0 = time.perf_counter()
    with AuditLog(audit_path, hash_every=cfg.hash_every) as log:
        result = adapt_offline(net, frames, chosen, cfg, fovs, log)
    seconds = time.perf_counter() - t0
    adapted = result.student if cfg.serve == "student" else result.teacher
    save_model(output, adapted, modality=modality,
               provenance={"command": "same_fast.batch.adapt_folder", "source_model": model,
                           "target": folder, "frames": len(frames), "skipped": skipped},
               adaptation={"config": cfg.to_dict(),
                           "picker": picker, "seconds": seconds,
                           "picker_config": None if chosen is None else picker_config_dict(chosen),
                           "steps": len(result.history), "skipped": result.skipped,
                           "acceptance": None if result.skipped else result.acceptance})
    return {"input": folder, "checkpoint": output, "audit": audit_path, "frames": len(frames),
            "steps": len(result.history), "skipped_adaptation": result.skipped,
            "acceptance": None if result.skipped else result.acceptance,
            "seconds": round(seconds, 3), "skipped": skipped}
