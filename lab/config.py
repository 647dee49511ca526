"""The lab's experiments: their settings (``ExperimentConfig``) and the named ones (``EXPERIMENTS``).

Compared on the same images: degraded input, CLAHE, source model, mean teacher without picker,
SAME offline, SAME online, and the same with the re-degraded student view (``EXTRA``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from same_fast.degrade.presets import SPECKLE_BEYOND_TRAINING
from same_fast.errors import InputError

METHODS = ("degraded", "clahe", "source", "mean_teacher", "same_offline", "same_online")
ADAPTED = ("mean_teacher", "same_offline", "same_online")
# the re-degraded student view (SPEC 5, beyond the reference): without and with the picker,
# and online (what ``serve --adapt online --adapt-redegrade PRESET`` does to a stream)
EXTRA = ("mean_teacher_redegrade", "same_redegrade", "same_online_redegrade")


@dataclass
class ExperimentConfig:
    """One experiment's settings (``python -m lab --only NAME`` uses the defaults;
    ``quick`` shrinks images, steps and the segmenter for a smoke run)."""

    name: str = "drive-cataract"
    dataset: str = "DRIVE-test"
    modality: str = "fundus"
    model: str = "fundus-lite"
    picker: str = "fundus-picker"
    preset: str = "fundus-cataract"
    preset_overrides: dict[str, Any] = field(default_factory=dict)
    size: int = 256            # evaluation resolution (the paper protocol's)
    view: int = 128            # adaptation view side
    steps: int = 300           # offline adaptation steps (mean teacher and SAME alike)
    batch: int = 4
    lr: float = 2e-4
    online_every: int = 1
    online_steps_per_update: int = 2
    online_buffer: int = 8
    online_on_collapse: str = "reset"
    n_images: int = 0          # 0 = all
    seed: int = 0
    downstream: bool = True
    segmenter_steps: int = 300
    segmenter: str = ""        # path of a cached vessel segmenter ("" = <out>/vessel_segmenter)
    examples: int = 3
    redegrade: bool = True     # also run SAME / mean teacher with the re-degraded student view
    redegrade_strength: float = 0.6
    redegrade_preset: str = ""  # "" = the modality's default (AdaptConfig.redegrade_preset)
    schedule: str = "constant"  # offline learning-rate schedule: constant or paper
    ema: float = 0.995
    w_entropy: float = 1.0
    w_struct: float = 0.1
    serve: str = "student"      # the offline arms' output model: student or teacher
    arms: str = ""              # comma-separated adapted arms to run ("" = all), for exploring
    picker_soft: bool = False   # soft picker weights (PickerConfig.soft)
    picker_p_good: float = 0.0  # IQA acceptance threshold (0 = the picker's default)
    picker_calibrate: float = 0.0  # PickerConfig.calibrate: also accept the target's best share
    # a clinic's ungradable share: this fraction of the degraded images (a seeded draw) gets a
    # planted corruption on top (``lab.planted.planted``: noise, scramble or washout), as real collections
    # hold images no enhancer can rescue; tables then add scores over the usable images alone
    ungradable: float = 0.0
    ungradable_kind: str = "noise"


EXPERIMENTS: dict[str, dict[str, Any]] = {
    "drive-cataract": {},
    # A shift fully outside fundus-lite's training: none of the fundus presets adds noise. The
    # re-degraded student view adds the same kind of noise again (Noisier2Noise: learning to map
    # a noisier view to the teacher's output on the original teaches denoising without clean
    # images).
    "drive-noise": dict(preset="sensor-noise", redegrade_preset="sensor-noise",
                        redegrade_strength=1.0),
    # The same, in a clinic where some images are beyond rescue: 30 % of them get heavy noise
    # on top (the picker's planted "noise" family). A teacher's outputs on those are the
    # pseudo-labels the picker exists to reject; the mean teacher learns from them too. The
    # picker's calibration share (0.7) and the steps (600) were chosen on the validation split.
    "drive-noise-mixed": dict(preset="sensor-noise", redegrade_preset="sensor-noise",
                              redegrade_strength=1.0, ungradable=0.3, ungradable_kind="noise",
                              picker_calibrate=0.7, steps=600),
    "busi-speckle": dict(
        dataset="BUSI", modality="ultrasound", model="ultrasound-lite",
        picker="ultrasound-picker", preset="ultrasound-speckle", downstream=False,
        # outside the source training range: a narrower dynamic range, coarser speckle
        preset_overrides=dict(SPECKLE_BEYOND_TRAINING)),
}


def make_config(name: str, quick: bool = False, **overrides: Any) -> ExperimentConfig:
    """Experiment ``name``'s settings; ``quick`` shrinks images, steps and the segmenter for a
    smoke run; ``overrides`` set any field."""
    if name not in EXPERIMENTS:
        raise InputError(f"unknown experiment '{name}' (choose from {', '.join(EXPERIMENTS)})")
    cfg = ExperimentConfig(name=name, **EXPERIMENTS[name])
    if quick:
        cfg = dataclasses.replace(cfg, n_images=4, steps=4, size=128, view=64,
                                  online_steps_per_update=1, segmenter_steps=20, examples=1)
    return dataclasses.replace(cfg, **overrides)

