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

Folders, series and cines run pipelined (``same_fast.batch``): ``--workers`` reader and writer
threads decode and encode while the model runs, within ``--queue-pixels``; ``summary.json`` keeps
input order. ``--ray [ADDRESS]`` runs the same job as Ray tasks on a cluster (a local one when no
address is given; ``same_fast.distributed``), with outputs under the same names.
"""
from __future__ import annotations

import argparse
import json

from same_fast.adapt.config import AdaptConfig, add_flags, from_args
from same_fast.batch.config import DEFAULT_QUEUE_PIXELS, EnhanceConfig
from same_fast.engine.tiles import DEFAULT_MAX_PIXELS as DEFAULT_TILE_PIXELS

HELP = "enhance images, folders or DICOM series with a trained model"

# The flag of each AdaptConfig field ``--adapt`` exposes (named as ``same-fast serve``'s).
ADAPT_FLAGS = {
    "picker": "--picker", "picker_calibrate": "--picker-calibrate", "every": "--adapt-every",
    "batch": "--adapt-batch", "buffer": "--adapt-buffer", "size": "--adapt-crop",
    "lr": "--adapt-lr", "ema": "--adapt-ema", "serve": "--adapt-serve",
    "redegrade": "--adapt-no-redegrade", "redegrade_preset": "--adapt-redegrade",
    "redegrade_strength": "--adapt-redegrade-strength", "safety": "--adapt-safety",
    "min_acceptance": "--adapt-min-acceptance", "max_drift": "--adapt-max-drift",
    "seed": "--seed", "skip_unmeasured": "--adapt-always",
}

# Their values land in args.adapt_<field>: enhance's own --batch is not --adapt-batch.
ADAPT_PREFIX = "adapt_"


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
    g = p.add_argument_group("online adaptation (with --adapt; AdaptConfig's fields)")
    add_flags(g, ADAPT_FLAGS, AdaptConfig(mode="online"), prefix=ADAPT_PREFIX)
    p.add_argument("--force-modality", action="store_true",
                   help="enhance DICOM of a modality the model was not trained for")
    p.add_argument("--uid-root", metavar="ROOT",
                   help="UID root for derived DICOM (default: $SAME_FAST_UID_ROOT, else 2.25 UUIDs)")
    p.add_argument("--tile-pixels", type=int, default=DEFAULT_TILE_PIXELS, metavar="N",
                   help="most pixels one forward pass sees; larger frames go in overlapping tiles")
    p.add_argument("--workers", type=int, default=-1, metavar="N",
                   help="reader and writer threads each, overlapping decoding and encoding with "
                        "the model (default: this process's CPUs, at most 8; 0: one file after "
                        "another)")
    p.add_argument("--queue-pixels", type=int, default=DEFAULT_QUEUE_PIXELS, metavar="N",
                   help="most pixels held between decoding and writing (bounds memory)")
    p.add_argument("--png-level", type=int, default=6, metavar="0-9",
                   help="zlib level of PNG outputs: 1 encodes about 3x faster than the default 6 "
                        "for files about 15 %% larger (lossless either way)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run as Ray tasks on the cluster at ADDRESS (e.g. auto, ray://host:10001)"
                        "; alone: start a local cluster (needs the 'ray' extra)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    fields = EnhanceConfig.__dataclass_fields__
    adaptation = from_args(args, ADAPT_FLAGS, AdaptConfig(mode="online"),
                           prefix=ADAPT_PREFIX).check(ADAPT_FLAGS)
    cfg = EnhanceConfig(**{k: v for k, v in vars(args).items() if k in fields},
                        adaptation=adaptation)
    if args.ray is not None:
        from same_fast.distributed import enhance_on_ray

        summary = enhance_on_ray(cfg, None if args.ray == "local" else args.ray)
    else:
        from same_fast.batch import enhance_files

        summary = enhance_files(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "files"}, indent=2))
    return 2 if summary["n_failed"] else 0
