"""Online SAME adaptation: one pass over a stream, adapting beside inference.

``OnlineAdapter`` keeps a small buffer of recent frames; every ``every`` observed frames it runs
``steps_per_update`` adaptation steps on random views of buffered frames. The served model (the
latest student, or the teacher) enhances frames; ``snapshot()`` hands its weights and a version
number to a server that refreshes another backend. Safety (``same_fast.adapt.safety``) freezes or
resets to the source weights when picker acceptance collapses or the output drifts too far from
the source model's output. All public methods take one lock, so a server thread can call
``enhance`` while another calls ``observe``.

A stream that shows nothing the automatic student view models is left alone (``holding``),
as offline adaptation keeps the source weights there, and read again every ``buffer`` frames.

``enhance_adaptive(model, frames)`` is the library form of ``same-fast enhance --adapt``.
"""
from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from same_fast.adapt.audit import AuditLog
from same_fast.adapt.augment import random_views, redegrade
from same_fast.adapt.config import AdaptConfig
from same_fast.adapt.loop import (
    NOTHING_MODELLED,
    describe_view,
    make_pair,
    make_step,
    picker_json,
    reads_whole_frame,
    redegradation,
)
from same_fast.adapt.safety import SafetyConfig, SafetyMonitor, clone_state, restore_
from same_fast.errors import InputError
from same_fast.nn import enhance as nn_enhance

Picker = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

HOLD_REASON = (f"the recent frames show {NOTHING_MODELLED}, so the source weights keep serving "
               "until the stream shows some (skip_unmeasured=False adapts anyway)")


class OnlineAdapter:
    """Adapt a source enhancer to a stream of frames, serving the latest weights.

    model: the source enhancer (not modified; copied). picker: weights function or None.
    Frames are float tensors in [0, 1], (C, H, W) or (N, C, H, W), on the model's device.
    """

    def __init__(self, model: nn.Module, picker: Picker | None = None,
                 config: AdaptConfig | None = None, safety: SafetyConfig | None = None,
                 audit: AuditLog | None = None) -> None:
        self.config = cfg = (config or AdaptConfig(mode="online")).check().resolved()
        if cfg.every < 1 or cfg.buffer < 1 or cfg.steps_per_update < 1:
            raise InputError("online adaptation needs every >= 1, buffer >= 1, steps_per_update >= 1")
        self._lock = threading.RLock()
        torch.manual_seed(cfg.seed)
        self._g = torch.Generator().manual_seed(cfg.seed)
        self.source = copy.deepcopy(model).eval()
        for p in self.source.parameters():
            p.requires_grad_(False)
        self._source_state = clone_state(model)
        self.student, self.teacher = make_pair(model)
        self._step = make_step(self.student, self.teacher, cfg, picker)
        self._picker = picker
        self._aug = cfg.augment_config(int(getattr(model, "multiple", 1)),
                                       reads_whole_frame(model))
        self._preset: Any = None  # the re-degradation, estimated from the first buffer
        self._view: str | None = None  # its one-line description (describe_view)
        # Holding: the buffer showed nothing the automatic view models (cfg.skip_unmeasured);
        # no step is taken and the buffer is read again once it has been refilled.
        self.holding: str | None = None
        self._reread_at = 0
        self.safety = SafetyMonitor(safety)
        self.audit = audit
        self._buffer: deque[tuple[torch.Tensor, torch.Tensor | None]] = deque(maxlen=cfg.buffer)
        self.frames_seen = 0
        self.steps = 0
        self.version = 0
        self.frozen = False
        self.resets = 0
        self.last_reason: str | None = None  # why the last freeze / reset happened
        self.history: list[dict[str, float]] = []
        self._since_update = 0
        if audit is not None:
            audit.event("start", 0, served=self.served, mode="online", config=cfg.to_dict(),
                        picker=picker_json(picker))

    # --- serving ------------------------------------------------------------------------------
    @property
    def served(self) -> nn.Module:
        """The model that enhances frames now (student or teacher per ``config.serve``)."""
        return self.student if self.config.serve == "student" else self.teacher

    def enhance(self, frames01: torch.Tensor, fov: torch.Tensor | None = None) -> torch.Tensor:
        """Enhance (N, C, H, W) or (C, H, W) in [0, 1] with the served weights; same shape out."""
        x, single = _batch(frames01)
        with self._lock:
            y = nn_enhance(self.served, x, fov)
        return y[0] if single else y

    def snapshot(self) -> tuple[dict[str, torch.Tensor], int]:
        """(copy of the served state_dict, version). The version grows with every weight change."""
        with self._lock:
            state = clone_state(self.served)
            if self.audit is not None:
                self.audit.event("snapshot", self.steps, served=self.served, version=self.version)
            return state, self.version

    # --- adaptation ---------------------------------------------------------------------------
    def observe(self, frames01: torch.Tensor, fov: torch.Tensor | None = None
                ) -> list[dict[str, float]]:
        """Add frames to the buffer; run the due adaptation steps. Returns their records
        (empty when no step was due or the adapter is frozen)."""
        x, _ = _batch(frames01)
        if fov is not None:  # (N, 1, H, W), or one (1, H, W) mask for every frame
            fov = (fov if fov.dim() == 4 else fov[None]).expand(x.shape[0], -1, -1, -1)
        records: list[dict[str, float]] = []
        with self._lock:
            for i in range(x.shape[0]):
                self._buffer.append((x[i].detach(), None if fov is None else fov[i].detach()))
                self.frames_seen += 1
                self._since_update += 1
                if self._since_update >= self.config.every and not self.frozen:
                    self._since_update = 0
                    for _ in range(self.config.steps_per_update):
                        if self.frozen or not self._view_ready():
                            break
                        records.append(self._adapt_once(x[i:i + 1]))
        return records

    def _view_ready(self) -> bool:
        """Read the student's view off the buffer once (automatic view): True when steps may
        run. A buffer that shows nothing the view models (no JPEG lattice, noise below the
        estimator's floor, OCT speckle no coarser than the source's) holds the adapter, as
        offline keeps the source weights; it is read again after ``buffer`` more frames."""
        cfg = self.config
        if not cfg.redegrade or self._preset is not None:
            return True
        if self.frames_seen < self._reread_at:
            return False
        preset = redegradation(cfg, [f for f, _ in self._buffer], [m for _, m in self._buffer])
        view = describe_view(preset)
        if cfg.skip_unmeasured and preset is not None and not getattr(preset, "measured", True):
            self._reread_at = self.frames_seen + cfg.buffer
            if self.holding is None and self.audit is not None:
                self.audit.event("hold", self.steps, served=self.served, student_view=view,
                                 reason=HOLD_REASON)
            self.holding, self._view = HOLD_REASON, view
            return False
        if self.holding is not None and self.audit is not None:
            self.audit.event("resume", self.steps, served=self.served, student_view=view)
        self._preset, self._view, self.holding = preset, view, None  # read once
        if self.audit is not None:
            self.audit.event("view", self.steps, served=self.served, student_view=view)
        return True

    def _adapt_once(self, probe: torch.Tensor) -> dict[str, float]:
        cfg = self.config
        n = len(self._buffer)
        idx = torch.randint(0, n, (min(cfg.batch, n),), generator=self._g).tolist()
        items = [self._buffer[j] for j in idx]
        fovs = [f for _, f in items]
        has_fov = any(f is not None for f in fovs)
        views, masks = random_views([f for f, _ in items], self._aug, self._g,
                                    fovs if has_fov else None, with_masks=True)
        xs = redegrade(views, self._preset, cfg.redegrade_strength, self._g) if cfg.redegrade \
            else None
        out = self._step(views * 2 - 1, None if xs is None else xs * 2 - 1,
                         masks if has_fov else None)
        self.steps += 1
        self.version += 1
        rec = {k: float(out[k]) for k in ("loss", "l1", "struct", "entropy", "accepted")}
        rec["batch"] = float(len(idx))
        reason = self.safety.observe_acceptance(rec["accepted"] / max(rec["batch"], 1.0))
        if reason is None and self.safety.config.max_drift > 0 and \
                self.steps % max(1, self.safety.config.drift_every) == 0:
            drift = self.drift(probe)
            rec["drift"] = drift
            reason = self.safety.observe_drift(drift)
        self.history.append(rec)
        if self.audit is not None:
            self.audit.step(self.steps, rec, served=self.served, version=self.version)
        if reason is not None:
            if self.safety.config.action == "reset":
                self.reset(reason)
            else:
                self.freeze(reason)
        return rec

    def drift(self, frames01: torch.Tensor) -> float:
        """Mean |served(x) - source(x)| on ``frames01`` (N, C, H, W) in [0, 1]; [0, 1] units."""
        with self._lock:
            a = nn_enhance(self.served, frames01)
            b = nn_enhance(self.source, frames01)
            return float((a - b).abs().mean())

    def freeze(self, reason: str = "requested") -> None:
        """Stop updating; keep serving the current weights."""
        with self._lock:
            self.frozen = True
            self.last_reason = reason
            if self.audit is not None:
                self.audit.event("freeze", self.steps, served=self.served, reason=reason,
                                 version=self.version)

    def resume(self) -> None:
        """Allow updates again after a freeze (acceptance history is cleared)."""
        with self._lock:
            self.frozen = False
            self.safety.clear()
            if self.audit is not None:
                self.audit.event("resume", self.steps, served=self.served, version=self.version)

    def reset(self, reason: str = "requested") -> None:
        """Restore student and teacher to the source weights exactly and clear the optimizer."""
        with self._lock:
            restore_(self.student, self._source_state)
            restore_(self.teacher, self._source_state)
            self._step.optimizer.state.clear()
            self.safety.clear()
            if hasattr(self._picker, "reset_calibration"):  # it judged the adapted teacher
                self._picker.reset_calibration()
            self.last_reason = reason
            self.resets += 1
            self.version += 1
            if self.audit is not None:
                self.audit.event("reset", self.steps, served=self.served, reason=reason,
                                 version=self.version)

    def stats(self) -> dict[str, Any]:
        """Counters for logs and metrics endpoints."""
        with self._lock:
            acc = sum(h["accepted"] for h in self.history)
            n = sum(h["batch"] for h in self.history)
            return {"frames": self.frames_seen, "steps": self.steps, "version": self.version,
                    "frozen": self.frozen, "resets": self.resets, "reason": self.last_reason,
                    "acceptance": acc / n if n else None,
                    "last_loss": self.history[-1]["loss"] if self.history else None,
                    "student_view": self._view, "holding": self.holding}


def _batch(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if x.dim() == 3:
        return x[None], True
    if x.dim() != 4:
        raise InputError(f"frames must be (C, H, W) or (N, C, H, W), got {tuple(x.shape)}")
    return x, False


def enhance_adaptive(model: nn.Module, frames: Iterable[torch.Tensor],
                     picker: Picker | None = None, config: AdaptConfig | None = None,
                     safety: SafetyConfig | None = None, audit: AuditLog | None = None,
                     fov: torch.Tensor | None = None, adapter: OnlineAdapter | None = None
                     ) -> Iterator[torch.Tensor]:
    """Enhance a stream while adapting to it: yields one enhanced tensor per input item.

    frames: (C, H, W) or (N, C, H, W) float tensors in [0, 1] on the model's device (a folder's
    images or a DICOM cine's frames, in order). Each item is first observed (buffered, and an
    adaptation step runs when due), then enhanced with the current served weights, so the output
    benefits from every frame seen so far. ``fov``: one mask (1, H, W) applied to every frame.
    Pass ``adapter`` to inspect its stats afterwards.
    """
    ad = adapter or OnlineAdapter(model, picker, config or AdaptConfig(mode="online"), safety,
                                  audit)
    for item in frames:
        x, single = _batch(item)
        f = None if fov is None else (fov if fov.dim() == 4 else fov[None]).expand(
            x.shape[0], -1, -1, -1)
        ad.observe(x, f)
        y = ad.enhance(x, f)
        yield y[0] if single else y
