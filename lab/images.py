"""The lab's test images: DRIVE (with FOV and vessel maps) and the BUSI images held out of
source training, at a square evaluation size, and an experiment's degraded copies of them."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lab.config import ExperimentConfig
from lab.planted import planted
from same_fast.errors import InputError


def _resize(t: torch.Tensor, size: int, nearest: bool = False) -> torch.Tensor:
    mode = "nearest" if nearest else "area"
    return F.interpolate(t[None].float(), size=(size, size), mode=mode)[0]


def load_drive_test(size: int, n: int = 0, split: str = "DRIVE-test") -> dict[str, Any]:
    """DRIVE test at ``size`` square: clean (N, 3, S, S) in [0, 1], fov and vessels (N, 1, S, S)
    in {0, 1} (nearest-resized, as the paper protocol resizes masks). ``split="DRIVE"`` loads
    the 20 training images instead (the validation split for tuning adaptation)."""
    from same_fast.data import DATASETS, require_data_root
    from same_fast.io import list_images, load_mask, pair_by_name, read_image, to_tensor

    spec = DATASETS[split]
    root = require_data_root() / str(spec["root"])
    imgs = list_images(root / str(spec["images"]))
    if n:
        imgs = imgs[:n]
    ves = pair_by_name(imgs, root / str(spec["masks"]))
    fov = pair_by_name(imgs, root / str(spec["fov"]))
    clean, fovs, vessels, names = [], [], [], []
    for p, v, f in zip(imgs, ves, fov, strict=True):
        x = to_tensor(read_image(p))[:3]
        clean.append(_resize(x, size))
        fovs.append(_resize(torch.from_numpy(load_mask(f.partner))[None], size, True))
        vessels.append(_resize(torch.from_numpy(load_mask(v.partner))[None], size, True))
        names.append(p.stem)
    fv = torch.stack(fovs)
    return {"clean": torch.stack(clean) * fv, "fov": fv, "vessels": torch.stack(vessels),
            "names": names}


def load_busi_heldout(size: int, n: int = 0, model_meta: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    """BUSI images not used in source training, grey (N, 1, S, S) in [0, 1].

    The source model's metadata names its validation images when it records them
    (``validation_names`` / ``holdout`` in provenance); otherwise the last 15 % of each class by
    name are used and ``heldout_from_metadata`` is False in the result."""
    from same_fast.data import require_data_root
    from same_fast.io import list_images, read_image, to_tensor

    root = require_data_root() / "ultrasound" / "BUSI"
    held = heldout_names(model_meta or {})
    files = [p for c in ("benign", "malignant", "normal") for p in list_images(root / c / "images")]
    if held:
        chosen = [p for p in files if p.stem in held]
    else:
        chosen = []
        for c in ("benign", "malignant", "normal"):
            fs = list_images(root / c / "images")
            chosen += fs[len(fs) - max(1, math.ceil(0.15 * len(fs))):]
    if n:
        chosen = chosen[:n]
    clean = [_resize(to_tensor(read_image(p))[:3].mean(0, keepdim=True), size) for p in chosen]
    return {"clean": torch.stack(clean), "fov": None, "vessels": None,
            "names": [p.stem for p in chosen], "heldout_from_metadata": bool(held)}


def heldout_names(meta: dict[str, Any]) -> set[str]:
    prov = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
    for src in (meta, prov or {}):
        for key in ("held_out", "validation_names", "val_names", "holdout_names", "heldout"):
            v = src.get(key)
            if isinstance(v, list) and v:
                return {Path(str(s)).stem for s in v if "BUSI" in str(s) or "/" not in str(s)}
    return set()



def experiment_images(cfg: ExperimentConfig, model_meta: dict[str, Any] | None = None
                      ) -> tuple[dict[str, Any], torch.Tensor]:
    """The experiment's paired images: (data, degraded). ``data`` is the loader's dict (``clean``
    (N, C, S, S) in [0, 1], ``fov`` or None, ``vessels`` or None, ``names``, ...); ``degraded``
    is ``cfg.preset`` (with its overrides) drawn on ``clean`` with ``cfg.seed``.
    ``model_meta``: the source model's metadata (BUSI leaves out what it did not train on)."""
    from same_fast.degrade import PRESETS, degrade

    if cfg.dataset in ("DRIVE-test", "DRIVE", "DRIVE-train"):
        # DRIVE training images: the validation split for tuning (never tune on DRIVE test)
        data = load_drive_test(cfg.size, cfg.n_images,
                               "DRIVE-test" if cfg.dataset == "DRIVE-test" else "DRIVE")
    elif cfg.dataset == "BUSI":
        data = load_busi_heldout(cfg.size, cfg.n_images, model_meta)
    else:
        raise InputError(f"experiment dataset '{cfg.dataset}' is not supported")
    clean, fov = data["clean"], data["fov"]
    preset = dataclasses.replace(PRESETS[cfg.preset], **cfg.preset_overrides) \
        if cfg.preset_overrides else cfg.preset
    g = torch.Generator().manual_seed(cfg.seed)
    degraded = degrade(clean, preset, g, fov)
    data["ungradable"] = []
    if cfg.ungradable > 0:
        kinds = ("noise", "scramble", "washout")
        if cfg.ungradable_kind not in kinds or not cfg.ungradable <= 1:
            raise InputError(f"ungradable must be in (0, 1] and ungradable_kind one of "
                             f"{', '.join(kinds)}")
        n = len(degraded)
        k = max(1, round(cfg.ungradable * n))
        idx = sorted(torch.randperm(n, generator=g)[:k].tolist())
        bad = planted(degraded[idx], g)[cfg.ungradable_kind]
        if fov is not None:
            bad = bad * fov[idx]
        degraded[idx] = bad
        data["ungradable"] = idx
    return data, degraded

