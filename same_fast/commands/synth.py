"""``same-fast synth``: write synthetic degraded/clean pairs from a folder of clean images."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from same_fast.errors import InputError

HELP = "write synthetic degraded/clean pairs (degraded/, clean/, fov/, structure/)"

# Presets made for grey modalities: colour inputs are reduced to one channel first, so the
# noise is the same in every channel (a grey scan stored as RGB stays grey).
GREY_PRESETS = ("gray", "ultrasound-speckle")


@dataclass
class SynthConfig:
    """One field per flag."""

    preset: str
    input: str
    output: str
    per_image: int = 1
    seed: int = 0
    fov: str | None = None
    structure: str | None = None
    device: str = "cpu"
    progress: bool = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    from same_fast.degrade import PRESETS

    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("-i", "--input", required=True, help="folder of clean images")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--per-image", type=int, default=1, help="degraded versions per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fov", help="folder of field-of-view masks (same names): outside is black")
    p.add_argument("--structure", help="folder of structure masks to copy beside the pairs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    fields = SynthConfig.__dataclass_fields__
    summary = synth(SynthConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("files", "preset_fields")}))
    return 0


def synth(cfg: SynthConfig) -> dict:
    """Degrade every image of ``cfg.input`` ``per_image`` times; returns the summary written.

    Names: ``<stem>.png`` (or ``<stem>_<k>.png`` when ``per_image`` > 1) in ``degraded/``,
    ``clean/``, ``fov/`` and ``structure/``. One generator seeded with ``seed`` is consumed in
    sorted file order, so a run is reproducible. uint16 images stay 16-bit.
    """
    from same_fast.degrade import degrade, get_preset
    from same_fast.io import list_images, load, load_mask, pair_by_name, to_array, to_tensor, write_image

    preset = get_preset(cfg.preset)
    if cfg.per_image < 1:
        raise InputError("--per-image must be >= 1")
    files = list_images(cfg.input, dicom=False)
    if not files:
        raise InputError(f"{cfg.input}: no images")
    fovs = {it.path: it.partner for it in pair_by_name(files, cfg.fov)} if cfg.fov else {}
    structs = ({it.path: it.partner for it in pair_by_name(files, cfg.structure)}
               if cfg.structure else {})
    out = Path(cfg.output)
    dirs = {k: out / k for k in ("degraded", "clean")}
    if cfg.fov:
        dirs["fov"] = out / "fov"
    if cfg.structure:
        dirs["structure"] = out / "structure"
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed)
    from same_fast.progress import progress_bar

    it = progress_bar(files, cfg.progress, desc=f"synth ({cfg.preset})", unit="img")
    written = []
    for f in it:
        arr = load(f).frames[0][..., :3]
        if cfg.preset in GREY_PRESETS and arr.shape[-1] == 3:
            arr = np.rint(arr.astype(np.float64).mean(-1, keepdims=True)).astype(arr.dtype)
        x = to_tensor(arr)[None].to(device)
        fov = None
        fov_arr = None
        if f in fovs:
            fov_arr = load_mask(fovs[f], arr.shape[:2])
            fov = torch.from_numpy(fov_arr)[None, None].to(device)
        struct = load_mask(structs[f], arr.shape[:2]) if f in structs else None
        for k in range(cfg.per_image):
            name = f"{f.stem}.png" if cfg.per_image == 1 else f"{f.stem}_{k}.png"
            y = degrade(x, preset, g, fov)
            write_image(dirs["degraded"] / name, to_array(y[0], arr.dtype.type))
            write_image(dirs["clean"] / name, arr)
            if fov_arr is not None:
                write_image(dirs["fov"] / name, (fov_arr * np.uint8(255))[..., None])
            if struct is not None:
                write_image(dirs["structure"] / name, (struct * np.uint8(255))[..., None])
            written.append(name)
    summary = {"preset": cfg.preset, "preset_fields": _fields(preset), "seed": cfg.seed,
               "input": str(cfg.input), "images": len(files), "pairs": len(written),
               "folders": sorted(dirs), "files": written}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _fields(preset) -> dict:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(preset).items()}
