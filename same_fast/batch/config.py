"""``EnhanceConfig``: one field per flag of ``same-fast enhance`` (and of a Ray run of it)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from same_fast.adapt.config import AdaptConfig
from same_fast.engine.tiles import DEFAULT_MAX_PIXELS as DEFAULT_TILE_PIXELS

#: Pixels the pipeline may hold between decoding and writing (2**25: 128 fundus photos at
#: 512x512, ~100 MB of uint8 RGB plus as much for their outputs).
DEFAULT_QUEUE_PIXELS = 2**25


def default_workers() -> int:
    """Reader and writer threads each: the CPUs this process may run on, 1 to 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(8, n))


@dataclass
class EnhanceConfig:
    """One field per flag. ``workers``: reader and writer threads each (-1: ``default_workers``;
    0: one file after another in the calling thread). ``queue_pixels``: the pipeline's memory
    budget (pixels read and not yet written). ``adapt``: adapt online while enhancing, with the
    settings ``adaptation`` (the one ``AdaptConfig``; ``same-fast enhance``'s ``--adapt-*``,
    ``--picker`` and ``--picker-calibrate`` flags)."""

    model: str
    input: str
    output: str
    mask: str | None = None
    batch: int = 4
    device: str = "cpu"
    backend: str = "torch"
    channels_last: bool = False
    adapt: bool = False
    adaptation: AdaptConfig = field(default_factory=lambda: AdaptConfig(mode="online"))
    progress: bool = True
    force_modality: bool = False
    uid_root: str | None = None
    tile_pixels: int = DEFAULT_TILE_PIXELS
    workers: int = -1
    queue_pixels: int = DEFAULT_QUEUE_PIXELS
    png_level: int = 6

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnhanceConfig:
        """The inverse of ``dataclasses.asdict`` (the nested ``adaptation`` included)."""
        a = d.get("adaptation")
        return cls(**{**d, "adaptation": AdaptConfig(**a) if isinstance(a, dict) else
                      (a or AdaptConfig(mode="online"))})

    def threads(self) -> int:
        """The effective ``workers``."""
        return default_workers() if self.workers < 0 else self.workers
