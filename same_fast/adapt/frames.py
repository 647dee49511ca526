"""Loading a clinic's folder (images, DICOM series or cines) as adaptation frames."""
from __future__ import annotations

from pathlib import Path

import torch

from same_fast.errors import InputError


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(..., C, H, W) -> (..., channels, H, W): RGB to grey by the mean, grey to RGB by repeat,
    alpha dropped."""
    c = x.shape[-3]
    if c == 4:
        x, c = x[..., :3, :, :], 3
    if c == channels:
        return x
    if channels == 1:
        return x.mean(-3, keepdim=True)
    if c == 1 and channels == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    raise InputError(f"cannot convert {c}-channel images to the model's {channels} channels")


def load_frames(folder: str | Path, channels: int, mask_dir: str | Path | None = None,
                device: str | torch.device = "cpu", skipped: list[dict[str, str]] | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor | None] | None, list[str]]:
    """Every frame under ``folder`` (images and DICOM files; a cine gives all its frames).

    Returns (frames (C, H, W) float in [0, 1] on ``device``, FOV masks (1, H, W) float or None,
    names). ``mask_dir``: FOV masks paired by name (one per file, applied to all its frames).

    ``skipped``: when given, a file that cannot be used (corrupt, truncated, a bad DICOM, a mask
    of the wrong size, channels the model cannot take) is left out and recorded there as
    ``{"input", "error"}``, so one bad file in a clinic's folder does not stop the others;
    without it the first such file raises. At least one frame must load either way.
    """
    from same_fast.io import list_images, load, load_mask, pair_by_name, to_tensor

    files = list_images(folder)
    if not files:
        raise InputError(f"{folder}: no images or DICOM files")
    items = pair_by_name(files, mask_dir) if mask_dir else None
    frames: list[torch.Tensor] = []
    fovs: list[torch.Tensor | None] = []
    names: list[str] = []
    for k, path in enumerate(files):
        try:
            loaded = load(path)
            fov = None
            if items is not None and items[k].partner is not None:
                m = load_mask(items[k].partner, shape=loaded.frames.shape[1:3])
                fov = torch.from_numpy(m)[None].float().to(device)
            t = match_channels(to_tensor(loaded.frames), channels).to(device)
        except InputError as e:
            if skipped is None:
                raise
            skipped.append({"input": str(path), "error": str(e).splitlines()[0]})
            continue
        for f in range(t.shape[0]):
            frames.append(t[f])
            fovs.append(fov)
            names.append(path.stem if t.shape[0] == 1 else f"{path.stem}_{f:04d}")
    if not frames:
        raise InputError(f"{folder}: none of its {len(files)} file(s) could be read "
                         f"(first: {skipped[0]['error'] if skipped else 'unknown'})")
    return frames, (fovs if items is not None else None), names
