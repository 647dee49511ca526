"""Online adaptation beside serving: accepted frames feed a teacher-student adapter in a
background thread, and new weights are published to the served model between batches.

Serving never waits for training: ``observe`` only appends to a bounded buffer (frames beyond it
are counted and skipped), the adapter runs in its own thread at a lower OS priority, and the
served model picks up published weights at its next batch.

The adapter is ``same_fast.adapt.step.AdaptStep`` (SPEC section 5: teacher pseudo-labels, picker
weights, student distillation, EMA). Every ``every`` observed frames it takes one step on a batch
of ``batch`` random crops (``crop`` px) of the most recent frames, and publishes the student's
(or teacher's) weights. ``freeze`` stops stepping (the served weights stay), ``resume`` restarts
it, ``reset`` restores the source weights everywhere (and publishes them).
"""
from __future__ import annotations

import contextlib
import copy
import os
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from same_fast.errors import InputError
from same_fast.serve.model import ServedModel, weights_hash


@dataclass
class AdaptConfig:
    """Online adaptation settings (``same-fast serve --adapt-*`` flags)."""

    batch: int = 4
    every: int = 4
    buffer: int = 64
    crop: int = 256
    lr: float = 2e-4
    ema: float = 0.995
    serve: str = "student"  # which model's weights are published
    picker: str | None = None
    seed: int = 0
    nice: int = 10  # OS priority offset of the adapter thread (serving keeps the CPU)
    threads: int = 1  # torch intra-op threads of the adapter thread (0 = leave as is)


class OnlineAdaptation:
    """Adapts a copy of ``served.module`` to observed frames and publishes it to ``served``."""

    def __init__(self, served: ServedModel, config: AdaptConfig | None = None) -> None:
        if served.module is None:
            raise InputError(f"--adapt online needs a trainable model; '{served.name}' is not one")
        from same_fast.adapt.step import AdaptStep, StepConfig

        self.config = cfg = config or AdaptConfig()
        self.served = served
        self._source = {k: v.detach().clone() for k, v in served.module.state_dict().items()}
        self.student = copy.deepcopy(served.module).to("cpu")
        self.teacher = copy.deepcopy(served.module).to("cpu")
        picker = None
        if cfg.picker:
            from same_fast.picker import load_picker

            picker = load_picker(cfg.picker, device="cpu")
        self._step = AdaptStep(self.student, self.teacher, StepConfig(lr=cfg.lr, ema=cfg.ema),
                               picker)
        self._gen = torch.Generator().manual_seed(cfg.seed)
        self._buffer: deque[torch.Tensor] = deque(maxlen=cfg.buffer)
        self._cv = threading.Condition()
        self._train = threading.Lock()  # one of: a training step, a reset
        self._new = 0
        self._stop = False
        self.frozen = False
        self.steps = 0
        self.observed = 0
        self.skipped = 0
        self.accepted_sum = 0.0
        self.samples = 0
        self.last_loss: float | None = None
        self.resets = 0
        self.errors = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="same-fast-adapt", daemon=True)
        self._thread.start()

    # -- called from the serving worker: must be cheap and never block on training ----------
    def observe(self, x01: torch.Tensor) -> None:
        """Offer a served batch ``(N, C, H, W)`` float [0, 1]; copied, never waited on."""
        if self.frozen or self._stop:
            return
        with self._cv:
            for f in x01:
                if len(self._buffer) == self._buffer.maxlen:
                    self.skipped += 1  # the oldest unseen frame makes room
                self._buffer.append(f.detach().clone())
                self.observed += 1
                self._new += 1
            if self._new >= self.config.every:
                self._cv.notify()

    # -- the adapter thread ---------------------------------------------------------------
    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError, PermissionError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.config.nice)
        if self.config.threads > 0:
            # OpenMP's thread count is per calling thread: this caps the adapter's share of
            # cores without touching the serving thread's.
            torch.set_num_threads(self.config.threads)
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._stop or (
                    not self.frozen and self._new >= self.config.every
                    and len(self._buffer) >= 1), timeout=1.0)
                if self._stop:
                    return
                if self.frozen or self._new < self.config.every or not self._buffer:
                    continue
                self._new = 0
                frames = list(self._buffer)[-max(self.config.batch, 1) * 2:]
            try:
                with self._train:
                    self._adapt_once(frames)
            except Exception as e:  # a failing step must not stop serving; it is reported
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"[:300]

    def _batch(self, frames: list[torch.Tensor]) -> torch.Tensor:
        shape = frames[-1].shape
        same = [f for f in frames if f.shape == shape]
        n = self.config.batch
        pick = torch.randint(len(same), (n,), generator=self._gen).tolist()
        c, h, w = shape
        s = min(self.config.crop, h, w)
        mult = int(getattr(self.student, "multiple", 1) or 1)
        s = max(mult, s // mult * mult) if s >= mult else s
        out = []
        for i in pick:
            f = same[i]
            if s > h or s > w:  # smaller than one network multiple: pad by replication
                f = torch.nn.functional.pad(f[None], (0, max(0, s - w), 0, max(0, s - h)),
                                            mode="replicate")[0]
            y0 = int(torch.randint(f.shape[1] - s + 1, (1,), generator=self._gen))
            x0 = int(torch.randint(f.shape[2] - s + 1, (1,), generator=self._gen))
            v = f[:, y0:y0 + s, x0:x0 + s]
            if bool(torch.rand((), generator=self._gen) < 0.5):
                v = v.flip(-1)
            out.append(v)
        return torch.stack(out) * 2 - 1

    def _adapt_once(self, frames: list[torch.Tensor]) -> None:
        x = self._batch(frames)
        with torch.enable_grad():
            res = self._step(x)
        self.steps += 1
        self.accepted_sum += float(res["accepted"])
        self.samples += int(x.shape[0])
        self.last_loss = float(res["loss"])
        src = self.student if self.config.serve == "student" else self.teacher
        state = {k: v.detach().clone() for k, v in src.state_dict().items()}
        self.served.publish(state, weights_hash(state))

    # -- control ----------------------------------------------------------------------------
    def freeze(self) -> None:
        """Stop adapting; the currently served weights stay."""
        self.frozen = True

    def resume(self) -> None:
        with self._cv:
            self.frozen = False
            self._cv.notify()

    def reset(self) -> None:
        """Back to the source weights (student, teacher, optimizer, served model)."""
        with self._train, self._cv, torch.no_grad():
            self.student.load_state_dict(self._source)
            self.teacher.load_state_dict(self._source)
            self._step.optimizer.state.clear()  # Adam moments belong to the discarded path
            self._buffer.clear()
            self._new = 0
            self.resets += 1
        self.served.publish({k: v.clone() for k, v in self._source.items()},
                            self.served.source_hash)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    @property
    def acceptance(self) -> float | None:
        """Mean picker weight over every adapted sample (1.0 without a picker)."""
        return self.accepted_sum / self.samples if self.samples else None

    def describe(self) -> dict[str, Any]:
        return {"mode": "online", "state": "frozen" if self.frozen else "adapting",
                "steps": self.steps, "observed_frames": self.observed,
                "skipped_frames": self.skipped, "acceptance": self.acceptance,
                "last_loss": self.last_loss, "resets": self.resets, "errors": self.errors,
                "last_error": self.last_error, "serves": self.config.serve,
                "picker": self.config.picker}
