"""Degradation parameters estimated from target images alone, for adaptation's student view.

Adaptation re-degrades the student's view so that it learns to undo more than the source model
does (Noisier2Noise: learning to map a noisier view to the teacher's output on the original
teaches denoising without clean images). Which corruption to add is best read off the clinic's
own images rather than assumed, and never taken from a test's generator:

- ``noise_sigma``: Immerkaer's fast estimate of additive noise (a Laplacian-difference kernel
  that cancels smooth structure, mean absolute response, J. Immerkaer, CVIU 1996), per channel
  inside the field of view and averaged over channels, per image; textured anatomy inflates it
  a little.
- ``jpeg_quality``: the IJG quality a decoded JPEG was saved at, read from its pixels: the
  luminance DCT coefficients of the 8x8 blocks of a decoded JPEG sit on multiples of the
  quantisation step of their frequency (Fan and de Queiroz, IEEE TIP 2003); the largest step
  that the non-zero coefficients of each low frequency fit is that frequency's step, and the
  quality whose IJG table matches those steps best is the answer (NaN when the pixels show no
  JPEG lattice: a lossless file, a resized or re-sampled JPEG, quality above about 90).
- ``jpeg_noise_sigma``: compression removes the small coefficients noise makes, so
  Immerkaer's estimate of a JPEG reads its noise as far smaller than the sensor's. The share of
  each frequency's coefficients quantised to zero tells the noise instead (the smallest of the
  per-frequency estimates; an upper bound at low quality, where only anatomy keeps
  coefficients).
- ``TargetNoise``: the re-degradation that follows: Gaussian noise at the estimated level
  (times ``U(0.7, 1.3)``) and, with probability ``p_jpeg``, a JPEG pass (for a JPEG target:
  always, at its own quality +-5; otherwise 30 % of views, mildly, as saved frames often are).
  No blur and no tone change (an enhancer should keep the input's tone); see ``blur_sigma``.
- ``blur_sigma``: the Gaussian blur at the edges, read relative to the frame (256 px on the
  shorter side) from the re-blur gradient ratio (Zhuo and Sim, Pattern Recognition 2011). A
  diagnostic only: adding the blur a target reads beyond a sharp frame's to the student's view
  was tried on DRIVE's training images (selection) and rejected: +0.002 SSIM under defocus with
  light from one side (``select-light-blur``), -0.002 to -0.005 under ``fundus-cataract``, 85-95 %
  of images worse, worse the more blur was added (docs/RESULTS.md). Uneven light is not read
  either: cameras' own fall-off differs more than the shifts add (``benchmarks/
  target_estimates.py``).
- ``speckle_grain``: for OCT B-scans, the speckle's strength and grain: the standard deviation
  of what a 3 px Gaussian smooths away, and its correlation length along the A-scan (axial
  sampling is the same across a device's scan widths; lateral sampling is not). Immerkaer's
  kernel does not see speckle: it is coarse grain, not pixel noise.
- ``TargetSpeckle``: the OCT view that follows: Gaussian noise correlated over the read grain,
  at the read strength (x ``U(0.7, 1.3)``), when the scans' grain is coarser than
  ``GRAIN_FLOOR`` (what clean scans of the source's training patients read); else no noise.
- ``target_redegradation(images, fovs)``: the preset for a set of target images (median
  estimates, the noise floored at ``floor`` so clean images still get a little; JPEG when at
  least half of the images show it). ``measured`` is False when they show neither JPEG nor
  noise above the floor: nothing this re-degradation models (``adapt_offline`` then keeps the
  source weights unless told otherwise).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from same_fast.degrade import ops
from same_fast.degrade.presets import Range, randn_from, uniform

_KERNEL = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def noise_sigma(x01: torch.Tensor, fov: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image standard deviation of additive noise ``(N,)`` (in [0, 1] units) of
    ``(N, C, H, W)`` images: per channel inside ``fov`` (eroded by the kernel's reach), then
    the mean over channels."""
    x = x01.float()
    n_img, c = x.shape[:2]
    r = F.conv2d(x.reshape(n_img * c, 1, *x.shape[-2:]), _KERNEL.to(x).view(1, 1, 3, 3)).abs()
    r = r.view(n_img, c, *r.shape[-2:])
    m = torch.ones_like(x[:, :1]) if fov is None else (fov if fov.dim() == 4 else fov[:, None]).to(x)
    m = -F.max_pool2d(-m, 7, 1, 3)[..., 1:-1, 1:-1]  # erode: no FOV edge in the estimate
    n = (m.flatten(1).sum(1) * c).clamp_min(1.0)
    return math.sqrt(math.pi / 2) / 6 * (r * m).flatten(1).sum(1) / n


@dataclass(frozen=True)
class TargetNoise:
    """Gaussian noise of std ``sigma`` x U(``spread``) and a JPEG pass with probability
    ``p_jpeg`` at quality U(``jpeg_quality``): the student's view for a target whose noise level
    was estimated as ``sigma``."""

    sigma: float
    name: str = "target-noise"
    spread: Range = (0.7, 1.3)
    p_jpeg: float = 0.3
    jpeg_quality: Range = (40.0, 90.0)
    measured: bool = True  # False: the images showed neither JPEG nor noise above the floor
    # what the images read (medians), for the user and the audit log: the noise before the
    # floor, and how many of them showed a JPEG lattice of how many
    noise_read: float = math.nan
    jpeg_images: tuple[int, int] = (0, 0)
    floor: float = 0.005

    def describe(self) -> str:
        """One line: what was read off the target and the view that follows."""
        seen, n = self.jpeg_images
        if self.p_jpeg >= 1.0:
            lo, hi = self.jpeg_quality
            return (f"JPEG at quality {(lo + hi) / 2:.0f} in {seen} of {n} image(s), noise under "
                    f"it {self.sigma:.4f}: the student's view gets noise {self.sigma:.4f} x "
                    f"U({self.spread[0]}, {self.spread[1]}) and JPEG at quality {lo:.0f}-{hi:.0f}")
        read = f"noise {self.noise_read:.4f} (floor {self.floor})"
        jpeg = f"a JPEG lattice in {seen} of {n} image(s)"
        if not self.measured:
            read = f"{read}, {jpeg}: nothing the automatic view models; if adapted anyway"
            jpeg = ""
        return (f"{read}{', ' + jpeg if jpeg else ''}: the student's view gets noise "
                f"{self.sigma:.4f} x "
                f"U({self.spread[0]}, {self.spread[1]}) and, in {self.p_jpeg:.0%} of views, JPEG "
                f"at quality {self.jpeg_quality[0]:.0f}-{self.jpeg_quality[1]:.0f}")

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        n, d = x.shape[0], x.device
        std = (self.sigma * uniform(g, n, self.spread, d)).view(-1, 1, 1, 1)
        use_jpeg = (uniform(g, n, (0, 1), d) < self.p_jpeg).view(-1, 1, 1, 1)
        quality = uniform(g, n, self.jpeg_quality, d)
        y = (x + std * randn_from(g, x)).clamp(0, 1)
        y = torch.where(use_jpeg, ops.jpeg(y, quality), y)
        return ops.keep_fov(y, fov)


_BLUR_REF = 256   # blur is read at this size (the shorter side), relative to the frame
_BLUR_PROBE = 1.0  # sigma (px) of the re-blur whose gradient ratio tells the blur


def blur_sigma(x01: torch.Tensor, fov: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image Gaussian blur ``(N,)`` of ``(N, C, H, W)`` images at the edges, in pixels of
    the image brought to ``_BLUR_REF`` px on its shorter side (area-resized when larger): the
    re-blur gradient ratio of Zhuo and Sim (Pattern Recognition 2011). Re-blurring a step edge
    blurred by ``s`` with a Gaussian of ``p`` divides its gradient by ``R = sqrt(s^2 + p^2) / s``,
    so ``s = p / sqrt(R^2 - 1)``; the median over the strongest 5 % of gradients inside the
    (eroded) field of view. Read relative to the frame, so a camera's resolution does not count
    as blur; area resizing alone leaves about 0.5 px, and noise makes an image read sharper
    (its gradients are the noise's)."""
    x = x01.float()
    lum = ops.luminance(x) if x.shape[1] == 3 else x[:, :1]
    m = torch.ones_like(lum) if fov is None else (fov if fov.dim() == 4 else fov[:, None]).to(lum)
    short = min(lum.shape[-2:])
    if short > _BLUR_REF:
        size = (round(lum.shape[-2] * _BLUR_REF / short), round(lum.shape[-1] * _BLUR_REF / short))
        lum = F.interpolate(lum, size=size, mode="area")
        m = F.interpolate(m, size=size, mode="area")
    m = -F.max_pool2d(-(m > 0.5).float(), 9, 1, 4) > 0.5  # no FOV edge in the estimate

    def grad(t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((t[..., 1:, :-1] - t[..., :-1, :-1]) ** 2
                          + (t[..., :-1, 1:] - t[..., :-1, :-1]) ** 2)

    g1 = grad(lum)
    g2 = grad(ops.blur(lum, torch.full((lum.shape[0],), _BLUR_PROBE), exact=True))
    m = m[..., :-1, :-1]
    out = []
    for i in range(lum.shape[0]):
        a, b = g1[i, 0][m[i, 0]], g2[i, 0][m[i, 0]]
        if a.numel() < 64:
            out.append(math.nan)
            continue
        strong = a >= a.quantile(0.95)
        r = (a[strong] / b[strong].clamp_min(1e-6)).median()
        out.append(float(_BLUR_PROBE / torch.sqrt((r * r - 1).clamp_min(1e-6))))
    return torch.tensor(out)


# OCT speckle: read on the exported grey levels (the display's log domain, where speckle is
# additive). Clean B-scans of oct-lite's training patients read an axial grain of 0.64-0.81 px
# (10th-90th percentile, median 0.74; ``benchmarks/target_estimates.py --oct``): scans whose
# median is coarser than the 90th percentile carry speckle the source model was not trained for.
GRAIN_FLOOR = 0.81
_GRAIN_SMOOTH = 3.0  # px: what this Gaussian smooths away is the speckle (and fine anatomy)


def speckle_grain(x01: torch.Tensor) -> torch.Tensor:
    """``(N, 2)``: per B-scan ``(N, 1, H, W)``, the standard deviation of the speckle (what a
    ``_GRAIN_SMOOTH`` px Gaussian removes, where the smoothed scan is above 0.02: not the zero
    padding) and its axial grain: the sigma (px) of the Gaussian that correlates white noise as
    much as the residual is correlated between neighbouring rows (``rho = exp(-1 / (4 g^2))``)."""
    x = x01.float()[:, :1]
    sm = ops.blur(x, torch.full((x.shape[0],), _GRAIN_SMOOTH), exact=True)
    m = (sm > 0.02).float()
    r = (x - sm) * m
    var = (r * r).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
    pair = m[..., 1:, :] * m[..., :-1, :]
    cov = (r[..., 1:, :] * r[..., :-1, :]).flatten(1).sum(1) / pair.flatten(1).sum(1).clamp_min(1.0)
    rho = (cov / var.clamp_min(1e-12)).clamp(1e-3, 0.999)
    return torch.stack([var.sqrt(), 1.0 / torch.sqrt(-4.0 * torch.log(rho))], 1)


@dataclass(frozen=True)
class TargetSpeckle:
    """The OCT student's view: Gaussian noise correlated over ``grain`` px (unit variance
    again), of std ``sigma`` x U(``spread``), added on the exported grey levels. ``strength``
    and ``grain`` are what the scans read; ``sigma`` is ``strength`` when the grain is coarser
    than ``floor`` (``measured``), else 0: the student's view is then the teacher's."""

    strength: float
    grain: float
    name: str = "target-speckle"
    spread: Range = (0.7, 1.3)
    floor: float = GRAIN_FLOOR

    @property
    def measured(self) -> bool:
        return self.grain > self.floor

    @property
    def sigma(self) -> float:
        return self.strength if self.measured else 0.0

    def describe(self) -> str:
        read = f"speckle {self.strength:.4f} of axial grain {self.grain:.2f} px (floor {self.floor})"
        if not self.measured:
            return f"{read}: no speckle coarser than the source's; the student's view is the teacher's"
        return (f"{read}: the student's view gets noise of std {self.sigma:.4f} x "
                f"U({self.spread[0]}, {self.spread[1]}) correlated over {self.grain:.2f} px")

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        if self.sigma <= 0:
            return x
        n, d = x.shape[0], x.device
        z = ops.blur(randn_from(g, x), torch.full((n,), self.grain, device=d))
        z = z / z.std((1, 2, 3), keepdim=True).clamp_min(1e-6)
        std = (self.sigma * uniform(g, n, self.spread, d)).view(-1, 1, 1, 1)
        return ops.keep_fov((x + std * z).clamp(0, 1), fov)


def target_speckle(images: Sequence[torch.Tensor]) -> TargetSpeckle:
    """``TargetSpeckle`` for OCT B-scans ``(1, H, W)``: the medians of ``speckle_grain``
    (nothing read: strength and grain 0, not measured)."""
    if not images:
        return TargetSpeckle(0.0, 0.0)
    strength, grain = (float(v) for v in torch.cat([speckle_grain(x[None]) for x in images])
                       .median(0).values)
    return TargetSpeckle(strength, grain)


# Low luminance frequencies (row, column) whose steps are read: coefficients there are
# rarely all zero, so their lattice shows even at low quality.
_FREQS = ((0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (2, 0), (1, 2), (2, 1), (0, 3), (3, 0))
_FIT = 0.35      # a step fits when the coefficients' rounding error is below this share of a
                 # uniform error's (1 = no lattice; 8-bit rounding alone gives 1/t^2)
_MIN_COEFS = 24  # non-zero coefficients a step needs to be judged
_QUALITIES = torch.arange(1.0, 100.5, 0.5)
_MAX_BLOCKS = 4096  # blocks read per image (evenly spaced): a full-size photograph has ~10^5


def _block_coefs(x01: torch.Tensor, fov: torch.Tensor | None) -> torch.Tensor:
    """``(B, 8, 8)`` luminance DCT coefficients of the 8x8 blocks (on the grid from the top-left
    corner) that lie wholly inside ``fov`` (``(1, H, W)`` or None), of one ``(C, H, W)`` image."""
    v = x01.float() * 255.0
    y = (0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2]) if v.shape[0] == 3 else v[0]
    h, w = (y.shape[0] // 8) * 8, (y.shape[1] // 8) * 8
    blocks = (y[:h, :w] - 128.0).reshape(h // 8, 8, w // 8, 8).permute(0, 2, 1, 3)
    if fov is not None:
        inside = -F.max_pool2d(-(fov.float().reshape(1, *fov.shape[-2:])[:, :h, :w] > 0.5).float(),
                               8)[0]
        blocks = blocks[inside > 0.5]
    else:
        blocks = blocks.reshape(-1, 8, 8)
    if blocks.shape[0] > _MAX_BLOCKS:
        blocks = blocks[torch.linspace(0, blocks.shape[0] - 1, _MAX_BLOCKS).long()]
    m = ops.dct8_matrix(blocks.device)
    return m @ blocks @ m.T


def _step(c: torch.Tensor, max_step: int = 160) -> float:
    """The largest quantisation step the non-zero coefficients ``c`` (one frequency, all blocks)
    lie on, or NaN."""
    t = torch.arange(2, max_step + 1, dtype=c.dtype).view(-1, 1)
    k = torch.round(c.view(1, -1) / t)
    used = k != 0
    n = used.sum(1)
    err = ((c.view(1, -1) - k * t) ** 2 * used).sum(1) / (n.clamp_min(1) * t[:, 0] ** 2 / 12)
    ok = (n >= _MIN_COEFS) & (err < _FIT)
    if not bool(ok.any()):
        return math.nan
    # the largest fitting step, or a neighbour that fits better: with few non-zero multiples a
    # step a little larger than the true one also fits loosely; its divisors lie at half or less
    top = float(t[ok].max())
    near = ok & (t[:, 0] > 0.75 * top)
    return float(t[near][err[near].argmin()])


def jpeg_quality(x01: torch.Tensor, fov: torch.Tensor | None = None) -> float:
    """The IJG quality (1-100) a decoded JPEG ``(C, H, W)`` in [0, 1] was saved at, or NaN when
    its pixels carry no JPEG lattice (module docstring)."""
    return _quality(_block_coefs(x01, fov))


def _quality(coefs: torch.Tensor) -> float:
    if coefs.shape[0] < _MIN_COEFS:
        return math.nan
    steps = torch.tensor([_step(coefs[:, u, v]) for u, v in _FREQS])
    found = ~torch.isnan(steps)
    if int(found.sum()) < 0.6 * len(_FREQS):
        return math.nan
    idx = torch.tensor([u * 8 + v for u, v in _FREQS])[found]
    tables = ops.jpeg_tables(_QUALITIES)[:, 0].reshape(len(_QUALITIES), 64)[:, idx]
    err = (tables.log() - steps[found].log()).abs().median(1).values  # one odd step may not decide
    best = int(err.argmin())
    return float(_QUALITIES[best]) if float(err[best]) < 0.1 else math.nan


def jpeg_noise_sigma(x01: torch.Tensor, fov: torch.Tensor | None, quality: float) -> float:
    """The sensor noise level of ``x01`` ``(C, H, W)`` before it was saved as a JPEG at
    ``quality`` (NaN when no frequency tells). Immerkaer's estimate fails there: compression
    removes the small coefficients noise makes. The removed share tells the noise: noise of
    std ``s`` (x 255 in the orthonormal DCT) sends ``erf(t / (2 sqrt(2) s))`` of a frequency's
    coefficients to zero when its quantisation step is ``t``. Each AC frequency with a zero
    share in (0.05, 0.99) gives an estimate, one with a larger share an upper bound (the share
    at 0.99); anatomy only widens the spread, so the smallest of them is taken (as Immerkaer's
    ignores texture). At low quality only frequencies that carry anatomy keep coefficients, and
    the estimate is then an upper bound: there the JPEG pass, not the noise, is what the
    re-degradation has to reproduce."""
    return _noise_under_jpeg(_block_coefs(x01, fov), quality)


def _noise_under_jpeg(coefs: torch.Tensor, quality: float) -> float:
    if coefs.shape[0] < 64:
        return math.nan
    table = ops.jpeg_tables(torch.tensor([float(quality)]))[0, 0]
    zero = (coefs.abs() < table / 2).float().mean(0)
    ac = torch.ones(8, 8, dtype=torch.bool)
    ac[0, 0] = False  # the DC coefficient carries the image's brightness, not its noise
    tells = ac & (zero > 0.05)
    if int((tells & (zero < 0.99)).sum()) < 3:
        return math.nan
    s = table[tells] / (2 * math.sqrt(2) * torch.special.erfinv(zero[tells].clamp(max=0.99))) / 255
    return float(s.min())


def target_redegradation(images: Sequence[torch.Tensor],
                         fovs: Sequence[torch.Tensor | None] | None = None,
                         floor: float = 0.005, modality: str = "fundus"
                         ) -> TargetNoise | TargetSpeckle:
    """For OCT B-scans ``target_speckle``; otherwise ``TargetNoise`` for ``images``
    ((C, H, W) in [0, 1]): their median JPEG quality when at
    least half of them show one (then always a JPEG pass at it, +-5, and noise at the median
    ``jpeg_noise_sigma``), else the median Immerkaer estimate with the mild default JPEG."""
    if modality == "oct":
        return target_speckle(images)
    fov_of = [None if fovs is None or fovs[i] is None else fovs[i] for i in range(len(images))]
    coefs = [_block_coefs(x, fov_of[i]) for i, x in enumerate(images)]  # each image's DCT once
    found = [q for q in map(_quality, coefs) if not math.isnan(q)]
    if images and len(found) * 2 >= len(images):
        quality = float(torch.tensor(found).median())
        est = [v for v in (_noise_under_jpeg(c, quality) for c in coefs) if not math.isnan(v)]
        sigma = float(torch.tensor(est).median()) if est else floor
        return TargetNoise(sigma=max(floor, sigma), p_jpeg=1.0,
                           jpeg_quality=(max(1.0, quality - 5), min(100.0, quality + 5)),
                           noise_read=sigma, jpeg_images=(len(found), len(images)), floor=floor)
    est = []
    for i, x in enumerate(images):
        f = None if fov_of[i] is None else fov_of[i][None]
        est.append(float(noise_sigma(x[None], f)[0]))
    sigma = float(torch.tensor(est).median()) if est else 0.0
    return TargetNoise(sigma=max(floor, sigma), measured=sigma >= floor, noise_read=sigma,
                       jpeg_images=(len(found), len(images)), floor=floor)
