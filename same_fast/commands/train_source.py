"""``same-fast train-source``: train the enhancer on clean scans degraded on the fly."""
from __future__ import annotations

import argparse
import json

from same_fast.errors import InputError
from same_fast.train.source import FRAMES, MODALITIES, SourceConfig

HELP = "train the source enhancer on degraded/clean pairs made on the fly"


class _Recipe(argparse.Action):
    """``--config FILE``: a recipe (JSON of SourceConfig fields, as train-source writes beside
    each checkpoint). Its values replace the defaults; flags after ``--config`` override it."""

    def __call__(self, parser, namespace, path, option_string=None):  # type: ignore[override]
        try:
            with open(path) as f:
                recipe = json.load(f)
        except (OSError, ValueError) as e:
            raise InputError(f"--config {path}: {e}") from None
        if not isinstance(recipe, dict):
            raise InputError(f"--config {path}: expected a JSON object of train-source settings")
        known = set(SourceConfig.__dataclass_fields__) - {"command"}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise InputError(f"--config {path}: unknown setting(s) {', '.join(unknown)}")
        for k, v in recipe.items():
            setattr(namespace, "net_recipe" if k == "net" else k, v)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SourceConfig(data="", out="")
    p.add_argument("--config", action=_Recipe, metavar="FILE",
                   help="a recipe file (JSON of these settings, e.g. "
                        "same_fast/weights/fundus-lite.recipe.json); flags after it override it")
    p.add_argument("-i", "--data",
                   help="folder with images/ [masks/] [fov/], or set names joined by commas "
                        "(DRIVE, HRF, FIVES, IDRiD, BUSI, CCAUS; skimage-retina: scikit-image's "
                        "CC0 retina); required unless --config gives it")
    p.add_argument("-o", "--out", help="checkpoint to write (.safetensors)")
    p.add_argument("--modality", choices=sorted(MODALITIES),
                   help="required unless --config gives it")
    p.add_argument("--preset", default=d.preset, choices=["lite", "paper"])
    p.add_argument("--net", action="append", default=[], metavar="KEY=VALUE",
                   help="SAMENet option overriding the preset (e.g. base=24; JSON values)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--size", type=int, default=d.size, help="training crop side (pixels)")
    p.add_argument("--load-size", type=int, default=d.load_size,
                   help="side of the full frames the crops come from (pixels)")
    p.add_argument("--frame", default=d.frame, choices=FRAMES,
                   help="crop: train on each photograph's centre square; pad: on the whole "
                        "photograph on a black square (its field-of-view rim included)")
    p.add_argument("--zoom", type=float, nargs=2, default=d.zoom, metavar=("LOW", "HIGH"),
                   help="crops are zoomed by U(LOW, HIGH) (1 1: pixels kept at their scale)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--block-lr", type=float, default=d.block_lr,
                   help="learning rate of the zero-started blocks (--net context=true, "
                        "field=true), which a short fine-tune otherwise barely moves (0: --lr)")
    p.add_argument("--lambda-s", type=float, default=d.lambda_s, help="structure loss weight")
    p.add_argument("--lambda-ssim", type=float, default=d.lambda_ssim,
                   help="weight of an optional (1 - SSIM) image loss")
    p.add_argument("--lambda-field", type=float, default=d.lambda_field,
                   help="weight of an L1 loss on the light field's own output (--net "
                        "field=true) against the target, which teaches it the gain and offset")
    p.add_argument("--init", default=None,
                   help="start from this checkpoint's weights (same preset and --net)")
    p.add_argument("--color-aug", type=float, default=d.color_aug,
                   help="per-channel gain exp(U(-a, a)) on clean images (palette augmentation)")
    p.add_argument("--gamma-aug", type=float, default=d.gamma_aug,
                   help="per-image gamma exp(U(-a, a)) on clean images (tone-curve augmentation)")
    p.add_argument("--channel-gamma-aug", type=float, default=d.channel_gamma_aug,
                   help="a gamma exp(U(-a, a)) per channel, drawn independently, on clean images "
                        "(how near each channel lies to its brightest part: 0 off)")
    p.add_argument("--vignette-aug", type=float, default=d.vignette_aug,
                   help="a radial falloff exp(k (r^2 - 1/2)) per channel, k ~ U(-a, a), on clean "
                        "images (how much a camera's light falls toward the rim: 0 off)")
    p.add_argument("--shading-aug", type=float, default=d.shading_aug,
                   help="smooth shading exp(a N(0, 1)) on a coarse grid on clean images (a "
                        "camera's own light falloff, kept in the target: 0 off)")
    p.add_argument("--contrast-aug", type=float, default=d.contrast_aug,
                   help="local contrast exp(U(-a, a)) about a blurred copy, on clean images (a "
                        "camera's own contrast, kept in the target: 0 off)")
    p.add_argument("--clean-prob", type=float, default=d.clean_prob,
                   help="probability that a sample is left undegraded (identity pairs: inputs "
                        "that need no enhancement come back unchanged)")
    p.add_argument("--camera-balance", type=float, default=d.camera_balance,
                   help="draw each set (camera) with probability ~ (its image count) ** B: 1 "
                        "every image alike (the largest camera dominates), 0 every camera alike")
    p.add_argument("--target", default=d.target, choices=["clean", "tone", "tone-blur"],
                   help="clean: undo every degradation; tone: keep the input's global colour "
                        "(the degradation's brightness/contrast/saturation stay in the target); "
                        "tone-blur: tone, and the blur stays too (the smooth families alone)")
    p.add_argument("--val-data", default=None, metavar="SPEC",
                   help="validate and choose the saved checkpoint on these images (another "
                        "camera, e.g. DRIVE) instead of the held-out split")
    p.add_argument("--ema", type=float, default=d.ema,
                   help="keep an exponential moving average of the weights with this decay "
                        "(e.g. 0.999) and validate and save it instead of the raw weights "
                        "(0: off)")
    p.add_argument("--degrade", default=None, help="degradation preset (default per modality)")
    p.add_argument("--holdout", type=float, default=d.holdout,
                   help="fraction of each set held out for validation")
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the hold-out split (default: --seed); keep a parent's split "
                        "when fine-tuning with a new --seed")
    p.add_argument("--device", default=d.device)
    p.add_argument("--resume", action="store_true", help="continue from <out>.last.safetensors")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: default)")
    p.add_argument("--max-minutes", type=float, default=d.max_minutes,
                   help="stop after this wall time (0: no limit)")
    p.add_argument("--max-images", type=int, default=d.max_images,
                   help="use at most this many images per set (0: all)")
    p.add_argument("--train-only", default=d.train_only, choices=["", "structure"],
                   help="structure: train only the structure decoder of --init's model (its "
                        "image output stays exactly the same; the checkpoint is chosen by "
                        "validation Dice on masks)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def _net_options(pairs: list[str]) -> dict:
    out = {}
    for kv in pairs:
        if "=" not in kv:
            raise InputError(f"--net expects KEY=VALUE, got '{kv}'")
        k, v = kv.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v.strip()  # bare strings such as norm=group
    return out


def run(args: argparse.Namespace) -> int:
    from same_fast.train.source import train_source

    for flag, key in (("-i/--data", "data"), ("-o/--out", "out"), ("--modality", "modality")):
        if not getattr(args, key, None):
            raise InputError(f"train-source needs {flag} (or a --config recipe that sets it)")
    fields = {f for f in SourceConfig.__dataclass_fields__ if f not in ("command", "net")}
    net = {**(getattr(args, "net_recipe", None) or {}), **_net_options(args.net)}
    cfg = SourceConfig(**{k: v for k, v in vars(args).items() if k in fields}, net=net)
    summary = train_source(cfg)
    print(json.dumps(summary, indent=2))
    return 0
