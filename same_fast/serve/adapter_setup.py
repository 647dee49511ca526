"""What the thread and the process adapter of a server share: the adapter's settings, picker
and audit log, built from the serving settings (``ServeConfig.adaptation``).

The process adapter's child (``same_fast.serve.adapter_proc``) builds its adapter from these
too, so both modes adapt alike.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from same_fast.adapt.audit import AuditLog
from same_fast.adapt.config import AdaptConfig
from same_fast.errors import InputError
from same_fast.serve.model import ServedModel, short_hash


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
                extra["weights_hash"] = short_hash(served.state_dict())
        rec = super().event(event, step, served, **extra)
        self._trim()
        return rec


def adapter_state(frozen: bool, holding: Any, started: bool = True) -> str:
    """The online adapter's state as ``/status`` reports it, for either front (thread or
    process): ``frozen`` (no more steps), ``starting`` (a process adapter not yet ready),
    ``holding`` (the stream shows nothing to undo) or ``adapting``."""
    if frozen:
        return "frozen"
    if not started:
        return "starting"
    return "holding" if holding else "adapting"


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


def adapter_config(cfg: AdaptConfig, module: torch.nn.Module, modality: str) -> AdaptConfig:
    """The serving settings as the online adapter takes them: online mode, the model's
    modality, the view side rounded down to the model's multiple (at least 8 px)."""
    mult = int(getattr(module, "multiple", 1) or 1)
    return dataclasses.replace(cfg, mode="online", modality=modality,
                               size=max(8, mult, cfg.size // mult * mult)).resolved()


def load_serving_picker(cfg: AdaptConfig, modality: str) -> Any:
    """The picker ``cfg.picker`` names (None: accept every sample), on the CPU."""
    from same_fast.picker import PickerConfig, resolve_picker

    return resolve_picker(cfg.picker, modality, "cpu", PickerConfig(calibrate=cfg.picker_calibrate))


# The settings the audit log's ``serve`` record carries.
AUDITED = ("batch", "every", "buffer", "size", "lr", "ema", "serve", "picker", "safety",
           "min_acceptance", "max_drift", "seed", "redegrade_preset", "redegrade_strength",
           "picker_calibrate")


def audit_context(served: ServedModel, cfg: AdaptConfig, runs_in: str) -> dict[str, Any]:
    """The audit log's ``serve`` record: the model, where the adapter runs, the settings (the
    learning rate as it runs for the model's modality)."""
    run = dataclasses.replace(cfg, modality=str(served.metadata.get("modality") or "fundus")
                              ).resolved()
    return {"model": served.name, "runs_in": runs_in, "source_weights_hash": served.weights_hash,
            "settings": {k: getattr(run, k) for k in AUDITED}}
