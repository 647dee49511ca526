"""``same-fast info FILE...``: format, size, dtype, channels, frames, modality, key DICOM attributes.

``same-fast info MODEL`` (a shipped name such as ``fundus-lite``, or a ``.safetensors``
checkpoint) prints the model card: training data and licences, cameras, degradations, intended
use and validation per camera.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from same_fast.errors import SameFastError

HELP = "describe image and DICOM files"

_DICOM_SHOWN = ("Manufacturer", "ManufacturerModelName", "PhotometricInterpretation",
                "TransferSyntax", "BitsStored", "SeriesDescription", "StudyInstanceUID",
                "SeriesInstanceUID", "SOPClassUID", "FrameTime", "CineRate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="image or DICOM files, or a model (shipped name or .safetensors) for its card")
    p.add_argument("--json", action="store_true", help="print one JSON object per file")


def describe(path: str) -> dict[str, Any]:
    """What ``info`` reports about one file (raises ``SameFastError`` for bad files)."""
    from same_fast.io import load

    loaded = load(path)
    f, h, w, c = loaded.frames.shape
    out: dict[str, Any] = {
        "file": str(path), "format": loaded.format, "width": w, "height": h,
        "dtype": str(loaded.frames.dtype), "channels": c, "frames": f,
        "modality": loaded.meta.get("Modality", "unknown") if loaded.is_dicom else "unknown",
    }
    if loaded.is_dicom:
        out["dicom"] = {k: loaded.meta[k] for k in _DICOM_SHOWN if k in loaded.meta}
    return out


def _is_model(path: str) -> bool:
    from same_fast.models import WEIGHTS_DIR

    return path.endswith(".safetensors") or (
        "/" not in path and (WEIGHTS_DIR / f"{path}.safetensors").is_file())


def run(args: argparse.Namespace) -> int:
    failures = 0
    first_error: SameFastError | None = None
    for path in args.files:
        try:
            if _is_model(path):
                from same_fast.models import card

                print(card(path))
                continue
            d = describe(path)
        except SameFastError as e:
            # Describe every good file; report each bad one on its own line, fail at the end.
            failures += 1
            first_error = first_error or e
            if len(args.files) > 1:
                sys.stderr.write(f"same-fast: error: {str(e).splitlines()[0]}\n")
            continue
        if args.json:
            print(json.dumps(d, default=str))
            continue
        print(f"{d['file']}: {d['format'].upper()} {d['width']}x{d['height']} {d['dtype']} "
              f"channels={d['channels']} frames={d['frames']} modality={d['modality']}")
        for k, v in d.get("dicom", {}).items():
            print(f"  {k}: {v}")
    if failures and len(args.files) == 1:
        raise first_error  # type: ignore[misc]
    return 2 if failures else 0
