"""Training the pseudo-label picker: the IQA on graded degradations, the ISD VAE on real masks.

Data: folders of clean images with structure masks (``images/`` + ``masks/``, or BUSI-style
``<class>/images`` + ``<class>/masks``; several masks of one image, ``<stem>_mask*``, are OR-ed).
Shipped pickers use CC BY sets only: HRF + FIVES (fundus), BUSI + CCAUS (ultrasound).

IQA labels (SPEC section 4): clean images are *good*; the same images under a random mix of
corruptions are *usable* (severity 0.2-0.45) or *reject* (severity 0.6-1.0). The corruptions
(blur, haze, uneven illumination, low contrast, darkening, noise or speckle) are graded here
rather than taken from the source-training presets, because the assessor needs severity as a
single dial and must also see corruptions the enhancer was never trained on.
"""
from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from same_fast.errors import InputError
from same_fast.nn.iqa import IQANet
from same_fast.nn.isd import StructureDiscriminator, StructureVAE

GOOD, USABLE, REJECT = 0, 1, 2
SEVERITY = {USABLE: (0.2, 0.45), REJECT: (0.6, 1.0)}


@dataclass
class PickerTrainConfig:
    """``same-fast train-picker`` options (one field per flag)."""

    inputs: list[str] = field(default_factory=list)
    output: str = "picker.safetensors"
    modality: str = "fundus"
    load_size: int = 192        # images and masks are kept in memory at this square size
    iqa_size: int = 128         # IQA working resolution
    isd_size: int = 128         # ISD working resolution
    iqa_width: int = 16
    isd_latent: int = 32
    iqa_steps: int = 300
    isd_steps: int = 300
    # Weight of the VAE-GAN adversarial term (SPEC section 4, the paper's ISD); 0 = plain VAE.
    isd_adversarial: float = 0.0
    batch: int = 16
    lr: float = 1e-3
    percentile: float = 99.0    # ISD threshold: this percentile of training-mask scores
    max_images: int = 0         # 0 = all
    seed: int = 0
    device: str = "cpu"
    threads: int = 0            # torch intra-op threads (0 = torch's default)
    # A source checkpoint (or shipped name) whose held-out evaluation images must not be seen
    # by the picker either: its provenance's held_out list is excluded from the inputs.
    exclude_from: str = ""

    def check(self) -> None:
        """InputError, naming the flag, for a setting no training can use (before any data)."""
        if self.modality not in ("fundus", "ultrasound", "oct"):
            raise InputError(f"unknown modality '{self.modality}' (fundus, ultrasound, oct)")
        if not self.inputs:
            raise InputError("train-picker needs at least one input folder (-i)")
        if not (0.0 < self.percentile <= 100.0):
            raise InputError(f"--percentile must be in (0, 100], got {self.percentile}")
        if self.isd_adversarial < 0:
            raise InputError(f"--isd-adversarial must be >= 0, got {self.isd_adversarial}")


@dataclass
class StructureSet:
    """Clean images (N, C, S, S) in [0, 1] and their masks (N, 1, S, S) in {0, 1} (area-resized)."""

    images: torch.Tensor
    masks: torch.Tensor
    names: list[str]


def _mask_files(image: Path, mask_dir: Path) -> list[Path]:
    from same_fast.io import list_images, pair_by_name

    cands = [p for p in list_images(mask_dir, dicom=False)
             if p.stem == image.stem or p.stem.startswith(image.stem + "_")]
    if cands:
        return cands
    item = pair_by_name([image], mask_dir, required=False)[0]
    return [item.partner] if item.partner else []


def _pairs(folder: Path) -> list[tuple[Path, list[Path]]]:
    from same_fast.io import list_images

    if (folder / "images").is_dir():
        roots = [folder]
    else:
        roots = sorted(p for p in folder.iterdir() if (p / "images").is_dir())
    if not roots:
        raise InputError(f"{folder}: expected images/ and masks/ (or <class>/images, <class>/masks)")
    out = []
    for r in roots:
        for img in list_images(r / "images", dicom=False):
            masks = _mask_files(img, r / "masks") if (r / "masks").is_dir() else []
            if masks:
                out.append((img, masks))
    return out


def _letterbox(t: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, size, size): aspect-preserving area resize (long side = size), centred
    on black. Keeps structures at the scale they have in a whole-image view (a 3:2 HRF photo and
    a square DRIVE one then show vessels of the same width)."""
    c, h, w = t.shape
    f = size / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    r = F.interpolate(t[None].float(), size=(nh, nw), mode="area")[0]
    out = torch.zeros(c, size, size)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[:, y0:y0 + nh, x0:x0 + nw] = r
    return out


def held_out_stems(name_or_path: str) -> set[str]:
    """File stems a source checkpoint held out of training (its provenance's ``held_out``)."""
    from same_fast.checkpoint import read_metadata
    from same_fast.models import resolve

    meta = read_metadata(resolve(name_or_path))
    held = (meta.get("provenance") or {}).get("held_out") if isinstance(meta.get("provenance"),
                                                                         dict) else None
    if not held:
        raise InputError(f"{name_or_path}: its metadata lists no held-out images (provenance.held_out)")
    return {Path(h).stem for h in held}


def load_structure_set(folders: Sequence[str | Path], channels: int, size: int,
                       max_images: int = 0, exclude: set[str] | None = None) -> StructureSet:
    """Read every (image, masks) pair under ``folders``, resized to ``size`` x ``size``.

    ``exclude``: image file stems to leave out (e.g. a source model's held-out evaluation set).
    """
    from same_fast.io import load_mask, read_image, to_tensor

    imgs, masks, names = [], [], []
    pairs = [p for f in folders for p in _pairs(Path(f))]
    if exclude:
        pairs = [p for p in pairs if p[0].stem not in exclude]
    if max_images:
        pairs = pairs[:max_images]
    if not pairs:
        raise InputError(f"no image/mask pairs found under {', '.join(map(str, folders))}")
    for img_path, mask_paths in pairs:
        x = to_tensor(read_image(img_path))
        x = x[:3] if x.shape[0] >= 3 else x.expand(3, -1, -1)
        if channels == 1:
            x = x.mean(0, keepdim=True)
        m = np.zeros(x.shape[-2:], dtype=bool)
        for mp in mask_paths:
            mk = load_mask(mp)
            if mk.shape != m.shape:
                raise InputError(f"{mp}: mask size {mk.shape} differs from image {m.shape}")
            m |= mk
        imgs.append(_letterbox(x, size))
        masks.append(_letterbox(torch.from_numpy(m)[None], size))
        names.append(img_path.stem)
    return StructureSet(torch.stack(imgs), torch.stack(masks), names)


# --- graded corruptions -----------------------------------------------------------------------

def _gauss_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / max(sigma, 1e-3)) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflect padding; sigma in pixels."""
    if sigma < 0.3:
        return x
    k = _gauss_kernel(sigma, x.device)
    r = k.numel() // 2
    c = x.shape[1]
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    k = k[k.numel() // 2 - r: k.numel() // 2 + r + 1]
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                 groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                    groups=c)


def _smooth_field(shape: tuple[int, int], g: torch.Generator, device: torch.device) -> torch.Tensor:
    """A smooth random blob field (H, W) in [0, 1]: a Gaussian bump at a random place."""
    h, w = shape
    cy, cx = (torch.rand(2, generator=g) * 0.8 + 0.1).tolist()
    rad = float(torch.rand((), generator=g)) * 0.35 + 0.2
    yy = torch.linspace(0, 1, h, device=device)[:, None]
    xx = torch.linspace(0, 1, w, device=device)[None, :]
    return torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rad ** 2))


def corrupt(x: torch.Tensor, severity: torch.Tensor, g: torch.Generator, modality: str
            ) -> torch.Tensor:
    """Degrade each image of ``x`` (N, C, H, W) in [0, 1] by its ``severity`` (N,) in [0, 1].

    Each sample draws 1-3 corruptions; each one's strength scales with the severity. Severity 0
    returns the image with only a mild brightness jitter. Fundus backgrounds stay black.
    """
    out = []
    grey = modality != "fundus"
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        s = float(severity[i])
        fov = (xi.amax(1, keepdim=True) > 0.06).float() if not grey else torch.ones_like(xi[:, :1])
        jitter = 1.0 + (float(torch.rand((), generator=g)) - 0.5) * 0.12
        xi = (xi * jitter).clamp(0, 1)
        if s > 0:
            names = ["blur", "haze", "illum", "contrast", "dark", "noise"]
            k = int(torch.randint(1, 4, (), generator=g))
            pick = torch.randperm(len(names), generator=g)[:k].tolist()
            size = xi.shape[-1]
            for j in pick:
                op = names[j]
                if op == "blur":
                    xi = gaussian_blur(xi, s * 4.5 * size / 128)
                elif op == "haze":
                    a = 0.75 * s
                    tint = 0.85 + 0.15 * torch.rand(1, xi.shape[1], 1, 1, generator=g)
                    xi = xi * (1 - a) + a * tint.to(xi.device)
                elif op == "illum":
                    blob = _smooth_field(xi.shape[-2:], g, xi.device)
                    sign = 1.0 if float(torch.rand((), generator=g)) < 0.5 else -1.0
                    xi = xi * (1 - 0.9 * s * blob) if sign < 0 else xi + 0.8 * s * blob
                elif op == "contrast":
                    mean = xi.mean((2, 3), keepdim=True)
                    xi = mean + (xi - mean) * (1 - 0.8 * s)
                elif op == "dark":
                    xi = xi * (1 - 0.7 * s)
                else:
                    n = torch.randn(xi.shape, generator=g).to(xi.device)
                    xi = xi * (1 + 0.8 * s * n) if grey else xi + 0.2 * s * n
                xi = xi.clamp(0, 1)
        out.append(xi * fov)
    return torch.cat(out)


def random_view(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Random resized crop (40-100 % of each side) and flips of a batch, output ``size`` square.

    Wide zoom range: adaptation shows the picker patches of the teacher's output as well as
    whole images."""
    from same_fast.adapt.augment import random_window

    n, _, h, w = x.shape
    views = []
    for i in range(n):
        f = float(torch.rand((), generator=g)) * 0.6 + 0.4
        win = random_window(h, w, max(8, int(h * f)), max(8, int(w * f)), g)
        views.append(F.interpolate(win.apply(x[i:i + 1]), size=(size, size), mode="area"))
    return torch.cat(views)


def graded_batch(images: torch.Tensor, batch: int, size: int, g: torch.Generator, modality: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A balanced IQA batch: (x (B, C, size, size) in [0, 1], labels (B,) int64 in {0, 1, 2})."""
    idx = torch.randint(0, images.shape[0], (batch,), generator=g)
    x = random_view(images[idx], size, g)
    labels = torch.arange(batch) % 3
    labels = labels[torch.randperm(batch, generator=g)]
    sev = torch.zeros(batch)
    for c, (lo, hi) in SEVERITY.items():
        sel = labels == c
        sev[sel] = lo + (hi - lo) * torch.rand(int(sel.sum()), generator=g)
    return corrupt(x, sev, g, modality), labels


def soften(m: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Make binary masks look like sigmoid maps: random blur and a random peak below 1."""
    out = []
    for i in range(m.shape[0]):
        mi = gaussian_blur(m[i:i + 1], float(torch.rand((), generator=g)) * 1.2)
        out.append(mi * (0.7 + 0.3 * float(torch.rand((), generator=g))))
    return torch.cat(out)


# --- training ---------------------------------------------------------------------------------

Progress = Callable[[str, int, int, float], None]


def train_iqa(images: torch.Tensor, cfg: PickerTrainConfig, g: torch.Generator,
              progress: Progress | None = None) -> tuple[IQANet, list[float]]:
    """Train an IQANet on ``images`` (N, C, S, S) in [0, 1]; returns the model and per-step losses."""
    dev = torch.device(cfg.device)
    iqa = IQANet(images.shape[1], width=cfg.iqa_width, size=cfg.iqa_size).to(dev)
    opt = torch.optim.AdamW(iqa.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=max(cfg.iqa_steps, 1))
    losses = []
    iqa.train()
    for step in range(cfg.iqa_steps):
        x, y = graded_batch(images, cfg.batch, cfg.iqa_size, g, cfg.modality)
        loss = F.cross_entropy(iqa(x.to(dev)), y.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress:
            progress("iqa", step + 1, cfg.iqa_steps, losses[-1])
    iqa.eval()
    return iqa, losses


def train_isd(masks: torch.Tensor, cfg: PickerTrainConfig, g: torch.Generator,
              progress: Progress | None = None, stats: dict[str, Any] | None = None
              ) -> tuple[StructureVAE, list[float], float, list[float]]:
    """Train the structure VAE on ``masks`` (N, 1, S, S); returns (model, losses, threshold,
    calibration scores). The threshold is ``cfg.percentile`` of scores of augmented, softened
    training masks (4 views each).

    With ``cfg.isd_adversarial`` > 0 it is the paper's VAE-GAN: each step first updates a
    ``StructureDiscriminator`` (real masks against the VAE's reconstructions and its decoded prior
    samples), then adds ``isd_adversarial`` x the non-saturating generator loss on both to the
    VAE's reconstruction + KL loss. ``losses`` stay the reconstruction + KL part, comparable with
    a plain VAE; the discriminator's losses go to ``stats["disc_losses"]`` when ``stats`` is given.
    """
    dev = torch.device(cfg.device)
    if cfg.isd_adversarial < 0:  # train_isd is also called alone (tests, experiments)
        raise InputError(f"--isd-adversarial must be >= 0, got {cfg.isd_adversarial}")
    isd = StructureVAE(size=cfg.isd_size, latent=cfg.isd_latent).to(dev)
    opt = torch.optim.Adam(isd.parameters(), lr=cfg.lr)
    disc = opt_d = None
    if cfg.isd_adversarial > 0:
        disc = StructureDiscriminator(size=cfg.isd_size).to(dev)
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    losses, disc_losses = [], []
    isd.train()
    gd = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    for step in range(cfg.isd_steps):
        idx = torch.randint(0, masks.shape[0], (cfg.batch,), generator=g)
        m = soften(random_view(masks[idx], cfg.isd_size, g), g).to(dev)
        x, logits, mu, logvar = isd(m, gd)
        loss = isd.elbo_loss(x, logits, mu, logvar)
        total = loss
        if disc is not None and opt_d is not None:
            z = torch.randn(mu.shape, device=dev, dtype=mu.dtype, generator=gd)
            fake = torch.cat([torch.sigmoid(logits), torch.sigmoid(isd.decode(z))])
            d_real, d_fake = disc(x), disc(fake.detach())
            loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                      + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            disc_losses.append(float(loss_d.detach()))
            disc.requires_grad_(False)
            d_gen = disc(fake)
            disc.requires_grad_(True)
            total = loss + cfg.isd_adversarial * F.binary_cross_entropy_with_logits(
                d_gen, torch.ones_like(d_gen))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress:
            progress("isd", step + 1, cfg.isd_steps, losses[-1])
    isd.eval()
    if stats is not None:
        stats["disc_losses"] = disc_losses
    scores = []
    for _ in range(4):
        for i in range(0, masks.shape[0], cfg.batch):
            m = soften(random_view(masks[i:i + cfg.batch], cfg.isd_size, g), g).to(dev)
            scores += isd.score(m).tolist()
    thr = float(np.percentile(np.asarray(scores), cfg.percentile))
    return isd, losses, thr, scores


def train_picker(cfg: PickerTrainConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Train both assessors on ``cfg.inputs`` and write one checkpoint to ``cfg.output``.

    Returns a summary: data counts, first/last losses, the ISD threshold, held-out accuracy of
    the IQA on a fresh graded batch, and the wall time.
    """
    from same_fast.picker import save_picker

    cfg.check()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    channels = 3 if cfg.modality == "fundus" else 1
    exclude = held_out_stems(cfg.exclude_from) if cfg.exclude_from else set()
    data = load_structure_set(cfg.inputs, channels, cfg.load_size, cfg.max_images, exclude)
    iqa, iqa_losses = train_iqa(data.images, cfg, g, progress)
    isd_stats: dict[str, Any] = {}
    isd, isd_losses, thr, _ = train_isd(data.masks, cfg, g, progress, isd_stats)
    disc_losses = isd_stats["disc_losses"]
    # held-out check: fresh corruptions (a generator the training never used)
    gv = torch.Generator().manual_seed(cfg.seed + 1000)
    x, y = graded_batch(data.images, 60, cfg.iqa_size, gv, cfg.modality)
    with torch.no_grad():
        pred = iqa(x.to(cfg.device)).argmax(1).cpu()
    acc = float((pred == y).float().mean())
    summary = {
        "modality": cfg.modality, "images": len(data.names), "inputs": list(cfg.inputs),
        "excluded": sorted(exclude), "excluded_from": cfg.exclude_from or None,
        "iqa_loss_first": float(np.mean(iqa_losses[:10])) if iqa_losses else None,
        "iqa_loss_last": float(np.mean(iqa_losses[-10:])) if iqa_losses else None,
        "isd_loss_first": float(np.mean(isd_losses[:10])) if isd_losses else None,
        "isd_loss_last": float(np.mean(isd_losses[-10:])) if isd_losses else None,
        "isd_threshold": thr, "isd_percentile": cfg.percentile,
        "isd_adversarial": cfg.isd_adversarial,
        "isd_disc_loss_last": float(np.mean(disc_losses[-10:])) if disc_losses else None,
        "iqa_heldout_accuracy": acc, "seconds": time.perf_counter() - t0,
    }
    save_picker(cfg.output, iqa, isd, thr, cfg.modality, isd_percentile=cfg.percentile,
                training=summary,
                provenance={"command": "same-fast train-picker", "config": asdict(cfg),
                            "trained": _dt.datetime.now(_dt.timezone.utc).isoformat(
                                timespec="seconds")})
    return summary
