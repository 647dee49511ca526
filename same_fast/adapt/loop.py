"""Offline SAME adaptation: many steps over a clinic's folder of unlabeled images.

``adapt_offline(model, images, picker, config)`` copies the source model into a student and a
teacher, then repeats: draw a batch, take random views, one ``AdaptStep`` (teacher pseudo-labels,
picker weights, student loss, Adam, EMA). The learning rate is constant, or the paper's schedule
(constant for 150 of 200 epochs, then linear decay to zero: ``schedule='paper'`` applies the same
3:1 split to however many steps are run). Deterministic for a given ``seed`` on one device.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from same_fast.adapt.audit import AuditLog
from same_fast.adapt.augment import random_views, redegrade
from same_fast.adapt.config import AUTO_REDEGRADE, AdaptConfig, StepConfig
from same_fast.adapt.step import AdaptStep
from same_fast.errors import InputError

__all__ = ["AdaptConfig", "AdaptResult", "adapt_offline", "describe_view", "lr_factor",
           "make_pair", "make_step", "picker_json", "redegradation"]

def redegradation(cfg: AdaptConfig, images: Sequence[torch.Tensor],
                  fovs: Sequence[torch.Tensor | None] | None = None) -> Any:
    """The student's re-degradation preset for ``cfg``: a named preset, or for ``auto`` the one
    estimated from ``images`` (``degrade.estimate.target_redegradation``)."""
    name = cfg.redegrade_with()
    if name != AUTO_REDEGRADE:
        return name
    from same_fast.degrade.estimate import target_redegradation

    return target_redegradation(images, fovs, modality=cfg.modality)


def describe_view(preset: Any) -> str | None:
    """The student's view in one line: what was read off the target (``TargetNoise.describe``),
    a named preset, or None (no re-degraded view)."""
    if preset is None:
        return None
    describe = getattr(preset, "describe", None)
    return describe() if callable(describe) else f"preset {getattr(preset, 'name', preset)}"


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total``."""
    if schedule == "constant" or total <= 0:
        return 1.0
    keep = int(round(total * 150 / 200))  # the paper: 150 constant + 50 decaying epochs
    if step < keep:
        return 1.0
    return max(0.0, 1.0 - (step - keep + 1) / max(1, total - keep))


class GatedAdaptStep(AdaptStep):
    """``AdaptStep`` that learns nothing from a batch where the picker kept no sample.

    Such a batch has exactly zero loss (the entropy term is gated off too) and, with fused Adam,
    the optimizer step is skipped through Adam's ``found_inf`` input (the mechanism AMP's
    GradScaler uses), so momentum from earlier batches does not keep moving the weights. The
    gate is a 0-d tensor on the device: no host round trip. Measured: without the skip, a
    picker accepting 2 % of BUSI batches still let Adam's momentum drift the student.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: StepConfig | None = None,
                 picker: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                 ) -> None:
        super().__init__(student, teacher, config, None if picker is None else self._gate)
        self._inner_picker = picker
        self._fused = all(g.get("fused") for g in self.optimizer.param_groups)

    def _gate(self, y_t: torch.Tensor, s_t: torch.Tensor) -> torch.Tensor:
        w = self._inner_picker(y_t, s_t)  # type: ignore[misc]
        if self._fused:
            self.optimizer.found_inf = (w.sum() <= 0).to(torch.float32)  # type: ignore[attr-defined]
        return w

    def _student_loss(self, x: torch.Tensor, y_t: torch.Tensor, s_t: torch.Tensor,
                      w: torch.Tensor, mask: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
        out = super()._student_loss(x, y_t, s_t, w, mask)
        closed = (w.sum() <= 0).to(out["loss"].dtype)
        out["loss"] = out["loss"] - closed * self.config.w_entropy * out["entropy"]
        return out


def make_step(student: nn.Module, teacher: nn.Module, cfg: AdaptConfig,
              picker: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None) -> AdaptStep:
    """The adaptation step for ``cfg`` (entropy gated by acceptance when a picker is used)."""
    cls = GatedAdaptStep if cfg.gate_entropy and picker is not None else AdaptStep
    return cls(student, teacher, cfg.step_config(), picker)


def make_pair(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Student and teacher: two independent copies of the source model (same device)."""
    student = copy.deepcopy(model)
    teacher = copy.deepcopy(model)
    for p in student.parameters():
        p.requires_grad_(True)
    return student, teacher


@dataclass
class AdaptResult:
    """Adapted models and the per-step history (floats: loss, l1, struct, entropy, accepted,
    batch, lr)."""

    student: nn.Module
    teacher: nn.Module
    history: list[dict[str, float]]
    skipped: str | None = None  # why no step was taken (the source weights were kept)
    view: str | None = None  # the student's view: what was read off the target, or a preset

    @property
    def acceptance(self) -> float:
        n = sum(h["batch"] for h in self.history)
        return sum(h["accepted"] for h in self.history) / n if n else float("nan")


# What images show when the automatic view finds nothing to teach (offline skip, online hold).
NOTHING_MODELLED = ("no JPEG compression, no noise above the estimator's floor and (OCT) no "
                    "speckle coarser than the source's training scans: nothing the automatic "
                    "re-degradation models")
SKIP_REASON = (f"the target images show {NOTHING_MODELLED}, so the source weights are kept "
               "(--always-adapt, or AdaptConfig(skip_unmeasured=False), adapts anyway)")

StepCallback = Callable[[int, int, dict[str, float], nn.Module], None]


def adapt_offline(model: nn.Module, images: Sequence[torch.Tensor],
                  picker: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
                  config: AdaptConfig | None = None,
                  fovs: Sequence[torch.Tensor | None] | None = None,
                  audit: AuditLog | None = None, callback: StepCallback | None = None
                  ) -> AdaptResult:
    """Adapt ``model`` (left untouched) to ``images`` and return the student and teacher.

    images: (C, H, W) float tensors in [0, 1] on the model's device (sizes may differ).
    fovs: optional (1, H, W) masks, one per image (views are masked by them).
    picker: ``(y_T in [-1, 1], s_T logits) -> weights (N,)`` or None (mean teacher, no picker).
    callback(step, total, record, served): called after every step with the model that
    ``cfg.serve`` names (the one a checkpoint would be written from; progress bars, probes). A
    probe that switches it to eval mode must restore its mode (``train(was_training)``).
    The audit log's hashes are of that model too.
    """
    cfg = (config or AdaptConfig()).check().resolved()
    if len(images) == 0:
        raise InputError("adaptation needs at least one image")
    total = cfg.epochs * math.ceil(len(images) / cfg.batch) if cfg.epochs else cfg.steps
    _auto_share(model, images, picker, cfg, fovs)  # recorded in the audit log's picker settings
    torch.manual_seed(cfg.seed)  # dropout noise of teacher and student
    g = torch.Generator().manual_seed(cfg.seed)
    student, teacher = make_pair(model)
    step = make_step(student, teacher, cfg, picker)
    served = student if cfg.serve == "student" else teacher
    aug = cfg.augment_config(int(getattr(model, "multiple", 1)), reads_whole_frame(model))
    preset = redegradation(cfg, images, fovs) if cfg.redegrade else None
    view = describe_view(preset)
    history: list[dict[str, float]] = []
    if cfg.skip_unmeasured and preset is not None and not getattr(preset, "measured", True):
        # the target shows nothing the automatic re-degradation models: the loop would be a
        # mean teacher, which drifts below the source model (docs/RESULTS.md); keep the source
        if audit is not None:
            audit.event("skipped", 0, served=served, mode="offline", images=len(images),
                        reason=SKIP_REASON, student_view=view, config=cfg.to_dict(),
                        picker=picker_json(picker))
        student.eval()
        teacher.eval()
        return AdaptResult(student, teacher, history, skipped=SKIP_REASON, view=view)
    if audit is not None:
        audit.event("start", 0, served=served, mode="offline", total_steps=total,
                    images=len(images), student_view=view, config=cfg.to_dict(),
                    picker=picker_json(picker))
    order: list[int] = []
    for i in range(total):
        # epochs: every image once per pass, in a seeded random order
        while len(order) < cfg.batch:
            order += torch.randperm(len(images), generator=g).tolist()
        idx, order = order[:cfg.batch], order[cfg.batch:]
        f = None if fovs is None else [fovs[j] for j in idx]
        views, masks = random_views([images[j] for j in idx], aug, g, f, with_masks=True)
        xs = redegrade(views, preset, cfg.redegrade_strength, g) if cfg.redegrade else None
        for group in step.optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg.schedule, i, total)
        out = step(views * 2 - 1, None if xs is None else xs * 2 - 1,
                   None if fovs is None else masks)
        rec = {k: float(out[k]) for k in ("loss", "l1", "struct", "entropy", "accepted")}
        rec.update(batch=float(len(idx)), lr=step.optimizer.param_groups[0]["lr"])
        history.append(rec)
        if audit is not None:
            audit.step(i + 1, rec, served=served)
        if callback is not None:
            callback(i + 1, total, rec, served)
    student.eval()
    teacher.eval()
    if audit is not None:
        audit.event("end", total, served=served)
    return AdaptResult(student, teacher, history, view=view)


def _auto_share(model: nn.Module, images: Sequence[torch.Tensor], picker: Any,
                cfg: AdaptConfig, fovs: Sequence[torch.Tensor | None] | None) -> float | None:
    """With ``picker_share_auto``, a ``Picker`` that has no calibration share gets one from the
    source model's pseudo-labels of ``images`` (``picker.auto_calibrate``); returns it. A picker
    whose checkpoint says ``share_auto: false`` keeps its absolute thresholds."""
    from same_fast.picker import Picker, auto_calibrate

    if not (cfg.picker_share_auto and isinstance(picker, Picker) and picker.config.calibrate == 0
            and picker.share_auto):
        return None
    return auto_calibrate(picker, model, list(images), None if fovs is None else list(fovs))


def reads_whole_frame(model: nn.Module) -> bool:
    """Whether the network summarises the whole frame (SAMENet ``context``: a pooled summary),
    so its views are whole frames: a crop would change the summary it learnt from. A light
    field (``field``) pools nothing over the frame; like the U-Net it is convolutional, so crops
    are views of the same kind as the frames it serves."""
    return bool(getattr(model, "config", {}).get("context", False))


def picker_json(picker: Any) -> dict[str, Any] | None:
    """What decides the weights, for audit logs: a ``Picker``'s effective settings, the name of
    any other callable, or None (every sample accepted)."""
    if picker is None:
        return None
    from same_fast.picker import Picker, picker_config_dict

    if isinstance(picker, Picker):
        return picker_config_dict(picker)
    return {"callable": getattr(picker, "__qualname__", type(picker).__qualname__)}

