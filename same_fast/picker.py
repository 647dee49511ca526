"""The pseudo-label picker: decides, per sample and on the device, which teacher outputs to learn from.

A teacher output is kept when both assessors accept it (SPEC section 4):
- the image-quality assessor (``same_fast.nn.iqa.IQANet``) says good with probability above
  ``p_good`` (0.8 fundus, 0.6 ultrasound) and good is its top class;
- the irregular-structure detector (``same_fast.nn.isd.StructureVAE``) scores the teacher's
  structure map below ``isd_threshold`` (a percentile of its training scores).

The decision is a float weight vector (N,) on the input's device, 0/1 (hard) or in [0, 1] (soft),
that multiplies per-sample losses: no boolean indexing and no host round trip, so a batch where
every sample is rejected simply contributes zero loss. After the two networks, every score and
the decision come from one call of the fused op ``same_fast.ops.picker_weights`` (one Triton
launch on CUDA), whose formulas are the ones the shipped thresholds were calibrated with.

Calibration to the target (``PickerConfig.calibrate``, beyond the paper): the absolute thresholds
were set on the source's kind of images. A clinic whose every image scores below them (a modality
or camera the assessors never saw) would get no adaptation at all, and one where a small, biased
share passes (the brightest, least noisy views) would adapt on that share only. With
``calibrate = c`` in (0, 1), the picker also accepts a pseudo-label whose plausibility (the
smaller of its two margins, ``p_good / p_good_threshold`` and ``isd_threshold / isd``: the
assessor it fails worse decides) ranks in the best share ``c`` of the last ``window``
pseudo-labels it judged during training, this batch included; so at least about that share is
learnt from. What the absolute rule accepts is still accepted. The window and its quantile stay
on the device: still no host round trip.
The price: acceptance can no longer collapse below about that share, so the online safety's
acceptance check (``adapt.safety``) stops guarding, and the drift bound from the source model's
output is what remains. Calibration ranks; it cannot tell a domain where every pseudo-label is
bad from one the assessors merely never saw.
"""
from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from same_fast import checkpoint, ops
from same_fast.errors import CheckpointError
from same_fast.nn.iqa import IQANet
from same_fast.nn.isd import StructureVAE

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED = {"fundus-picker": "fundus-picker.safetensors",
           "ultrasound-picker": "ultrasound-picker.safetensors",
           "oct-picker": "oct-picker.safetensors"}
DEFAULT_P_GOOD = {"fundus": 0.8, "ultrasound": 0.6, "oct": 0.6}


@dataclass
class PickerConfig:
    """How the two assessors' outputs become weights.

    p_good: minimum P(good) of the IQA (and good must be the top class); None = modality default.
    isd_threshold: maximum ISD score; None = the checkpoint's percentile threshold.
    soft: weights in [0, 1] (sigmoids around both thresholds) instead of 0/1.
    temperature: width of the soft sigmoids, as a fraction of each threshold.
    use_iqa / use_isd: switch either assessor off (ablations).
    calibrate: 0 = the absolute rule alone; c in (0, 1) = also accept the best share c of the
        target's own recent pseudo-labels by plausibility (see the module doc).
    window: how many recent pseudo-labels the calibration ranks against.
    """

    p_good: float | None = None
    isd_threshold: float | None = None
    soft: bool = False
    temperature: float = 0.05
    use_iqa: bool = True
    use_isd: bool = True
    calibrate: float = 0.0
    window: int = 256

    def check(self) -> None:
        from same_fast.errors import InputError

        if not 0.0 <= self.calibrate < 1.0:
            raise InputError(f"picker calibration share must be in [0, 1), got {self.calibrate}")
        if self.window < 1:
            raise InputError(f"picker calibration window must be >= 1, got {self.window}")


class Picker(nn.Module):
    """IQA + ISD -> per-sample weights.

    ``forward(image, structure_logits)`` takes the teacher's outputs as the enhancer emits them:
    image (N, C, H, W) in [-1, 1] and structure logits (N, 1, H, W); returns weights (N,) float32
    on the same device. ``scores`` exposes the raw numbers (for logs and AUROC).
    """

    def __init__(self, iqa: IQANet, isd: StructureVAE, isd_threshold: float, modality: str,
                 config: PickerConfig | None = None) -> None:
        super().__init__()
        self.iqa, self.isd = iqa, isd
        self.modality = modality
        self.config = config or PickerConfig()
        self.config.check()
        self.p_good = float(self.config.p_good if self.config.p_good is not None
                            else DEFAULT_P_GOOD.get(modality, 0.8))
        self.isd_threshold = float(self.config.isd_threshold if self.config.isd_threshold
                                   is not None else isd_threshold)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        # NHWC weights: oneDNN then keeps the small convolutions' activations NHWC too; on the
        # 2-core CPU the picker's cost per 4x256x256 batch fell from 23.5 to 13.6 ms (1 thread).
        self.to(memory_format=torch.channels_last)
        # The calibration window: recent plausibilities, NaN where not yet filled.
        n = self.config.window if self.config.calibrate > 0 else 0
        self.register_buffer("_window", torch.full((n,), float("nan")), persistent=False)
        self._window_pos = self._seen = 0

    @property
    def share_auto(self) -> bool:
        """Whether offline adaptation may set this picker's calibration share from the target's
        own scores (``AdaptConfig.picker_share_auto``). A checkpoint whose thresholds were set on
        the scanner it adapts to says no (``"share_auto": false`` in its metadata: oct-picker,
        chosen on selection patients), and keeps its absolute rule."""
        meta = getattr(self, "metadata", None) or {}
        return bool(meta.get("share_auto", True))

    def set_calibration(self, share: float) -> None:
        """Switch calibration to ``share`` (0 = off) with an empty window."""
        self.config = replace(self.config, calibrate=float(share))
        self.config.check()
        n = self.config.window if self.config.calibrate > 0 else 0
        self._window = torch.full((n,), float("nan"), device=self._window.device)
        self._window_pos = self._seen = 0

    def reset_calibration(self) -> None:
        """Forget the judged pseudo-labels (after a reset of the teacher to the source weights,
        whose outputs score differently from the adapted teacher's)."""
        self._window.fill_(float("nan"))
        self._window_pos = self._seen = 0

    def _observe(self, r: ops.PickerScores) -> None:
        n, size = r.plausibility.shape[0], self._window.shape[0]
        vals = r.plausibility.float()[-size:]
        idx = (torch.arange(vals.shape[0], device=vals.device) + self._window_pos) % size
        self._window.index_copy_(0, idx, vals)
        self._window_pos = (self._window_pos + n) % size
        self._seen += n

    def _calibrated(self, weights: torch.Tensor, plausibility: torch.Tensor) -> torch.Tensor:
        """The absolute rule's weights, raised to pass what ranks in the target's best share."""
        q = torch.nanquantile(self._window, 1.0 - self.config.calibrate)
        if self.config.soft:
            t = max(self.config.temperature, 1e-6)
            return torch.maximum(weights, torch.sigmoid((plausibility - q) /
                                                        (t * q.clamp_min(1e-8))))
        return torch.maximum(weights, (plausibility >= q).float())

    def train(self, mode: bool = True) -> Picker:
        # The assessors are frozen judges: BatchNorm statistics must never move during adaptation.
        return super().train(False)

    def rule(self) -> dict[str, Any]:
        """The decision settings as ``same_fast.ops.picker_weights`` keywords (thresholds,
        the strict ISD comparison, soft mode and its temperature, the two switches)."""
        cfg = self.config
        return {"isd_threshold": self.isd_threshold, "iqa_threshold": self.p_good,
                "isd_compare": "<", "soft": cfg.soft, "temperature": cfg.temperature,
                "use_iqa": cfg.use_iqa, "use_isd": cfg.use_isd}

    @torch.no_grad()
    def assess(self, image: torch.Tensor, structure_logits: torch.Tensor,
               observe: bool = False) -> ops.PickerScores:
        """Both assessors, then one fused ``ops.picker_weights`` call: every per-sample field.

        The ISD score is ``StructureVAE.score`` (Bernoulli-KL reconstruction error from the
        posterior mean + beta x KL), computed by the op from the VAE's reconstruction.
        With calibration on, ``weights`` also pass what ranks in the target's best share;
        ``observe`` first adds this batch to the calibration window (training does; scoring
        for logs and AUROC does not).
        """
        x01 = ((image.float() + 1) * 0.5).clamp(0, 1)
        iqa_logits = self.iqa(x01)
        x, recon, mu, logvar = self.isd.reconstruct_mean(torch.sigmoid(structure_logits.float()))
        r = ops.picker_weights(x, recon, iqa_logits, mu, logvar, kl_weight=self.isd.beta,
                               good_class=0, recon_error="bernoulli_kl", **self.rule())
        if self.config.calibrate <= 0:
            return r
        if observe:
            self._observe(r)
        if not self._seen:
            return r
        return r._replace(weights=self._calibrated(r.weights, r.plausibility))

    @torch.no_grad()
    def scores(self, image: torch.Tensor, structure_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw assessor outputs for a batch (image in [-1, 1], logits): each value (N,) float.

        p_good: IQA probability of the good class; good_top: 1.0 where good is the argmax;
        isd: the ISD score (higher = less plausible); plausibility: a continuous score, higher =
        more acceptable, min(p_good / p_good_thr, isd_thr / isd), used for ranking (AUROC);
        weights: this picker's decision (what ``forward`` returns).
        """
        r = self.assess(image, structure_logits)
        return {"p_good": r.p_good, "good_top": r.good_top, "isd": r.score,
                "plausibility": r.plausibility, "weights": r.weights}

    @torch.no_grad()
    def forward(self, image: torch.Tensor, structure_logits: torch.Tensor) -> torch.Tensor:
        """The training decision: weights (N,); adds the batch to the calibration window."""
        return self.assess(image, structure_logits, observe=True).weights

    def weights_from_scores(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weights (N,) from a ``scores`` dict under the current config (the op's decision
        stage, ``ops.picker_decision``, then the calibration window as it stands; a dict from
        ``scores`` gives its ``weights`` again)."""
        w, plausibility = ops.picker_decision(s["isd"], s["p_good"], s["good_top"], **self.rule())
        if self.config.calibrate > 0 and self._seen:
            return self._calibrated(w, plausibility)
        return w


def share_from_scores(plausibility: Any, min_separation: float = 0.8,
                      unimodal_share: float = 0.9) -> float:
    """The calibration share a target's own pseudo-label scores call for, knowing nothing of its
    contamination: Otsu's split of the log-plausibilities. When the split separates two groups
    well (Otsu's effectiveness, between-group over total variance, at least
    ``min_separation``; one Gaussian group gives 2/pi = 0.64, a uniform spread 0.75), the share
    is the upper group's; otherwise the scores show no implausible group and the best
    ``unimodal_share`` is accepted. Clipped to [0.2, 0.95].
    Both constants were fixed when this was written, before any target was scored with it."""
    import numpy as np

    v = np.log(np.clip(np.asarray(plausibility, dtype=np.float64).ravel(), 1e-6, None))
    if v.size < 4 or float(v.var()) < 1e-12:
        return unimodal_share
    order = np.sort(v)
    n = v.size
    k = np.arange(1, n)  # split between order[k-1] and order[k]
    csum = np.cumsum(order)[:-1]
    lo_mean, hi_mean = csum / k, (order.sum() - csum) / (n - k)
    between = k * (n - k) / n ** 2 * (hi_mean - lo_mean) ** 2
    best_k = int(k[np.argmax(between)])
    effectiveness = float(between.max()) / float(v.var())
    share = (v.size - best_k) / v.size if effectiveness >= min_separation else unimodal_share
    return float(min(0.95, max(0.2, share)))


@torch.no_grad()
def auto_calibrate(picker: Picker, model: nn.Module,
                   images01: torch.Tensor | Sequence[torch.Tensor],
                   fov: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
                   batch: int = 4) -> float:
    """Set ``picker``'s calibration share from the source model's pseudo-labels of the target
    images in [0, 1] (``share_from_scores``); returns the share. ``images01`` is one
    ``(N, C, H, W)`` tensor (scored ``batch`` at a time) or a sequence of ``(C, H, W)`` images
    of any sizes (a clinic's folder, scored one by one); ``fov`` matches it ((N, 1, H, W), or
    (1, H, W) masks or None per image)."""
    from same_fast.nn import pad_to_multiple

    if isinstance(images01, torch.Tensor):
        chunks = [(images01[i:i + batch], None if fov is None else fov[i:i + batch])
                  for i in range(0, images01.shape[0], batch)]
    else:
        chunks = [(x[None], None if fov is None or fov[i] is None else fov[i][None])
                  for i, x in enumerate(images01)]
    was = model.training
    model.eval()
    scores = []
    for x, f in chunks:
        xp, (h, w) = pad_to_multiple(x * 2 - 1, int(getattr(model, "multiple", 1)))
        y, s = model(xp)
        y, s = y[..., :h, :w], s[..., :h, :w]
        if f is not None:
            y = (y + 1) * f.to(y) - 1
        scores.append(picker.scores(y, s)["plausibility"].cpu())
    model.train(was)
    share = share_from_scores(torch.cat(scores).numpy())
    picker.set_calibration(share)
    return share


def state_and_metadata(iqa: IQANet, isd: StructureVAE, isd_threshold: float, modality: str,
                       **extra: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten both assessors into one tensor dict plus checkpoint metadata."""
    tensors = {f"iqa.{k}": v for k, v in iqa.state_dict().items()}
    tensors.update({f"isd.{k}": v for k, v in isd.state_dict().items()})
    meta: dict[str, Any] = {
        "architecture": "SAMEPicker", "modality": modality,
        "channels": iqa.config["in_channels"],
        "config": {"iqa": iqa.config, "isd": isd.config},
        "isd_threshold": float(isd_threshold),
        "p_good": DEFAULT_P_GOOD.get(modality, 0.8),
        "value_range": [-1, 1],
        "provenance": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
    }
    for k, v in extra.items():
        if k == "provenance":
            meta["provenance"].update(v)
        else:
            meta[k] = v
    return tensors, meta


def save_picker(path: str | Path, iqa: IQANet, isd: StructureVAE, isd_threshold: float,
                modality: str, **extra: Any) -> Path:
    """Write both assessors to one safetensors checkpoint (architecture ``SAMEPicker``)."""
    tensors, meta = state_and_metadata(iqa, isd, isd_threshold, modality, **extra)
    return checkpoint.save(path, tensors, meta)


def resolve_picker_path(name_or_path: str | Path) -> Path:
    """A shipped name (``fundus-picker``, ``ultrasound-picker``, ``oct-picker``) or a file
    path -> the file."""
    name = str(name_or_path)
    if name in SHIPPED:
        path = WEIGHTS_DIR / SHIPPED[name]
        if not path.is_file():
            raise CheckpointError(f"shipped picker '{name}' is missing from this install ({path})")
        return path
    path = Path(name).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{name}: no such picker checkpoint (shipped: "
                              f"{', '.join(sorted(SHIPPED))})")
    return path


def load_picker(name_or_path: str | Path, device: str | torch.device = "cpu",
                config: PickerConfig | None = None) -> Picker:
    """Load a picker checkpoint written by ``save_picker`` onto ``device`` (eval mode, frozen)."""
    path = resolve_picker_path(name_or_path)
    tensors, meta = checkpoint.load(path, device="cpu")
    if meta.get("architecture") != "SAMEPicker":
        raise CheckpointError(f"{path}: not a picker checkpoint (architecture "
                              f"{meta.get('architecture')!r})")
    try:
        iqa = IQANet(**meta["config"]["iqa"])
        isd = StructureVAE(**meta["config"]["isd"])
        iqa.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("iqa.")})
        isd.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("isd.")})
        thr = float(meta["isd_threshold"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: picker checkpoint is inconsistent ({e})") from None
    if config is None:
        config = PickerConfig(p_good=meta.get("p_good"))
    elif config.p_good is None:  # the checkpoint's threshold unless the caller sets one
        config = replace(config, p_good=meta.get("p_good"))
    picker = Picker(iqa, isd, thr, str(meta.get("modality", "fundus")), config)
    picker.metadata = meta  # type: ignore[attr-defined]
    return picker.to(device)


def resolve_picker(spec: str | None, modality: str, device: str | torch.device = "cpu",
                   config: PickerConfig | None = None) -> Picker | None:
    """The picker a front names: None or ``none`` -> None (every sample accepted); ``auto`` ->
    the shipped picker of ``modality`` (None, with a warning, where none ships); else a shipped
    name or a checkpoint path. ``config``'s decision settings override the checkpoint's
    (``p_good`` None keeps its threshold)."""
    if spec is None or spec == "none":
        return None
    if spec == "auto":
        spec = f"{modality}-picker"
        if spec not in SHIPPED:  # a modality no picker ships for
            warnings.warn(f"no shipped picker for modality '{modality}': adapting as a mean "
                          "teacher (every pseudo-label accepted; --picker CKPT names one)",
                          stacklevel=2)
            return None
    return load_picker(spec, device, config)


def picker_config_dict(p: Picker) -> dict[str, Any]:
    """The effective settings of a picker, for summaries."""
    return {**asdict(p.config), "p_good": p.p_good, "isd_threshold": p.isd_threshold,
            "modality": p.modality}
