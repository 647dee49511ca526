"""How much SSIM/PSNR can any enhancer recover on a synthetic test set? Ceilings.

    python benchmarks/source_ceiling.py [--preset fundus-shen2020|ultrasound-speckle]
        [--images DIR --fov DIR] [--seed 0] [--json FILE] [--pred DIR ...]

Degrades each image exactly as ``same-fast synth --preset fundus-shen2020 --seed S`` does (one
generator, sorted file order), and alongside it the *blur-only* image: the same draws, with every
family that a perfect enhancer could undo switched off (colour jitter, halo, hole, spots, the
cataract haze and its colour factors) and only the Gaussian blur kept (the cataract's blur
included). Gaussian blur of sigma 5-15 px removes detail that no enhancer recovers, so the
blur-only image's score is an optimistic ceiling for an enhancer that undoes everything else
perfectly and does not deblur. A second ceiling (``ceiling_keep_colour``) also keeps the global
colour factors (brightness, contrast, saturation x U(0.5, 1.5)): one image alone does not tell
how bright or saturated its clean version was, so an enhancer that knows no camera's palette
undoes only the local families (halo, hole, spots, haze). A third fundus ceiling
(``ceiling_keep_level``) is that one with each channel's mean inside the FOV brought to the
degraded image's: what an enhancer that undoes every local family and keeps each channel's
level (as ``fundus_cross_camera``'s ``coarse-level`` pairs do) reaches. The families also move
the level (the cataract multiplies the blurred image by 0.8 under its haze; a halo brightens),
and one image does not tell that part from its camera's exposure. ``ceiling_keep_median`` brings
each channel's *median* inside the FOV to the degraded image's instead: a level read robustly,
which a halo on the rim or a few spots move less than the mean.

``--preset ultrasound-speckle`` (images in grey, as synth makes them): ``ceiling`` keeps the
blur and the global tone (gain x U(0.7, 1.2), contrast x U(0.6, 1.1)) and removes the speckle;
``ceiling_keep_colour`` keeps only the tone (speckle and blur both removed). The same draws are
made (the speckle strength is set to 0 and the blur probability to 0), so each image's tone is
the one its degraded version has.

A third column (``color_map_fit``) asks what the degraded image itself still holds: the best
smooth per-pixel affine colour map of the 8-bit degraded image, ``out = a(p) x + b(p)`` per
channel, fitted to the clean image by least squares in windows of 1/16 of the frame (a guided
filter with the clean image as its target). It knows the clean image, so it is no enhancer; it
is a guide to what a colour-map head (a network that predicts ``a`` and ``b``) could reach,
quantisation and the blur it cannot undo included. Not a bound: a finer map would do better.

Each ``--pred`` folder gets a second column, ``<name>+tone``: the enhanced image through the
one global affine colour map (a C x C matrix and a bias, least squares inside the FOV) that
brings it closest to the clean image. Brightness, contrast and saturation jitter are all such a
map. It splits the enhancer's loss in two: what is left after it is what the enhancer got wrong
locally (haze, halo, hole, spots left or added); the difference to the plain column is what it
got wrong in the global tone, which one image alone does not tell. A ``--pred`` folder is named
by its last part, or by its last two where a built-in column or another folder has that name
(``--pred drive_syn/degraded`` gives ``drive_syn/degraded`` and ``drive_syn/degraded+tone``).

Scores use the paper protocol (256x256, FOV mask where given, 7x7 uniform SSIM, data_range
255). Per image it prints the degradation type, the degraded score, the ceilings and, for each
``--pred`` folder (enhanced outputs named like synth's), its score. Default images: DRIVE test
from the shared data folder.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


@contextlib.contextmanager
def _blur_only(keep_colour: bool = False) -> Any:
    """Patch the fundus preset so that only blur is applied (random draws unchanged); with
    ``keep_colour`` the global colour factors (brightness, contrast, saturation) stay too."""
    from same_fast.degrade import ops, presets

    saved = {k: getattr(ops, k) for k in ("adjust_brightness", "adjust_contrast",
                                           "adjust_saturation", "gaussian_blobs")}
    saved_p = {k: getattr(presets, k) for k in ("_halo", "_hole")}
    saved_cat = presets.Cataract.apply_with_tone

    def cataract_blur(self: Any, x: torch.Tensor, g: Any, fov: Any = None) -> torch.Tensor:
        n, _, h, w = x.shape
        d = x.device
        s = presets.scale_factor(x, self.reference_px)
        presets.uniform(g, n, (-self.center_offset, self.center_offset), d)  # haze centre y, x
        presets.uniform(g, n, (-self.center_offset, self.center_offset), d)
        k0, k1 = self.kernel
        kk = torch.floor(presets.uniform(g, n, (k0 / 2, k1 / 2 + 1), d)).clamp_max(k1 // 2) * 2 + 1
        kk = (torch.round((kk - 1) / 2 * s) * 2 + 1).clamp_min(1)
        y = ops.box_gaussian_blur(x, kk, presets.uniform(g, n, self.sigma, d) * s)
        presets.uniform(g, n, self.r, d)  # haze strength
        y = ops.adjust_contrast(y, presets.uniform(g, n, self.contrast, d))
        y = ops.adjust_brightness(y, presets.uniform(g, n, self.brightness, d))
        y = ops.adjust_saturation(y, presets.uniform(g, n, self.color, d))
        return ops.keep_fov(y.clamp(0, 1), fov)

    try:
        if not keep_colour:
            ops.adjust_brightness = lambda x, f: x
            ops.adjust_contrast = lambda x, f: x
            ops.adjust_saturation = lambda x, f: x
        ops.gaussian_blobs = lambda h, w, cy, cx, r, a: torch.zeros(cy.shape[0], 1, h, w,
                                                                   device=cy.device)
        presets._halo = lambda x, g, *a: x
        presets._hole = lambda x, g, *a: x
        presets.Cataract.apply_with_tone = lambda self, x, g, fov=None: (
            cataract_blur(self, x, g, fov), x)
        yield
    finally:
        for k, v in saved.items():
            setattr(ops, k, v)
        for k, v in saved_p.items():
            setattr(presets, k, v)
        presets.Cataract.apply_with_tone = saved_cat


def _color_map_fit(deg: torch.Tensor, clean: torch.Tensor, fov: torch.Tensor | None
                   ) -> torch.Tensor:
    """``a(p) deg + b(p)`` per channel, ``a``, ``b`` fitted to ``clean`` in box windows of side
    ~1/16 of the frame inside ``fov`` and then averaged over the same windows (so the map is
    smooth); (1, C, H, W) in [0, 1]."""
    import torch.nn.functional as F

    r = max(1, round(min(deg.shape[-2:]) / 32))
    f = torch.ones_like(deg[:, :1]) if fov is None else fov.to(deg.dtype)

    def box(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(t, (r, r, r, r), mode="replicate"), 2 * r + 1, 1)

    w = box(f).clamp_min(1e-6)
    mx, my = box(deg * f) / w, box(clean * f) / w
    var = box(deg * deg * f) / w - mx * mx
    cov = box(deg * clean * f) / w - mx * my
    a = cov / (var + 1e-4)  # ridge: flat windows keep their mean, not an infinite gain
    b = my - a * mx
    return ((box(a) * deg + box(b)).clamp(0, 1) * f)


def _tone_match(img: np.ndarray, clean: np.ndarray, fov: np.ndarray | None) -> np.ndarray:
    """``img`` through the global affine colour map that brings it closest to ``clean`` inside
    ``fov`` (least squares: a C x C matrix and a bias, so brightness, contrast and saturation
    alike); an oracle for the global tone. Same dtype; outside ``fov`` black."""
    full = float(np.iinfo(img.dtype).max)
    x, c = img.astype(np.float64) / full, clean.astype(np.float64) / full
    m = np.ones(img.shape[:2], bool) if fov is None else fov.astype(bool)
    a = np.concatenate([x[m], np.ones((int(m.sum()), 1))], axis=1)  # (P, C + 1)
    coef = np.linalg.lstsq(a, c[m], rcond=None)[0]  # (C + 1, C)
    out = np.zeros_like(x)
    out[m] = a @ coef
    return np.rint(np.clip(out, 0, 1) * full).astype(img.dtype)


def _kind(preset: Any, g: torch.Generator) -> str:
    """The type the preset will draw next from ``g`` (its first draw), without consuming it."""
    from same_fast.degrade import presets

    st = g.get_state()
    i = int(torch.floor(presets.uniform(g, 1, (0, len(preset.types)), torch.device("cpu"))))
    g.set_state(st)
    return preset.types[min(i, len(preset.types) - 1)]


def _variants(preset_name: str, x: torch.Tensor, g: torch.Generator, fov: Any) -> dict[str, Any]:
    """The degraded image and its ceilings, drawn from ``g`` like synth (g ends as synth's)."""
    import dataclasses

    from same_fast.degrade import degrade, get_preset, ops

    preset = get_preset(preset_name)
    state = g.get_state()
    out = {}
    if preset_name in ("fundus-shen2020", "fundus-local"):
        with _blur_only():
            out["ceiling"] = degrade(x, preset, g, fov)
        g.set_state(state)
        with _blur_only(keep_colour=True):
            out["ceiling_keep_colour"] = degrade(x, preset, g, fov)
    else:
        out["ceiling"] = degrade(x, dataclasses.replace(preset, strength=(0.0, 0.0)), g, fov)
        g.set_state(state)
        out["ceiling_keep_colour"] = degrade(
            x, dataclasses.replace(preset, strength=(0.0, 0.0), p_blur=0.0), g, fov)
    g.set_state(state)
    deg = degrade(x, preset, g, fov)
    if preset_name in ("fundus-shen2020", "fundus-local"):
        f = torch.ones_like(x[:, :1]) if fov is None else fov.to(x.dtype)

        def median(t: torch.Tensor) -> torch.Tensor:
            lit = f[:, 0] > 0.5
            return torch.stack([torch.stack([t[i, ch][lit[i]].median() for ch in range(t.shape[1])])
                                for i in range(t.shape[0])]).view(*t.shape[:2], 1, 1)

        kc = out["ceiling_keep_colour"]
        out["ceiling_keep_level"] = (kc * ops.fov_mean(deg, f) / ops.fov_mean(kc, f).clamp_min(1e-6)
                                     ).clamp(0, 1) * f
        out["ceiling_keep_median"] = (kc * median(deg) / median(kc).clamp_min(1e-6)).clamp(0, 1) * f
    return {"degraded": deg, **out}


def run(images: Path, fov_dir: Path | None, seed: int, preds: list[Path],
        preset_name: str = "fundus-shen2020") -> dict[str, Any]:
    from same_fast.degrade import get_preset
    from same_fast.eval.protocol import score_pair
    from same_fast.io import list_images, load, load_mask, pair_by_name, to_array, to_tensor

    if preset_name not in ("fundus-shen2020", "ultrasound-speckle"):
        raise SystemExit(f"--preset: fundus-shen2020 or ultrasound-speckle, not {preset_name}")
    preset = get_preset(preset_name)
    grey = preset_name == "ultrasound-speckle"
    files = list_images(images, dicom=False)
    fovs = {it.path: it.partner for it in pair_by_name(files, fov_dir)} if fov_dir else {}
    own = ["degraded", "ceiling", "ceiling_keep_colour", "ceiling_keep_level", "ceiling_keep_median",
           "color_map_fit"]
    # a --pred folder is named by its last part, or by its last two where that is taken
    last = [p.name for p in preds]
    names = [n if n not in own and last.count(n) == 1 else f"{p.parent.name}/{n}"
             for p, n in zip(preds, last, strict=True)]
    g = torch.Generator().manual_seed(seed)
    rows = []
    for f in files:
        arr = load(f).frames[0][..., :3]
        if grey and arr.shape[-1] == 3:  # as synth does for grey presets
            arr = np.rint(arr.astype(np.float64).mean(-1, keepdims=True)).astype(arr.dtype)
        x = to_tensor(arr)[None]
        fov_arr = load_mask(fovs[f], arr.shape[:2]) if f in fovs else None
        fov = None if fov_arr is None else torch.from_numpy(fov_arr)[None, None]
        kind = _kind(preset, g) if preset_name == "fundus-shen2020" else ""
        row: dict[str, Any] = {"name": f.stem, "type": kind}
        saved = {k: to_array(t[0], arr.dtype.type)
                 for k, t in _variants(preset_name, x, g, fov).items()}
        # the fit sees what an enhancer sees: the degraded image as saved (8-bit)
        fit = _color_map_fit(to_tensor(saved["degraded"])[None], x, fov)
        saved["color_map_fit"] = to_array(fit[0], arr.dtype.type)
        for key, img in saved.items():
            s = score_pair(img, arr, fov_arr, "paper")
            row[key] = {"ssim": s.ssim, "psnr": s.psnr}
        for p, name in zip(preds, names, strict=True):
            out = load(p / f"{f.stem}.png").frames[0][..., :arr.shape[-1]]
            s = score_pair(out, arr, fov_arr, "paper")
            row[name] = {"ssim": s.ssim, "psnr": s.psnr}
            s = score_pair(_tone_match(out, arr, fov_arr), arr, fov_arr, "paper")
            row[f"{name}+tone"] = {"ssim": s.ssim, "psnr": s.psnr}
        rows.append(row)
    cols = [c for c in own if c in rows[0]] + [c for n in names for c in (n, f"{n}+tone")]
    mean = {c: {m: float(np.mean([r[c][m] for r in rows])) for m in ("ssim", "psnr")}
            for c in cols}
    return {"images": str(images), "seed": seed, "preset": preset_name, "rows": rows,
            "mean": mean}


def main(argv: list[str] | None = None) -> int:
    from same_fast.data import data_root

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fundus-shen2020",
                   choices=["fundus-shen2020", "ultrasound-speckle"])
    p.add_argument("--images", type=Path)
    p.add_argument("--fov", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pred", type=Path, action="append", default=[])
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if a.images is None:
        if a.preset != "fundus-shen2020":
            raise SystemExit("--images is needed for --preset ultrasound-speckle")
        root = data_root()
        if root is None:
            raise SystemExit("no data folder: set SAME_FAST_DATA or pass --images/--fov")
        a.images = root / "fundus/DRIVE/test/images"
        a.fov = a.fov or root / "fundus/DRIVE/test/fov"
    res = run(a.images, a.fov, a.seed, a.pred, a.preset)
    cols = list(res["mean"])
    w = max(10, *(len(r["name"]) for r in res["rows"]))
    print(f"{'image':{w}s} {'type':18s} " + " ".join(f"{c[:16]:>16s}" for c in cols))
    for r in res["rows"] + [{"name": "mean", "type": "", **res["mean"]}]:
        print(f"{r['name']:{w}s} {r['type']:18s} "
              + " ".join(f"{r[c]['ssim']:8.4f}/{r[c]['psnr']:5.2f}"[-16:].rjust(16) for c in cols))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
