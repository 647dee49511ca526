"""Fundus enhancers across cameras (issue #20): degraded-set gains, identity and per-camera ceilings.

    python benchmarks/fundus_cross_camera.py --arm shipped=fundus-lite --arm new=PATH
        [--camera DRIVE-test --camera FIVES ...] [--seed 0] [--max-side 1024] [--json FILE]

For every camera (a data set of ``same_fast.data.DATASETS`` or ``skimage-retina``) and every
condition fixed in advance:

- ``fundus-shen2020`` (seed ``--seed``): Shen et al.'s families with their global colour jitter.
  Its ceiling for an enhancer that keeps the input's tone is ``ceiling_keep_colour`` (blur and
  the global colour factors left, as ``benchmarks/source_ceiling.py`` prints it); the target
  is half of the way from the degraded input to it, in SSIM and PSNR.
- ``fundus-local`` (seed ``--seed``): the same families without any global colour factor
  (blur, uneven light, spots, haze); the target is SSIM +0.03 and PSNR +1.5 dB over the input.
- ``identity``: the clean photograph itself through the enhancer, scored against itself
  (target: mean SSIM >= 0.98, no image below 0.95).

Beside the targets, each arm's share of two diagnostic ceilings: the keep-colour ceiling at the
degraded image's per-channel FOV mean (``ceiling_keep_level``) and median
(``ceiling_keep_median``), what an enhancer that keeps each channel's level can reach.

Scores follow the paper protocol (256x256, 8-bit, inside the FOV). Images are resized (area) so
that their longer side is at most ``--max-side`` before degradation; the degradations' spatial
ranges scale with the image, as ``synth`` does. The FOV is the set's mask where it has one
(DRIVE), else estimated by thresholding (``train.source.estimate_fov``), and the enhancer gets
it as a user's ``--mask`` would give it. Arms are ``LABEL=MODEL`` (a shipped name or a
checkpoint); ``LABEL=MODEL+input-tone`` also puts the input's per-channel mean and spread
(inside the FOV) back on the output, a post-hoc do-no-harm variant; ``+input-level`` only
rescales each channel so that its mean inside the FOV is the input's (``input_level``: the level
the ``coarse-level`` pairs keep, kept on the output; the model's changes within the frame stay).
``oracle-guided=oracle-guided:SIDE`` (an oracle too) carries the keep-colour ceiling's copy
of shorter side ``SIDE`` to the full size as the ``-guided`` pairs carry a coarse model's
output. ``oracle-field=oracle-field:CELL`` is an oracle arm (it reads the reference, so its label must
begin with ``oracle``): the best smooth per-channel gain and offset, fitted by least squares per
``CELL``-pixel cell from the degraded input to the keep-colour ceiling (the clean image under
``identity``) and interpolated bilinearly, which bounds what a light-field block
(``SAMENet(field=True)``) can reach on its own. ``LABEL=mix:W:A,B`` scores the weights
``(1 - W) A + W B`` of two checkpoints of one architecture (weight-space ensembling of a model
and its fine-tune). ``LABEL=MODEL+camera-pool`` pulls each output's smooth light toward the camera's
own, pooled (per-cell median) over all of the camera's outputs under the condition
(``camera_pool``: a folder-level step that reads no reference; one image alone passes
unchanged). ``LABEL=MODEL+camera-garrote`` does the same, taking off only what exceeds the
natural spread of clean photographs' light (``POOL_PRIOR_JSON``, measured by
``camera_light_spread.py`` on training cameras); ``+camera-pool-shared`` pools the light of the
channels' mean and applies one gain to every channel. ``LABEL=MODEL+coarse`` runs the model on a
half-size copy first and puts the smooth light it gives there on the full-size input before the
model sees it (``coarse_light``: the model's reach doubled for smooth light);
``LABEL=MODEL+twice`` runs the model on its own output; ``LABEL=coarse:SIDE:COARSE,FINE`` reads
the smooth light with another model (``COARSE``, trained on whole frames of side ``SIDE``) on a
copy whose shorter side is ``SIDE``, and ``FINE`` enhances the corrected input
(``coarse-level:SIDE:COARSE,FINE``: the correction keeps each channel's mean level;
``coarse-halflevel:``: halfway, in log terms, between keeping it and not;
``coarse-flip:``/``coarse-level-flip:``: ``COARSE`` reads the light on the copy's four mirror
images; ``coarse-guided:``: the correction is carried as a local gain and offset per channel,
``coarse_guided``; ``COARSE`` may be a ``mix:W:A,B``). Each mean carries a bootstrap 95 % interval over
images; the JSON records the git commit, the seeds and the command.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

CONDITIONS = ("fundus-shen2020", "fundus-local", "identity")
# what an arm's ``+SUFFIX`` does to its outputs afterwards (``_input_tone``, ``camera_pool``)
POSTS = ("input-tone", "input-level", "camera-pool-shared", "camera-pool", "camera-garrote")
# how an arm's ``+SUFFIX`` runs its model instead of once on the frame (``run_arm``)
RUNS = ("coarse", "twice", "flips")
# the keep-colour ceiling at the degraded image's per-channel mean / median (source_ceiling), and
# the key of each arm's share of its gain
LEVEL_CEILINGS = {"ceiling_keep_level": "share_of_level_ceiling",
                  "ceiling_keep_median": "share_of_median_ceiling"}
# two-model arms KIND:SIDE:COARSE,FINE (CoarseFine), and how much of each channel's FOV mean each
# keeps (-level all of it, -halflevel the geometric halfway between the corrected input's mean
# and the input's); -flip reads the coarse light on the copy's four mirror images, -fineflip
# runs the fine model on the frame's four mirror images (``enhance_flips``), -gate leaves the
# light alone where the coarse model asks less than clean photographs draw from it (``gate``)
COARSE_LEVELS = {"coarse": 0.0, "coarse-level": 1.0, "coarse-halflevel": 0.5}
COARSE_MODES = {"": {}, "-flip": {"flips": True}, "-fineflip": {"fine_flips": True},
                "-gate": {"gate": True}, "-guided": {"guided": True}}
COARSE_KINDS = tuple(k + m for k in COARSE_LEVELS for m in COARSE_MODES)
# the -gate's dead zone per channel, and the coarse model it was measured for (coarse_gate.py,
# on clean photographs of the coarse model's training cameras, never a selection or test one)
COARSE_GATE_JSON = (Path(__file__).resolve().parent / "results"
                    / "2026-12-07-cpu-fundus-coarse-gate.json")
# -guided (``coarse_guided``): the window radius (pixels of the coarse copy) and regulariser of
# the local gain and offset fitted from the copy to the coarse model's output (a guided filter);
# set before any model was scored this way, from the ORACLE transfer of the keep-colour ceiling
# on DRIVE training's haze photographs (radius 2-8 and 1e-5 / 1e-4: 1e-5 carried the most)
GUIDED_RADIUS, GUIDED_EPS = 4, 1e-5
# ``+coarse``: the size of the coarse copy, and the range its light gain is clamped to (fixed
# in session 24's rule before any run)
COARSE_FACTOR, COARSE_CLAMP = 2, (0.5, 2.0)
# camera_pool's settings, read off the selection cameras (DRIVE training, 24 IDRiD training
# photographs) in session 22; no test camera has been scored with them
POOL_SIGMA, POOL_SHRINK, POOL_TAU = 0.028, 0.5, 0.04
# rings of the FOV's radius over which a camera's natural spread of light is measured, and how
# many of its standard deviations a deviation must pass before the garrote takes any of it
# (three: natural deviations seldom do); fixed before any selection run
POOL_BINS, POOL_SIGMAS = 8, 3.0
# the natural spread ``+camera-garrote`` is told: the prior that camera_light_spread.py measured
# on the clean photographs of fundus-lite's training cameras (IDRiD training, HRF, FIVES)
POOL_PRIOR_JSON = (Path(__file__).resolve().parent / "results"
                   / "2026-12-07-cpu-fundus-camera-light-spread.json")


def pool_prior(path: Path = POOL_PRIOR_JSON) -> torch.Tensor:
    """The garrote's prior (C, rings) from a ``camera_light_spread.py`` JSON."""
    import json

    return torch.tensor(json.loads(path.read_text())["prior"]["per_channel"])
DEFAULT_CAMERAS = ("DRIVE-test", "FIVES", "IDRiD-test", "HRF", "DRIVE", "skimage-retina")


def _ceiling_module() -> Any:
    from same_fast.benchsuites.common import sibling_script

    return sibling_script(__file__, "source_ceiling")


# The vessel segmenter for a camera is trained on clean images of other cameras only. FIVES's
# took DRIVE's training split beside HRF in session 23: trained on HRF alone it found FIVES's
# vessels on clean photographs at Dice 0.21, too weak to tell enhanced from degraded (DRIVE is
# research-only; the segmenter is an evaluation tool, never shipped).
SEGMENTER_SETS = {"DRIVE-test": ("HRF", "FIVES"), "FIVES": ("HRF", "DRIVE"), "HRF": ("FIVES",)}


def load_camera(name: str, max_side: int) -> list[dict[str, Any]]:
    """The camera's clean images as (1, 3, H, W) in [0, 1] with a (1, 1, H, W) FOV and, where
    the set has them, a (1, 1, H, W) vessel mask."""
    return list(iter_camera(name, max_side))


def iter_camera(name: str, max_side: int, only: Container[str] | None = None
                ) -> Iterator[dict[str, Any]]:
    """``load_camera``'s images one at a time (a camera of hundreds need not be held at once);
    ``only``: just the photographs of these file stems (the others are not decoded)."""
    from same_fast.io import load, load_mask, to_tensor
    from same_fast.train.source import _partner, data_folders, estimate_fov, structure_mask

    for _set, _root, files, masks_dir, fov_dir in data_folders(name):
        for f in files:
            if only is not None and f.stem not in only:
                continue
            arr = load(f).frames[0][..., :3]
            x = to_tensor(arr if arr.dtype == np.uint8 else (arr // 257).astype(np.uint8))[None]
            fm = _partner(fov_dir, f.stem)
            fov = (torch.from_numpy(load_mask(fm[0], arr.shape[:2]))[None, None].float()
                   if fm else None)
            v = structure_mask(masks_dir, f.stem, arr.shape[:2])
            ves = None if v is None else torch.from_numpy(v)[None, None].float()
            h, w = x.shape[-2:]
            s = min(1.0, max_side / max(h, w))
            if s < 1.0:
                size = (round(h * s), round(w * s))
                x = F.interpolate(x, size=size, mode="area")
                fov = None if fov is None else F.interpolate(fov, size=size, mode="nearest")
                ves = None if ves is None else F.interpolate(ves, size=size, mode="nearest")
            x = (x * 255).round() / 255  # an 8-bit photograph, as a user's file would be
            if fov is None:
                fov = estimate_fov(x[0])[None].float()
            yield {"name": f.stem, "clean": x * fov, "fov": fov, "vessels": ves}


def _letterbox(t: torch.Tensor, size: int) -> torch.Tensor:
    """(1, C, H, W) padded to a square and resized to ``size`` (as the segmenter trained)."""
    h, w = t.shape[-2:]
    s = max(h, w)
    t = F.pad(t, ((s - w) // 2, s - w - (s - w) // 2, (s - h) // 2, s - h - (s - h) // 2))
    return F.interpolate(t, size=(size, size), mode="area")


def vessel_dice(net: Any, img: torch.Tensor, vessels: torch.Tensor, fov: torch.Tensor,
                size: int = 256) -> float:
    """Dice of the segmenter's vessel map of ``img`` against the reference, inside the FOV."""
    from same_fast.eval import dice

    with torch.no_grad():
        p = torch.sigmoid(net(_letterbox(img, size)))[0, 0].numpy() > 0.5
    ref = _letterbox(vessels, size)[0, 0].numpy() > 0.5
    m = _letterbox(fov, size)[0, 0].numpy() > 0.5
    return float(dice(p & m, ref & m))


def _input_tone(y: torch.Tensor, x: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
    """``y`` with the per-channel mean and standard deviation of ``x`` inside ``fov``."""
    m = fov.bool().expand_as(x)
    out = y.clone()
    for c in range(x.shape[1]):
        xs, ys = x[:, c][m[:, c]], y[:, c][m[:, c]]
        gain = xs.std() / ys.std().clamp_min(1e-6)
        out[:, c] = (y[:, c] - ys.mean()) * gain + xs.mean()
    return (out.clamp(0, 1) * fov)


def input_level(y: torch.Tensor, x: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
    """``y`` rescaled per channel so that its mean inside ``fov`` is ``x``'s."""
    from same_fast.degrade.ops import fov_mean

    return (y * (fov_mean(x, fov) / fov_mean(y, fov).clamp_min(1e-6))).clamp(0, 1) * fov


def oracle_field(y: torch.Tensor, ref: torch.Tensor, fov: torch.Tensor, cell: int) -> torch.Tensor:
    """The best per-cell affine map ``a y + b`` (least squares per channel over ``cell``-pixel
    cells, bilinear between cell centres) from ``y`` toward ``ref``: an oracle, it reads ``ref``."""
    def pool(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, cell, ceil_mode=True)

    my, mr = pool(y), pool(ref)
    a = (pool(y * ref) - my * mr) / (pool(y * y) - my * my + 1e-4)
    b = mr - a * my
    h, w = y.shape[-2:]
    a, b = (F.interpolate(t, size=(t.shape[-2] * cell, t.shape[-1] * cell), mode="bilinear",
                          align_corners=False)[..., :h, :w] for t in (a, b))
    return (a * y + b).clamp(0, 1) * fov


@dataclass(frozen=True)
class OracleArm:
    """An arm that reads the reference: ``oracle-field:CELL`` (``oracle_field``) or
    ``oracle-guided:SIDE`` (``coarse_guided`` with the reference's copy as the coarse output:
    what a coarse model that restored its copy perfectly would carry to the full size)."""

    kind: str
    size: int

    def __call__(self, y: torch.Tensor, ref: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
        if self.kind == "oracle-field":
            return oracle_field(y, ref, fov, self.size)
        h, w = y.shape[-2:]
        f = min(h, w) / self.size
        small = (max(1, round(h / f)), max(1, round(w / f)))
        return coarse_guided(_Fixed(F.interpolate(ref, size=small, mode="area")), y, fov,
                             self.size)


class _Fixed(torch.nn.Module):
    """A stand-in model (SAMENet's interface) that returns one fixed image, in [-1, 1]."""

    multiple = 1

    def __init__(self, out01: torch.Tensor) -> None:
        super().__init__()
        self.out = out01 * 2 - 1

    def forward(self, x: torch.Tensor, structure: bool = False) -> tuple[torch.Tensor, None]:
        return self.out, None


def _lit_blur(y: torch.Tensor, fov: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian of ``sigma`` times the longer side, normalised over the lit pixels."""
    from same_fast.degrade.ops import blur

    s = torch.full((y.shape[0],), sigma * max(y.shape[-2:]))
    return blur(y * fov, s) / blur(fov, s).clamp_min(1e-3)


def light_map(y: torch.Tensor, fov: torch.Tensor, sigma: float = POOL_SIGMA) -> torch.Tensor:
    """A frame's smooth light per channel: a Gaussian of ``sigma`` times the longer side,
    normalised inside the FOV, in log units relative to the frame's own mean level, on a 64x64
    grid, (1, C, 64, 64). Its global level (and so its tone) is divided out."""
    from same_fast.degrade.ops import fov_mean

    lit = _lit_blur(y, fov, sigma)
    level = fov_mean(y, fov)
    rel = torch.log((lit / level.clamp_min(1e-3)).clamp_min(1e-3))
    return F.interpolate(rel, size=(64, 64), mode="bilinear", align_corners=False)


def light_spread(maps: torch.Tensor) -> torch.Tensor:
    """The spread of light maps over frames, per channel and cell: the mean squared deviation
    of ``maps`` (N, 1, C, 64, 64) from their per-cell median, as (C, 64, 64)."""
    return ((maps - maps.median(0).values) ** 2).mean(0)[0]


def cell_radius(fovs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each cell's distance from the centre of the frames' FOV on the 64x64 grid (in the
    images' own proportions), as a share of the largest distance of a cell inside it, and the
    cells inside every frame's FOV: (64, 64) float, (64, 64) bool. Cameras' FOVs differ in
    size and shape (a cut disc, a full one); the share of the radius is common to them."""
    inside = torch.stack([F.interpolate(f, size=(64, 64), mode="area")[0, 0] > 0.99
                          for f in fovs]).all(0)
    h, w = fovs[0].shape[-2:]
    yy, xx = torch.meshgrid((torch.arange(64) + 0.5) * h / 64, (torch.arange(64) + 0.5) * w / 64,
                            indexing="ij")
    if not inside.any():
        return torch.ones(64, 64), inside
    cy, cx = yy[inside].mean(), xx[inside].mean()
    r = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
    return r / r[inside].max(), inside


def radial_spread(spread: torch.Tensor, radius: torch.Tensor, inside: torch.Tensor,
                  bins: int = POOL_BINS) -> torch.Tensor:
    """``spread`` (C, 64, 64) averaged over the inside cells in each of ``bins`` rings of equal
    width in ``radius``, (C, bins); a ring with no cell takes its inner neighbour's value."""
    ring = (radius * bins).long().clamp(0, bins - 1)
    out = torch.full((spread.shape[0], bins), float("nan"))
    for k in range(bins):
        sel = inside & (ring == k)
        if sel.any():
            out[:, k] = spread[:, sel].mean(1)
    for k in range(bins):
        if torch.isnan(out[:, k]).any():
            out[:, k] = out[:, k - 1] if k else out[:, ~torch.isnan(out[0])][:, 0]
    return out


def camera_pool(ys: list[torch.Tensor], fovs: list[torch.Tensor], sigma: float = POOL_SIGMA,
                shrink: float = POOL_SHRINK, tau: float = POOL_TAU,
                prior: torch.Tensor | None = None, sigmas: float = POOL_SIGMAS,
                shared: bool = False) -> list[torch.Tensor]:
    """Each frame's smooth light pulled toward its camera's, pooled over the frames.

    Per frame, its ``light_map``; the camera's map is the per-cell median over the frames; each
    frame's deviation ``d`` from it is soft-thresholded by ``tau`` (small differences are the
    photograph's own) and ``shrink`` of the rest is divided out. With ``prior`` ((C, rings):
    the spread that clean photographs show on their own, per channel and ring of the FOV's
    radius, ``benchmarks/camera_light_spread.py``) the deviation is instead shrunk by the
    non-negative garrote, ``d max(0, 1 - k^2 v / d^2)`` with ``v`` the prior of the cell's ring
    and ``k = sigmas``: a deviation within ``k`` natural standard deviations is left alone, and
    the larger one is, the more of it is taken for degradation and divided out. Its global
    level (and so its tone) is the frame's own; one frame alone is its own median, so it passes
    unchanged. It reads no reference. ``shared``: the light of the channels' mean, one gain for
    every channel (a dark channel's own light, blue in a fundus photograph, is not divided out
    on its own)."""
    if shared:
        if prior is not None and prior.shape[0] != 1:
            raise ValueError("a shared pool's prior is the channels' mean light's: one channel")
        lums = [y.mean(1, keepdim=True) for y in ys]
        pooled = camera_pool(lums, fovs, sigma, shrink, tau, prior, sigmas)
        return [(y * (o / lum.clamp_min(1e-4))).clamp(0, 1) * f
                for y, lum, o, f in zip(ys, lums, pooled, fovs, strict=True)]
    maps = torch.stack([light_map(y, f, sigma) for y, f in zip(ys, fovs, strict=True)])
    camera = maps.median(0).values
    if prior is not None:
        radius, _ = cell_radius(fovs)
        ring = (radius * prior.shape[1]).long().clamp(0, prior.shape[1] - 1)
        v = sigmas ** 2 * prior[:, ring][None]
    out = []
    for y, f, m in zip(ys, fovs, maps, strict=True):
        d = camera - m
        if prior is None:
            d = shrink * torch.sign(d) * (d.abs() - tau).clamp_min(0)
        else:
            d = d * (1 - v / (d * d).clamp_min(1e-12)).clamp_min(0)
        gain = torch.exp(F.interpolate(d, size=y.shape[-2:], mode="bilinear", align_corners=False))
        out.append((y * gain).clamp(0, 1) * f)
    return out


@dataclass(frozen=True)
class CoarseFine:
    """A ``coarse:SIDE:COARSE,FINE`` arm: ``coarse`` reads the smooth light on a copy whose
    shorter side is ``side`` (0: ``COARSE_FACTOR`` times smaller), ``fine`` enhances the
    corrected full-size input. ``+coarse`` is the pair of a model with itself at side 0."""

    coarse: Any
    fine: Any
    side: int
    keep_level: float = 0.0
    flips: bool = False
    fine_flips: bool = False
    gate: tuple[float, ...] | None = None
    guided: bool = False


FLIPS = ((), (-1,), (-2,), (-2, -1))  # the copy's four mirror images: none, left-right, up-down, both


def enhance_flips(net: Any, x: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
    """``net`` on the frame's four mirror images (``FLIPS``), each mirrored back, averaged: a
    test-time ensemble for a model that is not mirror-equivariant (four times the work)."""
    from same_fast.nn import enhance

    with torch.no_grad():
        outs = [enhance(net, x.flip(d), fov.flip(d)).flip(d) if d else enhance(net, x, fov)
                for d in FLIPS]
    return torch.stack(outs).mean(0)


def coarse_log_gain(net: Any, x: torch.Tensor, fov: torch.Tensor, factor: float = COARSE_FACTOR,
                    clamp: tuple[float, float] = COARSE_CLAMP, sigma: float = POOL_SIGMA,
                    side: int = 0, flips: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``coarse_light``'s reading before it is applied: the per-channel log gain on the coarse
    copy (1, C, h, w) and the copy's FOV (1, 1, h, w)."""
    from same_fast.nn import enhance

    h, w = x.shape[-2:]
    if side:
        factor = min(h, w) / side
    size = (max(1, round(h / factor)), max(1, round(w / factor)))
    xs = F.interpolate(x, size=size, mode="area")
    fs = (F.interpolate(fov.float(), size=size, mode="area") > 0.5).float()
    log_gain = torch.zeros_like(xs)
    for dims in FLIPS if flips else FLIPS[:1]:
        xm, fm = (xs.flip(dims), fs.flip(dims)) if dims else (xs, fs)
        with torch.no_grad():
            ym = enhance(net, xm, fm)
        g = (_lit_blur(ym, fm, sigma) / _lit_blur(xm, fm, sigma).clamp_min(2 / 255)).clamp(*clamp)
        log_gain += (g.flip(dims) if dims else g).log()
    return log_gain / (len(FLIPS) if flips else 1), fs


def centred(log_gain: torch.Tensor, fov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A log gain split into its level (the per-channel mean inside ``fov``, (1, C, 1, 1)) and
    what moves light within the frame (the rest)."""
    from same_fast.degrade.ops import fov_mean

    level = fov_mean(log_gain, fov)
    return level, log_gain - level


def gate(log_gain: torch.Tensor, fov: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The log gain with a dead zone of ``tau`` per channel ((C,), log units) on the light it
    moves within the frame: a cell asked to move less than ``tau`` keeps its light, a larger
    request is shrunk by ``tau`` (soft-thresholded, so the field stays continuous); the level
    passes as it was."""
    level, within = centred(log_gain, fov)
    t = tau.to(log_gain.dtype).view(1, -1, 1, 1)
    return level + torch.sign(within) * (within.abs() - t).clamp_min(0)


def coarse_light(net: Any, x: torch.Tensor, fov: torch.Tensor, factor: float = COARSE_FACTOR,
                 clamp: tuple[float, float] = COARSE_CLAMP, sigma: float = POOL_SIGMA,
                 side: int = 0, keep_level: float = 0.0, flips: bool = False,
                 dead_zone: torch.Tensor | None = None) -> torch.Tensor:
    """The model's smooth light correction read at ``1 / factor`` of the size, applied to ``x``.

    The model enhances an area-resized copy (its reach then spans ``factor`` times as much of
    the frame; with ``side``, the copy's shorter side is ``side`` pixels instead, the frame size a
    model trained on whole frames knows); the per-channel ratio of its output's smooth light to
    its input's (a Gaussian of ``sigma`` times the longer side over the lit pixels, clamped to
    ``clamp``) is up-sampled and multiplied into ``x``. What the model does not change at the
    coarse size passes unchanged (gain 1); it reads no reference. ``keep_level``: the corrected
    input is rescaled per channel so that its mean inside the FOV is ``x``'s (the pass moves
    light within the frame and changes no channel's level); a fraction keeps that share of it
    in log terms (0.5: the geometric halfway between the corrected mean and ``x``'s).
    ``flips``: the correction is read on the copy's four mirror images (``FLIPS``), each
    mirrored back, and their log gains averaged (the model is not mirror-equivariant; the
    average is its reading with less of its own noise). ``dead_zone``: per channel (C,), the
    ``gate`` on the light the reading moves within the frame. Returns the corrected input
    (1, C, H, W), not enhanced."""
    from same_fast.degrade.ops import fov_mean

    h, w = x.shape[-2:]
    log_gain, fs = coarse_log_gain(net, x, fov, factor, clamp, sigma, side, flips)
    if dead_zone is not None:
        log_gain = gate(log_gain, fs, dead_zone)
    gain = F.interpolate(log_gain.exp(), size=(h, w), mode="bilinear", align_corners=False)
    out = x * gain
    if keep_level:
        out = out * (fov_mean(x, fov) / fov_mean(out, fov).clamp_min(1e-6)) ** float(keep_level)
    return out.clamp(0, 1) * fov


def _box(t: torch.Tensor, r: int) -> torch.Tensor:
    return F.avg_pool2d(F.pad(t, (r, r, r, r), mode="replicate"), 2 * r + 1, stride=1)


def local_affine(src: torch.Tensor, dst: torch.Tensor, fov: torch.Tensor, radius: int,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel and pixel, the gain ``a`` and offset ``b`` of the least-squares fit
    ``dst ~ a src + b`` over a ``2 radius + 1`` window of lit pixels (``eps``: a ridge on ``a``,
    which pulls a flat window toward gain 0 and offset ``dst``'s mean), each then averaged over
    the same window: He et al.'s guided filter with ``src`` as its guide."""
    n = _box(fov, radius).clamp_min(1e-6)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return _box(t * fov, radius) / n

    ms, md = mean(src), mean(dst)
    a = (mean(src * dst) - ms * md) / ((mean(src * src) - ms * ms).clamp_min(0) + eps)
    b = md - a * ms
    return mean(a), mean(b)


def coarse_guided(net: Any, x: torch.Tensor, fov: torch.Tensor, side: int,
                  keep_level: float = 0.0, radius: int = GUIDED_RADIUS, eps: float = GUIDED_EPS
                  ) -> torch.Tensor:
    """The coarse model's correction as a local gain and offset per channel, applied to ``x``.

    ``net`` enhances an area-resized copy whose shorter side is ``side``; the gain and offset
    that take the copy to that output (``local_affine``) are up-sampled, weighted by the
    copy's lit pixels so that the black outside the FOV does not leak into its rim, and applied
    to the full-size frame: a veil's lost contrast (a gain above 1 with a negative offset) is
    carried over as well as its light, which a light ratio alone (``coarse_light``) cannot.
    ``keep_level`` as in ``coarse_light``. Returns the corrected input, not enhanced."""
    from same_fast.degrade.ops import fov_mean
    from same_fast.nn import enhance

    h, w = x.shape[-2:]
    factor = min(h, w) / side
    size = (max(1, round(h / factor)), max(1, round(w / factor)))
    xs = F.interpolate(x, size=size, mode="area")
    fs = (F.interpolate(fov.float(), size=size, mode="area") > 0.5).float()
    with torch.no_grad():
        ys = enhance(net, xs, fs)
    a, b = local_affine(xs, ys, fs, radius, eps)

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)

    weight = up(fs).clamp_min(1e-6)
    out = up(a * fs) / weight * x + up(b * fs) / weight
    if keep_level:
        out = out * (fov_mean(x, fov) / fov_mean(out, fov).clamp_min(1e-6)) ** float(keep_level)
    return out.clamp(0, 1) * fov


def run_arm(net: Any, x: torch.Tensor, fov: torch.Tensor, run: str = "") -> torch.Tensor:
    """The arm's model on one frame: once, on the ``coarse_light``-corrected frame
    (``coarse``), on its own output (``twice``) or on the frame's four mirror images, averaged
    (``flips``); a ``CoarseFine`` pair, its fine model on the frame its coarse model corrected."""
    from same_fast.nn import enhance

    if run not in ("", *RUNS):
        raise ValueError(f"unknown run mode '{run}' (expected one of {RUNS})")
    if run == "coarse":  # the model as its own coarse model, on a copy of half the size
        net = CoarseFine(net, net, side=0)
    with torch.no_grad():
        if isinstance(net, CoarseFine) and net.guided:
            lit = coarse_guided(net.coarse, x, fov, net.side, keep_level=net.keep_level)
            return enhance(net.fine, lit, fov)
        if isinstance(net, CoarseFine):
            lit = coarse_light(net.coarse, x, fov, side=net.side, keep_level=net.keep_level,
                               flips=net.flips,
                               dead_zone=None if net.gate is None else torch.tensor(net.gate))
            return enhance_flips(net.fine, lit, fov) if net.fine_flips else enhance(net.fine, lit, fov)
        if run == "flips":
            return enhance_flips(net, x, fov)
        y = enhance(net, x, fov)
        return enhance(net, y, fov) if run == "twice" else y


def _arms(specs: list[str]) -> list[tuple[str, Any, str]]:
    from same_fast.models import load_model

    arms = []
    for spec in specs:
        label, _, model = spec.partition("=")
        if not model:
            raise SystemExit(f"--arm expects LABEL=MODEL, got '{spec}'")
        if model.startswith(("oracle-field:", "oracle-guided:")):
            if not label.startswith("oracle"):
                raise SystemExit(f"--arm {spec}: an oracle arm's label must begin with 'oracle'")
            kind, _, cell = model.partition(":")
            if not cell.isdigit() or int(cell) < (2 if kind == "oracle-field" else 16):
                raise SystemExit(f"--arm {spec}: oracle-field:CELL needs a cell of >= 2 pixels, "
                                 "oracle-guided:SIDE a side of >= 16")
            arms.append((label, OracleArm(kind, int(cell)), ""))
            continue
        post = next((p for p in POSTS + RUNS if model.endswith("+" + p)), "")
        model = model.removesuffix("+" + post) if post else model
        if model.startswith(tuple(k + ":" for k in COARSE_KINDS)):
            kind, _, rest = model.partition(":")
            side, _, pair = rest.partition(":")
            names = pair.rsplit(",", 1)  # COARSE may be a mix:W:A,B
            if not side.isdigit() or int(side) < 16 or len(names) != 2 or post:
                raise SystemExit(f"--arm {spec}: coarse:SIDE:COARSE,FINE needs a side of >= 16 "
                                 "pixels and two models (and no +suffix)")
            coarse = (_mix(spec, names[0]) if names[0].startswith("mix:")
                      else load_model(names[0])[0])
            level, mode = next((k, m) for k in COARSE_LEVELS for m in COARSE_MODES
                               if k + m == kind)
            opts = dict(COARSE_MODES[mode])
            if opts.pop("gate", False):
                opts["gate"] = gate_for(spec, names[0], int(side))
            net = CoarseFine(coarse, load_model(names[1])[0], int(side),
                             keep_level=COARSE_LEVELS[level], **opts)
        elif model.startswith("mix:"):
            net = _mix(spec, model)
        else:
            net, _meta = load_model(model)
        arms.append((label, net, post))
    return arms


def gate_for(spec: str, coarse: str, side: int, path: Path = COARSE_GATE_JSON) -> tuple[float, ...]:
    """The dead zone ``coarse_gate.py`` measured for this coarse checkpoint at this side."""
    import hashlib
    import json

    if not path.is_file():
        raise SystemExit(f"--arm {spec}: no dead zone measured ({path} is missing; "
                         "run benchmarks/coarse_gate.py)")
    rec = json.loads(path.read_text())
    cp = Path(coarse)
    digest = hashlib.sha256(cp.read_bytes()).hexdigest() if cp.is_file() else coarse
    if rec.get("coarse_sha256") != digest or rec.get("side") != side:
        raise SystemExit(f"--arm {spec}: {path.name} measured its dead zone for another coarse "
                         f"model or side ({rec.get('coarse')}, side {rec.get('side')})")
    return tuple(float(t) for t in rec["dead_zone"])


def _mix(spec: str, model: str) -> Any:
    """``mix:W:A,B``: the weights ``(1 - W) A + W B`` of two checkpoints of one architecture
    (B fine-tuned from A or A from B: weight-space ensembling, Wortsman et al.'s WiSE-FT)."""
    from same_fast.models import load_model

    w, _, pair = model.removeprefix("mix:").partition(":")
    names = pair.split(",")
    try:
        wf = float(w)
    except ValueError:
        wf = -1.0
    if len(names) != 2 or not 0.0 <= wf <= 1.0:
        raise SystemExit(f"--arm {spec}: mix:W:A,B needs a weight W in [0, 1] and two models")
    (net, _), (other, _) = load_model(names[0]), load_model(names[1])
    sa, sb = net.state_dict(), other.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        raise SystemExit(f"--arm {spec}: {names[0]} and {names[1]} differ in architecture")
    net.load_state_dict({k: torch.lerp(v.float(), sb[k].float(), wf).to(v.dtype)
                         if v.is_floating_point() else v for k, v in sa.items()})
    return net


def with_gammas(x: torch.Tensor, fov: torch.Tensor, gammas: list[float]) -> torch.Tensor:
    """``x`` (1, 3, H, W) with each channel raised to its gamma inside ``fov`` (black outside)."""
    g = torch.tensor(gammas, dtype=x.dtype).view(1, -1, 1, 1)
    return x.clamp_min(0).pow(g) * fov.to(x.dtype)


def _u8(t: torch.Tensor) -> np.ndarray:
    return (t[0].clamp(0, 1).movedim(0, -1).numpy() * 255 + 0.5).astype(np.uint8)


def score_camera(images: list[dict[str, Any]], arms: list[tuple[str, Any, str]], seed: int,
                 conditions: tuple[str, ...] = CONDITIONS, segmenter: Any = None
                 ) -> dict[str, list[dict[str, Any]]]:
    """Per condition, one row per image: the input's, the ceilings' and each arm's scores (and
    with a ``segmenter``, the vessel Dice of the input, the clean image and each output). A
    ``+camera-pool`` arm is scored once all of the camera's images are through its model."""
    from same_fast.degrade import get_preset
    from same_fast.eval import score_pair

    ceil = _ceiling_module()
    rows: dict[str, list[dict[str, Any]]] = {}

    def put(row: dict[str, Any], label: str, y: torch.Tensor, im: dict[str, Any]) -> None:
        fov = im["fov"]
        s = score_pair(_u8(y), _u8(im["clean"]), fov[0, 0].numpy() > 0.5, "paper")
        row[label] = {"ssim": s.ssim, "psnr": min(s.psnr, 100.0)}
        if "vessel_dice" in row:
            row["vessel_dice"][label] = vessel_dice(segmenter, y, im["vessels"], fov)

    for cond in conditions:
        g = torch.Generator().manual_seed(seed)
        rows[cond] = []
        pooled: dict[str, tuple[str, list[torch.Tensor]]] = {}
        for im in images:
            x, fov = im["clean"], im["fov"]
            gt, m = _u8(x), fov[0, 0].numpy() > 0.5
            if cond == "identity":
                variants = {"degraded": x}
                kind = "clean"
            else:
                kind = ceil._kind(get_preset(cond), g)
                variants = ceil._variants(cond, x, g, fov)
            row: dict[str, Any] = {"name": im["name"], "type": kind}
            seg = segmenter is not None and im["vessels"] is not None and cond != "identity"
            for key, v in variants.items():
                s = score_pair(_u8(v), gt, m, "paper")
                row[key] = {"ssim": s.ssim, "psnr": min(s.psnr, 100.0)}
            if seg:
                row["vessel_dice"] = {"clean": vessel_dice(segmenter, x, im["vessels"], fov),
                                      "degraded": vessel_dice(segmenter, variants["degraded"],
                                                              im["vessels"], fov)}
            # what an enhancer sees: the degraded image as an 8-bit file
            inp = torch.from_numpy(_u8(variants["degraded"])).movedim(-1, 0)[None].float() / 255
            for label, net, post in arms:
                if isinstance(net, OracleArm):  # toward the keep-colour reference
                    ref = variants.get("ceiling_keep_colour", x)
                    y = net(inp, ref, fov)
                else:
                    y = run_arm(net, inp, fov, post if post in RUNS else "")
                if post == "input-tone":
                    y = _input_tone(y, inp, fov)
                elif post == "input-level":
                    y = input_level(y, inp, fov)
                if post.startswith("camera-"):
                    pooled.setdefault(label, (post, []))[1].append(y)
                    continue
                put(row, label, y, im)
            rows[cond].append(row)
        for label, (post, ys) in pooled.items():
            prior = pool_prior() if post == "camera-garrote" else None
            outs = camera_pool(ys, [im["fov"] for im in images], prior=prior,
                               shared=post == "camera-pool-shared")
            for row, y, im in zip(rows[cond], outs, images, strict=True):
                put(row, label, y, im)
    return rows


def summarise(rows: list[dict[str, Any]], cond: str, labels: list[str], seed: int
              ) -> dict[str, Any]:
    """Means with bootstrap intervals, gains over the input, share below it and the targets."""
    from same_fast.eval import bootstrap_ci

    def col(key: str, metric: str) -> np.ndarray:
        return np.array([r[key][metric] for r in rows])

    own = [k for k in ("degraded", "ceiling", "ceiling_keep_colour", *LEVEL_CEILINGS) if k in rows[0]]
    out: dict[str, Any] = {"n": len(rows), "mean": {}, "arms": {}}
    for key in own + labels:
        out["mean"][key] = {m: bootstrap_ci(col(key, m), seed=seed) for m in ("ssim", "psnr")}
    for label in labels:
        d_ssim = col(label, "ssim") - col("degraded", "ssim")
        d_psnr = col(label, "psnr") - col("degraded", "psnr")
        arm: dict[str, Any] = {
            "gain_ssim": bootstrap_ci(d_ssim, seed=seed),
            "gain_psnr": bootstrap_ci(d_psnr, seed=seed),
            "share_below_input_ssim": float(np.mean(d_ssim < 0)),
            "share_below_input_psnr": float(np.mean(d_psnr < 0)),
        }
        if cond == "identity":
            ssim = col(label, "ssim")
            arm["min_ssim"] = float(ssim.min())
            arm["target_met"] = bool(ssim.mean() >= 0.98 and ssim.min() >= 0.95)
        elif cond == "fundus-local":
            arm["target_met"] = bool(d_ssim.mean() >= 0.03 and d_psnr.mean() >= 1.5)
        for ref, key in LEVEL_CEILINGS.items():  # diagnostics beside the targets
            if ref in rows[0]:
                lvl = {m: col(ref, m).mean() - col("degraded", m).mean() for m in ("ssim", "psnr")}
                arm[key] = {m: float((d_ssim if m == "ssim" else d_psnr).mean() / lvl[m])
                            if lvl[m] > 0 else None for m in ("ssim", "psnr")}
        if cond == "fundus-shen2020":
            ref = "ceiling_keep_colour"
            halfway = {m: 0.5 * (col(ref, m).mean() - col("degraded", m).mean())
                       for m in ("ssim", "psnr")}
            arm["halfway_to_ceiling"] = halfway
            arm["fraction_of_way_to_ceiling"] = {
                "ssim": float(d_ssim.mean() / (2 * halfway["ssim"])) if halfway["ssim"] else None,
                "psnr": float(d_psnr.mean() / (2 * halfway["psnr"])) if halfway["psnr"] else None}
            arm["target_met"] = bool(d_ssim.mean() >= halfway["ssim"]
                                     and d_psnr.mean() >= halfway["psnr"]
                                     and np.mean(d_ssim < 0) <= 0.10)
        out["arms"][label] = arm
    vrows = [r for r in rows if "vessel_dice" in r]  # the images with a vessel mask
    if vrows:
        vd = {k: np.array([r["vessel_dice"][k] for r in vrows]) for k in vrows[0]["vessel_dice"]}
        out["vessel_dice"] = {k: bootstrap_ci(v, seed=seed) for k, v in vd.items()}
        # per arm, the paired gain over the degraded input's segmentation
        out["vessel_dice_gain"] = {k: bootstrap_ci(v - vd["degraded"], seed=seed)
                                   for k, v in vd.items() if k not in ("clean", "degraded")}
    return out


def main(argv: list[str] | None = None) -> int:
    from same_fast.benchsuites.common import write_json
    from same_fast.eval import provenance

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arm", action="append", required=True, metavar="LABEL=MODEL")
    p.add_argument("--camera", action="append", default=None,
                   help=f"data set name (default: {', '.join(DEFAULT_CAMERAS)})")
    p.add_argument("--condition", action="append", default=None, choices=CONDITIONS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--max-images", type=int, default=0, help="per camera (0: all)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--vessels", action="store_true",
                   help="also score vessel segmentation (a segmenter trained on other cameras)")
    p.add_argument("--segmenter-steps", type=int, default=300)
    p.add_argument("--clean-gammas", default="", metavar="R,G,B",
                   help="a diagnostic: each clean photograph's channels through these gammas "
                        "(inside the FOV) before anything else, as another camera's tone curve")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    gammas = [float(v) for v in a.clean_gammas.split(",")] if a.clean_gammas else None
    if gammas is not None and (len(gammas) != 3 or min(gammas) <= 0):
        raise SystemExit("--clean-gammas needs three positive gammas R,G,B")
    if a.threads:
        torch.set_num_threads(a.threads)
    arms = _arms(a.arm)
    labels = [lab for lab, _, _ in arms]
    conditions = tuple(a.condition or CONDITIONS)
    res: dict[str, Any] = {"provenance": provenance({"degradation": a.seed, "bootstrap": a.seed}),
                           "arms": a.arm, "max_side": a.max_side, "clean_gammas": gammas,
                           "cameras": {}}
    for cam in a.camera or DEFAULT_CAMERAS:
        images = load_camera(cam, a.max_side)
        if a.max_images:
            images = images[:a.max_images]
        if gammas is not None:
            images = [{**im, "clean": with_gammas(im["clean"], im["fov"], gammas)} for im in images]
        segmenter = None
        if a.vessels and cam in SEGMENTER_SETS:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from lab.segmenter import train_segmenter

            segmenter, seg_info = train_segmenter(a.segmenter_steps, 256, a.seed,
                                                  sets=SEGMENTER_SETS[cam])
            res.setdefault("segmenters", {})[cam] = seg_info
        rows = score_camera(images, arms, a.seed, conditions, segmenter)
        res["cameras"][cam] = {c: {"summary": summarise(r, c, labels, a.seed), "rows": r}
                               for c, r in rows.items()}
        for c in conditions:
            s = res["cameras"][cam][c]["summary"]
            parts = [f"{k} {v['ssim']['mean']:.4f}/{v['psnr']['mean']:.2f}"
                     for k, v in s["mean"].items()]
            print(f"{cam:15s} {c:16s} n={s['n']:3d}  " + "  ".join(parts), flush=True)
            if "vessel_dice" in s:
                print(f"{'':32s} vessel Dice: " + "  ".join(
                    f"{k} {v['mean']:.3f}" for k, v in s["vessel_dice"].items()) + "  gain: "
                    + "  ".join(f"{k} {v['mean']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]"
                                for k, v in s["vessel_dice_gain"].items()), flush=True)
            for lab, arm in s["arms"].items():
                extra = (f" way {arm['fraction_of_way_to_ceiling']['ssim']:.2f}/"
                         f"{arm['fraction_of_way_to_ceiling']['psnr']:.2f}"
                         if "fraction_of_way_to_ceiling" in arm else "")
                for key, word in (("share_of_level_ceiling", "level"),
                                  ("share_of_median_ceiling", "median")):
                    lv = arm.get(key)
                    extra += (f" of {word} ceiling {lv['ssim']:.2f}/{lv['psnr']:.2f}"
                              if lv and None not in lv.values() else "")
                extra += f" min {arm['min_ssim']:.4f}" if "min_ssim" in arm else ""
                print(f"{'':32s} {lab}: dSSIM {arm['gain_ssim']['mean']:+.4f} "
                      f"[{arm['gain_ssim']['lo']:+.4f}, {arm['gain_ssim']['hi']:+.4f}] dPSNR "
                      f"{arm['gain_psnr']['mean']:+.2f} [{arm['gain_psnr']['lo']:+.2f}, "
                      f"{arm['gain_psnr']['hi']:+.2f}] worse {arm['share_below_input_ssim']:.0%}"
                      f"{extra} target {'met' if arm['target_met'] else 'NOT met'}", flush=True)
    write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
