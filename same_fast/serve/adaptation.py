"""Online adaptation beside serving: served frames feed ``same_fast.adapt.online.OnlineAdapter``
in a background thread (or a child process: ``adaptation_process``), and its new weights are
published to the served model between batches.

Serving never waits for training: ``observe`` (called by the model worker after each batch,
with the served integer frames) only copies the frames into a bounded hand-off buffer (when the
adapter falls behind, the oldest unseen frames are skipped and counted); the adapter thread runs
at a lower OS priority with one intra-op thread, on CPUs of its own (``AdaptConfig.cpus``,
``same_fast.serve.cpus``); the served model installs published weights at its next batch, at
most every ``publish_every_s``.

The adapter is the adaptation engineer's ``OnlineAdapter`` (SPEC section 5: teacher pseudo-
labels, picker weights, student distillation, EMA; one step every ``every`` frames from a buffer
of recent frames) with its safety monitor: when picker acceptance collapses or the output drifts
too far from the source model's, it freezes (or resets) by itself. ``freeze``/``resume``/
``reset`` are the HTTP controls.

With ``audit`` set (``same-fast serve --audit FILE``) every step, publish, control and safety
event is appended to a JSONL audit log (``same_fast.adapt.audit``; see ``ServeAudit``). In process
mode the child process writes it (it runs the adapter); either way each record is flushed as it
is written and the log ends with an ``end`` record when the server stops.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

import numpy as np
import torch

from same_fast.adapt.config import AdaptConfig
from same_fast.errors import InputError
from same_fast.serve.adaptation_process import ProcessAdaptation
from same_fast.serve.adapter_setup import (
    adapter_config,
    adapter_state,
    audit_context,
    load_serving_picker,
    open_audit,
)
from same_fast.serve.cpus import adapter_work, confine_thread, plan_adapter_cpus
from same_fast.serve.inbox import FrameInbox, served_frames
from same_fast.serve.model import ServedModel, short_hash

__all__ = ["AdaptConfig", "OnlineAdaptation", "ProcessAdaptation"]

# Per-step records the adapter keeps; a server runs for days, so older ones are dropped.
HISTORY = 1024


def _float01(frame: np.ndarray | torch.Tensor) -> torch.Tensor:
    """One handed-off frame as the adapter takes it: ``(1, C, H, W)`` float32 in [0, 1]."""
    if isinstance(frame, np.ndarray):
        from same_fast.io.convert import to_tensor

        return to_tensor(frame)[None]
    return frame[None].float()


class OnlineAdaptation:
    """Drives an ``OnlineAdapter`` over a copy of ``served.module`` and publishes to ``served``.

    start: run the background thread (False: call ``feed`` yourself, e.g. a serial baseline).
    """

    def __init__(self, served: ServedModel, config: AdaptConfig | None = None,
                 start: bool = True) -> None:
        if served.module is None:
            raise InputError(f"--adapt online needs a trainable model; '{served.name}' is not one")
        from same_fast.adapt.online import OnlineAdapter
        from same_fast.adapt.safety import SafetyConfig

        self.config = cfg = config or AdaptConfig.serving()
        self.served = served
        self.cpus = plan_adapter_cpus(cfg.cpus, cfg.threads)
        # Inline feeding (start=False: a serial baseline) runs in the caller's thread: not placed.
        self._placed = self.cpus if start else None
        modality = str(served.metadata.get("modality") or "fundus")
        picker = load_serving_picker(cfg, modality)
        module = served.module.to("cpu")
        self.audit = open_audit(cfg.audit, cfg.hash_every,
                                audit_context(served, cfg, "thread")) if cfg.audit else None
        self.adapter = OnlineAdapter(module, picker, adapter_config(cfg, module, modality),
                                     SafetyConfig.of(cfg), audit=self.audit)
        self._closed = False
        self._published = self.adapter.version
        self._published_at = float("-inf")
        self._pub_lock = threading.Lock()  # the adapter thread and a reset both publish
        self.inbox = FrameInbox(cfg.buffer, cfg.every)
        self._stop = False
        self.errors = 0
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="same-fast-adapt",
                                            daemon=True)
            self._thread.start()

    # -- called from the serving worker: cheap, never waits for training ---------------------
    def observe(self, batch: np.ndarray | torch.Tensor) -> None:
        """Offer a served batch: ``(N, H, W, C)`` uint8/uint16 frames, or ``(N, C, H, W)``
        float [0, 1] (CPU). Copied, never waited on; converted in the adapter thread."""
        if self.adapter.frozen or self._stop:
            return
        self.inbox.put(served_frames(batch))

    # -- the adapter thread ---------------------------------------------------------------------
    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.config.nice)
        confine_thread(self.cpus.adapter)
        if self.config.threads > 0:
            # OpenMP's thread count is per calling thread: this caps the adapter's share of
            # cores without changing the serving thread's.
            torch.set_num_threads(self.config.threads)
        while True:
            # a chunk, a partial one that waited, or none after 1 s without frames
            frames = self.inbox.take(1.0, lambda: self._stop)
            if self._stop:
                return
            self.feed(frames)  # with none it publishes what was held back

    def feed(self, frames: list[np.ndarray] | list[torch.Tensor]) -> None:
        """Give frames (``(H, W, C)`` integer or ``(C, H, W)`` float [0, 1]) to the adapter
        (runs the steps that fall due, in this thread) and publish the served weights if they
        changed."""
        try:
            safety = (self.adapter.frozen, self.adapter.resets)
            for f in frames:
                if self._stop or self.adapter.frozen:
                    break
                self.adapter.observe(_float01(f))
            if len(self.adapter.history) > 2 * HISTORY:
                del self.adapter.history[:-HISTORY]
            # A safety freeze or reset is served at once; other weights wait for the interval.
            self._publish_if_changed(force=(self.adapter.frozen, self.adapter.resets) != safety)
        except Exception as e:  # a failing step must not stop serving; it is reported
            self.errors += 1
            self.last_error = f"{type(e).__name__}: {e}"[:300]

    def _publish_if_changed(self, force: bool = False) -> None:
        with self._pub_lock:
            if self.adapter.version == self._published:
                return
            now = time.monotonic()
            if not force and now - self._published_at < self.config.publish_every_s:
                return  # held back: the next feed (at most 1 s away, frames or not) publishes it
            self._published_at = now
            state, version = self.adapter.snapshot()
            with adapter_work(self._placed):  # the standby backend loads off serving's CPUs
                self.served.publish(state, short_hash(state))
            self._published = version

    # -- control ----------------------------------------------------------------------------
    def freeze(self) -> None:
        """Stop adapting; the adapter's latest weights are served from the next batch on."""
        self.adapter.freeze("requested over HTTP")
        self._publish_if_changed(force=True)

    def resume(self) -> None:
        self.adapter.resume()

    def reset(self) -> None:
        """Back to the source weights (student, teacher, optimizer) and publish them."""
        self.adapter.reset("requested over HTTP")
        self.inbox.clear()
        self._publish_if_changed(force=True)

    def close(self) -> None:
        """Stop the adapter thread; the audit log gets its ``end`` record and is closed."""
        if self._closed:
            return
        self._closed = True
        self._stop = True
        self.inbox.wake()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self.audit is not None:
            alive = self._thread is not None and self._thread.is_alive()
            with contextlib.suppress(OSError, ValueError):
                self.audit.event("end", self.adapter.steps,
                                 served=None if alive else self.adapter.served,
                                 version=self.adapter.version, reason="server stopped")
            self.audit.close()

    @property
    def steps(self) -> int:
        return self.adapter.steps

    def describe(self) -> dict[str, Any]:
        s = self.adapter.stats()
        return {"mode": "online", "state": adapter_state(s["frozen"], s.get("holding")),
                "holding": s.get("holding"),
                "steps": s["steps"], "adapter_version": s["version"],
                "observed_frames": self.inbox.observed,
                "skipped_frames": self.inbox.skipped,
                "acceptance": s["acceptance"], "last_loss": s["last_loss"],
                "student_view": s["student_view"],
                "resets": s["resets"], "errors": self.errors, "last_error": self.last_error,
                "serves": self.config.serve, "picker": self.config.picker,
                "safety": self.config.safety, "runs_in": "thread", "reason": s["reason"],
                "last_drift": self.adapter.safety.last_drift, "audit": self.config.audit,
                **self.cpus.describe()}
