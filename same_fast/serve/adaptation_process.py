"""Online adaptation beside serving with the adapter in a child process: ``ProcessAdaptation``.

The same service as ``same_fast.serve.adaptation.OnlineAdaptation`` (one ``FrameInbox`` hand-off,
the same adapter settings, picker and audit log from ``adapter_setup``), but serving and
training share no GIL; the wire protocol and the child are ``same_fast.serve.adapter_proc``.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from typing import Any

import numpy as np
import torch

from same_fast.adapt.config import AdaptConfig
from same_fast.errors import InputError
from same_fast.serve import adapter_proc
from same_fast.serve.adapter_setup import (
    adapter_config,
    adapter_state,
    audit_context,
    check_audit_path,
)
from same_fast.serve.cpus import adapter_work, confine_thread, plan_adapter_cpus
from same_fast.serve.inbox import FrameInbox, served_frames
from same_fast.serve.model import ServedModel


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

        module = served.module
        if module is None or not hasattr(module, "config"):
            raise InputError(f"--adapt online needs a trainable SAMENet; '{served.name}' is not")
        self.config = cfg = config or AdaptConfig.serving()
        self.served = served
        self.cpus = plan_adapter_cpus(cfg.cpus, cfg.threads)
        self._ipc = adapter_proc
        modality = str(served.metadata.get("modality") or "fundus")
        child_cfg = {"adapt": adapter_config(cfg, module, modality).to_dict(),
                     "cpus": sorted(self.cpus.adapter) if self.cpus.adapter else None}
        if cfg.audit:
            check_audit_path(cfg.audit)
            child_cfg["audit_context"] = audit_context(served, cfg, "process")
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
        self.inbox = FrameInbox(cfg.buffer, cfg.every)
        self._controls: deque[dict[str, Any]] = deque()
        self._cv = self.inbox.cv  # controls wake the writer as frames do
        self._acks: dict[int, threading.Event] = {}
        self._next_id = 0
        self._stop = False
        self.ready = threading.Event()  # set when the child has built its adapter
        self.frozen = False
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
            frames: list = served_frames(batch)
        else:
            frames = [f.detach().to(torch.float16) for f in batch]
        self.inbox.put(frames)

    def _write_loop(self) -> None:
        confine_thread(self.cpus.adapter)
        every = self.config.publish_every_s
        flush_due = False  # frames went out since the child was last told to publish
        try:
            while True:
                # a chunk, a partial one that waited, none after a publish interval without
                # frames (then the child sends what it held back), or a control first
                frames = self.inbox.take(every if flush_due else None,
                                         lambda: self._stop or bool(self._controls))
                with self._cv:
                    control = self._controls.popleft() if self._controls else None
                if control is not None:
                    self._ipc.write_msg(self.proc.stdin, control)
                    if control["type"] == "stop":
                        return
                    continue
                if not frames:
                    if self._stop:
                        return
                    self._ipc.write_msg(self.proc.stdin, {"type": "publish"})
                    flush_due = False
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
        self.inbox.clear()
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
        state = adapter_state(self.frozen or bool(s.get("frozen")), s.get("holding"),
                              started=self.ready.is_set())
        return {"mode": "online", "runs_in": "process", "state": state, "steps": s.get("steps"),
                "holding": s.get("holding"),
                "adapter_version": s.get("version"),
                "observed_frames": self.inbox.observed,
                "skipped_frames": self.inbox.skipped,
                "acceptance": s.get("acceptance"), "last_loss": s.get("last_loss"),
                "student_view": s.get("student_view"),
                "resets": s.get("resets"), "errors": self.errors, "last_error": self.last_error,
                "serves": self.config.serve, "picker": self.config.picker,
                "safety": self.config.safety, "reason": s.get("reason"),
                "last_drift": s.get("last_drift"), "audit": self.config.audit,
                "pid": self.proc.pid, **self.cpus.describe()}
