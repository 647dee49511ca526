"""Source training of SAMENet on clean scans degraded on the fly (SPEC sections 2 and 3).

Data: a folder with ``images/`` and optional ``masks/`` (structure) and ``fov/``, or names from
``same_fast.data.DATASETS`` joined by commas (``HRF,FIVES``), or ``skimage-retina`` (scikit-image's
CC0 retina photograph, shipped in its wheel; never held out, as a set of one image). Images are
loaded once, square-cropped (``frame="crop"``, the centre square) or padded to a square with black
(``frame="pad"``: the whole field of view with its rim, as the camera framed it) and resized so
that their side is ``load_size``; each step takes a
batch, degrades the whole frames on the device (so halo, hole and blur have the scale of the full
image), then takes random crops zoomed by U(``zoom``) (default 1.1-1.35) to ``size`` with
independent horizontal and vertical flips.

Clean-image augmentation (off by default): per-channel gain (``color_aug``), gamma (``gamma_aug``;
per channel, ``channel_gamma_aug``), a radial falloff per channel (``vignette_aug``),
a smooth grey shading (``shading_aug``), local contrast about a blurred copy (``contrast_aug``);
``clean_prob`` leaves a sample undegraded so that the pair is an identity; ``camera_balance``
draws each set (camera) with probability proportional to its image count to that power (1: every
image alike, so the largest camera dominates; 0: every camera alike).
Loss: L1(image, clean) + ``lambda_s`` x (BCE + Dice)(structure logits, mask); Adam.
A held-out split (``holdout`` fraction per set, chosen by name with the seed) is degraded once
with a fixed seed and scored every ``val_every`` steps under the paper protocol (SSIM/PSNR).
Writes ``out`` (the best validation checkpoint), ``<out>.last.safetensors`` (weights + Adam state
for ``--resume``), ``<out>.log.jsonl``, ``<out>.recipe.json`` (the settings, which
``train-source --config`` reads back) and ``<out>.curves.png`` (loss and validation curves, with
matplotlib installed).

``target="tone"`` keeps the input's global colour: the target is the clean image through the
degradation's global colour factors (``degrade_with_tone``), so the network undoes uneven light,
spots, haze and blur but never learns a camera's palette; ``val_data`` chooses the saved
checkpoint on another camera's images (e.g. DRIVE) instead of a held-out split.
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from same_fast import checkpoint
from same_fast.data import DATASETS, data_root, split_files
from same_fast.degrade import degrade_with_tone, get_preset
from same_fast.degrade.ops import blur
from same_fast.errors import CheckpointError, InputError
from same_fast.io import list_images, load, load_mask, to_tensor
from same_fast.models import save_model
from same_fast.nn import SAMENet, enhance
from same_fast.ops.ema import ema_

SKIMAGE_RETINA = "skimage-retina"  # data-spec name of scikit-image's CC0 retina photograph
TARGETS = ("clean", "tone", "tone-blur")
TRAIN_ONLY = ("", "structure")
#: SAMENet blocks that start at zero (``--init`` may add them; ``--block-lr`` sets their rate)
ZERO_STARTED = ("context", "field")
MODALITIES = {"fundus": (3, "fundus-shen2020"), "oct": (1, "gray"),
              "ultrasound": (1, "ultrasound-speckle")}


@dataclass
class SourceConfig:
    """One field per ``same-fast train-source`` flag."""

    data: str                      # folder or DATASETS names joined by commas
    out: str                       # checkpoint path (.safetensors)
    modality: str = "fundus"       # fundus | oct | ultrasound
    preset: str = "lite"           # SAMENet preset
    net: dict[str, Any] = field(default_factory=dict)  # SAMENet options overriding the preset
    steps: int = 2000
    batch: int = 4
    size: int = 256                # training crop (pixels)
    load_size: int = 512           # side of the full frames before zoom and crop
    frame: str = "crop"            # crop: the centre square of each photograph; pad: the whole
    #                                photograph on a black square (its FOV rim included)
    zoom: tuple[float, float] = (1.1, 1.35)  # crop zoom range; (1, 1) keeps the pixels as
    #                                loaded (speckle at its own scale: OCT, whose clean
    #                                reference keeps its speckle)
    lr: float = 2e-4
    block_lr: float = 0.0          # learning rate of the zero-started blocks (context, field),
    #                                which a short fine-tune otherwise barely moves (0: ``lr``)
    lambda_s: float = 0.1          # weight of the structure loss
    lambda_ssim: float = 0.0       # weight of the optional (1 - SSIM) image term (SPEC 3)
    lambda_field: float = 0.0      # weight of an L1 loss on the light field's own output (the
    #                                input after its gain and offset) against the target: the
    #                                field is taught the smooth gain and offset directly
    init: str | None = None        # start from this checkpoint's weights (fine-tuning)
    color_aug: float = 0.0         # per-channel gain exp(U(-a, a)) on the clean image (0: off)
    gamma_aug: float = 0.0         # per-image gamma exp(U(-a, a)) on the clean image (0: off)
    channel_gamma_aug: float = 0.0  # a gamma exp(U(-a, a)) per channel, drawn independently: how
    #                                close a channel's level lies to its brightest part differs
    #                                between cameras (a veil lifts each channel toward its max)
    vignette_aug: float = 0.0      # a radial falloff exp(k (r^2 - 1/2)) per channel, k ~ U(-a, a),
    #                                r the distance from the FOV's centre over its radius: how
    #                                much a camera's light falls toward the rim (a veil lifts the
    #                                rim; a camera with no falloff has a bright rim too)
    shading_aug: float = 0.0       # smooth shading exp(a N(0, 1)) on a 4x4 grid, bilinear, on the
    #                                clean image (a camera's own falloff, not a degradation: 0 off)
    contrast_aug: float = 0.0      # local contrast c = exp(U(-a, a)) about the clean image's own
    #                                blurred copy (sigma 1/32 of the side): a camera's own
    #                                sharpness and contrast, not a veil (0: off)
    clean_prob: float = 0.0        # probability that a sample is left undegraded (identity pair)
    camera_balance: float = 1.0    # a batch draws each set (camera) with probability ~ n ** b,
    #                                n its image count (1: every image alike; 0: every camera
    #                                alike; 0.5: between), then an image of it uniformly
    target: str = "clean"          # clean: undo everything; tone: keep the input's global colour
    #                                (the clean image through the degradation's global colour
    #                                factors is the target), so no camera palette is learnt;
    #                                tone-blur: tone, and the sample's blur kept too
    val_data: str | None = None    # validate (and choose the saved checkpoint) on this data spec
    #                                instead of the held-out split: another camera (DRIVE)
    ema: float = 0.0               # decay of an EMA of the weights that is validated and saved
    #                                (0: off, the raw weights are)
    degrade: str | None = None     # preset name; default per modality
    holdout: float = 0.15          # fraction of each set held out for validation (>= 1 image)
    split_seed: int | None = None  # seed of the hold-out split (None: ``seed``); fine-tuning
    #                                runs with a new ``seed`` keep their parent's split with it
    val_every: int = 250
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    threads: int = 0               # torch CPU threads (0: torch's default)
    max_minutes: float = 0.0       # stop (validate, save) after this wall time (0: no limit)
    max_images: int = 0            # cap per set (0: all), for quick runs and tests
    train_only: str = ""           # "structure": only the structure decoder learns (needs
    #                                ``init``); the image path keeps init's weights, so what
    #                                the model enhances does not change, and the saved
    #                                checkpoint is chosen by validation Dice (masks needed)
    progress: bool = True
    command: str = field(default_factory=lambda: " ".join(sys.argv))


@dataclass
class Sample:
    name: str
    image: torch.Tensor            # (C, S, S) uint8
    mask: torch.Tensor | None      # (1, S, S) bool structure
    fov: torch.Tensor | None       # (1, S, S) bool field of view


FRAMES = ("crop", "pad")


def _square(t: torch.Tensor, side: int, mode: str, frame: str = "crop") -> torch.Tensor:
    """Centre square crop (``frame="crop"``) or centred zero padding to a square
    (``frame="pad"``) of ``(C, H, W)``, then resize to ``side`` (area for images)."""
    h, w = t.shape[-2:]
    if frame == "pad":
        s = max(h, w)
        top, left = (s - h) // 2, (s - w) // 2
        t = F.pad(t.float(), (left, s - w - left, top, s - h - top))
    else:
        s = min(h, w)
        t = t[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s].float()
    if mode == "nearest":
        return F.interpolate(t[None], size=(side, side), mode="nearest")[0]
    return F.interpolate(t[None], size=(side, side), mode="area" if s > side else "bilinear")[0]


def estimate_fov(img01: torch.Tensor) -> torch.Tensor:
    """Fundus FOV from the image: smoothed max channel above 6 % of its 99th percentile."""
    m = img01.amax(0, keepdim=True)[None]
    m = F.avg_pool2d(m, 9, 1, 4)[0]
    thr = 0.06 * torch.quantile(m.flatten()[:: max(1, m.numel() // 100_000)], 0.99)
    return m > thr


def data_folders(spec: str) -> list[tuple[str, Path, list[Path], Path | None, Path | None]]:
    """Resolve a data spec into (set, root, image files, masks dir, fov dir) entries."""
    out = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if part == SKIMAGE_RETINA:
            from skimage import data as skdata

            f = Path(skdata.__file__).parent / "retina.jpg"
            if not f.is_file():
                raise InputError(f"{part}: {f} not found in this scikit-image install")
            out.append((part, f.parent, [f], None, None))
        elif part in DATASETS:
            root = data_root()
            if root is None:
                raise InputError(f"data set {part}: no data folder (set SAME_FAST_DATA)")
            d = DATASETS[part]
            base = root / str(d["root"])
            img_dirs = sorted(base.glob(str(d["images"])))
            for img_dir in img_dirs:
                sub = img_dir.parent
                masks = sub / "masks" if (sub / "masks").is_dir() else None
                fov = sub / str(d["fov"]) if d.get("fov") and (sub / str(d["fov"])).is_dir() else None
                files = list_images(img_dir, dicom=False)
                if d.get("pattern"):
                    files = [f for f in files if fnmatch.fnmatch(f.name, str(d["pattern"]))]
                if d.get("split"):
                    keep = split_files(str(d["split"]))
                    files = [f for f in files if f.name in keep]
                out.append((part, sub, files, masks, fov))
        else:
            base = Path(part).expanduser()
            if not (base / "images").is_dir():
                raise InputError(f"{base}: expected a folder with images/ (and optional masks/, "
                                 f"fov/) or a set name ({', '.join(DATASETS)})")
            masks = base / "masks" if (base / "masks").is_dir() else None
            fov = base / "fov" if (base / "fov").is_dir() else None
            out.append((base.name, base, list_images(base / "images", dicom=False), masks, fov))
    if not out:
        raise InputError(f"no training data in '{spec}'")
    return out


def _partner(folder: Path | None, stem: str) -> list[Path]:
    """Files in ``folder`` named after ``stem`` (``a.png``, ``a_mask.png``, ``a_mask_1.png``...)."""
    if folder is None:
        return []
    key = stem.lower()
    hits = []
    for p in list_images(folder, dicom=False):
        s = p.stem.lower()
        if s == key or (s.startswith(key) and s[len(key)] in "_-. "
                        and not s[len(key) + 1:len(key) + 2].isdigit()):
            hits.append(p)
    if not hits:  # DRIVE style: 01_test.tif <-> 01_manual1.gif / 01_test_mask.gif
        num = key.split("_")[0]
        hits = [p for p in list_images(folder, dicom=False) if p.stem.lower().split("_")[0] == num]
    return hits


def structure_mask(masks_dir: Path | None, stem: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The union of the structure masks named after ``stem`` (``a_mask.png``, ``a_mask_1.png``,
    DRIVE's ``01_manual1.gif``) that have the image's ``shape``; None when there is none."""
    files = _partner(masks_dir, stem)
    if not files:
        return None
    m = np.zeros(shape, bool)
    for mf in files:
        mm = load_mask(mf)
        if mm.shape == m.shape:
            m |= mm
    return m


def sample_name(set_name: str, path: Path) -> str:
    """A training image's name in checkpoint provenance (``train_images``, ``held_out``):
    ``SET/file``, and ``BUSI/class/file`` since BUSI's classes reuse file names."""
    return (f"{set_name}/{path.parent.parent.name}/{path.name}" if set_name == "BUSI"
            else f"{set_name}/{path.name}")


def load_samples(spec: str, channels: int, load_size: int, modality: str, max_images: int = 0,
                 frame: str = "crop") -> list[tuple[str, list[Sample]]]:
    """Load every set of ``spec`` into memory at ``load_size`` (``frame``: see ``_square``);
    returns [(set, samples)]."""
    if frame not in FRAMES:
        raise InputError(f"frame '{frame}': expected one of {', '.join(FRAMES)}")
    sets: dict[str, list[Sample]] = {}
    for set_name, _root, files, masks_dir, fov_dir in data_folders(spec):
        chosen = files[:max_images] if max_images else files
        for f in chosen:
            arr = load(f).frames[0]
            t = to_tensor(arr if arr.dtype == np.uint8 else (arr // 257).astype(np.uint8))
            t = t[:3]
            if channels == 1 and t.shape[0] == 3:
                t = t.mean(0, keepdim=True)  # grey content stored as RGB (BUSI, CCAUS)
            elif channels == 3 and t.shape[0] == 1:
                t = t.expand(3, -1, -1)
            img = _square(t, load_size, "area", frame)
            mask = None
            m = structure_mask(masks_dir, f.stem, arr.shape[:2])
            if m is not None:
                mask = _square(torch.from_numpy(m)[None], load_size, "nearest", frame) > 0.5
            fov = None
            ffiles = _partner(fov_dir, f.stem)
            if ffiles:
                fm = torch.from_numpy(load_mask(ffiles[0]))[None]
                fov = _square(fm, load_size, "nearest", frame) > 0.5
            elif modality == "fundus":
                fov = estimate_fov(img)
            sets.setdefault(set_name, []).append(Sample(
                sample_name(set_name, f), (img.clamp(0, 1) * 255).round().to(torch.uint8),
                mask, fov))
    return list(sets.items())


def holdout_seed(cfg: SourceConfig) -> int:
    """The hold-out split's seed: ``split_seed``, else the training ``seed``."""
    return cfg.seed if cfg.split_seed is None else cfg.split_seed


def split(sets: list[tuple[str, list[Sample]]], holdout: float, seed: int
          ) -> tuple[list[Sample], list[Sample]]:
    """Per set, hold out ``ceil(holdout * n)`` images (at least 1 when n > 1) chosen by seed."""
    train, val = [], []
    for _name, samples in sets:
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(samples), generator=g).tolist()
        k = min(len(samples) - 1, max(1, math.ceil(holdout * len(samples)))) if holdout > 0 else 0
        val += [samples[i] for i in sorted(order[:k])]
        train += [samples[i] for i in sorted(order[k:])]
    if not train:
        raise InputError("no training images left after the hold-out split")
    return train, val


def _stack(samples: list[Sample], device: torch.device
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.stack([s.image for s in samples]).to(device).float() / 255.0
    side = x.shape[-2:]
    mask = torch.stack([s.mask if s.mask is not None else torch.zeros(1, *side, dtype=torch.bool)
                        for s in samples]).to(device).float()
    has_mask = torch.tensor([s.mask is not None for s in samples], device=device).float()
    fov = torch.stack([s.fov if s.fov is not None else torch.ones(1, *side, dtype=torch.bool)
                       for s in samples]).to(device).float()
    return x, mask, fov, has_mask


def camera_weights(train: list[Sample], balance: float) -> torch.Tensor:
    """Per-image draw weights under which set (camera) ``c`` of ``n_c`` images is drawn with
    probability ``n_c ** balance / sum_k n_k ** balance`` (the set is the name's ``SET/`` part)."""
    if balance < 0 or balance > 1:
        raise InputError(f"camera balance {balance}: expected a value in [0, 1]")
    sets = [s.name.split("/", 1)[0] for s in train]
    count = Counter(sets)
    return torch.tensor([count[c] ** (balance - 1.0) for c in sets], dtype=torch.double)


def vignette(fov: torch.Tensor, channels: int, a: float, g: torch.Generator) -> torch.Tensor:
    """A camera's own radial falloff as a gain (N, C, H, W): ``exp(k (r^2 - 1/2))`` with ``k``
    drawn from U(-a, a) per sample and channel, ``r`` the distance from the lit pixels'
    centroid over the farthest lit pixel's (so a disc cut by the frame keeps its radius). A
    negative ``k`` darkens the rim, a positive one brightens it; 1/2 is ``r^2``'s mean over a
    disc, so a channel's level stays about where it was."""
    n, _, h, w = fov.shape
    f = (fov[:, :1] > 0.5).float().cpu()
    yy = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(n, 1, h, w)
    xx = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(n, 1, h, w)
    area = f.sum((2, 3), keepdim=True).clamp_min(1)
    cy, cx = (f * yy).sum((2, 3), keepdim=True) / area, (f * xx).sum((2, 3), keepdim=True) / area
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    r2 = d2 / (d2 * f).amax((2, 3), keepdim=True).clamp_min(1)
    k = (torch.rand(n, channels, 1, 1, generator=g) * 2 - 1) * a
    return torch.exp(k * (r2 - 0.5))


def make_batch(train: list[Sample], cfg: SourceConfig, g: torch.Generator, device: torch.device
               ) -> dict[str, torch.Tensor]:
    """One training batch: degrade full frames, zoom by U(cfg.zoom) into random crops, flips.

    The zoom is applied after degradation (a crop of side ``size / zoom`` resized to ``size``),
    which keeps the degradation at full-frame scale and costs a fraction of resizing the frames.
    """
    if cfg.camera_balance == 1.0:
        idx = torch.randint(len(train), (cfg.batch,), generator=g).tolist()
    else:
        idx = torch.multinomial(camera_weights(train, cfg.camera_balance), cfg.batch,
                                replacement=True, generator=g).tolist()
    x, mask, fov, has_mask = _stack([train[i] for i in idx], device)
    if cfg.color_aug > 0:
        # Vary the palette of the clean images themselves, so the network learns to undo the
        # degradation rather than to paint every image in the few training cameras' colours.
        a = cfg.color_aug
        gains = torch.exp((torch.rand(cfg.batch, x.shape[1], 1, 1, generator=g) * 2 - 1) * a)
        x = (x * gains.to(device)).clamp(0, 1)
    if cfg.gamma_aug > 0:
        # tone curve of the clean image (x ** gamma): cameras differ in it as much as in gain
        a = cfg.gamma_aug
        gamma = torch.exp((torch.rand(cfg.batch, 1, 1, 1, generator=g) * 2 - 1) * a)
        x = x.clamp_min(0).pow(gamma.to(device))
    if cfg.channel_gamma_aug > 0:
        # each channel's own tone curve: a camera whose blue lies near its brightest blue is no
        # veiled photograph (the veil lifts each channel toward its max; issue #20)
        a = cfg.channel_gamma_aug
        gamma = torch.exp((torch.rand(cfg.batch, x.shape[1], 1, 1, generator=g) * 2 - 1) * a)
        x = x.clamp_min(0).pow(gamma.to(device))
    if cfg.vignette_aug > 0:
        # a camera whose light does not fall toward the rim shows a rim as bright as a veil's
        # (DRIVE's green and blue; issue #20): the falloff is the camera's, in input and target
        x = (x * vignette(fov, x.shape[1], cfg.vignette_aug, g).to(device)).clamp(0, 1)
    if cfg.shading_aug > 0:
        # a camera's own smooth shading (light falloff toward the rim, a brighter side) is part
        # of the clean photograph: input and target both carry it, so the network learns that
        # shading alone is no degradation (a veil also takes contrast, shading keeps it)
        grid = torch.randn(cfg.batch, 1, 4, 4, generator=g) * cfg.shading_aug
        shade = F.interpolate(grid.to(device), size=x.shape[-2:], mode="bilinear",
                              align_corners=True)
        x = (x * torch.exp(shade)).clamp(0, 1)
    if cfg.contrast_aug > 0:
        # cameras differ in how much local contrast their photographs hold (optics, JPEG,
        # processing): input and target both carry it, so a low-contrast camera is not read as
        # a veil to lift, nor a crisp one as a photograph to soften
        a = cfg.contrast_aug
        c = torch.exp((torch.rand(cfg.batch, 1, 1, 1, generator=g) * 2 - 1) * a).to(device)
        sig = torch.full((cfg.batch,), x.shape[-1] / 32.0, device=device)
        # the blurred copy of the lit disc alone (normalised), so the black outside the FOV
        # does not darken its rim
        base = blur(x * fov, sig) / blur(fov, sig).clamp_min(1e-3)
        x = (base + c * (x - base)).clamp(0, 1)
    x = x * fov
    y, tone = degrade_with_tone(x, cfg.degrade or MODALITIES[cfg.modality][1], g, fov,
                                keep_blur=cfg.target == "tone-blur")
    if cfg.target in ("tone", "tone-blur"):
        # The input's global colour is kept: the network learns to undo the local families
        # (uneven light, spots, haze, blur) and never a camera's palette (issue #20); with
        # tone-blur the blur stays too, so it learns the smooth families alone (a coarse model
        # whose correction is carried to the full size as a local gain and offset)
        x = tone
    if cfg.clean_prob > 0:
        # identity pairs: an input that needs no enhancement should come back unchanged
        keep = (torch.rand(cfg.batch, generator=g) < cfg.clean_prob).view(-1, 1, 1, 1)
        y = torch.where(keep.to(device), x, y)
    side = x.shape[-1]
    zoom = cfg.zoom[0] + (cfg.zoom[1] - cfg.zoom[0]) * float(torch.rand(1, generator=g))
    c = min(side, max(1, int(round(cfg.size / zoom))))
    crops: dict[str, list[torch.Tensor]] = {"clean": [], "degraded": [], "mask": [], "fov": []}
    for i in range(cfg.batch):
        top = int(torch.randint(side - c + 1, (1,), generator=g))
        left = int(torch.randint(side - c + 1, (1,), generator=g))
        flip_h, flip_v = (torch.rand(2, generator=g) < 0.5).tolist()
        for key, t in (("clean", x), ("degraded", y), ("mask", mask), ("fov", fov)):
            t = t[i, :, top:top + c, left:left + c]
            if flip_h:
                t = t.flip(-1)
            if flip_v:
                t = t.flip(-2)
            crops[key].append(t)
    out = {}
    for key, v in crops.items():
        t = torch.stack(v)
        if c != cfg.size:
            smooth = key in ("clean", "degraded")
            t = F.interpolate(t, size=(cfg.size, cfg.size), mode="bilinear" if smooth else "nearest",
                              **({"align_corners": False} if smooth else {}))
        out[key] = t
    out["has_mask"] = has_mask
    return out


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-sample soft Dice loss ``(N,)`` on sigmoid probabilities."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)


def source_loss(model: SAMENet, batch: dict[str, torch.Tensor], lambda_s: float,
                lambda_ssim: float = 0.0, lambda_field: float = 0.0
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 on the image + lambda_s x (BCE + Dice) on structure (only samples that have masks)
    + lambda_ssim x (1 - SSIM) on the image in [0, 1] (11x11 Gaussian window, when > 0)
    + lambda_field x L1 of the light field's output against the target (when > 0: the best
    smooth gain and offset that take the input toward the target, which the image loss alone,
    passed back through the U-Net, does not teach it)."""
    x = batch["degraded"] * 2 - 1
    target = batch["clean"] * 2 - 1
    lit: list[torch.Tensor] = []  # the light field's output, as the U-Net received it
    hook = (model.field.register_forward_hook(lambda _m, _i, out: lit.append(out))
            if lambda_field > 0 and model.field is not None else None)
    image, logits = model(x)
    if hook is not None:
        hook.remove()
    l1 = (image - target).abs().mean()
    w = batch["has_mask"]
    bce = F.binary_cross_entropy_with_logits(logits, batch["mask"], reduction="none")
    bce = (bce.mean((1, 2, 3)) * w).sum() / w.sum().clamp_min(1)
    dice = (dice_loss(logits, batch["mask"]) * w).sum() / w.sum().clamp_min(1)
    loss = l1 + lambda_s * (bce + dice)
    parts = {"loss": loss, "l1": l1, "bce": bce, "dice": dice}
    if lambda_ssim > 0:
        from same_fast.ops import ssim_loss

        s_loss = ssim_loss((image + 1) * 0.5, batch["clean"], 1.0)
        loss = loss + lambda_ssim * s_loss
        parts.update(loss=loss, ssim_loss=s_loss)
    if lit:
        f_loss = (lit[0] - target).abs().mean()
        loss = loss + lambda_field * f_loss
        parts.update(loss=loss, field_l1=f_loss)
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def validation_set(val: list[Sample], cfg: SourceConfig, device: torch.device
                   ) -> dict[str, torch.Tensor] | None:
    """The held-out frames at ``load_size`` degraded once with a fixed seed (split seed + 1000,
    so runs that share a split are validated on the same pairs). With ``target="tone"`` the
    reference is what the run trains toward (the clean image through the degradation's global
    colour factors), so validation measures the restoration it asks for, not a tone that one
    image does not tell."""
    if not val:
        return None
    x, mask, fov, has_mask = _stack(val, device)
    x = x * fov
    g = torch.Generator().manual_seed(holdout_seed(cfg) + 1000)
    pairs = [degrade_with_tone(x[i:i + 1], cfg.degrade or MODALITIES[cfg.modality][1], g,
                               fov[i:i + 1], keep_blur=cfg.target == "tone-blur")
             for i in range(len(val))]
    y = torch.cat([p[0] for p in pairs])
    ref = torch.cat([p[1] for p in pairs]) if cfg.target in ("tone", "tone-blur") else x
    return {"clean": ref, "degraded": y, "fov": fov, "mask": mask, "has_mask": has_mask}


def structure_dice(model: SAMENet, vs: dict[str, torch.Tensor]) -> list[float]:
    """Per-frame Dice (threshold 0.5) of the structure head on the degraded validation frames
    that have masks (in frame order; empty when none has one)."""
    from same_fast.nn import pad_to_multiple

    idx = [i for i in range(vs["degraded"].shape[0]) if float(vs["has_mask"][i]) > 0]
    was_training = model.training
    model.eval()
    dice = []
    with torch.no_grad():
        for i in idx:
            xp, (h, w) = pad_to_multiple(vs["degraded"][i:i + 1] * 2 - 1, int(model.multiple))
            _, logits = model(xp)
            p = (logits[..., :h, :w] > 0).float()
            t = vs["mask"][i:i + 1]
            dice.append(float((2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)))
    model.train(was_training)
    return dice


def validate_structure(model: SAMENet, vs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean Dice (threshold 0.5) of the structure head on the degraded validation frames that
    have masks: ``{"val_dice": ...}``, or ``{}`` when none has one."""
    dice = structure_dice(model, vs)
    return {"val_dice": float(np.mean(dice))} if dice else {}


def validate(model: SAMENet, vs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean SSIM/PSNR (paper protocol) of degraded input and of the model's output."""
    from same_fast.eval import score_pair

    was_training = model.training
    out = torch.cat([enhance(model, vs["degraded"][i:i + 1], vs["fov"][i:i + 1])
                     for i in range(vs["degraded"].shape[0])])
    model.train(was_training)
    res: dict[str, list[float]] = {"val_ssim": [], "val_psnr": [], "val_ssim_input": [],
                                   "val_psnr_input": []}
    for i in range(out.shape[0]):
        gt = _u8(vs["clean"][i])
        fov = vs["fov"][i, 0].cpu().numpy() > 0.5
        s = score_pair(_u8(out[i]), gt, fov, "paper")
        s0 = score_pair(_u8(vs["degraded"][i]), gt, fov, "paper")
        res["val_ssim"].append(s.ssim)
        res["val_psnr"].append(min(s.psnr, 100.0))
        res["val_ssim_input"].append(s0.ssim)
        res["val_psnr_input"].append(min(s0.psnr, 100.0))
    return {k: float(np.mean(v)) for k, v in res.items()}


def _u8(t: torch.Tensor) -> np.ndarray:
    return (t.detach().clamp(0, 1).movedim(0, -1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def _last_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".safetensors") + ".last.safetensors")


def _save_last(path: Path, model: SAMENet, opt: torch.optim.Optimizer, step: int,
               meta: dict[str, Any], ema: SAMENet | None = None) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    params = [p for grp in opt.param_groups for p in grp["params"]]
    for i, p in enumerate(params):
        st = opt.state.get(p, {})
        for k in ("exp_avg", "exp_avg_sq"):
            if k in st:
                tensors[f"optim.{i}.{k}"] = st[k]
        if "step" in st:
            tensors[f"optim.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).view(1)
    checkpoint.save(path, tensors, {**meta, "step": step})


def _load_last(path: Path, model: SAMENet, opt: torch.optim.Optimizer,
               ema: SAMENet | None = None) -> tuple[int, dict]:
    tensors, meta = checkpoint.load(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        saved = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        # a run resumed with --ema that had none starts its average at the raw weights
        ema.load_state_dict(saved or model.state_dict())
    params = [p for grp in opt.param_groups for p in grp["params"]]
    for i, p in enumerate(params):
        if f"optim.{i}.exp_avg" in tensors:
            opt.state[p] = {
                "step": tensors[f"optim.{i}.step"].reshape(()).clone(),
                "exp_avg": tensors[f"optim.{i}.exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"optim.{i}.exp_avg_sq"].to(p.device),
            }
    return int(meta.get("step", 0)), meta


RECIPE_SKIP = ("out", "command", "resume", "progress")  # run-local, not part of a recipe


def recipe(cfg: SourceConfig) -> dict[str, Any]:
    """The settings that reproduce a run (``train-source --config`` reads them back)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RECIPE_SKIP}


def _sibling(out: Path, suffix: str) -> Path:
    return out.with_name(out.name.removesuffix(".safetensors") + suffix)


def plot_curves(log: Path, png: Path) -> bool:
    """Loss and validation SSIM/PSNR against step, from the run's JSONL log, as a PNG (needs
    matplotlib, the ``plot`` extra; returns False without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not recs:
        return False
    steps = [r["step"] for r in recs]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), constrained_layout=True)
    axes[0].plot(steps, [r["loss"] for r in recs], marker=".")
    axes[0].set(title="training loss (mean since last point)", xlabel="step", ylabel="loss")
    for ax, key, unit in ((axes[1], "ssim", "SSIM"), (axes[2], "psnr", "PSNR (dB)")):
        if f"val_{key}" in recs[0]:
            ax.plot(steps, [r[f"val_{key}"] for r in recs], marker=".", label="enhanced")
            ax.plot(steps, [r[f"val_{key}_input"] for r in recs], ls="--", label="degraded input")
            saved = [(r["step"], r[f"val_{key}"]) for r in recs if r.get("saved")]
            if saved:
                ax.scatter(*zip(*saved, strict=True), marker="o", facecolors="none", edgecolors="k",
                           label="saved (best so far)", zorder=3)
            ax.legend(fontsize=8)
        ax.set(title=f"validation {unit}", xlabel="step", ylabel=unit)
        ax.grid(alpha=0.3)
    axes[0].grid(alpha=0.3)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return True


def train_source(cfg: SourceConfig) -> dict[str, Any]:
    """Run source training; returns a summary (steps, losses, best validation)."""
    if cfg.modality not in MODALITIES:
        raise InputError(f"unknown modality '{cfg.modality}' (use {', '.join(MODALITIES)})")
    for name, v in (("steps", cfg.steps), ("batch", cfg.batch), ("size", cfg.size)):
        if v < 1:
            raise InputError(f"--{name} must be >= 1")
    if not 0.0 <= cfg.ema < 1.0:
        raise InputError(f"--ema must be in [0, 1), got {cfg.ema}")
    if not 0.0 <= cfg.camera_balance <= 1.0:
        raise InputError(f"--camera-balance must be in [0, 1], got {cfg.camera_balance}")
    if cfg.target not in TARGETS:
        raise InputError(f"--target must be one of {', '.join(TARGETS)}, got '{cfg.target}'")
    if cfg.target == "tone-blur" and not hasattr(
            get_preset(cfg.degrade or MODALITIES[cfg.modality][1]), "apply_with_tone"):
        raise InputError("--target tone-blur needs a fundus degradation (one with a tone target)")
    if cfg.train_only not in TRAIN_ONLY:
        raise InputError(f"--train-only must be 'structure' (or empty), got '{cfg.train_only}'")
    if cfg.train_only and not (cfg.init or cfg.resume):
        raise InputError("--train-only structure needs --init (the model whose image path it "
                         "keeps)")
    if not 0 < cfg.zoom[0] <= cfg.zoom[1]:
        raise InputError(f"--zoom needs 0 < LOW <= HIGH, got {cfg.zoom[0]} {cfg.zoom[1]}")
    if cfg.load_size < cfg.size:
        raise InputError(f"--load-size ({cfg.load_size}) must be >= --size ({cfg.size})")
    get_preset(cfg.degrade or MODALITIES[cfg.modality][1])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    channels = MODALITIES[cfg.modality][0]
    sets = load_samples(cfg.data, channels, cfg.load_size, cfg.modality, cfg.max_images,
                        cfg.frame)
    train, val = split(sets, cfg.holdout, holdout_seed(cfg))
    if cfg.val_data:
        # Selection on a camera the model does not train on: the held-out split (if any) stays
        # out of training, and the validation frames come from ``val_data``.
        val = [s for _name, group in load_samples(cfg.val_data, channels, cfg.load_size,
                                                  cfg.modality, frame=cfg.frame) for s in group]
    out = Path(cfg.out)
    last = _last_path(out)
    model = SAMENet(channels, cfg.preset, **cfg.net).to(device)
    if cfg.size % model.multiple:
        raise InputError(f"--size must be a multiple of {model.multiple} for the "
                         f"'{cfg.preset}' preset, got {cfg.size}")
    if cfg.train_only == "structure":
        # Everything but the structure decoder is frozen; its norms have no running statistics
        # (instance/group norm), so the image output stays exactly init's.
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("structure_decoder."))
    # foreach: one fused update over all parameters (the per-tensor loop costs more than the
    # small network's backward pass on a CPU)
    if cfg.block_lr < 0:
        raise InputError(f"--block-lr must be >= 0, got {cfg.block_lr}")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    is_block = [n.split(".")[0] in ZERO_STARTED for n, _ in trainable]
    if cfg.block_lr and not any(is_block):
        raise InputError("--block-lr sets the rate of a zero-started block, and this network "
                         "has none (add --net context=true or --net field=true)")
    if cfg.lambda_field < 0 or (cfg.lambda_field and model.field is None):
        raise InputError(f"--lambda-field must be >= 0 and needs --net field=true, got "
                         f"{cfg.lambda_field} on a network "
                         f"{'with' if model.field is not None else 'without'} a light field")
    in_block = [bool(cfg.block_lr) and b for b in is_block]
    groups = [{"params": [p for (_, p), b in zip(trainable, in_block, strict=True) if not b]}]
    if any(in_block):
        groups.append({"params": [p for (_, p), b in zip(trainable, in_block, strict=True) if b],
                       "lr": cfg.block_lr})
    opt = torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.999), foreach=True)
    start = 0
    best = -1.0
    ema: SAMENet | None = None
    if cfg.init and not cfg.resume:
        from same_fast.models import load_model

        init_model, init_meta = load_model(cfg.init)
        # A network without whole-image context or a light field may seed one with them: both
        # blocks start at zero, so the new network begins with the old one's output.
        added = [k for k in ZERO_STARTED if model.config[k] and not init_model.config.get(k, False)]
        dropped = [k for k in ZERO_STARTED if init_model.config.get(k, False) and not model.config[k]]
        if {**init_model.config, **{k: model.config[k] for k in added}} != model.config or dropped:
            raise CheckpointError(f"--init: {cfg.init} has config {init_model.config}, not "
                                  f"{model.config}")
        missing, _ = model.load_state_dict(init_model.state_dict(), strict=not added)
        assert all(k.split(".")[0] in added for k in missing), missing
    if cfg.ema:
        # The averaged weights are what is validated and saved (BasicSR's net_g_ema); dropout
        # is off in them, as in any evaluated model.
        ema = copy.deepcopy(model).eval().requires_grad_(False)
    if cfg.resume:
        if not last.is_file():
            raise CheckpointError(f"--resume: no {last} to resume from")
        prev_cfg = checkpoint.read_metadata(last).get("config")
        if prev_cfg != model.config:
            raise CheckpointError(f"--resume: {last} was trained with {prev_cfg}, not "
                                  f"{model.config} (same --preset and --net needed)")
        start, prev = _load_last(last, model, opt, ema)
        best = float(prev.get("best_val_ssim", -1.0))
    provenance = {
        "data": cfg.data, "train_images": [s.name for s in train],
        "held_out": [s.name for s in val], "val_data": cfg.val_data, "target": cfg.target,
        "degrade": cfg.degrade or MODALITIES[cfg.modality][1],
        "command": cfg.command, "config": dataclasses.asdict(cfg),
    }
    if cfg.init and not cfg.resume:
        provenance["init"] = {"path": str(cfg.init), "step": init_meta.get("step"),
                              "provenance": init_meta.get("provenance")}
    if cfg.resume:
        # A resumed run keeps where the run began and lists the commands before this one, so
        # the weights' history survives any number of --resume continuations.
        before = prev.get("provenance") if isinstance(prev.get("provenance"), dict) else {}
        if "init" in before:
            provenance["init"] = before["init"]
        provenance["resumed"] = [*before.get("resumed", []),
                                 {"step": start, "command": before.get("command")}]
    meta = {"modality": cfg.modality, "provenance": provenance,
            "training": {"size": cfg.size, "load_size": cfg.load_size, "frame": cfg.frame,
                         "batch": cfg.batch,
                         "lr": cfg.lr, "lambda_s": cfg.lambda_s, "lambda_ssim": cfg.lambda_ssim,
                         "lambda_field": cfg.lambda_field,
                         "init": cfg.init, "color_aug": cfg.color_aug,
                         "gamma_aug": cfg.gamma_aug, "channel_gamma_aug": cfg.channel_gamma_aug,
                         "vignette_aug": cfg.vignette_aug, "shading_aug": cfg.shading_aug,
                         "contrast_aug": cfg.contrast_aug,
                         "clean_prob": cfg.clean_prob, "camera_balance": cfg.camera_balance,
                         "ema": cfg.ema, "target": cfg.target, "val_data": cfg.val_data}}
    vs = validation_set(val, cfg, device)
    g = torch.Generator().manual_seed(cfg.seed + start)  # resumed runs continue a fresh stream
    log = _sibling(out, ".log.jsonl")
    log.parent.mkdir(parents=True, exist_ok=True)
    _sibling(out, ".recipe.json").write_text(json.dumps(recipe(cfg), indent=2) + "\n")
    curves = _sibling(out, ".curves.png")
    from same_fast.progress import progress_bar

    bar = progress_bar(enabled=cfg.progress, total=cfg.steps, initial=start,
                       desc="train-source", unit="step")
    model.train()
    learnt = [p for p in model.parameters() if p.requires_grad]
    # the EMA averages only what learns: a frozen weight averaged with itself could move by a
    # rounding (--train-only structure promises the image path unchanged)
    ema_learnt = [e for e, m in zip(ema.parameters(), model.parameters(), strict=True)
                  if m.requires_grad] if ema is not None else []
    losses: list[float] = []
    first_losses: list[float] = []
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"out": str(out), "start_step": start}
    with open(log, "a") as logf:
        for step in range(start + 1, cfg.steps + 1):
            batch = make_batch(train, cfg, g, device)
            loss, parts = source_loss(model, batch, cfg.lambda_s, cfg.lambda_ssim,
                                      cfg.lambda_field)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema_(ema_learnt, learnt, cfg.ema)
            losses.append(parts["loss"])
            if len(first_losses) < 20:
                first_losses.append(parts["loss"])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss']:.4f}")
            out_of_time = cfg.max_minutes > 0 and time.perf_counter() - t0 > 60 * cfg.max_minutes
            if step % cfg.val_every == 0 or step == cfg.steps or out_of_time:
                rec: dict[str, Any] = {"step": step, "time_s": round(time.perf_counter() - t0, 1),
                                       "loss": float(np.mean(losses[-cfg.val_every:]))}
                saved_model = ema if ema is not None else model
                if vs is not None:
                    rec.update(validate(saved_model, vs))
                    rec.update(validate_structure(saved_model, vs))
                score = rec.get("val_dice" if cfg.train_only else "val_ssim", -rec["loss"])
                meta_now = {**meta, "step": step, "validation": rec}
                if score > best:
                    best = score
                    save_model(out, saved_model, **meta_now)
                    rec["saved"] = True
                _save_last(last, model, opt, step, {
                    **meta_now, "best_val_ssim": best, "config": model.config,
                    "architecture": "SAMENet", "preset": model.config["preset"],
                    "channels": model.in_channels, "value_range": [-1, 1],
                    "multiple": model.multiple}, ema)
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                plot_curves(log, curves)
                if bar is not None:
                    bar.write(json.dumps(rec))
            if out_of_time:
                summary["stopped_at"] = step
                break
    if bar is not None:
        bar.close()
    summary.update(steps=summary.get("stopped_at", cfg.steps),
                   first_loss=float(np.mean(first_losses)) if first_losses else None,
                   last_loss=float(np.mean(losses[-20:])) if losses else None,
                   best=best, log=str(log), train_images=len(train), held_out=len(val),
                   recipe=str(_sibling(out, ".recipe.json")),
                   curves=str(curves) if curves.is_file() else None)
    return summary
