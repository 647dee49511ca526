"""``same-fast enhance``: enhance one image, a folder, or DICOM files with a source model.

Names are kept where the format is (``a.png`` -> ``OUT/a.png``, ``a.tif``, ``a.dcm``); JPEG, GIF
and BMP inputs are written as PNG (no second lossy step) under their whole name plus ``.png``
(``scan.jpg`` -> ``OUT/scan.jpg.png``), so names never collide (``io.plan_outputs``; a collision
left, or ``-o`` equal to or inside ``-i``, is refused before anything is written). DICOM inputs
(by extension or by preamble) become a derived DICOM (new series, source metadata and pixel
units kept); a DICOM whose Modality the model was not trained for is refused unless
``--force-modality``. 16-bit inputs stay 16-bit. Frames larger than ``--tile-pixels`` are
enhanced in overlapping tiles (``engine.tiles``), and batches are sized to the same budget.
``summary.json`` in ``OUT`` lists exactly the files written and the files that failed, each
with its error.

``--backend`` runs inference through ``same_fast.engine`` (torch, compile, onnxruntime,
tensorrt, or auto: the fastest measured here). ``--adapt`` adapts online while enhancing (SAME
teacher-student with the picker): files and cine frames are seen in order, each frame is
enhanced with the weights adapted on everything before it. A bad file in a folder (load,
enhance or write) is reported on its own line and skipped; the others are still written, and the
exit status is then 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from same_fast.engine.tiles import DEFAULT_MAX_PIXELS as DEFAULT_TILE_PIXELS
from same_fast.engine.tiles import batch_within, enhance_in_tiles
from same_fast.enhancer import Step, enhance_array
from same_fast.errors import InputError, SameFastError

HELP = "enhance images, folders or DICOM series with a trained model"

@dataclass
class EnhanceConfig:
    """One field per flag."""

    model: str
    input: str
    output: str
    mask: str | None = None
    batch: int = 4
    device: str = "cpu"
    backend: str = "torch"
    channels_last: bool = False
    adapt: bool = False
    picker: str = "auto"
    adapt_every: int = 4
    picker_calibrate: float = 0.0
    progress: bool = True
    force_modality: bool = False
    uid_root: str | None = None
    tile_pixels: int = DEFAULT_TILE_PIXELS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True,
                   help="shipped name (fundus-lite, ultrasound-lite, oct-lite) or a .safetensors "
                        "checkpoint")
    p.add_argument("-i", "--input", required=True, help="an image, a DICOM file, or a folder")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--mask", help="FOV mask: a file (single input) or a folder (same names)")
    p.add_argument("--batch", type=int, default=4, help="frames per forward pass")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--backend", default="torch",
                   choices=["auto", "torch", "torchscript", "compile", "onnxruntime", "tensorrt"],
                   help="inference backend (auto: the fastest measured on this machine, cached)")
    p.add_argument("--channels-last", action="store_true",
                   help="torch/compile backends: NHWC weights and frames (often faster on CPU)")
    p.add_argument("--adapt", action="store_true",
                   help="adapt online (SAME) while enhancing, in input order")
    p.add_argument("--picker", default="auto",
                   help="with --adapt: picker name or checkpoint, 'auto' (by modality) or 'none'")
    p.add_argument("--adapt-every", type=int, default=4, metavar="K",
                   help="with --adapt: one adaptation step every K frames")
    p.add_argument("--picker-calibrate", type=float, default=0.0, metavar="SHARE",
                   help="with --adapt: also learn from the best SHARE (0-1) of the input's own "
                        "recent pseudo-labels (for scans the picker rates low across the board)")
    p.add_argument("--force-modality", action="store_true",
                   help="enhance DICOM of a modality the model was not trained for")
    p.add_argument("--uid-root", metavar="ROOT",
                   help="UID root for derived DICOM (default: $SAME_FAST_UID_ROOT, else 2.25 UUIDs)")
    p.add_argument("--tile-pixels", type=int, default=DEFAULT_TILE_PIXELS, metavar="N",
                   help="most pixels one forward pass sees; larger frames go in overlapping tiles")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    fields = EnhanceConfig.__dataclass_fields__
    summary = enhance_files(EnhanceConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    print(json.dumps({k: v for k, v in summary.items() if k != "files"}, indent=2))
    return 2 if summary["n_failed"] else 0


def _inputs(cfg: EnhanceConfig) -> list[tuple[Path, Path | None]]:
    """(file, mask or None) pairs for the input path."""
    from same_fast.io import list_images, pair_by_name

    src = Path(cfg.input)
    if src.is_dir():
        files = list_images(src)
        if not files:
            raise InputError(f"{src}: no images or DICOM files")
        if cfg.mask:
            if not Path(cfg.mask).is_dir():
                raise InputError(f"--mask {cfg.mask}: a folder input needs a folder of masks")
            return [(it.path, it.partner) for it in pair_by_name(files, cfg.mask)]
        return [(f, None) for f in files]
    if not src.exists():
        raise InputError(f"{src}: no such file or folder")
    if cfg.mask:
        m = Path(cfg.mask)
        if m.is_dir():
            return [(it.path, it.partner) for it in pair_by_name([src], m)]
        if not m.is_file():
            raise InputError(f"--mask {m}: no such file")
        return [(src, m)]
    return [(src, None)]


def enhance_files(cfg: EnhanceConfig) -> dict[str, Any]:
    """Enhance every input of ``cfg`` into ``cfg.output``; returns the summary also written.

    Everything that can be refused for the whole run (flags, the model, names, ``-o`` inside
    ``-i``) is refused before anything is written; after that each file is loaded, enhanced and
    written on its own, and a failure costs that file only (the single-file input re-raises).
    """
    from same_fast.files import atomic_path
    from same_fast.io import plan_outputs
    from same_fast.io.dicom_derived import uid_root
    from same_fast.models import load_model

    if cfg.batch < 1:
        raise InputError("--batch must be >= 1")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device available (use --device cpu)")
    uid_root(cfg.uid_root)  # a bad root fails now, not on the first DICOM
    model, meta = load_model(cfg.model, cfg.device)
    pairs = _inputs(cfg)
    out = Path(cfg.output)
    _check_output_dir(Path(cfg.input), out)
    targets = plan_outputs([p for p, _ in pairs], out)
    step, adapter, engine_info = _make_step(cfg, model, meta)
    from same_fast.progress import progress_bar

    it: Any = progress_bar(zip(pairs, targets, strict=True), cfg.progress, total=len(pairs),
                           desc="enhance", unit="file")
    series: dict[str, str] = {}  # source series -> new derived series UID
    records = []
    failed: list[dict[str, str]] = []
    t_all = time.perf_counter()
    for (path, mask_path), dst in it:
        try:
            records.append(_enhance_one(cfg, model, meta, step, adapter, path, mask_path, dst,
                                        series))
        except Exception as e:  # one bad file (load, enhance or write) must not cost the rest
            if len(pairs) == 1:
                raise
            message = _file_error(path, e)
            sys.stderr.write(f"same-fast: error: {message}\n")
            failed.append({"input": str(path), "output": str(dst), "error": message})
    total = time.perf_counter() - t_all
    n_frames = sum(r["frames"] for r in records)
    summary = {
        "model": cfg.model, "preset": meta.get("preset"), "modality": meta.get("modality"),
        "device": cfg.device, "batch": cfg.batch, "engine": engine_info,
        "adaptation": adapter.stats() if adapter else None,
        "files": records, "n_files": len(records), "failed": failed, "n_failed": len(failed),
        "n_frames": n_frames, "seconds": round(total, 3),
        "mean_ms_per_frame": round(sum(r["ms_per_frame"] * r["frames"] for r in records)
                                   / n_frames, 2) if n_frames else None,
    }
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _check_output_dir(src: Path, out: Path) -> None:
    """``-o`` must be a folder, and neither ``-i`` nor inside it (outputs would be re-read as
    inputs next run, and a kept name would overwrite its source)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out}: exists and is not a folder")
    if src.is_dir():
        s, o = src.resolve(), out.resolve()
        if o == s or s in o.parents:
            raise InputError(f"-o {out} is the input folder or inside it; choose a folder "
                             "outside -i")


def _enhance_one(cfg: EnhanceConfig, model: torch.nn.Module, meta: dict[str, Any], step: Step,
                 adapter: Any, path: Path, mask_path: Path | None, dst: Path,
                 series: dict[str, str]) -> dict[str, Any]:
    """Load, enhance and write one file (atomically); returns its summary record."""
    from same_fast.io import load, load_mask, write_dicom_derived, write_image
    from same_fast.io.dicom_derived import check_derivable, new_uid
    from same_fast.models import check_modality

    loaded = load(path)
    if loaded.is_dicom:
        check_modality(meta.get("modality"), loaded.dataset.get("Modality"), str(path),
                       cfg.force_modality)
        check_derivable(loaded.dataset, str(path))
    frames = loaded.frames
    fov = load_mask(mask_path, frames.shape[1:3]) if mask_path else None
    t0 = time.perf_counter()
    # With --adapt, frames go one at a time so that each is enhanced with weights adapted
    # on every frame before it (a cine adapts within itself).
    batch = 1 if adapter else batch_within(cfg.batch, *frames.shape[1:3], cfg.tile_pixels)

    def run(tile: np.ndarray, tile_fov: np.ndarray | None) -> np.ndarray:
        return enhance_array(model, tile, tile_fov, batch, cfg.device, step)

    y = enhance_in_tiles(frames, fov, run, cfg.tile_pixels, getattr(model, "multiple", 1))
    dt = time.perf_counter() - t0
    if loaded.is_dicom:
        src_series = str(loaded.dataset.get("SeriesInstanceUID", ""))
        uid = series.setdefault(src_series, new_uid(cfg.uid_root))
        write_dicom_derived(loaded.dataset, y, dst, series_uid=uid, uid_root=cfg.uid_root,
                            description=f"Enhanced by same-fast (SAME, {cfg.model})")
    else:
        write_image(dst, y[0])
    return {"input": str(path), "output": str(dst), "frames": int(frames.shape[0]),
            "height": int(frames.shape[1]), "width": int(frames.shape[2]),
            "mask": str(mask_path) if mask_path else None,
            "ms_per_frame": round(1000 * dt / frames.shape[0], 2)}


def _file_error(path: Path, e: Exception) -> str:
    """One line for a file that failed: our own message, or what went wrong and where."""
    if isinstance(e, SameFastError):
        text = str(e)
    elif isinstance(e, MemoryError) or "allocate" in str(e):
        text = f"{path}: out of memory while enhancing (lower --tile-pixels or --batch)"
    else:
        text = f"{path}: internal error: {type(e).__name__}: {e}"
    return (text.strip().splitlines() or [type(e).__name__])[0]


def _make_step(cfg: EnhanceConfig, model: torch.nn.Module, meta: dict[str, Any]
               ) -> tuple[Step, Any, dict[str, Any]]:
    """The enhancement step for ``cfg``: plain torch, an engine backend, or an online adapter."""
    if cfg.adapt:
        if cfg.backend not in ("torch", "auto") or cfg.channels_last:
            raise InputError("--adapt serves the adapting torch student; use --backend torch "
                             "without --channels-last")
        if cfg.adapt_every < 1:
            raise InputError("--adapt-every must be >= 1")
        from same_fast.adapt.config import AdaptConfig
        from same_fast.adapt.online import OnlineAdapter
        from same_fast.picker import PickerConfig, resolve_picker

        modality = str(meta.get("modality", "fundus"))
        picker = resolve_picker(cfg.picker, modality, cfg.device,
                                PickerConfig(calibrate=cfg.picker_calibrate))
        adapter = OnlineAdapter(model, picker, AdaptConfig(mode="online", modality=modality,
                                                           every=cfg.adapt_every))

        def adapt_step(t: torch.Tensor, mm: torch.Tensor | None) -> torch.Tensor:
            adapter.observe(t, mm)
            return adapter.enhance(t, mm)

        return adapt_step, adapter, {"backend": "torch", "adapt": "online",
                                     "picker": cfg.picker,
                                     "picker_calibrate": cfg.picker_calibrate}
    if cfg.backend == "torch" and not cfg.channels_last:
        from same_fast.nn import enhance

        def torch_step(t: torch.Tensor, mm: torch.Tensor | None) -> torch.Tensor:
            return enhance(model, t, mm)

        return torch_step, None, {"backend": "torch"}
    from same_fast.engine import create_backend

    backend = create_backend(cfg.backend, model, device=cfg.device, metadata=meta,
                             channels_last=cfg.channels_last)
    return backend.enhance, None, backend.describe()
