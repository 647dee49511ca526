"""Safety of long adaptation runs: watch acceptance and drift; freeze or reset to the source.

Long-stream test-time adaptation tends to collapse eventually. Two signals trigger an action:
- acceptance: the mean picker acceptance over the last ``window`` steps falls below
  ``min_acceptance`` (the teacher's outputs stopped looking plausible);
- drift: the mean absolute difference between the served model's output and the source
  model's output on the current frames exceeds ``max_drift`` (in [0, 1] intensity units).
The action is ``freeze`` (keep the current weights, stop updating) or ``reset`` (restore the
source weights exactly, clear the optimizer, keep adapting).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from same_fast.adapt.config import AdaptConfig


@dataclass
class SafetyConfig:
    """min_acceptance: fraction in [0, 1] (0 disables); window: steps averaged; max_drift: mean
    |served - source| in [0, 1] units (0 disables); drift_every: steps between drift checks;
    action: 'freeze' or 'reset'."""

    min_acceptance: float = AdaptConfig.min_acceptance
    window: int = 8
    max_drift: float = AdaptConfig.max_drift
    drift_every: int = 4
    action: str = "freeze"

    @classmethod
    def of(cls, config: AdaptConfig) -> SafetyConfig:
        """The monitor of an ``AdaptConfig``'s ``safety`` and thresholds (``off``: none)."""
        if config.safety == "off":
            return cls(min_acceptance=0.0, max_drift=0.0)
        return cls(min_acceptance=float(config.min_acceptance),
                   max_drift=float(config.max_drift), action=config.safety)


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of every parameter and buffer (on the model's device)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def restore_(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model`` in place (tensor identities kept, so flat-buffer views that
    other code holds, such as the EMA's, stay valid). Exact: bit-for-bit the saved values."""
    current = model.state_dict()
    missing = set(current) ^ set(state)
    if missing:
        raise KeyError(f"state does not match the model: {sorted(missing)[:3]}")
    for k, v in current.items():
        v.copy_(state[k])


class SafetyMonitor:
    """Tracks acceptance per step; says when to act. Not thread-safe on its own (the online
    adapter calls it under its lock)."""

    def __init__(self, config: SafetyConfig | None = None) -> None:
        self.config = config or SafetyConfig()
        if self.config.action not in ("freeze", "reset"):
            raise ValueError(f"safety action must be 'freeze' or 'reset', got "
                             f"{self.config.action!r}")
        self.acceptance: deque[float] = deque(maxlen=max(1, self.config.window))
        self.last_drift: float | None = None

    def clear(self) -> None:
        self.acceptance.clear()

    def observe_acceptance(self, fraction: float) -> str | None:
        """Record a step's accepted fraction; returns a reason string when acceptance collapsed."""
        self.acceptance.append(float(fraction))
        cfg = self.config
        if cfg.min_acceptance > 0 and len(self.acceptance) == self.acceptance.maxlen:
            mean = sum(self.acceptance) / len(self.acceptance)
            if mean < cfg.min_acceptance:
                return f"acceptance {mean:.3f} < {cfg.min_acceptance} over {len(self.acceptance)} steps"
        return None

    def observe_drift(self, drift: float) -> str | None:
        """Record a drift measurement; returns a reason string when it is over the bound."""
        self.last_drift = float(drift)
        if self.config.max_drift > 0 and drift > self.config.max_drift:
            return f"drift {drift:.4f} > {self.config.max_drift}"
        return None
