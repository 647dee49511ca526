"""Model files and shipped names: ``load_model(name_or_path)`` and ``save_model(path, model)``.

A shipped name (``fundus-lite``, ``ultrasound-lite``, ``oct-lite``) resolves to
``same_fast/weights/<name>.safetensors``; anything else is a path to a safetensors checkpoint
written by ``save_model`` (metadata carries the architecture and its constructor config, so a
checkpoint loads without guessing). Never unpickles.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import torch

from same_fast import checkpoint
from same_fast.errors import CheckpointError, InputError
from same_fast.nn.samenet import PRESETS, SAMENet

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Names we ship; a name is listed as available only when its file is present.
SHIPPED = {
    "fundus-lite": "enhancer for colour fundus photographs (HRF + FIVES, fundus-shen2020)",
    "ultrasound-lite": "enhancer for grey ultrasound (BUSI train split, CCAUS; ultrasound-speckle)",
    "oct-lite": "enhancer for retinal OCT B-scans (Kermany OCT2017 Spectralis, training "
                "patients; oct)",
}


def available() -> list[str]:
    """Shipped model names whose weights are installed."""
    return sorted(n for n in SHIPPED if (WEIGHTS_DIR / f"{n}.safetensors").is_file())


def card(name_or_path: str | Path) -> str:
    """The model card of a shipped weight (``weights/<name>.card.md``: training data with
    licences and attribution, cameras, degradations, intended use, validation per camera), or
    for any other checkpoint a short card made from its metadata."""
    s = str(name_or_path)
    shipped = WEIGHTS_DIR / f"{s}.safetensors"
    if "/" not in s and shipped.is_file():
        text = WEIGHTS_DIR / f"{s}.card.md"
        if text.is_file():
            return text.read_text()
        path = shipped
    else:
        path = resolve(s)
    meta = checkpoint.read_metadata(path)
    prov = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
    lines = [f"# {path.name}", "", "No model card ships with this checkpoint; from its metadata:", ""]
    for key, value in (("architecture", meta.get("architecture")), ("modality", meta.get("modality")),
                       ("config", meta.get("config")), ("data", prov.get("data")),
                       ("degradation", prov.get("degrade")), ("command", prov.get("command")),
                       ("training", meta.get("training")), ("validation", meta.get("validation"))):
        if value is not None:
            lines.append(f"- {key}: {value}")
    return "\n".join(lines) + "\n"


def resolve(name_or_path: str | Path) -> Path:
    """Shipped name or path -> checkpoint path; a clear CheckpointError otherwise."""
    s = str(name_or_path)
    if s in SHIPPED:
        p = WEIGHTS_DIR / f"{s}.safetensors"
        if not p.is_file():
            raise CheckpointError(f"shipped model '{s}' is not installed (available: "
                                  f"{', '.join(available()) or 'none'})")
        return p
    p = Path(s).expanduser()
    if p.is_file():
        return p
    raise CheckpointError(f"'{s}' is neither a checkpoint file nor a shipped model (available: "
                          f"{', '.join(available()) or 'none'})")


def save_model(path: str | Path, model: SAMENet, **metadata: Any) -> Path:
    """Write ``model``'s weights and its configuration (plus ``metadata``) as safetensors.

    Standard keys are filled in: architecture, config, preset, channels, value_range ([-1, 1]),
    multiple, and provenance.date when provenance is a dict without one.
    """
    cfg = dict(getattr(model, "config", {}))
    meta: dict[str, Any] = {
        "architecture": type(model).__name__,
        "config": cfg,
        "preset": cfg.get("preset", "custom"),
        "channels": cfg.get("in_channels"),
        "value_range": [-1, 1],
        "multiple": getattr(model, "multiple", 1),
    }
    meta.update(metadata)
    prov = meta.get("provenance")
    if isinstance(prov, dict) and "date" not in prov:
        prov = {**prov, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        meta["provenance"] = prov
    return checkpoint.save(path, model.state_dict(), meta)


#: Bounds on a checkpoint's SAMENet config, checked before anything is built (the paper preset
#: is base 64, max_channels 512, levels 8; a config far beyond them is a hostile file).
CONFIG_LIMITS = {"in_channels": (1, 4), "base": (1, 256), "max_channels": (1, 2048),
                 "levels": (2, 10), "stem": (1, 8), "dropout_levels": (0, 10)}
#: DICOM Modality codes each model modality was trained for; codes that say nothing about the
#: image (OT other, SC secondary capture) pass for every model.
MODALITY_CODES = {"fundus": {"OP", "XC"}, "ultrasound": {"US", "IVUS"}, "oct": {"OPT"}}
_ANY_MODALITY = {"", "OT", "SC"}


def build_from_metadata(meta: dict[str, Any], source: str = "<checkpoint>",
                        device: str | torch.device | None = None) -> SAMENet:
    """An untrained SAMENet with the configuration recorded in checkpoint metadata.

    The config is bounded by ``CONFIG_LIMITS`` first; ``device="meta"`` builds the shapes only.
    """
    if meta.get("architecture") != "SAMENet":
        raise CheckpointError(f"{source}: architecture '{meta.get('architecture')}' is not SAMENet")
    cfg = meta.get("config")
    if not isinstance(cfg, dict) or "in_channels" not in cfg:
        raise CheckpointError(f"{source}: metadata lacks the SAMENet config")
    cfg = dict(cfg)
    preset = cfg.pop("preset", "lite")
    if preset not in PRESETS:
        raise CheckpointError(f"{source}: unknown SAMENet preset '{str(preset)[:40]}'")
    known = {k: v for k, v in cfg.items() if k in PRESETS[preset] or k == "in_channels"}
    for key, (lo, hi) in CONFIG_LIMITS.items():
        value = known.get(key, PRESETS[preset].get(key, lo))
        if type(value) is not int or not lo <= value <= hi:
            raise CheckpointError(f"{source}: config {key}={str(value)[:40]} is outside "
                                  f"{lo}..{hi}; refusing to build it")
    channels = known.pop("in_channels")
    try:
        with torch.device(device or "cpu"):
            return SAMENet(channels, preset, **known)
    except Exception as e:  # a config that cannot build a network is a bad checkpoint
        raise CheckpointError(f"{source}: cannot build SAMENet from its config ({e})") from None


def check_weights_fit(model: torch.nn.Module, header: dict[str, tuple[str, tuple[int, ...]]],
                      source: str) -> None:
    """Names, float dtypes and shapes of the checkpoint's tensors against ``model``'s state."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(header))
    extra = sorted(set(header) - set(expected))
    if missing or extra:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{extra[0][:80]}'"
        raise CheckpointError(f"{source}: weights do not match the recorded config ({what})")
    for name, (dtype, shape) in header.items():
        if dtype not in checkpoint.FLOAT_DTYPES:
            raise CheckpointError(f"{source}: tensor '{name}' is {dtype}; weights must be float")
        if shape != expected[name]:
            raise CheckpointError(f"{source}: weights do not match the recorded config (tensor "
                                  f"'{name}' is {list(shape)}, the config needs "
                                  f"{list(expected[name])})")


def check_modality(model_modality: Any, dicom_modality: Any, name: str, force: bool = False) -> None:
    """Refuse a DICOM of a modality the model was not trained for, unless ``force``.

    Only a model that names a known modality and an image whose DICOM Modality names another
    one are refused; PNG/TIFF inputs and generic codes (OT, SC) pass.
    """
    accepted = MODALITY_CODES.get(str(model_modality).lower())
    code = str(dicom_modality or "").strip().upper()
    if force or accepted is None or code in _ANY_MODALITY or code in accepted:
        return
    raise InputError(f"{name}: DICOM Modality {code} is not what this {model_modality} model was "
                     f"trained for ({', '.join(sorted(accepted))}); pass --force-modality to run it")


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[SAMENet, dict[str, Any]]:
    """Load a shipped name or a checkpoint path -> ``(model in eval mode on device, metadata)``.

    A training state (``train-source``'s ``<out>.last.safetensors``: ``model.*`` weights beside
    ``optim.*`` Adam moments, and ``ema.*`` when trained with ``--ema``) loads as the model the
    run validates: the EMA weights when there are any, else ``model.*``; the optimiser state is
    left out. The header (config bounds, tensor names, dtypes, shapes) is checked against a
    shapes-only build before any weight is allocated; NaN or infinite weights are refused.
    """
    path = resolve(name_or_path)
    header, meta = checkpoint.read_header(path)
    prefix = ""
    if any(k.startswith("optim.") for k in header):
        prefix = "ema." if any(k.startswith("ema.") for k in header) else "model."
    header = {k[len(prefix):]: v for k, v in header.items() if k.startswith(prefix)}
    check_weights_fit(build_from_metadata(meta, str(path), device="meta"), header, str(path))
    tensors, meta = checkpoint.load(path)
    tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    model = build_from_metadata(meta, str(path))
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), meta
