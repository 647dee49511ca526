"""SAMENet: the structure-preserving enhancer of SAME (SPEC section 3).

One encoder and two decoders. The image decoder is a U-Net up-path with skips from the encoder;
the structure decoder has the same widths but at each level takes the image decoder's features at
that resolution instead of the encoder's, so a loss on structure shapes the enhancement features.

Tensors are float32 ``(N, C, H, W)`` in [-1, 1] on any device; ``H`` and ``W`` must be multiples
of ``model.multiple`` (``same_fast.nn.enhance`` pads and crops for you).

Presets (named configurations of the one class, not subclasses):

- ``paper``: the reference exactly: pix2pix U-Net-256 (8 stride-2 4x4 convolutions, 64 base
  channels capped at 512, instance norm without affine, LeakyReLU 0.2 down, ReLU up, dropout 0.5
  in the three innermost decoder stages, tanh image output) with the structure decoder beside it:
  89,279,300 parameters for RGB.
- ``lite``: the fast default for CPU and real time, chosen by measurement
  (``same-fast bench --suite models``): a space-to-depth stem (pixel-unshuffle by 2, so nothing
  runs at full resolution), 16 base channels, 5 levels, no normalisation, a pixel-shuffle head
  and a residual image output.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from same_fast.errors import InputError
from same_fast.nn.dropout import Dropout

# Named configurations; every key is a SAMENet constructor argument.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(base=64, max_channels=512, levels=8, stem=1, norm="instance",
                  dropout=0.5, dropout_levels=3, residual=False, context=False, field=False),
    "lite": dict(base=16, max_channels=128, levels=5, stem=2, norm="none",
                 dropout=0.1, dropout_levels=2, residual=True, context=False, field=False),
}

_NORMS = ("instance", "group", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "group":
        return nn.GroupNorm(min(4, channels), channels)
    return nn.Identity()


class _Up(nn.Module):
    """One decoder stage: ReLU, 4x4 stride-2 transposed conv, norm, optional dropout."""

    def __init__(self, cin: int, cout: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=norm != "group")
        self.norm = _norm(norm, cout)
        self.drop = Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.conv(F.relu(x))))


class _Context(nn.Module):
    """Whole-image context for the innermost features: ``f + mlp([mean(f); max(f)])``.

    Some degradations are set by a few numbers per image (ultrasound gain and contrast, a colour
    cast, a haze's strength), which convolutions that see ~150 px cannot estimate. The pooled
    summary is broadcast back over the innermost map. Max pooling does not change with how much
    black border (outside the FOV) the frame has. The last layer starts at zero, so adding
    context to a trained network leaves its output unchanged until it learns. Measured: it let
    ``ultrasound-lite`` undo BUSI's tone (+0.35 dB at equal training); it did not help
    ``fundus-lite`` across cameras (README, "What changed in ultrasound-lite").
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * channels, channels)
        self.fc2 = nn.Linear(channels, channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)
        return f + self.fc2(F.relu(self.fc1(pooled)))[:, :, None, None]


class _Field(nn.Module):
    """A smooth per-pixel gain and offset, read from a coarse copy of the whole input.

    Uneven light, a dark hole, bright spots and a cataract veil all act on a photograph as
    ``y = a(p) x + b(p)`` with fields ``a``, ``b`` that vary slowly over the image (a halo
    brightens toward white, a veil adds light and takes contrast), which a U-Net with a
    receptive field of ~190 px cannot read on a 500-1000 px frame, and which convolutions
    approximate badly since they must multiply the input by a field. This block reads the input
    down by ``factor`` as each cell's mean and its spread (the spread tells how much contrast a
    veil took, which a mean alone cannot), runs dilated convolutions whose reach covers a whole
    frame at that scale, and predicts per channel a log-gain ``g`` (bounded to
    +-``max_log_gain``) and an offset ``o`` (bounded to +-1 level) at the coarse grid,
    up-sampled bilinearly to full size and applied in [0, 1] as ``x01' = (x01 - o) * exp(g)``:
    the light a veil or halo adds is taken away first, then the contrast it took is given back
    (an offset added after the gain would need values far outside [-1, 1] to undo a thick
    veil). The last layer starts at zero, so adding the block to a trained network leaves its
    output unchanged until it learns. It reads its cells relative to the frame's own level (the
    mean of each channel over the lit disc) and gives its offset in units of that level, so
    ``field(k x) = k field(x)`` for any per-channel gain ``k``: it answers the shape of the
    light, and cannot carry a camera's brightness or palette into its output.

    The field of view: a fundus photograph is a lit disc on black, and cells on its rim would
    mix the black outside into their mean and spread (and a bilinear field would carry what the
    block predicts there into the disc). The block reads the FOV off the input (pixels whose
    brightest channel is above ``fov_threshold``), takes each cell's mean and spread over its
    lit pixels only, is told each cell's lit share, and up-samples its fields weighted by that
    share, so a pixel's field comes from the lit cells around it. (The block was built for
    fundus photographs; in a grey scan, OCT's dark background or the black around an ultrasound
    sector would read as unlit in the same way.)
    """

    def __init__(self, channels: int, width: int = 32, factor: int = 16,
                 max_log_gain: float = 2.5, fov_threshold: float = 0.04, pool: bool = False) -> None:
        super().__init__()
        self.factor = factor
        self.max_log_gain = max_log_gain
        self.fov_threshold = fov_threshold
        # pool: the batch is frames of one camera, and each frame is also told the per-cell
        # median of their statistics (the camera's own light, which one frame does not tell)
        self.pool = pool
        inputs = (4 if pool else 2) * channels + 1
        layers: list[nn.Module] = [nn.Conv2d(inputs, width, 3, 1, 1), nn.LeakyReLU(0.2)]
        for dilation in (2, 4, 8, 1):
            layers += [nn.Conv2d(width, width, 3, 1, dilation, dilation=dilation),
                       nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, 2 * channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def lit(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)``: 1 where ``x`` (in [-1, 1]) is inside the lit field of view."""
        return ((x.amax(1, keepdim=True) + 1.0) * 0.5 > self.fov_threshold).to(x.dtype)

    def fields(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_gain, offset)``, each ``(N, C, H, W)``, for ``x`` in [-1, 1]; the offset is
        in [0, 1] units."""
        c = x.shape[1]
        x01 = (x + 1.0) * 0.5
        w = self.lit(x)
        # the frame's own per-channel level: statistics are read relative to it and the offset
        # is given in its units, so field(k x) = k field(x) for a per-channel gain k
        level = ((x01 * w).sum((2, 3), keepdim=True)
                 / w.sum((2, 3), keepdim=True).clamp_min(1.0)).clamp_min(0.02)
        share = F.avg_pool2d(w, self.factor)
        den = share.clamp_min(1e-3)
        mean = F.avg_pool2d(x01 * w, self.factor) / den
        spread = torch.sqrt((F.avg_pool2d(x01 * x01 * w, self.factor) / den - mean * mean)
                            .clamp_min(1e-8))
        stats = torch.cat([mean / level, spread / level], 1)
        if self.pool:
            stats = torch.cat([stats, stats.median(0, keepdim=True).values.expand_as(stats)], 1)
        g, o = self.out(self.body(torch.cat([stats, share], 1))).split(c, 1)
        fields = torch.cat([self.max_log_gain * torch.tanh(g), torch.tanh(o)], 1)
        size = x.shape[-2:]
        up = F.interpolate(torch.cat([fields * share, share], 1), size=size, mode="bilinear",
                           align_corners=False)
        # a pixel with no lit cell around it (far outside the disc) gets gain 1 and offset 0
        fields = up[:, :-1] / up[:, -1:].clamp_min(1e-3)
        g, o = fields.split(c, 1)
        return g, o * level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, o = self.fields(x)
        return (((x + 1.0) * 0.5 - o) * torch.exp(g)).clamp(0.0, 1.0) * 2.0 - 1.0


class _Decoder(nn.Module):
    """An up-path. ``ups[k]`` makes the features at the resolution of encoder level ``k``."""

    def __init__(self, widths: list[int], out_channels: int, stem: int, norm: str,
                 dropout: float, dropout_levels: int) -> None:
        super().__init__()
        levels = len(widths)
        ups = []
        for k in range(1, levels):  # ups[k-1]: level k -> resolution of level k-1
            cin = widths[k] if k == levels - 1 else 2 * widths[k]
            # pix2pix: no dropout in the innermost stage, dropout in the next `dropout_levels`
            drop = dropout if 1 <= levels - 1 - k <= dropout_levels else 0.0
            ups.append(_Up(cin, widths[k - 1], norm, drop))
        self.ups = nn.ModuleList(ups)
        if stem == 1:  # pix2pix outermost: transposed conv back to full resolution
            self.head = nn.ConvTranspose2d(2 * widths[0], out_channels, 4, 2, 1)
        else:  # conv to out*stem^2 channels, then pixel-shuffle to full resolution
            self.head = nn.Conv2d(2 * widths[0], out_channels * stem * stem, 3, 1, 1)
        self.stem = stem


class SAMENet(nn.Module):
    """The two-decoder enhancer.

    Args:
        in_channels: image channels (3 for colour fundus, 1 for OCT/ultrasound); the image output
            has the same number, the structure output one.
        preset: ``"lite"`` or ``"paper"``; its values are defaults for the keyword arguments.
        base: channels of the first encoder level; doubled per level up to ``max_channels``.
        levels: number of encoder levels (each halves the resolution).
        stem: 1 = pix2pix input (the first level is a stride-2 4x4 conv on the image); s > 1 =
            pixel-unshuffle by s and a 3x3 conv, and a pixel-shuffle head (nothing at full res).
        norm: ``"instance"`` (no affine), ``"group"`` or ``"none"``.
        dropout, dropout_levels: dropout probability in that many decoder stages next to the
            innermost one (active in train mode only).
        residual: image output = clamp(input + head, -1, 1) instead of tanh(head).
        context: add a whole-image summary (mean and max pooled, through a small MLP that
            starts at zero) to the innermost features, which both decoders read.

    ``forward(x)`` takes ``(N, C, H, W)`` in [-1, 1] and returns ``(image (N, C, H, W) in
    [-1, 1], structure_logits (N, 1, H, W))``; apply a sigmoid for a structure probability.
    """

    def __init__(self, in_channels: int = 3, preset: str = "lite", **overrides: Any) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise InputError(f"unknown SAMENet preset '{preset}' (choose from {sorted(PRESETS)})")
        unknown = set(overrides) - set(PRESETS[preset])
        if unknown:
            raise InputError(f"unknown SAMENet option(s) {sorted(unknown)}")
        cfg = {**PRESETS[preset], **overrides}
        if cfg["norm"] not in _NORMS:
            raise InputError(f"SAMENet norm must be one of {_NORMS}, got '{cfg['norm']}'")
        if int(cfg["levels"]) < 2 or int(cfg["stem"]) < 1 or int(in_channels) < 1:
            raise InputError("SAMENet needs levels >= 2, stem >= 1 and in_channels >= 1")
        self.config: dict[str, Any] = {"in_channels": int(in_channels), "preset": preset, **cfg}
        levels, stem, norm = int(cfg["levels"]), int(cfg["stem"]), cfg["norm"]
        widths = [min(int(cfg["base"]) * 2 ** k, int(cfg["max_channels"])) for k in range(levels)]
        self.widths = widths
        self.in_channels = int(in_channels)
        self.stem = stem
        self.residual = bool(cfg["residual"])
        # Input side must divide by every stride: stem, then levels-1 (stem > 1) or levels halvings.
        self.multiple = stem * 2 ** (levels - 1) if stem > 1 else 2 ** levels

        downs: list[nn.Module] = []
        if stem == 1:
            downs.append(nn.Conv2d(in_channels, widths[0], 4, 2, 1))
        else:
            downs.append(nn.Conv2d(in_channels * stem * stem, widths[0], 3, 1, 1))
        for k in range(1, levels):
            innermost = k == levels - 1
            downs.append(nn.Sequential(
                nn.LeakyReLU(0.2),
                nn.Conv2d(widths[k - 1], widths[k], 4, 2, 1, bias=norm != "group"),
                nn.Identity() if innermost else _norm(norm, widths[k]),
            ))
        self.downs = nn.ModuleList(downs)
        self.context = _Context(widths[-1]) if cfg["context"] else None
        # the light field's coarse grid: 1/16 of the input (or the network's multiple if smaller)
        self.field = (_Field(in_channels, factor=math.gcd(16, self.multiple)) if cfg["field"]
                      else None)
        dec = dict(stem=stem, norm=norm, dropout=float(cfg["dropout"]),
                   dropout_levels=int(cfg["dropout_levels"]))
        self.image_decoder = _Decoder(widths, in_channels, **dec)
        self.structure_decoder = _Decoder(widths, 1, **dec)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = F.pixel_unshuffle(x, self.stem) if self.stem > 1 else x
        feats = []
        for down in self.downs:
            h = down(h)
            feats.append(h)
        if self.context is not None:
            feats[-1] = self.context(feats[-1])
        return feats

    def _head(self, dec: _Decoder, h: torch.Tensor) -> torch.Tensor:
        out = dec.head(F.relu(h))
        return F.pixel_shuffle(out, self.stem) if self.stem > 1 else out

    def forward(self, x: torch.Tensor, structure: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` (N, C, H, W) in [-1, 1] -> (image in [-1, 1], structure logits (N, 1, H, W)).

        ``structure=False`` skips the structure decoder (it does not feed the image) and returns
        ``(image, None)``: inference needs only the image.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"SAMENet expects (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise InputError(f"SAMENet input H, W must be multiples of {self.multiple}, got "
                             f"{tuple(x.shape[-2:])} (use same_fast.nn.enhance, which pads)")
        if self.field is not None:
            x = self.field(x)
        feats = self._encode(x)
        levels = len(feats)
        # Image decoder; keep each stage's output (before the skip concat) for the structure path.
        img_feats: list[torch.Tensor] = []
        h = feats[-1]
        for k in range(levels - 1, 0, -1):
            u = self.image_decoder.ups[k - 1](h)
            img_feats.append(u)
            h = torch.cat([feats[k - 1], u], 1)
        head = self._head(self.image_decoder, h)
        image = torch.clamp(x + head, -1.0, 1.0) if self.residual else torch.tanh(head)
        if not structure:
            return image, None
        s = feats[-1]
        for i, k in enumerate(range(levels - 1, 0, -1)):
            s = self.structure_decoder.ups[k - 1](s)
            s = torch.cat([s, img_feats[i]], 1)
        return image, self._head(self.structure_decoder, s)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
