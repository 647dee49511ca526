"""Figures for results: labelled image grids and curves with axes (matplotlib, the ``plot`` extra).

Every function returns False without writing anything when matplotlib is not installed, so a
caller can say so in one line and go on; the Agg backend is used (no display needed).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _as_image(a: Any) -> np.ndarray:
    """(H, W, C) or (C, H, W) tensor/array, float in [0, 1] or uint8 -> (H, W, 3) float."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, -1)
    return np.clip(a, 0.0, 1.0)


def _save(plt: Any, fig: Any, path: str | Path, title: str | None, dpi: int) -> bool:
    if title:
        fig.suptitle(title, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return True


def image_grid(path: str | Path, rows: Sequence[Sequence[Any]], columns: Sequence[str],
               row_titles: Sequence[str], captions: Sequence[Sequence[str]] | None = None,
               title: str | None = None, panel_width: float = 2.4, dpi: int = 80) -> bool:
    """A grid of images with a title over each column, a title beside each row and an optional
    caption under each panel; written as PNG at ``path``.

    rows[i][j]: the image of row i, column j ((H, W, C) or (C, H, W), float in [0, 1] or uint8;
    sizes may differ between rows). ``panel_width`` in inches; the height follows each row's
    aspect ratio."""
    plt = pyplot()
    if plt is None:
        return False
    imgs = [[_as_image(a) for a in r] for r in rows]
    ncol = len(columns)
    heights = [max(a.shape[0] / a.shape[1] for a in r) for r in imgs]
    cap = 0.18 if captions else 0.0
    fig, axes = plt.subplots(len(imgs), ncol, squeeze=False,
                             figsize=(panel_width * ncol + 0.5,
                                      sum(panel_width * h + 0.25 + cap for h in heights)
                                      + (0.35 if title else 0.1)),
                             gridspec_kw={"height_ratios": heights}, constrained_layout=True)
    for i, r in enumerate(imgs):
        for j, a in enumerate(r):
            ax = axes[i][j]
            ax.imshow(a, interpolation="lanczos")
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if i == 0:
                ax.set_title(columns[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(row_titles[i], fontsize=8)
            if captions:
                ax.set_xlabel(captions[i][j], fontsize=7)
    return _save(plt, fig, path, title, dpi)


def curve_panels(path: str | Path, panels: Sequence[Mapping[str, Any]], xlabel: str,
                 title: str | None = None, dpi: int = 90) -> bool:
    """One axis per metric, side by side, every labelled curve of that metric on it.

    panels: ``{"ylabel": str, "title": str (optional), "ylim": (lo, hi) (optional),
    "curves": [{"x": [...], "y": [...], "label": str, **matplotlib line keywords}, ...],
    "hlines": [{"y": float, "label": str, **keywords}, ...] (optional)}``."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(4.6 * len(panels), 3.4),
                             constrained_layout=True)
    for ax, p in zip(axes[0], panels, strict=True):
        for c in p["curves"]:
            kw = {k: v for k, v in c.items() if k not in ("x", "y")}
            ax.plot(c["x"], c["y"], **kw)
        for h in p.get("hlines", ()):
            kw = {k: v for k, v in h.items() if k != "y"}
            ax.axhline(h["y"], **{"ls": "--", "lw": 1, **kw})
        if p.get("ylim"):
            ax.set_ylim(*p["ylim"])
        ax.set(xlabel=xlabel, ylabel=p["ylabel"], title=p.get("title", ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(plt, fig, path, title, dpi)
