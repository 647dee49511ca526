"""The degradation presets of SPEC section 2 as dataclasses whose fields are their ranges.

Ranges are ``(low, high)`` of a uniform draw per image. Spatial ranges in pixels are given at the
reference size ``reference_px`` (512) and scaled by ``min(H, W) / reference_px``; fractional
ranges (of the image size) need no scaling. Each preset's ``apply(x, generator, fov)`` takes
``(N, C, H, W)`` float in [0, 1] and returns the same shape and range; outside ``fov`` is black.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from same_fast.degrade import ops

Range = tuple[float, float]


def uniform(g: torch.Generator | None, n: int, r: Range, device: torch.device) -> torch.Tensor:
    """``n`` uniform draws in ``r`` from ``g`` (drawn on the generator's device, moved to ours)."""
    gd = g.device if g is not None else torch.device("cpu")
    v = torch.rand(n, generator=g, device=gd)
    return (r[0] + (r[1] - r[0]) * v).to(device)


def scale_factor(x: torch.Tensor, reference_px: int) -> float:
    return min(x.shape[-2:]) / float(reference_px)


@dataclass(frozen=True)
class Cataract:
    """Cataract haze (after Li et al.'s ArcNet simulation, SPEC section 2).

    haze: grows linearly with distance from a centre offset by ``center_offset`` x size, smoothed
    with a Gaussian of ``haze_smooth`` x size; image blurred with an OpenCV-style Gaussian of
    ``kernel`` taps (odd, at 512 px) and ``sigma``; ``out = base x blurred + r x haze x
    (channel max - blurred)``, then contrast, brightness and colour factors.
    """

    name: str = "fundus-cataract"
    center_offset: float = 0.3
    haze_smooth: float = 0.05
    kernel: tuple[int, int] = (1, 7)
    sigma: Range = (10.0, 30.0)
    base: float = 0.8
    r: Range = (0.6, 0.8)
    contrast: Range = (0.9, 1.3)
    brightness: Range = (0.9, 1.0)
    color: Range = (0.9, 1.3)
    reference_px: int = 512

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        return self.apply_with_tone(x, g, fov)[0]

    def apply_with_tone(self, x: torch.Tensor, g: torch.Generator | None,
                        fov: torch.Tensor | None = None, keep_blur: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(degraded, tone)``: ``tone`` is the clean image through the same global colour
        factors (contrast, brightness, colour) and nothing else (no haze, no blur; with
        ``keep_blur``, the same blur too: only the haze is taken away)."""
        n, c, h, w = x.shape
        d = x.device
        s = scale_factor(x, self.reference_px)
        cy = (0.5 + uniform(g, n, (-self.center_offset, self.center_offset), d)) * h
        cx = (0.5 + uniform(g, n, (-self.center_offset, self.center_offset), d)) * w
        dist = ops.distance(h, w, cy, cx)
        haze = dist / dist.amax((2, 3), keepdim=True).clamp_min(1e-6)
        haze = ops.blur(haze, torch.full((n,), self.haze_smooth * min(h, w), device=d))
        # odd kernel sizes in [kernel], scaled with the image
        k0, k1 = self.kernel
        kk = torch.floor(uniform(g, n, (k0 / 2, k1 / 2 + 1), d)).clamp_max(k1 // 2) * 2 + 1
        kk = (torch.round((kk - 1) / 2 * s) * 2 + 1).clamp_min(1)
        blurred = ops.box_gaussian_blur(x, kk, uniform(g, n, self.sigma, d) * s)
        cmax = x.amax((2, 3), keepdim=True)
        r = uniform(g, n, self.r, d).view(-1, 1, 1, 1)
        y = self.base * blurred + r * haze * (cmax - blurred)
        factors = (uniform(g, n, self.contrast, d), uniform(g, n, self.brightness, d),
                   uniform(g, n, self.color, d))
        return (ops.keep_fov(_colour(y, *factors).clamp(0, 1), fov),
                ops.keep_fov(_colour(blurred if keep_blur else x, *factors).clamp(0, 1), fov))


def _colour(x: torch.Tensor, contrast: torch.Tensor, brightness: torch.Tensor,
            colour: torch.Tensor) -> torch.Tensor:
    """The cataract's global colour factors, in its order: contrast, brightness, colour."""
    return ops.adjust_saturation(ops.adjust_brightness(ops.adjust_contrast(x, contrast),
                                                       brightness), colour)


def _fork(g: torch.Generator | None) -> torch.Generator | None:
    """A child generator seeded from ``g`` (so a family's draws do not shift the others')."""
    if g is None:
        return None
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=g, device=g.device))
    return torch.Generator(device=g.device).manual_seed(seed)


def _fov4(fov: torch.Tensor) -> torch.Tensor:
    return fov if fov.dim() == 4 else fov.unsqueeze(1)


def _halo(x: torch.Tensor, g: torch.Generator | None, diameter: Range, center: float,
          softness: float, strength: Range, tint: Range) -> torch.Tensor:
    """A bright ring outside a circle of ``diameter`` x size, smoothed, tinted per channel."""
    n, c, h, w = x.shape
    d = x.device
    size = min(h, w)
    cy = (0.5 + uniform(g, n, (-center, center), d)) * h
    cx = (0.5 + uniform(g, n, (-center, center), d)) * w
    r_in = uniform(g, n, diameter, d) * size / 2
    ring = torch.sigmoid((ops.distance(h, w, cy, cx) - r_in.view(-1, 1, 1, 1))
                         / (softness * size))
    t = torch.stack([uniform(g, n, tint, d) for _ in range(c)], 1).view(n, c, 1, 1)
    a = uniform(g, n, strength, d).view(-1, 1, 1, 1)
    return x + a * ring * t * (1 - x)


def _hole(x: torch.Tensor, g: torch.Generator | None, diameter: Range, band: Range,
          depth_base: float, depth_slope: float) -> torch.Tensor:
    """A smooth dark blob of ``diameter`` x width, centre in the middle ``band`` of the image."""
    n, c, h, w = x.shape
    d = x.device
    cy = uniform(g, n, band, d).view(n, 1) * h
    cx = uniform(g, n, band, d).view(n, 1) * w
    # the blob's 1/e^2 radius is the hole's radius: sigma = radius / 2
    rad = (uniform(g, n, diameter, d) * w / 4).view(n, 1)
    blob = ops.gaussian_blobs(h, w, cy, cx, rad, torch.ones(n, 1, device=d))
    depth = depth_base + depth_slope * x.mean((1, 2, 3))
    return x * (1 - depth.view(-1, 1, 1, 1) * blob.clamp(0, 1))


@dataclass(frozen=True)
class Shen2020:
    """Fundus degradations of Shen et al. 2020 (effective ranges of the reference code).

    Per image a type is drawn uniformly from ``types``; ``illum`` = colour jitter + halo + dark
    hole, ``spot`` = bright spots, ``blur`` = Gaussian blur, ``cataract`` = the ``cataract``
    preset. Colour factors follow PIL's ImageEnhance (brightness, contrast, saturation).
    """

    name: str = "fundus-shen2020"
    types: tuple[str, ...] = ("illum", "spot", "blur", "illum+spot", "blur+illum", "blur+spot",
                              "illum+spot+blur", "cataract", "cataract")
    brightness: Range = (0.5, 1.4)
    contrast: Range = (0.5, 1.5)
    saturation: Range = (0.5, 1.5)
    halo_diameter: Range = (0.75, 1.0)   # inner diameter, fraction of the image size
    halo_center: float = 0.125           # centre offset, fraction of the size
    halo_softness: float = 0.05          # ring edge width, fraction of the size
    halo_strength: Range = (0.2, 0.6)    # fraction of the way to white at the ring
    halo_tint: Range = (0.6, 1.0)        # per-channel factor of the ring's brightness
    hole_diameter: Range = (0.4, 0.7)    # fraction of the width
    hole_band: Range = (0.35, 0.65)      # centre range, fraction of height/width
    hole_depth_base: float = 0.26
    hole_depth_slope: float = 0.05       # x mean intensity in [0, 1]
    spots: tuple[int, int] = (5, 10)
    spot_radius: Range = (0.01, 0.05)    # fraction of the height
    spot_strength: Range = (0.05, 0.3)   # peak brightening of a spot, toward white
    blur_sigma: Range = (5.0, 15.0)      # pixels at reference_px
    reference_px: int = 512
    cataract: Cataract = field(default_factory=Cataract)

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        return self.apply_with_tone(x, g, fov)[0]

    def apply_with_tone(self, x: torch.Tensor, g: torch.Generator | None,
                        fov: torch.Tensor | None = None, keep_blur: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(degraded, tone)`` with the same draws as ``apply``. ``tone`` is the clean image
        through the sample's global colour factors alone (brightness, contrast, saturation for
        ``illum``; the cataract's contrast, brightness and colour): what an enhancer that keeps
        the input's global tone and undoes every local family would return, blur removed.
        ``keep_blur``: the tone keeps the sample's blur too (the blur family's, the cataract's):
        what undoing the smooth families alone (light, hole, spots, haze) would return."""
        n, c, h, w = x.shape
        d = x.device
        idx = torch.floor(uniform(g, n, (0, len(self.types)), d)).long().clamp_max(len(self.types) - 1)
        kinds = [self.types[i] for i in idx.tolist()]
        has = {k: torch.tensor([k in t.split("+") for t in kinds], device=d)
               for k in ("illum", "spot", "blur", "cataract")}
        # Parameters are drawn for every sample (so a sample's draw does not depend on the
        # others' types), but each family runs only on the samples whose type includes it.
        bright = uniform(g, n, self.brightness, d)
        contrast = uniform(g, n, self.contrast, d)
        sat = uniform(g, n, self.saturation, d)
        k = self.spots[1]
        count = torch.floor(uniform(g, n, (self.spots[0], self.spots[1] + 1), d)).clamp_max(k)
        present = (torch.arange(k, device=d).view(1, k) < count.view(n, 1)).float()
        spot_cy = uniform(g, n * k, (0.1, 0.9), d).view(n, k) * h
        spot_cx = uniform(g, n * k, (0.1, 0.9), d).view(n, k) * w
        spot_r = uniform(g, n * k, self.spot_radius, d).view(n, k) * h
        spot_a = uniform(g, n * k, self.spot_strength, d).view(n, k) * present
        sig = uniform(g, n, self.blur_sigma, d) * scale_factor(x, self.reference_px)
        halo_g = _fork(g)
        hole_g = _fork(g)
        cat_g = _fork(g)
        y = x
        tone = x
        sel = has["illum"].nonzero().view(-1)
        if sel.numel():
            z = y.index_select(0, sel)
            f = None if fov is None else _fov4(fov).index_select(0, sel)
            z = ops.adjust_brightness(z, bright[sel])
            z = ops.adjust_contrast(z, contrast[sel])
            z = ops.keep_fov(ops.adjust_saturation(z, sat[sel]).clamp(0, 1), f)
            tone = tone.index_copy(0, sel, z)
            z = _halo(z, halo_g, self.halo_diameter, self.halo_center, self.halo_softness,
                      self.halo_strength, self.halo_tint)
            z = _hole(z, hole_g, self.hole_diameter, self.hole_band, self.hole_depth_base,
                      self.hole_depth_slope)
            y = y.index_copy(0, sel, z)
        sel = has["spot"].nonzero().view(-1)
        if sel.numel():
            z = y.index_select(0, sel)
            spots = ops.gaussian_blobs(h, w, spot_cy[sel], spot_cx[sel], spot_r[sel],
                                       spot_a[sel]).clamp(0, 1)
            y = y.index_copy(0, sel, z + spots * (1 - z))
        sel = has["blur"].nonzero().view(-1)
        if sel.numel():
            y = y.index_copy(0, sel, ops.blur(y.index_select(0, sel), sig[sel]))
            if keep_blur:
                tone = tone.index_copy(0, sel, ops.blur(tone.index_select(0, sel), sig[sel]))
        sel = has["cataract"].nonzero().view(-1)
        if sel.numel():
            f = None if fov is None else _fov4(fov).index_select(0, sel)
            cy, ct = self.cataract.apply_with_tone(x.index_select(0, sel), cat_g, f,
                                                   **({"keep_blur": True} if keep_blur else {}))
            y = y.index_copy(0, sel, cy)
            tone = tone.index_copy(0, sel, ct)
        return ops.keep_fov(y.clamp(0, 1), fov), ops.keep_fov(tone.clamp(0, 1), fov)


@dataclass(frozen=True)
class Gray:
    """Grey-scale degradations for OCT and ultrasound (SPEC section 2).

    Brightness x ``dark`` or x ``bright`` (equal odds), contrast x ``contrast``; halo, hole and
    blur each with probability ``p_halo``, ``p_hole``, ``p_blur``; then additive Gaussian noise
    (variance ``noise_var``) or multiplicative speckle ``x + x n`` (variance ``speckle_var``),
    equal odds.
    """

    name: str = "gray"
    dark: Range = (0.5, 0.7)
    bright: Range = (1.2, 1.5)
    contrast: Range = (0.4, 1.6)
    p_halo: float = 0.5
    p_hole: float = 0.5
    p_blur: float = 0.5
    halo_diameter: Range = (0.75, 1.0)
    halo_center: float = 0.125
    halo_softness: float = 0.05
    halo_strength: Range = (0.2, 0.6)
    hole_diameter: Range = (0.4, 0.7)
    hole_band: Range = (0.35, 0.65)
    hole_depth_base: float = 0.26
    hole_depth_slope: float = 0.05
    blur_sigma: Range = (5.0, 15.0)      # pixels at reference_px
    noise_var: Range = (0.01, 0.03)
    speckle_var: Range = (0.02, 0.05)
    reference_px: int = 512

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        d = x.device
        dark = uniform(g, n, (0, 1), d) < 0.5
        f = torch.where(dark, uniform(g, n, self.dark, d), uniform(g, n, self.bright, d))
        y = ops.adjust_contrast(ops.adjust_brightness(x, f), uniform(g, n, self.contrast, d))
        y = y.clamp(0, 1)
        use = {k: (uniform(g, n, (0, 1), d) < p).view(-1, 1, 1, 1)
               for k, p in (("halo", self.p_halo), ("hole", self.p_hole), ("blur", self.p_blur))}
        z = _halo(y, g, self.halo_diameter, self.halo_center, self.halo_softness,
                  self.halo_strength, (1.0, 1.0))
        y = torch.where(use["halo"], z, y)
        z = _hole(y, g, self.hole_diameter, self.hole_band, self.hole_depth_base,
                  self.hole_depth_slope)
        y = torch.where(use["hole"], z, y)
        sig = uniform(g, n, self.blur_sigma, d) * scale_factor(x, self.reference_px)
        sel = use["blur"].view(-1).nonzero().view(-1)
        y = y.index_copy(0, sel, ops.blur(y.index_select(0, sel), sig.index_select(0, sel)))
        gaussian = (uniform(g, n, (0, 1), d) < 0.5).view(-1, 1, 1, 1)
        std_n = uniform(g, n, self.noise_var, d).sqrt().view(-1, 1, 1, 1)
        std_s = uniform(g, n, self.speckle_var, d).sqrt().view(-1, 1, 1, 1)
        noise = randn_from(g, y)
        y = torch.where(gaussian, y + std_n * noise, y + y * std_s * noise)
        return ops.keep_fov(y.clamp(0, 1), fov)


def randn_from(g: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    gd = g.device if g is not None else torch.device("cpu")
    return torch.randn(like.shape, generator=g, device=gd).to(like.device, like.dtype)


@dataclass(frozen=True)
class UltrasoundSpeckle:
    """Ultrasound speckle following the imaging physics.

    The displayed image is taken as log-compressed envelope ``x = 1 + ln(a) / D`` over a dynamic
    range of ``dynamic_range_db``; the envelope ``a`` is multiplied by fully developed speckle
    (Rayleigh amplitude of a complex Gaussian field, spatially correlated by a Gaussian of
    ``grain_sigma`` pixels at 512 px, unit mean), mixed with the clean envelope by
    ``strength``, log-compressed back, then gain x ``gain``, contrast x ``contrast`` and a mild
    blur (``blur_sigma`` at 512 px) with probability ``p_blur``.
    """

    name: str = "ultrasound-speckle"
    dynamic_range_db: Range = (40.0, 60.0)
    grain_sigma: Range = (0.7, 2.0)
    strength: Range = (0.5, 1.0)
    gain: Range = (0.7, 1.2)
    contrast: Range = (0.6, 1.1)
    p_blur: float = 0.5
    blur_sigma: Range = (1.0, 4.0)
    reference_px: int = 512

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        d = x.device
        s = scale_factor(x, self.reference_px)
        dr = uniform(g, n, self.dynamic_range_db, d).view(-1, 1, 1, 1) * (math.log(10) / 20)
        env = torch.exp((x - 1.0) * dr)  # linear envelope amplitude in (0, 1]
        # complex Gaussian field, smoothed to the speckle grain, renormalised to unit power
        grain = uniform(g, n, self.grain_sigma, d) * s
        re = ops.blur(randn_from(g, x), grain)
        im = ops.blur(randn_from(g, x), grain)
        power = (re ** 2 + im ** 2)
        amp = torch.sqrt(power / power.mean((1, 2, 3), keepdim=True).clamp_min(1e-12))
        amp = amp / math.sqrt(math.pi / 4)  # Rayleigh mean sqrt(pi)/2 -> unit mean amplitude
        k = uniform(g, n, self.strength, d).view(-1, 1, 1, 1)
        speckled = env * ((1 - k) + k * amp)
        y = 1.0 + torch.log(speckled.clamp_min(1e-6)) / dr
        y = ops.adjust_brightness(y.clamp(0, 1), uniform(g, n, self.gain, d))
        y = ops.adjust_contrast(y, uniform(g, n, self.contrast, d)).clamp(0, 1)
        use = uniform(g, n, (0, 1), d) < self.p_blur
        y = ops.blur(y, uniform(g, n, self.blur_sigma, d) * s * use)
        return ops.keep_fov(y.clamp(0, 1), fov)


@dataclass(frozen=True)
class SensorNoise:
    """Camera sensor noise (beyond the SPEC's families): Poisson-Gaussian, per pixel and channel.

    ``y = x + sqrt(shot * x + read ** 2) * n`` with ``n`` standard normal: shot noise whose
    variance grows with the signal (``shot`` is the gain in [0, 1] units) plus signal-independent
    read noise of standard deviation ``read``, the usual model of a dim or small sensor. None of
    the fundus presets adds noise, so this is a shift that ``fundus-lite`` never saw.
    """

    name: str = "sensor-noise"
    shot: Range = (0.002, 0.008)
    read: Range = (0.01, 0.03)

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        d = x.device
        shot = uniform(g, n, self.shot, d).view(-1, 1, 1, 1)
        read = uniform(g, n, self.read, d).view(-1, 1, 1, 1)
        y = x + torch.sqrt(shot * x + read ** 2) * randn_from(g, x)
        return ops.keep_fov(y.clamp(0, 1), fov)



@dataclass(frozen=True)
class OCT:
    """Retinal OCT B-scan degradations (beyond the SPEC's grey families): what degrades a
    Spectralis-style export in the clinic.

    The exported grey level is taken as log-compressed intensity, ``x = 1 + ln(I) / D`` over
    ``dynamic_range_db`` (10 log10 units), and the physics runs on the linear ``I``: an
    anisotropic optical blur (``axial_sigma`` along the A-scan, ``lateral_sigma`` across it,
    pixels at 512, with probability ``p_blur``); shadows under vessels (``shadows`` vertical
    bands of ``shadow_width`` x width, from just below the retinal surface down, intensity x
    ``1 - shadow_depth``, with probability ``p_shadow``); signal loss (``signal_loss_db``);
    multiplicative speckle of ``looks`` looks (log-uniform; spatially correlated over
    ``grain_sigma`` px) plus a speckled noise floor at ``noise_floor`` of the display range (0: none);
    back to the display, then low gain (x ``gain``); motion lines (``motion_bands`` bands of
    ``motion_width`` x width of A-scans shifted along the beam by up to ``motion_shift`` px at
    512, with probability ``p_motion``); JPEG quantisation at ``jpeg_quality`` (probability
    ``p_jpeg``). The scan's own speckle stays in the clean reference.
    """

    name: str = "oct"
    dynamic_range_db: Range = (30.0, 40.0)
    p_blur: float = 0.7
    axial_sigma: Range = (0.3, 1.5)
    lateral_sigma: Range = (0.5, 3.0)
    p_shadow: float = 0.5
    shadows: tuple[int, int] = (1, 4)
    shadow_width: Range = (0.005, 0.03)
    shadow_depth: Range = (0.5, 0.9)
    signal_loss_db: Range = (0.0, 6.0)
    looks: Range = (2.0, 16.0)
    grain_sigma: Range = (0.4, 1.0)
    noise_floor: Range = (0.0, 0.15)
    gain: Range = (0.7, 1.0)
    p_motion: float = 0.3
    motion_bands: tuple[int, int] = (1, 3)
    motion_width: Range = (0.01, 0.1)
    motion_shift: Range = (2.0, 10.0)
    p_jpeg: float = 0.5
    jpeg_quality: Range = (10.0, 50.0)
    reference_px: int = 512

    def apply(self, x: torch.Tensor, g: torch.Generator | None,
              fov: torch.Tensor | None = None) -> torch.Tensor:
        n, _c, h, w = x.shape
        d = x.device
        s = scale_factor(x, self.reference_px)
        dr = (uniform(g, n, self.dynamic_range_db, d) * (math.log(10) / 10)).view(-1, 1, 1, 1)
        use = {k: uniform(g, n, (0, 1), d) < p for k, p in (
            ("blur", self.p_blur), ("shadow", self.p_shadow), ("motion", self.p_motion),
            ("jpeg", self.p_jpeg))}
        inten = torch.exp((x - 1.0) * dr)  # linear intensity in (0, 1]
        inten = ops.anisotropic_blur(inten, uniform(g, n, self.axial_sigma, d) * s * use["blur"],
                                     uniform(g, n, self.lateral_sigma, d) * s * use["blur"])
        inten = inten * self._shadow(x, _fork(g), use["shadow"])
        loss = uniform(g, n, self.signal_loss_db, d) * (math.log(10) / 10)
        inten = inten * torch.exp(-loss).view(-1, 1, 1, 1)
        looks = torch.exp(uniform(g, n, (math.log(self.looks[0]), math.log(self.looks[1])), d))
        grain = uniform(g, n, self.grain_sigma, d) * s
        level = uniform(g, n, self.noise_floor, d).view(-1, 1, 1, 1)
        floor = torch.exp((level - 1.0) * dr) * (level > 0)  # level 0: no floor at all
        inten = (inten * ops.gamma_speckle(self._field(g, x, grain), looks)
                 + floor * ops.gamma_speckle(self._field(g, x, grain), torch.ones_like(looks)))
        y = (1.0 + torch.log(inten.clamp_min(1e-12)) / dr).clamp(0, 1)
        y = ops.adjust_brightness(y, uniform(g, n, self.gain, d))
        y = ops.shift_columns(y, self._motion(_fork(g), n, w, s, d) * use["motion"].view(-1, 1))
        q = uniform(g, n, self.jpeg_quality, d)
        sel = use["jpeg"].nonzero().view(-1)
        if sel.numel():
            y = y.index_copy(0, sel, ops.jpeg(y.index_select(0, sel), q[sel]))
        return ops.keep_fov(y.clamp(0, 1), fov)

    @staticmethod
    def _field(g: torch.Generator | None, like: torch.Tensor, grain: torch.Tensor
               ) -> torch.Tensor:
        """A standard normal field correlated over ``grain`` pixels (unit variance again)."""
        z = ops.blur(randn_from(g, like), grain)
        return z / z.std((1, 2, 3), keepdim=True).clamp_min(1e-6)

    def _shadow(self, x: torch.Tensor, g: torch.Generator | None, on: torch.Tensor
                ) -> torch.Tensor:
        """``(N, 1, H, W)`` intensity factors: dark vertical bands under vessels, starting a
        little below the retinal surface (the first row above 40 % of the column's maximum of
        the smoothed scan) and reaching the bottom of the scan."""
        n, _c, h, w = x.shape
        d = x.device
        k = self.shadows[1]
        count = torch.floor(uniform(g, n, (self.shadows[0], k + 1), d)).clamp_max(k) * on
        present = (torch.arange(k, device=d).view(1, k) < count.view(n, 1)).float()
        cx = uniform(g, n * k, (0.05, 0.95), d).view(n, k, 1) * w
        width = uniform(g, n * k, self.shadow_width, d).view(n, k, 1) * w
        depth = uniform(g, n * k, self.shadow_depth, d).view(n, k, 1) * present.view(n, k, 1)
        xx = torch.arange(w, device=d, dtype=torch.float32).view(1, 1, w) + 0.5
        band = torch.exp(-0.5 * ((xx - cx) / width.clamp_min(0.5)) ** 2)
        dark = 1.0 - torch.prod(1.0 - depth * band, 1)  # (N, W) attenuation of each column
        sm = ops.blur(x.mean(1, keepdim=True), torch.full((n,), 3.0, device=d))
        above = sm > 0.4 * sm.amax(2, keepdim=True)
        surface = above.float().argmax(2, keepdim=True).float()  # (N, 1, 1, W)
        rows = torch.arange(h, device=d, dtype=torch.float32).view(1, 1, h, 1)
        below = torch.sigmoid((rows - surface - 0.02 * h) / 2.0)
        return 1.0 - dark.view(n, 1, 1, w) * below

    def _motion(self, g: torch.Generator | None, n: int, w: int, s: float, d: torch.device
                ) -> torch.Tensor:
        """``(N, W)`` whole-pixel axial shifts: bands of A-scans moved up or down."""
        k = self.motion_bands[1]
        count = torch.floor(uniform(g, n, (self.motion_bands[0], k + 1), d)).clamp_max(k)
        present = torch.arange(k, device=d).view(1, k) < count.view(n, 1)
        start = uniform(g, n * k, (0.0, 1.0), d).view(n, k, 1) * w
        width = uniform(g, n * k, self.motion_width, d).view(n, k, 1) * w
        sign = torch.where(uniform(g, n * k, (0, 1), d) < 0.5, -1.0, 1.0).view(n, k, 1)
        shift = torch.round(uniform(g, n * k, self.motion_shift, d).view(n, k, 1) * s * sign)
        xx = torch.arange(w, device=d, dtype=torch.float32).view(1, 1, w)
        inside = (xx >= start) & (xx < start + width) & present.view(n, k, 1)
        return (shift * inside).sum(1)


Preset = Shen2020 | Cataract | Gray | UltrasoundSpeckle | SensorNoise | OCT

# Shen et al.'s families without any global colour factor: blur, uneven light (halo, hole),
# spots and the cataract haze. One photograph does not tell its camera's true tone, so this is
# the test of what an enhancer that keeps the input's tone should fully undo (issue #20).
FUNDUS_LOCAL = Shen2020(name="fundus-local", brightness=(1.0, 1.0), contrast=(1.0, 1.0),
                        saturation=(1.0, 1.0),
                        cataract=Cataract(contrast=(1.0, 1.0), brightness=(1.0, 1.0),
                                          color=(1.0, 1.0)))

# Speckle outside ultrasound-lite's training range (40-60 dB, grain 0.7-2, strength 0.5-1,
# contrast 0.6-1.1): a narrower dynamic range, coarser speckle, lower contrast, no blur. Overrides
# of UltrasoundSpeckle (not a registered preset): the demo's echo case and the lab's
# busi-speckle experiment.
SPECKLE_BEYOND_TRAINING: dict[str, Range | float] = dict(
    dynamic_range_db=(32.0, 38.0), grain_sigma=(2.2, 3.0), strength=(0.9, 1.0),
    contrast=(0.5, 0.6), p_blur=0.0)

PRESETS: dict[str, Preset] = {
    p.name: p for p in (Shen2020(), Cataract(), Gray(), UltrasoundSpeckle(), SensorNoise(),
                        FUNDUS_LOCAL, OCT())
}
