"""The adaptation settings: one dataclass (``AdaptConfig``) that every front nests.

``same-fast adapt`` and ``same-fast serve``'s ``--adapt-*`` flags are generated from its fields
(``add_flags``: the field's type, default and help; each front only names its flags), the
library's ``adapt_offline`` / ``OnlineAdapter`` take it, and the server's settings nest it
(``ServeConfig.adaptation``). Two named defaults: ``AdaptConfig()`` (the library and the
``adapt`` command) and ``AdaptConfig.serving()`` (a server adapting online to a stream).
Torch-free, so a CLI parses and validates before anything heavy loads.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from same_fast.errors import InputError

# The student's re-degraded view by default: "auto", read off the target images themselves
# (degrade/estimate.py): for JPEG targets, noise at the sensor level their DCT coefficients
# tell and a JPEG pass at their own quality (read from the pixels); otherwise noise at
# Immerkaer's estimate plus a mild JPEG pass. For OCT B-scans, speckle: noise correlated over
# the scans' own grain at their own strength, when the grain is coarser than the source's
# training scans' (speckle is coarse grain that the pixel-noise estimate does not see). Never a test
# shift's own generator, and not the source training preset either (which would only teach
# again what the source learnt). A named preset (generic-mix, ...) replaces it.
AUTO_REDEGRADE = "auto"
DEFAULT_REDEGRADE = {"fundus": AUTO_REDEGRADE, "ultrasound": AUTO_REDEGRADE, "oct": AUTO_REDEGRADE}
# The student's Adam learning rate by modality when none is named. Fundus: 2e-3, chosen on
# DRIVE's training images under the selection shifts only (docs/RESULTS.md, "A learning rate
# that learns in 300 steps": at 2e-4, 300 offline steps had barely begun to learn). OCT and
# ultrasound keep 2e-4, the rate their defaults were chosen and reported at.
DEFAULT_LR = {"fundus": 2e-3, "oct": 2e-4, "ultrasound": 2e-4}
BASE_LR = 2e-4
# The automatic view's strength (x + S (view - x)) by modality when none is named. Fundus: 1.5,
# chosen on DRIVE's and IDRiD's training images under the selection shifts only (docs/RESULTS.md,
# "A stronger view"): the view's added noise and JPEG change half again as large as the target
# reads teach the student more within 300 steps. OCT and ultrasound keep 1, the strength their
# defaults were chosen and reported at. A named preset runs at 1.
DEFAULT_VIEW_STRENGTH = {"fundus": 1.5, "oct": 1.0, "ultrasound": 1.0}
SERVES = ("student", "teacher")
SAFETY_ACTIONS = ("freeze", "reset", "off")


def _opt(default: Any, help: str, **kw: Any) -> Any:
    """A field with its ``--help`` text (and optional argparse ``choices`` / ``metavar``)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class StepConfig:
    """Hyper-parameters of one adaptation step (``same_fast.adapt.step.AdaptStep``)."""

    lr: float = _opt(BASE_LR, "Adam learning rate of the student")
    betas: tuple[float, float] = (0.9, 0.999)
    ema: float = _opt(0.995, "teacher <- ema * teacher + (1 - ema) * student after each step")
    w_l1: float = _opt(0.9, "weight of the picker-weighted L1 to the teacher's image")
    w_struct: float = _opt(0.1, "weight of the structure BCE to the teacher's structure map")
    w_entropy: float = _opt(1.0, "weight of the student structure map's entropy")
    w_ssim: float = _opt(0.0, "weight of 1 - SSIM to the teacher's image")
    compile: bool = False
    teacher_dropout: bool = True


@dataclass
class AdaptConfig(StepConfig):
    """Every adaptation setting; a front exposes the fields it needs as flags (``add_flags``).

    The step's own fields (lr, betas, ema, w_*) come from ``StepConfig`` (``step_config()``).
    Offline: ``steps`` or ``epochs`` over the images, ``schedule``. Online: one step per
    ``every`` frames from the last ``buffer``. The guards of a long run: ``safety`` with
    ``min_acceptance`` / ``max_drift`` (``SafetyConfig.of(config)``). Where a server runs its adapter:
    ``cpus``, ``nice``, ``threads``, ``publish_every_s``. ``picker``: the picker a front loads
    (a shipped name, a checkpoint, ``auto`` = the model's modality's, or None/``none``: accept
    every sample); library functions take the loaded picker as an argument instead.

    >>> AdaptConfig().mode, AdaptConfig.serving().mode, AdaptConfig.serving().buffer
    ('offline', 'online', 64)
    """

    lr: float | None = _opt(None, "Adam learning rate of the student (default: the "
                            "modality's: fundus 2e-3, OCT and ultrasound 2e-4)")
    mode: str = _opt("offline", "offline: steps over a folder; online: adapt every k frames",
                     choices=("offline", "online"))
    steps: int = _opt(100, "optimizer steps (offline; used when epochs is 0)")
    epochs: int = _opt(0, "passes over the images (offline; 0 = use steps)")
    batch: int = _opt(4, "training views per step")
    size: int = _opt(256, "side of the square training views (px)", metavar="PX")
    schedule: str = _opt("constant", "learning rate: constant, or the paper's (constant for "
                         "3/4 of the steps, then a linear decay)", choices=("constant", "paper"))
    scale: tuple[float, float] = (1.1, 1.35)
    views: str = _opt("auto", "training views: crop, whole (frames padded square) or auto "
                      "(whole frames for networks with whole-image context)",
                      choices=("auto", "crop", "whole"))
    frame_fraction: float = _opt(0.0, "> 0: crops of this fraction of the short side instead "
                                 "(the paper's views: 0.8)")
    gate_entropy: bool = _opt(True, "drop the entropy term on batches where the picker kept "
                              "nothing")
    redegrade: bool = _opt(True, "give the student a re-degraded view (SRTTA-style; off: the "
                           "paper's recipe, the student sees the teacher's view)")
    redegrade_preset: str = _opt("", "degradation preset of the student's re-degraded view "
                                 "(naming one turns the view on; '' = auto: noise at the level "
                                 "estimated from the target images, and JPEG at their own "
                                 "quality when they are JPEGs, else a mild JPEG pass; OCT: "
                                 "speckle at the scans' own grain and strength)",
                                 metavar="PRESET")
    redegrade_strength: float | None = _opt(
        None, "scale of the re-degraded view: x + S (degraded - x) (default: the automatic "
        "view's for the modality: fundus 1.5, OCT and ultrasound 1; a named preset: 1)",
        metavar="S")
    every: int = _opt(4, "online: one adaptation step per this many frames")
    buffer: int = _opt(16, "online: recent frames the adapter samples from")
    steps_per_update: int = 1
    serve: str = _opt("student", "which model is written or served", choices=SERVES)
    seed: int = _opt(0, "seed of views, order and dropout")
    hash_every: int = _opt(10, "audit log: the served weights' SHA-256 in every N-th step record "
                           "(events always carry it; 0 = events only)", metavar="N")
    modality: str = "fundus"
    picker: str | None = _opt("auto", "picker: a shipped name, a checkpoint, 'auto' (the "
                              "model's modality's) or 'none' (mean teacher: accept all)")
    picker_calibrate: float = _opt(0.0, "the picker also accepts the best SHARE (0-1) of the "
                                   "target's own recent pseudo-labels (0 = its absolute "
                                   "thresholds alone)", metavar="SHARE")
    picker_share_auto: bool = _opt(True, "offline, with a picker and no --picker-calibrate: set "
                                   "the calibration share from the target's own scores "
                                   "(Otsu's split of the source model's pseudo-labels; 0.9 "
                                   "when they form one group); a picker whose thresholds were "
                                   "set on the scanner it adapts to (oct-picker) keeps them")
    skip_unmeasured: bool = _opt(True, "with the automatic re-degradation: when the target "
                                 "images show nothing it models (no JPEG lattice, noise "
                                 "below the estimator's floor, OCT speckle no coarser than the "
                                 "source's), keep the source weights instead of adapting, and "
                                 "say so; online, hold until the recent frames show some "
                                 "(measured: there adaptation drifts below the source model)")
    safety: str = _opt("freeze", "what to do when acceptance collapses or outputs drift from "
                       "the source model (off = nothing)", choices=SAFETY_ACTIONS)
    min_acceptance: float = _opt(0.05, "safety: mean picker acceptance over the last 8 steps "
                                 "below this collapses (0 = never)")
    max_drift: float = _opt(0.15, "safety: mean |served - source| output difference above "
                            "this, in [0, 1] intensity units, is drift (0 = never)")
    audit: str | None = _opt(None, "append every adaptation step and event to this JSONL "
                             "audit log", metavar="FILE")
    cpus: str = _opt("auto", "CPUs the adapter (and the loading of new weights) runs on; "
                     "serving keeps the others. auto: the highest-numbered CPU when there are "
                     "2 or more; off; or a list like 1,3,5-7 (Linux)", metavar="LIST")
    nice: int = 10
    threads: int = 1
    publish_every_s: float = _opt(1.0, "publish new weights to the served model at most this "
                                  "often (each swap slows the next frames; 0 = every step)",
                                  metavar="S")

    @classmethod
    def serving(cls, **overrides: Any) -> AdaptConfig:
        """The defaults of a server adapting online to a stream (``same-fast serve --adapt
        online``): online mode, a 64-frame buffer, the student's view re-degraded as the
        stream's frames tell (as ``adapt``; ``--adapt-no-redegrade`` turns it off), holding
        while they show nothing that view models (``--adapt-always`` adapts anyway), no picker
        unless one is named."""
        return cls(**{"mode": "online", "buffer": 64, "picker": None, **overrides})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AdaptConfig:
        """The inverse of ``to_dict`` (JSON lists back to tuples)."""
        tuples = {"betas", "scale"}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON types (for audit logs, checkpoints and the adapter child)."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    def learning_rate(self) -> float:
        """``lr``, or the modality's default (``DEFAULT_LR``) when none is named."""
        return float(self.lr) if self.lr is not None else DEFAULT_LR.get(self.modality, BASE_LR)

    def view_strength(self) -> float:
        """``redegrade_strength``, or by default the automatic view's for the modality
        (``DEFAULT_VIEW_STRENGTH``) and 1 for a named preset."""
        if self.redegrade_strength is not None:
            return float(self.redegrade_strength)
        if self.redegrade_with() == AUTO_REDEGRADE:
            return DEFAULT_VIEW_STRENGTH.get(self.modality, 1.0)
        return 1.0

    def resolved(self) -> AdaptConfig:
        """This config with the learning rate and view strength it runs at written in (for
        logs and checkpoints; call it once the modality is known)."""
        return dataclasses.replace(self, lr=self.learning_rate(),
                                   redegrade_strength=self.view_strength())

    def step_config(self) -> StepConfig:
        return StepConfig(**{f.name: getattr(self, f.name) for f in fields(StepConfig)
                             if f.name != "lr"}, lr=self.learning_rate())

    def augment_config(self, multiple: int, context: bool = False) -> Any:
        """The views' ``same_fast.adapt.augment.AugmentConfig`` (``size`` must divide by the
        model's ``multiple``): ``context`` says the network summarises the whole frame, so
        ``auto`` gives it whole frames (a crop would change the summary it learnt from)."""
        from same_fast.adapt.augment import AugmentConfig

        if self.size % multiple:
            raise InputError(f"adaptation view size {self.size} must be a multiple of the "
                             f"model's {multiple}")
        whole = self.views == "whole" or (self.views == "auto" and context)
        return AugmentConfig(size=self.size, scale=self.scale, whole=whole,
                             frame_fraction=self.frame_fraction, multiple=multiple)

    def redegrade_with(self) -> str:
        """The preset of the student's re-degraded view, or ``auto`` (estimated from the target
        images: ``same_fast.adapt.loop.redegradation``)."""
        return self.redegrade_preset or DEFAULT_REDEGRADE.get(self.modality, AUTO_REDEGRADE)

    def check(self, flags: Mapping[str, str] | None = None) -> AdaptConfig:
        """Raise InputError for a bad setting, naming the front's flag (``flags``: field ->
        flag; the field's name where absent). Returns self."""
        def name(f: str) -> str:
            return (flags or {}).get(f, f)

        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise InputError(f"{name(f.name)} must be {' or '.join(choices)}, "
                                 f"got '{getattr(self, f.name)}'")
        for f in ("batch", "every", "buffer", "steps_per_update"):
            if int(getattr(self, f)) < 1:
                raise InputError(f"{name(f)} must be >= 1")
        for f in ("steps", "epochs", "hash_every"):
            if int(getattr(self, f)) < 0:
                raise InputError(f"{name(f)} must be >= 0")
        if self.size < 8:
            raise InputError(f"{name('size')} must be >= 8")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"{name('lr')} must be > 0, got {self.lr}")
        for f in ("ema", "min_acceptance", "frame_fraction"):
            if not 0 <= getattr(self, f) <= 1:
                raise InputError(f"{name(f)} must be in [0, 1], got {getattr(self, f)}")
        if not 0 <= self.picker_calibrate < 1:
            raise InputError(f"{name('picker_calibrate')} must be in [0, 1), "
                             f"got {self.picker_calibrate}")
        for f in ("max_drift", "publish_every_s", "redegrade_strength"):
            if getattr(self, f) is not None and not getattr(self, f) >= 0:
                raise InputError(f"{name(f)} must be >= 0")
        if self.redegrade_preset:
            from same_fast.degrade import PRESETS  # imports torch: only when asked for

            if self.redegrade_preset not in PRESETS:
                raise InputError(f"{name('redegrade_preset')}: unknown degradation preset "
                                 f"'{self.redegrade_preset}' (choose from "
                                 f"{', '.join(sorted(PRESETS))})")
        return self


_TYPES = {"int": int, "float": float, "str": str}


# A flag whose naming (any value) turns off the automatic setting it would otherwise get: an
# explicit --picker-calibrate 0 means the picker's absolute thresholds alone, not "auto".
_NAMING_TURNS_OFF = {"picker_calibrate": "picker_share_auto"}


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
              flags: Mapping[str, str], defaults: AdaptConfig, prefix: str = "") -> None:
    """Declare one flag per ``flags`` entry (field -> flag, e.g. ``"size": "--adapt-crop"``):
    type, choices, metavar and help from the field, default from ``defaults``. A bool field
    whose default is True becomes a ``--no-...`` switch; one whose default is False, a switch.
    Each flag's value lands in ``args.<prefix><field>`` (``from_args`` reads them back with the
    same ``prefix``; a command whose own flags share a field's name, as ``enhance --batch`` and
    ``AdaptConfig.batch`` do, needs one)."""
    by_name = {f.name: f for f in fields(AdaptConfig)}
    taken = {a.dest for a in parser._actions}  # a group's are its parser's
    for name, flag in flags.items():
        f, default = by_name[name], getattr(defaults, name)
        if prefix + name in taken:
            raise ValueError(f"{flag}: args.{prefix}{name} is already another flag's; "
                             "pass add_flags a prefix")
        kw: dict[str, Any] = {"dest": prefix + name, "help": f.metadata.get("help")}
        if f.type == "bool":
            kw["action"] = "store_false" if default else "store_true"
            if default:
                kw["help"] = f"turn off: {kw['help']}"
        else:
            kw.update(default=default, type=_TYPES[f.type.split(" ")[0]])
            if name in _NAMING_TURNS_OFF and _NAMING_TURNS_OFF[name] in flags:
                kw["default"] = None  # unnamed: keep the automatic setting
                kw["help"] = (f"{kw['help']} (default: set automatically; naming it, 0 "
                              f"included, implies {flags[_NAMING_TURNS_OFF[name]]})")
            for key in ("choices", "metavar"):
                if key in f.metadata:
                    kw[key] = f.metadata[key]
        parser.add_argument(flag, **kw)


def from_args(args: argparse.Namespace, flags: Mapping[str, str], base: AdaptConfig,
              prefix: str = "", **overrides: Any) -> AdaptConfig:
    """``base`` with the values of the flags ``add_flags`` declared (with the same ``prefix``; and
    ``overrides``). Naming a re-degradation preset turns the re-degraded view on; naming a
    calibration share (0 included) turns the automatic share off."""
    values = {name: getattr(args, prefix + name) for name in flags}
    if values.get("redegrade_preset"):
        values["redegrade"] = True
    for name, auto in _NAMING_TURNS_OFF.items():
        if name in values and values[name] is None:
            del values[name]  # not named: the base's value, automatic setting untouched
        elif name in values and auto in flags:
            values[auto] = False
    return dataclasses.replace(base, **{**values, **overrides})
