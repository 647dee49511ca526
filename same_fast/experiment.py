"""Evaluation harness of SAME (SPEC section 6): does adaptation help on a shift the source never saw?

``run_experiment(name, out_dir, quick)`` runs one named experiment and writes ``results.json``,
``results.md`` (a Markdown table) and a PNG grid of examples. Experiments:

- ``drive-cataract``: the 20 DRIVE test images at 256 x 256, degraded with ``fundus-cataract``
  (``fundus-lite`` was trained on ``fundus-shen2020`` only); downstream vessel segmentation by a
  frozen small U-Net trained here on clean HRF + FIVES images (CC BY).
- ``busi-speckle``: BUSI images held out of source training (by the source model's recorded
  split when present), degraded with ultrasound speckle stronger and coarser than the training
  range.

Compared on the same images: degraded input, CLAHE, source model, mean teacher without picker,
SAME offline, SAME online. Reported: paper-protocol SSIM / PSNR (256, 8-bit, x FOV, 7x7
uniform SSIM, channel mean), the same inside the FOV only, the per-image negative-adaptation
rate (SSIM below the source model's) and how many of those the picker would have rejected, the
picker's acceptance during adaptation and its AUROC separating real pseudo-labels from planted
implausible ones (teacher outputs on noise-flooded, patch-scrambled and washed-out inputs), and
vessel Dice / IoU / F1 / kappa pooled over FOV pixels.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from same_fast.errors import InputError

METHODS = ("degraded", "clahe", "source", "mean_teacher", "same_offline", "same_online")
ADAPTED = ("mean_teacher", "same_offline", "same_online")
# the re-degraded student view (SPEC 5, beyond the reference): without and with the picker,
# and online (what ``serve --adapt online --adapt-redegrade PRESET`` does to a stream)
EXTRA = ("mean_teacher_redegrade", "same_redegrade", "same_online_redegrade")


@dataclass
class ExperimentConfig:
    """One experiment's settings (``same-fast eval --experiment NAME`` uses the defaults;
    ``quick`` shrinks images, steps and the segmenter for a smoke run)."""

    name: str = "drive-cataract"
    dataset: str = "DRIVE-test"
    modality: str = "fundus"
    model: str = "fundus-lite"
    picker: str = "fundus-picker"
    preset: str = "fundus-cataract"
    preset_overrides: dict[str, Any] = field(default_factory=dict)
    size: int = 256            # evaluation resolution (the paper protocol's)
    view: int = 128            # adaptation view side
    steps: int = 300           # offline adaptation steps (mean teacher and SAME alike)
    batch: int = 4
    lr: float = 2e-4
    online_every: int = 1
    online_steps_per_update: int = 2
    online_buffer: int = 8
    online_on_collapse: str = "reset"
    n_images: int = 0          # 0 = all
    seed: int = 0
    downstream: bool = True
    segmenter_steps: int = 300
    segmenter: str = ""        # path of a cached vessel segmenter ("" = <out>/vessel_segmenter)
    examples: int = 3
    redegrade: bool = True     # also run SAME / mean teacher with the re-degraded student view
    redegrade_strength: float = 0.6
    redegrade_preset: str = ""  # "" = the modality's default (AdaptConfig.redegrade_preset)
    schedule: str = "constant"  # offline learning-rate schedule: constant or paper
    ema: float = 0.995
    w_entropy: float = 1.0
    w_struct: float = 0.1
    serve: str = "student"      # the offline arms' output model: student or teacher
    arms: str = ""              # comma-separated adapted arms to run ("" = all), for exploring
    picker_soft: bool = False   # soft picker weights (PickerConfig.soft)
    picker_p_good: float = 0.0  # IQA acceptance threshold (0 = the picker's default)
    picker_calibrate: float = 0.0  # PickerConfig.calibrate: also accept the target's best share
    # a clinic's ungradable share: this fraction of the degraded images (a seeded draw) gets a
    # planted corruption on top (``_planted``: noise, scramble or washout), as real collections
    # hold images no enhancer can rescue; tables then add scores over the usable images alone
    ungradable: float = 0.0
    ungradable_kind: str = "noise"


EXPERIMENTS: dict[str, dict[str, Any]] = {
    "drive-cataract": {},
    # A shift fully outside fundus-lite's training: none of the fundus presets adds noise. The
    # re-degraded student view adds the same kind of noise again (Noisier2Noise: learning to map
    # a noisier view to the teacher's output on the original teaches denoising without clean
    # images).
    "drive-noise": dict(preset="sensor-noise", redegrade_preset="sensor-noise",
                        redegrade_strength=1.0),
    # The same, in a clinic where some images are beyond rescue: 30 % of them get heavy noise
    # on top (the picker's planted "noise" family). A teacher's outputs on those are the
    # pseudo-labels the picker exists to reject; the mean teacher learns from them too. The
    # picker's calibration share (0.7) and the steps (600) were chosen on the validation split.
    "drive-noise-mixed": dict(preset="sensor-noise", redegrade_preset="sensor-noise",
                              redegrade_strength=1.0, ungradable=0.3, ungradable_kind="noise",
                              picker_calibrate=0.7, steps=600),
    "busi-speckle": dict(
        dataset="BUSI", modality="ultrasound", model="ultrasound-lite",
        picker="ultrasound-picker", preset="ultrasound-speckle", downstream=False,
        # outside the source training range (40-60 dB, grain 0.7-2, strength 0.5-1, contrast
        # 0.6-1.1): a narrower dynamic range, coarser speckle, lower contrast
        preset_overrides=dict(dynamic_range_db=(32.0, 38.0), grain_sigma=(2.2, 3.0),
                              strength=(0.9, 1.0), contrast=(0.5, 0.6), p_blur=0.0)),
}


# --- data --------------------------------------------------------------------------------------

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
    held = _heldout_names(model_meta or {})
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


def _heldout_names(meta: dict[str, Any]) -> set[str]:
    prov = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
    for src in (meta, prov or {}):
        for key in ("held_out", "validation_names", "val_names", "holdout_names", "heldout"):
            v = src.get(key)
            if isinstance(v, list) and v:
                return {Path(str(s)).stem for s in v if "BUSI" in str(s) or "/" not in str(s)}
    return set()


# --- the frozen downstream vessel segmenter ----------------------------------------------------

class VesselUNet(nn.Module):
    """A small U-Net for vessel maps: (N, 3, H, W) in [0, 1] (H, W multiples of 8) -> logits
    (N, 1, H, W)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]

        def block(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(True),
                                 nn.Conv2d(b, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(True))

        self.enc = nn.ModuleList([block(3, w[0]), block(w[0], w[1]), block(w[1], w[2]),
                                  block(w[2], w[3])])
        self.up = nn.ModuleList([nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2)
                                 for i in range(3)])
        self.dec = nn.ModuleList([block(2 * w[i], w[i]) for i in range(3)])
        self.head = nn.Conv2d(w[0], 1, 1)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        feats = []
        h = x01 * 2 - 1
        for i, e in enumerate(self.enc):
            h = e(h if i == 0 else F.max_pool2d(h, 2))
            feats.append(h)
        for i in (2, 1, 0):
            h = self.dec[i](torch.cat([feats[i], self.up[i](h)], 1))
        return self.head(h)


def train_segmenter(steps: int, size: int, seed: int, batch: int = 8, crop: int = 128
                    ) -> tuple[VesselUNet, dict[str, Any]]:
    """Train the vessel U-Net on clean HRF + FIVES (CC BY), letterboxed to ``size`` so vessels
    have the width they have in DRIVE at that size; random ``crop`` patches, flips; BCE + Dice."""
    from same_fast.data import DATASETS, require_data_root
    from same_fast.train.picker import load_structure_set, random_view

    root = require_data_root()
    data = load_structure_set([root / str(DATASETS[s]["root"]) for s in ("HRF", "FIVES")], 3, size)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = VesselUNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    pair = torch.cat([data.images, data.masks], 1)
    losses = []
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, pair.shape[0], (batch,), generator=g)
        # native-scale patches of the letterboxed images (no zoom: vessel width as in DRIVE)
        v = _patches(pair[idx], crop, g) if crop < size else random_view(pair[idx], size, g)
        x, m = v[:, :3], v[:, 3:]
        logits = net(x)
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * m).sum() + 1) / (p.sum() + m.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, m) + dice
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    net.eval()
    return net, {"steps": steps, "images": len(data.names), "train_sets": ["HRF", "FIVES"],
                 "loss_first": float(np.mean(losses[:10])) if losses else None,
                 "loss_last": float(np.mean(losses[-10:])) if losses else None}


def _patches(x: torch.Tensor, crop: int, g: torch.Generator) -> torch.Tensor:
    out = []
    for i in range(x.shape[0]):
        y0 = int(torch.randint(0, x.shape[-2] - crop + 1, (), generator=g))
        x0 = int(torch.randint(0, x.shape[-1] - crop + 1, (), generator=g))
        v = x[i:i + 1, :, y0:y0 + crop, x0:x0 + crop]
        if float(torch.rand((), generator=g)) < 0.5:
            v = v.flip(-1)
        if float(torch.rand((), generator=g)) < 0.5:
            v = v.flip(-2)
        out.append(v)
    return torch.cat(out)


def _segmenter(cfg: ExperimentConfig, out: Path) -> tuple[VesselUNet, dict[str, Any]]:
    from same_fast import checkpoint

    path = Path(cfg.segmenter) if cfg.segmenter else out / "vessel_segmenter.safetensors"
    if path.is_file():
        tensors, meta = checkpoint.load(path)
        net = VesselUNet()
        net.load_state_dict(tensors)
        return net.eval(), {**meta.get("training", {}), "cached": str(path)}
    net, info = train_segmenter(cfg.segmenter_steps, cfg.size, cfg.seed)
    checkpoint.save(path, net.state_dict(), {"architecture": "VesselUNet", "training": info})
    return net, info


# --- metrics -----------------------------------------------------------------------------------

def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve of scores where ``pos`` should rank above ``neg`` (ties = 1/2)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def _u8(t: torch.Tensor) -> np.ndarray:
    from same_fast.io import to_array

    return to_array(t.cpu())


def image_scores(pred: torch.Tensor, clean: torch.Tensor, fov: torch.Tensor | None
                 ) -> list[dict[str, float]]:
    """Per image: paper-protocol ssim/psnr and the same inside the FOV only (ssim_fov, psnr_fov)."""
    from same_fast.eval.protocol import score_pair

    out = []
    for i in range(pred.shape[0]):
        m = None if fov is None else fov[i, 0].cpu().numpy() > 0.5
        p, g = _u8(pred[i]), _u8(clean[i])
        a = score_pair(p, g, m, "paper")
        b = score_pair(p, g, m, "native") if m is not None else a
        out.append({"ssim": a.ssim, "psnr": a.psnr, "ssim_fov": b.ssim, "psnr_fov": b.psnr})
    return out


def _planted(x01: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Heavily corrupted inputs whose teacher outputs are implausible pseudo-labels."""
    from same_fast.train.picker import gaussian_blur

    n, c, h, w = x01.shape
    noise = (x01 + 0.35 * torch.randn(x01.shape, generator=g)).clamp(0, 1)
    p = 16
    tiles = x01[..., :h // p * p, :w // p * p].unfold(2, p, p).unfold(3, p, p)
    th, tw = tiles.shape[2], tiles.shape[3]
    flat = tiles.reshape(n, c, th * tw, p, p)
    perm = torch.randperm(th * tw, generator=g)
    scr = flat[:, :, perm].reshape(n, c, th, tw, p, p).permute(0, 1, 2, 4, 3, 5)
    scrambled = x01.clone()
    scrambled[..., :th * p, :tw * p] = scr.reshape(n, c, th * p, tw * p)
    washed = (0.3 * gaussian_blur(x01, 8.0 * h / 256) + 0.7 * 0.8).clamp(0, 1)
    return {"noise": noise, "scramble": scrambled, "washout": washed}


def picker_separation(model: nn.Module, picker: Any, degraded: torch.Tensor, seed: int,
                      teacher: tuple[torch.Tensor, torch.Tensor] | None = None,
                      ungradable: list[int] | None = None) -> dict[str, Any]:
    """How well ``picker`` tells the teacher's real pseudo-labels from implausible ones.

    The positives are ``model``'s outputs on ``degraded`` (N, C, H, W) in [0, 1] (``teacher``:
    those outputs, when already computed); the negatives its outputs on the three planted
    corruptions of the same images (``_planted``, seeded by ``seed``). Returns ``auroc`` per
    family, over all (``all``) and for each assessor alone (``iqa_only``, ``isd_only``),
    ``accept_planted``, the picker's acceptance of each family, and ``accept_real``, its
    acceptance of the real pseudo-labels.
    ``ungradable``: indices of images that are themselves beyond rescue (``drive-noise-mixed``):
    their real pseudo-labels count as a negative family (``ungradable``) instead of positives,
    and ``accept_real`` covers the usable ones.
    """
    y_t, s_t = teacher if teacher is not None else _teacher(model, degraded)
    bad = sorted(set(ungradable or []))
    good = [i for i in range(len(degraded)) if i not in bad]
    real = picker.scores(y_t[good], s_t[good])
    planted = _planted(degraded[good], torch.Generator().manual_seed(seed))
    pos = real["plausibility"].numpy()
    res: dict[str, Any] = {"auroc": {}, "accept_planted": {},
                           "accept_real": float(picker.weights_from_scores(real).mean())}
    outs = {fam: _teacher(model, xin) for fam, xin in planted.items()}
    if bad:
        outs["ungradable"] = (y_t[bad], s_t[bad])
    negs = []
    for fam, (yp, sp) in outs.items():
        sc = picker.scores(yp, sp)
        negs.append(sc["plausibility"].numpy())
        res["auroc"][fam] = auroc(pos, negs[-1])
        res["accept_planted"][fam] = float(picker.weights_from_scores(sc).mean())
    res["auroc"]["all"] = auroc(pos, np.concatenate(negs))
    old = picker.config
    try:
        for part in ("iqa", "isd"):
            picker.config = dataclasses.replace(old, use_iqa=part == "iqa", use_isd=part == "isd")
            solo_pos = picker.scores(y_t[good], s_t[good])["plausibility"].numpy()
            solo_neg = np.concatenate([picker.scores(*o)["plausibility"].numpy()
                                       for o in outs.values()])
            res["auroc"][f"{part}_only"] = auroc(solo_pos, solo_neg)
    finally:
        picker.config = old
    return res


@torch.no_grad()
def _teacher(model: nn.Module, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from same_fast.nn import pad_to_multiple

    model.eval()
    xp, (h, w) = pad_to_multiple(x01 * 2 - 1, int(getattr(model, "multiple", 1)))
    y, s = model(xp)
    return y[..., :h, :w], s[..., :h, :w]


def _enhance(model: nn.Module, x01: torch.Tensor, fov: torch.Tensor | None, bs: int = 4
             ) -> torch.Tensor:
    from same_fast.nn import enhance

    outs = []
    for i in range(0, x01.shape[0], bs):
        outs.append(enhance(model, x01[i:i + bs], None if fov is None else fov[i:i + bs]))
    return torch.cat(outs)


@torch.no_grad()
def _segment(net: VesselUNet, x01: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.sigmoid(net(x01[i:i + 4])) for i in range(0, x01.shape[0], 4)])


# --- the experiment ----------------------------------------------------------------------------

def make_config(name: str, quick: bool = False, **overrides: Any) -> ExperimentConfig:
    if name not in EXPERIMENTS:
        raise InputError(f"unknown experiment '{name}' (choose from {', '.join(EXPERIMENTS)})")
    cfg = ExperimentConfig(name=name, **EXPERIMENTS[name])
    if quick:
        cfg = dataclasses.replace(cfg, n_images=4, steps=4, size=128, view=64,
                                  online_steps_per_update=1, segmenter_steps=20, examples=1)
    return dataclasses.replace(cfg, **overrides)


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
        bad = _planted(degraded[idx], g)[cfg.ungradable_kind]
        if fov is not None:
            bad = bad * fov[idx]
        degraded[idx] = bad
        data["ungradable"] = idx
    return data, degraded


def run_experiment(name: str, out_dir: str | Path | None = None, quick: bool = False,
                   progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Run experiment ``name``; write results.json, results.md and examples.png to ``out_dir``
    (default ``experiments/<name>``). Returns the results dict (every number)."""
    from same_fast.adapt.loop import AdaptConfig, adapt_offline
    from same_fast.adapt.online import OnlineAdapter, enhance_adaptive
    from same_fast.adapt.safety import SafetyConfig
    from same_fast.baselines import clahe
    from same_fast.models import load_model
    from same_fast.picker import PickerConfig, load_picker, picker_config_dict

    cfg = make_config(name, quick, **overrides)
    out = Path(out_dir) if out_dir else Path("experiments") / name
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    log = print if progress else (lambda *a, **k: None)
    model, meta = load_model(cfg.model)
    picker = load_picker(cfg.picker, config=PickerConfig(
        soft=cfg.picker_soft, p_good=cfg.picker_p_good if cfg.picker_p_good > 0 else None,
        calibrate=cfg.picker_calibrate))
    data, degraded = experiment_images(cfg, meta)
    clean, fov = data["clean"], data["fov"]
    frames = list(degraded)
    fovs = None if fov is None else list(fov)
    outputs: dict[str, torch.Tensor] = {"degraded": degraded}
    timings: dict[str, float] = {}

    def timed(key: str, fn):
        t0 = time.perf_counter()
        r = fn()
        timings[key] = time.perf_counter() - t0
        log(f"[{name}] {key}: {timings[key]:.1f} s")
        return r

    outputs["clahe"] = timed("clahe", lambda: clahe(degraded, fov=fov))
    outputs["source"] = timed("source", lambda: _enhance(model, degraded, fov))
    acfg = AdaptConfig(steps=cfg.steps, batch=cfg.batch, size=cfg.view, lr=cfg.lr,
                       seed=cfg.seed, modality=cfg.modality, schedule=cfg.schedule, ema=cfg.ema,
                       w_entropy=cfg.w_entropy, w_struct=cfg.w_struct, serve=cfg.serve,
                       redegrade_preset=cfg.redegrade_preset)
    arms = {a.strip() for a in cfg.arms.split(",") if a.strip()} or set(ADAPTED + EXTRA)
    unknown = arms - set(ADAPTED + EXTRA)
    if unknown:
        raise InputError(f"unknown arms {sorted(unknown)} (choose from {ADAPTED + EXTRA})")
    runs: dict[str, Any] = {}

    def offline(arm: str, pick: Any, c: Any) -> None:
        if arm in arms:
            if pick is not None:  # each arm calibrates on its own teacher's outputs
                pick.reset_calibration()
            r = runs[arm] = timed(arm, lambda: adapt_offline(model, frames, pick, c, fovs))
            outputs[arm] = _enhance(r.student if cfg.serve == "student" else r.teacher,
                                    degraded, fov)

    offline("mean_teacher", None, acfg)
    offline("same_offline", picker, acfg)
    if cfg.redegrade:
        rcfg = dataclasses.replace(acfg, redegrade=True,
                                   redegrade_strength=cfg.redegrade_strength)
        offline("mean_teacher_redegrade", None, rcfg)
        offline("same_redegrade", picker, rcfg)
    ocfg = dataclasses.replace(acfg, mode="online", every=cfg.online_every,
                               steps_per_update=cfg.online_steps_per_update,
                               buffer=cfg.online_buffer)
    adapters: dict[str, OnlineAdapter] = {}

    def online(arm: str, c: Any) -> None:
        if arm not in arms:
            return
        picker.reset_calibration()
        # reset (not freeze) on collapse: a frozen student keeps the weights that collapsed
        ad = adapters[arm] = OnlineAdapter(model, picker, c,
                                           SafetyConfig(action=cfg.online_on_collapse))

        def run() -> torch.Tensor:
            ys = []
            for k, y in enumerate(enhance_adaptive(model, frames, adapter=ad)):
                ys.append(y if fov is None else y * fov[k])
            return torch.stack(ys)

        outputs[arm] = timed(arm, run)

    online("same_online", ocfg)
    if cfg.redegrade:
        online("same_online_redegrade", dataclasses.replace(
            ocfg, redegrade=True, redegrade_strength=cfg.redegrade_strength))
    same, mt, red = runs.get("same_offline"), runs.get("mean_teacher"), runs.get("same_redegrade")

    # quality
    methods = [m for m in METHODS + EXTRA if m in outputs]
    per_image = {m: image_scores(outputs[m], clean, fov) for m in methods}
    table: dict[str, dict[str, Any]] = {}
    usable = [i for i in range(len(frames)) if i not in set(data["ungradable"])]
    for m in methods:
        rows = per_image[m]
        table[m] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        if data["ungradable"]:
            for k in ("ssim", "psnr"):
                table[m][f"{k}_usable"] = float(np.mean([rows[i][k] for i in usable]))
    # picker: decisions on the real pseudo-labels, AUROC against planted implausible ones
    y_t, s_t = _teacher(model, degraded)
    picker.reset_calibration()  # accept_real and the planted ones: the absolute rule
    real = picker.scores(y_t, s_t)
    w_real = picker.weights_from_scores(real)
    picker_res: dict[str, Any] = {"config": picker_config_dict(picker),
                                  "accept_real": float(w_real.mean()),
                                  "acceptance_offline": same.acceptance if same else None,
                                  "acceptance_offline_curve": _curve(same.history) if same else [],
                                  "acceptance_redegrade": red.acceptance if red else None,
                                  "acceptance_online": _online_stats(adapters, "same_online").get(
                                      "acceptance"),
                                  "acceptance_online_redegrade": _online_stats(
                                      adapters, "same_online_redegrade").get("acceptance"),
                                  "online": _online_stats(adapters, "same_online"),
                                  "online_redegrade": _online_stats(adapters,
                                                                    "same_online_redegrade")}
    sep = picker_separation(model, picker, degraded, cfg.seed + 7, (y_t, s_t),
                            data["ungradable"])
    picker_res["auroc"], picker_res["accept_planted"] = sep["auroc"], sep["accept_planted"]
    # sample-wise negative adaptation
    src_ssim = np.array([r["ssim"] for r in per_image["source"]])
    rejected = (w_real < 0.5).numpy()
    for m in [a for a in ADAPTED + EXTRA if a in outputs]:
        s = np.array([r["ssim"] for r in per_image[m]])
        neg = s < src_ssim
        table[m]["negative_rate"] = float(neg.mean())
        table[m]["negative_rejected_by_picker"] = int((neg & rejected).sum())
        table[m]["delta_ssim"] = float(np.mean(s - src_ssim))
        table[m]["delta_psnr"] = table[m]["psnr"] - table["source"]["psnr"]
    # downstream vessels
    downstream = None
    if cfg.downstream and data["vessels"] is not None:
        from same_fast.eval.metrics import binary_scores

        seg, seg_info = timed("segmenter", lambda: _segmenter(cfg, out))
        gt = data["vessels"][:, 0].numpy() > 0.5
        m_fov = fov[:, 0].numpy() > 0.5
        downstream = {"segmenter": seg_info, "scores": {}}
        for m in ["clean"] + methods:
            x = clean if m == "clean" else outputs[m]
            pred = _segment(seg, x)[:, 0].numpy() > 0.5
            downstream["scores"][m] = binary_scores(pred, gt, m_fov)
    targets = {"picker_auroc>=0.9": picker_res["auroc"]["all"] >= 0.9}
    for arm, mt_arm in (("same_offline", "mean_teacher"),
                        ("same_redegrade", "mean_teacher_redegrade")):
        if arm not in table or mt_arm not in table:
            continue
        r = table[arm]
        targets[f"{arm}: ssim_gain>=0.01"] = r["ssim"] - table["source"]["ssim"] >= 0.01
        targets[f"{arm}: psnr_gain>=0.5dB"] = r["psnr"] - table["source"]["psnr"] >= 0.5
        targets[f"{arm}: negative_rate<0.2"] = r["negative_rate"] < 0.2
        targets[f"{arm}: beats {mt_arm}"] = r["ssim"] > table[mt_arm]["ssim"]
    result = {
        "experiment": name, "config": _jsonable(dataclasses.asdict(cfg)),
        "quick": quick, "images": data["names"], "n": len(data["names"]),
        "model": {"name": cfg.model, "provenance": meta.get("provenance")},
        "ungradable": [data["names"][i] for i in data["ungradable"]],
        "table": table, "per_image": per_image, "picker": picker_res,
        "downstream": downstream, "targets": targets, "timings_s": timings,
        "adaptation": {"mean_teacher_last_loss": mt.history[-1]["loss"] if mt and mt.history
                       else None,
                       "same_last_loss": same.history[-1]["loss"] if same and same.history
                       else None,
                       "same_redegrade_acceptance": red.acceptance if red else None},
        "seconds": time.perf_counter() - t_start,
    }
    if "heldout_from_metadata" in data:
        result["heldout_from_metadata"] = data["heldout_from_metadata"]
    from same_fast.benchsuites.common import environment

    result["environment"] = environment()
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    md = markdown(result)
    (out / "results.md").write_text(md)
    # columns: degraded, source, each SAME arm that ran (offline, re-degraded view), clean
    shown = [m for m in ("same_offline", "same_redegrade") if m in outputs] or [methods[-1]]
    _grid(out / "examples.png", [outputs[m] for m in ("degraded", "source", *shown)]
          + [clean], cfg.examples)
    log(md)
    return result


def _online_stats(adapters: dict[str, Any], arm: str) -> dict[str, Any]:
    """An online arm's adapter counters, without its last loss ({} when the arm did not run)."""
    if arm not in adapters:
        return {}
    return {k: v for k, v in adapters[arm].stats().items() if k != "last_loss"}


def _curve(history: list[dict[str, float]], bins: int = 10) -> list[float]:
    """Acceptance over adaptation, averaged in ``bins`` equal chunks of steps."""
    if not history:
        return []
    chunks = np.array_split(np.arange(len(history)), min(bins, len(history)))
    return [float(sum(history[i]["accepted"] for i in c) / sum(history[i]["batch"] for i in c))
            for c in chunks]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def markdown(result: dict[str, Any]) -> str:
    """The results table in Markdown (quality, negative adaptation, downstream vessels)."""
    t, ds = result["table"], result.get("downstream")
    head = "| method | SSIM | PSNR (dB) | SSIM in FOV | PSNR in FOV | neg. adapt. |"
    sep = "|---|---|---|---|---|---|"
    usable = "ssim_usable" in t.get("source", {})
    if usable:
        head += " SSIM usable | PSNR usable |"
        sep += "---|---|"
    if ds:
        head += " Dice | IoU | F1 | kappa |"
        sep += "---|---|---|---|"
    lines = [f"### {result['experiment']} (n = {result['n']})", "", head, sep]
    for m in [m for m in METHODS + EXTRA if m in t]:
        r = t[m]
        neg = f"{100 * r['negative_rate']:.0f} %" if "negative_rate" in r else "-"
        row = (f"| {m} | {r['ssim']:.4f} | {r['psnr']:.2f} | {r['ssim_fov']:.4f} | "
               f"{r['psnr_fov']:.2f} | {neg} |")
        if usable:
            row += f" {r['ssim_usable']:.4f} | {r['psnr_usable']:.2f} |"
        if ds:
            d = ds["scores"][m]
            row += f" {d['dice']:.4f} | {d['iou']:.4f} | {d['f1']:.4f} | {d['kappa']:.4f} |"
        lines.append(row)
    if ds:
        d = ds["scores"]["clean"]
        lines.append("| clean (upper bound) | 1 | inf | 1 | inf | - |"
                     + (" 1 | inf |" if usable else "")
                     + f" {d['dice']:.4f} | {d['iou']:.4f} | {d['f1']:.4f} | {d['kappa']:.4f} |")
    p = result["picker"]
    lines += ["", f"Picker: accepts {100 * p['accept_real']:.0f} % of the source teacher's "
              f"pseudo-labels; acceptance during SAME offline "
              f"{_pct(p['acceptance_offline'])}; AUROC against planted implausible "
              f"pseudo-labels {p['auroc']['all']:.3f} (noise {p['auroc']['noise']:.3f}, "
              f"scramble {p['auroc']['scramble']:.3f}, washout {p['auroc']['washout']:.3f}"
              + (f", the ungradable images' own {p['auroc']['ungradable']:.3f}"
                 if "ungradable" in p["auroc"] else "")
              + f"; IQA alone {p['auroc']['iqa_only']:.3f}, "
              f"ISD alone {p['auroc']['isd_only']:.3f})."]
    lines += ["", "Targets: " + "; ".join(f"{k} {'met' if v else 'NOT met'}"
                                           for k, v in result["targets"].items()), ""]
    return "\n".join(lines) + "\n"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f} %"


def _grid(path: Path, rows: list[torch.Tensor], n: int) -> None:
    from same_fast.io import write_image

    n = min(n, rows[0].shape[0])
    if n <= 0:
        return
    tiles = [torch.cat([r[i] for r in rows], -1) for i in range(n)]
    img = torch.cat(tiles, -2)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    write_image(path, _u8(img))
