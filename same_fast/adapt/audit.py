"""Audit log of adaptation: one JSON object per line (JSONL), appended and flushed as it happens.

Every step writes its number, the accepted count and the losses; every ``hash_every`` steps (and
on every freeze, reset, resume and snapshot event) it adds the SHA-256 of the served weights, so
a site can prove which weights produced which output.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from same_fast.checkpoint import weights_hash


class AuditLog:
    """Append-only JSONL audit log (also kept in memory as ``records``).

    path: file to append to, or None to keep records in memory only.
    hash_every: add ``weights_sha256`` to step records whose step is a multiple of this (0 = never
    on steps; events always carry it).
    """

    def __init__(self, path: str | Path | None = None, hash_every: int = 10) -> None:
        self.path = Path(path) if path else None
        self.hash_every = int(hash_every)
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._fh: IO[str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")

    def _write(self, rec: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.records.append(rec)
            if self._fh is not None:
                self._fh.write(json.dumps(rec, sort_keys=True) + "\n")
                self._fh.flush()
        return rec

    def step(self, step: int, metrics: dict[str, Any], served: nn.Module | None = None,
             **extra: Any) -> dict[str, Any]:
        """Record one adaptation step: ``metrics`` values may be 0-d tensors or numbers."""
        rec: dict[str, Any] = {"event": "step", "step": int(step), "time": time.time()}
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor):
                v = v.detach().to("cpu")
                v = float(v) if v.numel() == 1 else [float(a) for a in v.reshape(-1)]
            rec[k] = v
        rec.update(extra)
        if served is not None and self.hash_every and step % self.hash_every == 0:
            rec["weights_sha256"] = weights_hash(served)
        return self._write(rec)

    def event(self, event: str, step: int, served: nn.Module | None = None, **extra: Any
              ) -> dict[str, Any]:
        """Record a freeze / reset / resume / snapshot / start / end event."""
        rec: dict[str, Any] = {"event": event, "step": int(step), "time": time.time(), **extra}
        if served is not None:
            rec["weights_sha256"] = weights_hash(served)
        return self._write(rec)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL audit log."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
