"""Online adaptation beside serving: served frames feed ``same_fast.adapt.online.OnlineAdapter``
in a background thread, and its new weights are published to the served model between batches.

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
from collections import deque
from typing import Any

import numpy as np
import torch

from same_fast.errors import InputError
from same_fast.serve.adapter_setup import (
    audit_context,
    check_audit_path,
    lib_config,
    load_serving_picker,
    open_audit,
    safety_config,
)
from same_fast.serve.config import AdaptConfig  # defined there, torch-free; importable here
from same_fast.serve.cpus import adapter_work, confine_thread, plan_adapter_cpus
from same_fast.serve.model import ServedModel, weights_hash

# Per-step records the adapter keeps; a server runs for days, so older ones are dropped.
_HISTORY = 1024
# Served frames go to the adapter (the child's writer thread in process mode, the adapter thread
# in thread mode) in chunks: ``every`` frames, or whatever waited this long. So it wakes a few
# times a second beside the serving thread instead of after every batch.
_HANDOFF_S = 0.05


def _served_frames(batch: np.ndarray | torch.Tensor) -> list[np.ndarray] | list[torch.Tensor]:
    """A served batch as its frames, copied: ``(N, H, W, C)`` uint8/uint16 frames (what
    ``ServedModel.frame_step`` observes) stay integer; ``(N, C, H, W)`` float [0, 1] tensors
    (library callers) stay float. Conversion to the adapter's float happens on its side."""
    if isinstance(batch, np.ndarray):
        return list(np.array(batch, copy=True))
    return [f.detach().clone() for f in batch]


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

        self.config = cfg = config or AdaptConfig()
        self.served = served
        self.cpus = plan_adapter_cpus(cfg.cpus, cfg.threads)
        # Inline feeding (start=False: a serial baseline) runs in the caller's thread: not placed.
        self._placed = self.cpus if start else None
        mult = int(getattr(served.module, "multiple", 1) or 1)
        size = max(mult, cfg.crop // mult * mult)
        lib = lib_config({**{k: getattr(cfg, k) for k in (
            "batch", "lr", "ema", "every", "buffer", "serve", "seed", "redegrade",
            "redegrade_strength")}, "size": max(size, 8),
            "modality": str(served.metadata.get("modality") or "fundus")})
        safety = safety_config(cfg.safety, cfg.min_acceptance, cfg.max_drift)
        picker = load_serving_picker({"picker": cfg.picker,
                                      "picker_calibrate": cfg.picker_calibrate})
        module = served.module.to("cpu")
        self.audit = open_audit(cfg.audit, cfg.audit_hash_every,
                                audit_context(served, cfg, "thread")) if cfg.audit else None
        self.adapter = OnlineAdapter(module, picker, lib, safety, audit=self.audit)
        self._closed = False
        self._published = self.adapter.version
        self._published_at = float("-inf")
        self._pub_lock = threading.Lock()  # the adapter thread and a reset both publish
        self._inbox: deque[np.ndarray | torch.Tensor] = deque(maxlen=cfg.buffer)
        self._send_at = max(1, min(int(cfg.every), int(cfg.buffer)))  # frames per hand-off
        self._cv = threading.Condition()
        self._stop = False
        self.observed = 0
        self.skipped = 0
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
        frames = _served_frames(batch)
        with self._cv:
            first = not self._inbox
            for f in frames:
                if len(self._inbox) == self._inbox.maxlen:
                    self.skipped += 1  # the adapter is behind: the oldest unseen frame goes
                self._inbox.append(f)
                self.observed += 1
            # Wake the adapter for a chunk's first frame (it arms the hand-off timer) and when a
            # chunk is complete; frames in between only queue.
            if first or len(self._inbox) >= self._send_at:
                self._cv.notify()

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
            with self._cv:
                pending = bool(self._inbox)
                woke = self._cv.wait_for(
                    lambda pending=pending: (self._stop or len(self._inbox) >= self._send_at
                                             or (bool(self._inbox) and not pending)),
                    timeout=_HANDOFF_S if pending else 1.0)
                if self._stop:
                    return
                if woke and not pending and len(self._inbox) < self._send_at:
                    continue  # a chunk began: wait for the rest, at most _HANDOFF_S
                frames = list(self._inbox)  # a chunk, a partial one that waited, or none
                self._inbox.clear()
            self.feed(frames)  # with none (1 s without frames) it publishes what was held back

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
            if len(self.adapter.history) > 2 * _HISTORY:
                del self.adapter.history[:-_HISTORY]
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
                self.served.publish(state, weights_hash(state))
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
        with self._cv:
            self._inbox.clear()
        self._publish_if_changed(force=True)

    def close(self) -> None:
        """Stop the adapter thread; the audit log gets its ``end`` record and is closed."""
        if self._closed:
            return
        self._closed = True
        with self._cv:
            self._stop = True
            self._cv.notify_all()
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
        return {"mode": "online", "state": "frozen" if s["frozen"] else "adapting",
                "steps": s["steps"], "adapter_version": s["version"],
                "observed_frames": self.observed, "skipped_frames": self.skipped,
                "acceptance": s["acceptance"], "last_loss": s["last_loss"],
                "resets": s["resets"], "errors": self.errors, "last_error": self.last_error,
                "serves": self.config.serve, "picker": self.config.picker,
                "safety": self.config.safety, "runs_in": "thread", "reason": s["reason"],
                "last_drift": self.adapter.safety.last_drift, "audit": self.config.audit,
                **self.cpus.describe()}


class ProcessAdaptation:
    """The same service as ``OnlineAdaptation`` with the adapter in a child process.

    Serving and training then share no GIL (see ``same_fast.serve.adapter_proc``). Frames go to
    the child as float16 through a writer thread, in chunks of ``every`` frames or whatever
    waited 50 ms (a bounded hand-off buffer in front of it drops the oldest unseen frames when
    the child falls behind); weights come back through a reader
    thread that publishes them to ``served``. Controls (freeze, resume, reset) wait for the
    child's acknowledgement, so after ``reset`` returns the source weights are ready to serve.
    """

    def __init__(self, served: ServedModel, config: AdaptConfig | None = None) -> None:
        import subprocess
        import sys

        from safetensors.torch import save as st_save

        from same_fast.serve import adapter_proc

        module = served.module
        if module is None or not hasattr(module, "config"):
            raise InputError(f"--adapt online needs a trainable SAMENet; '{served.name}' is not")
        self.config = cfg = config or AdaptConfig()
        self.served = served
        self.cpus = plan_adapter_cpus(cfg.cpus, cfg.threads)
        self._ipc = adapter_proc
        mult = int(getattr(module, "multiple", 1) or 1)
        child_cfg = {
            "batch": cfg.batch, "size": max(8, max(mult, cfg.crop // mult * mult)),
            "lr": cfg.lr, "ema": cfg.ema, "every": cfg.every, "buffer": cfg.buffer,
            "serve": cfg.serve, "seed": cfg.seed, "safety": cfg.safety, "picker": cfg.picker,
            "nice": cfg.nice, "threads": cfg.threads,
            "cpus": sorted(self.cpus.adapter) if self.cpus.adapter else None,
            "publish_every_s": cfg.publish_every_s,
            "min_acceptance": cfg.min_acceptance, "max_drift": cfg.max_drift,
            "redegrade": cfg.redegrade, "redegrade_strength": cfg.redegrade_strength,
            "picker_calibrate": cfg.picker_calibrate,
            "modality": str(served.metadata.get("modality") or "fundus")}
        if cfg.audit:
            check_audit_path(cfg.audit)
            child_cfg.update(audit=cfg.audit, audit_hash_every=cfg.audit_hash_every,
                             audit_context=audit_context(served, cfg, "process"))
        meta = {"architecture": type(module).__name__, "config": dict(module.config)}
        state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
        self.proc = subprocess.Popen([sys.executable, "-m", "same_fast.serve.adapter_proc"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        if self.cpus.adapter:
            # At once, before the child starts threads (they inherit it); it confines itself too.
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, set(self.cpus.adapter))
        adapter_proc.write_msg(self.proc.stdin, {"type": "init", "config": child_cfg,
                                                 "metadata": meta}, st_save(state))
        self._inbox: deque[np.ndarray | torch.Tensor] = deque(maxlen=cfg.buffer)
        self._send_at = max(1, min(int(cfg.every), int(cfg.buffer)))  # frames per hand-off
        self._controls: deque[dict[str, Any]] = deque()
        self._cv = threading.Condition()
        self._acks: dict[int, threading.Event] = {}
        self._next_id = 0
        self._stop = False
        self.ready = threading.Event()  # set when the child has built its adapter
        self.frozen = False
        self.observed = 0
        self.skipped = 0
        self.errors = 0
        self.last_error: str | None = None
        self._stats: dict[str, Any] = {"steps": 0, "version": 0, "acceptance": None,
                                       "last_loss": None, "resets": 0, "frozen": False}
        self._writer = threading.Thread(target=self._write_loop, name="same-fast-adapt-tx",
                                        daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="same-fast-adapt-rx",
                                        daemon=True)
        self._writer.start()
        self._reader.start()

    def observe(self, batch: np.ndarray | torch.Tensor) -> None:
        """Offer a served batch: ``(N, H, W, C)`` uint8/uint16 frames (sent as they are; the
        child converts them), or ``(N, C, H, W)`` float [0, 1] (sent as float16). Never waits
        on the child."""
        if self.frozen or self._stop or self._stats.get("frozen"):
            return
        if isinstance(batch, np.ndarray):
            frames: list = _served_frames(batch)
        else:
            frames = [f.detach().to(torch.float16) for f in batch]
        with self._cv:
            first = not self._inbox
            for f in frames:
                if len(self._inbox) == self._inbox.maxlen:
                    self.skipped += 1
                self._inbox.append(f)
                self.observed += 1
            # Wake the writer for a chunk's first frame (it arms the hand-off timer) and when a
            # chunk is complete; frames in between only queue.
            if first or len(self._inbox) >= self._send_at:
                self._cv.notify()

    def _write_loop(self) -> None:
        confine_thread(self.cpus.adapter)
        every = self.config.publish_every_s
        flush_due = False  # frames went out since the child was last told to publish
        try:
            while True:
                with self._cv:
                    pending = bool(self._inbox)
                    woke = self._cv.wait_for(
                        lambda pending=pending: (self._stop or bool(self._controls)
                                 or len(self._inbox) >= self._send_at
                                 or (bool(self._inbox) and not pending)),
                        timeout=_HANDOFF_S if pending else every if flush_due else None)
                    if not woke and self._inbox:
                        woke = True  # a partial chunk waited its hand-off time: send it
                    elif (woke and not pending and 0 < len(self._inbox) < self._send_at
                          and not self._stop and not self._controls):
                        continue  # a chunk began: wait for the rest, at most _HANDOFF_S
                    control = self._controls.popleft() if self._controls else None
                    frames = [] if control else list(self._inbox)
                    if not control:
                        self._inbox.clear()
                    if control is None and not frames and self._stop:
                        return
                if not woke:  # no frames for a publish interval: send what the child held back
                    self._ipc.write_msg(self.proc.stdin, {"type": "publish"})
                    flush_due = False
                    continue
                if control is not None:
                    self._ipc.write_msg(self.proc.stdin, control)
                    if control["type"] == "stop":
                        return
                    continue
                # Frames of one size and type travel together; sizes rarely change mid-stream.
                groups: dict[tuple, list] = {}
                for f in frames:
                    groups.setdefault((tuple(f.shape), str(f.dtype)), []).append(f)
                for (shape, _), fs in groups.items():
                    if isinstance(fs[0], np.ndarray):  # integer (H, W, C) frames
                        head = {"type": "frames", "shape": [len(fs), *shape],
                                "dtype": fs[0].dtype.name, "layout": "NHWC"}
                        data = np.stack(fs).tobytes()
                    else:  # float16 (C, H, W)
                        head = {"type": "frames", "shape": [len(fs), *shape]}
                        data = torch.stack(fs).contiguous().view(torch.uint8).numpy().tobytes()
                    self._ipc.write_msg(self.proc.stdin, head, data)
                flush_due = every > 0
        except (BrokenPipeError, OSError, ValueError) as e:
            self._fail(f"adapter process pipe closed ({e})")

    def _read_loop(self) -> None:
        confine_thread(self.cpus.adapter)
        if self.config.threads > 0:  # weights copied into a torch standby: no OpenMP team here
            torch.set_num_threads(self.config.threads)
        try:
            while True:
                msg = self._ipc.read_msg(self.proc.stdout)
                if msg is None:
                    if not self._stop:
                        self._fail(f"adapter process exited (status {self.proc.wait()})")
                    return
                header, payload = msg
                if "stats" in header:
                    self._stats = header["stats"]
                kind = header.get("type")
                if kind == "ready":
                    self.ready.set()
                elif kind == "weights":
                    # The standby backend is built here, on the adapter's CPUs.
                    with adapter_work(self.cpus):
                        # views of the payload: the standby copies them into its own weights
                        self.served.publish(self._ipc.load_weights(payload), header["hash"])
                elif kind == "error":
                    self.errors += 1
                    self.last_error = header.get("message")
                if header.get("id") is not None:
                    ev = self._acks.pop(int(header["id"]), None)
                    if ev is not None:
                        ev.set()
        except (OSError, ValueError) as e:
            self._fail(f"adapter process stream broken ({e})")

    def _fail(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        for ev in list(self._acks.values()):
            ev.set()

    def _control(self, kind: str, timeout: float = 60.0) -> None:
        ev = threading.Event()
        with self._cv:
            cid = self._next_id
            self._next_id += 1
            self._acks[cid] = ev
            self._controls.append({"type": kind, "id": cid})
            self._cv.notify()
        ev.wait(timeout)

    def freeze(self) -> None:
        self.frozen = True
        self._control("freeze")

    def resume(self) -> None:
        self._control("resume")
        self.frozen = False
        self._stats["frozen"] = False

    def reset(self) -> None:
        with self._cv:
            self._inbox.clear()
        self._control("reset")

    def close(self) -> None:
        if self.proc.poll() is None and not self._stop:
            self._control("stop", timeout=30)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        # The child may ack "stop" while the writer is still inside its flush: let the writer
        # finish before the pipe closes under it (it would count a spurious pipe error).
        self._writer.join(timeout=10)
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
        self._reader.join(timeout=10)

    @property
    def steps(self) -> int:
        return int(self._stats.get("steps") or 0)

    def describe(self) -> dict[str, Any]:
        s = self._stats
        frozen = self.frozen or bool(s.get("frozen"))
        state = "frozen" if frozen else "adapting" if self.ready.is_set() else "starting"
        return {"mode": "online", "runs_in": "process", "state": state, "steps": s.get("steps"),
                "adapter_version": s.get("version"),
                "observed_frames": self.observed, "skipped_frames": self.skipped,
                "acceptance": s.get("acceptance"), "last_loss": s.get("last_loss"),
                "resets": s.get("resets"), "errors": self.errors, "last_error": self.last_error,
                "serves": self.config.serve, "picker": self.config.picker,
                "safety": self.config.safety, "reason": s.get("reason"),
                "last_drift": s.get("last_drift"), "audit": self.config.audit,
                "pid": self.proc.pid, **self.cpus.describe()}
