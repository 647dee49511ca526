"""What the thread and the process adapter of a server share: the library settings, picker,
safety monitor and audit log they build from the serving settings (``ServeConfig.adapt``).

The process adapter's child (``same_fast.serve.adapter_proc``) builds its adapter from these
too, so both modes adapt alike.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from same_fast.adapt.audit import AuditLog
from same_fast.errors import InputError
from same_fast.serve.config import AdaptConfig
from same_fast.serve.model import ServedModel, weights_hash


def safety_config(safety: str, min_acceptance: float | None = None,
                  max_drift: float | None = None) -> Any:
    """The library's SafetyConfig for ``--adapt-safety`` and the threshold flags."""
    from same_fast.adapt.safety import SafetyConfig

    if safety == "off":
        return SafetyConfig(min_acceptance=0.0, max_drift=0.0)
    kw: dict[str, Any] = {"action": safety}
    if min_acceptance is not None:
        kw["min_acceptance"] = float(min_acceptance)
    if max_drift is not None:
        kw["max_drift"] = float(max_drift)
    return SafetyConfig(**kw)


class ServeAudit(AuditLog):
    """The adaptation audit log of a server (``--audit FILE``): the library's JSONL records
    (``same_fast.adapt.audit.AuditLog``, written by ``OnlineAdapter``) with serving fields.

    Records, in order: ``serve`` (model, source weights hash, settings), ``start``, then one
    ``step`` per adaptation step (step, loss, l1, struct, entropy, accepted = the picker's summed
    weight, batch, acceptance = accepted / batch, drift when measured, version = the adapter's
    weights version, ``weights_sha256`` every ``hash_every`` steps), ``publish`` whenever weights
    go to the server (version, ``weights_sha256`` and ``weights_hash``: the short hash the stream
    and HTTP replies announce), ``freeze`` / ``resume`` / ``reset`` (with ``reason``: "requested
    over HTTP" or the safety monitor's, e.g. "drift 0.2 > 0.15"), and ``end`` at shutdown. Every
    record is flushed when written. Only the last ``keep`` records stay in memory.
    """

    def __init__(self, path: str, hash_every: int = 10, keep: int = 256) -> None:
        try:
            super().__init__(path, hash_every)
        except OSError as e:
            raise InputError(f"cannot write the audit log '{path}' ({e.strerror or e})") from None
        self.keep = int(keep)

    def _trim(self) -> None:
        if len(self.records) > 2 * self.keep:
            del self.records[:-self.keep]

    def step(self, step: int, metrics: dict[str, Any], served: torch.nn.Module | None = None,
             **extra: Any) -> dict[str, Any]:
        m = dict(metrics)
        if m.get("batch"):
            m["acceptance"] = float(m.get("accepted", 0.0)) / float(m["batch"])
        rec = super().step(step, m, served, **extra)
        self._trim()
        return rec

    def event(self, event: str, step: int, served: torch.nn.Module | None = None,
              **extra: Any) -> dict[str, Any]:
        if event == "snapshot":  # the server snapshots the adapter only to publish
            event = "publish"
            if served is not None:
                extra["weights_hash"] = weights_hash(served.state_dict())
        rec = super().event(event, step, served, **extra)
        self._trim()
        return rec


def open_audit(path: str, hash_every: int, context: dict[str, Any]) -> ServeAudit:
    """Open (append to) a server's audit log and write its ``serve`` record."""
    audit = ServeAudit(path, hash_every)
    audit.event("serve", 0, **context)
    return audit


def check_audit_path(path: str) -> None:
    """InputError unless ``path`` can be appended to (checked before a child process opens it)."""
    from pathlib import Path

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise InputError(f"cannot write the audit log '{path}' ({e.strerror or e})") from None


def lib_config(c: Mapping[str, Any]):
    """The library's online ``same_fast.adapt.loop.AdaptConfig`` from the serving settings
    ``c`` (the fields the adapter child receives: batch, size, lr, ema, every, buffer, serve,
    seed, modality and optionally redegrade, redegrade_strength). One place for both the thread
    and the process adapter."""
    from same_fast.adapt.loop import AdaptConfig as LibConfig

    preset = c.get("redegrade") or ""
    return LibConfig(mode="online", batch=c["batch"], size=c["size"], lr=c["lr"], ema=c["ema"],
                     every=c["every"], buffer=c["buffer"], serve=c["serve"], seed=c["seed"],
                     modality=c["modality"], redegrade=bool(preset), redegrade_preset=preset,
                     redegrade_strength=float(c.get("redegrade_strength", 1.0)))


def load_serving_picker(c: Mapping[str, Any]):
    """The picker of the serving settings ``c`` (``picker``, ``picker_calibrate``), or None.
    One place for both the thread and the process adapter."""
    if not c.get("picker"):
        return None
    from same_fast.picker import PickerConfig, load_picker

    return load_picker(c["picker"], device="cpu",
                       config=PickerConfig(calibrate=float(c.get("picker_calibrate") or 0.0)))


def audit_context(served: ServedModel, cfg: AdaptConfig, runs_in: str) -> dict[str, Any]:
    """The audit log's ``serve`` record: the model, where the adapter runs, the settings."""
    return {"model": served.name, "runs_in": runs_in, "source_weights_hash": served.weights_hash,
            "settings": {k: getattr(cfg, k) for k in (
                "batch", "every", "buffer", "crop", "lr", "ema", "serve", "picker", "safety",
                "min_acceptance", "max_drift", "seed", "redegrade", "redegrade_strength",
                "picker_calibrate")}}
