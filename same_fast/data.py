"""Where the real data sets live: ``$SAME_FAST_DATA``, else ``../shared/data`` beside the checkout.

Data is never copied into the repository; see shared/data/README.md for the sets and licences.
"""
from __future__ import annotations

import os
from pathlib import Path

from same_fast.errors import InputError

# Named sets: modality, root relative to the data root, and the images/masks/fov folders under it.
# BUSI keeps its class folders (benign/malignant/normal, each with images/ and masks/); readers of
# that set walk them (see the source-training loader).
DATASETS: dict[str, dict[str, str | None]] = {
    "DRIVE": {"modality": "fundus", "root": "fundus/DRIVE/training", "images": "images",
              "masks": "masks", "fov": "fov"},
    "DRIVE-test": {"modality": "fundus", "root": "fundus/DRIVE/test", "images": "images",
                   "masks": "masks", "fov": "fov"},
    "HRF": {"modality": "fundus", "root": "fundus/HRF", "images": "images", "masks": "masks",
            "fov": None},
    "FIVES": {"modality": "fundus", "root": "fundus/FIVES", "images": "images", "masks": "masks",
              "fov": None},
    # IDRiD's grading set (Kowa camera, CC BY 4.0): its train and test splits share one folder,
    # told apart by the file name (``pattern``); no FOV masks (estimated by thresholding).
    "IDRiD": {"modality": "fundus", "root": "fundus/IDRiD", "images": "images", "masks": None,
              "fov": None, "pattern": "IDRiD_train_*"},
    "IDRiD-test": {"modality": "fundus", "root": "fundus/IDRiD", "images": "images",
                   "masks": None, "fov": None, "pattern": "IDRiD_test_*"},
    "BUSI": {"modality": "ultrasound", "root": "ultrasound/BUSI", "images": "*/images",
             "masks": "*/masks", "fov": None},
    "CCAUS": {"modality": "ultrasound", "root": "ultrasound/CCAUS", "images": "images",
              "masks": "masks", "fov": None},
}
# Kermany OCT2017 Spectralis B-scans (CC BY 4.0) in class folders, split by patient into
# training, selection and reporting sets; ``split`` names ``<file>:<part>`` of splits/<file>.json.
for _part in ("train", "select", "report"):
    DATASETS[f"Kermany-{_part}"] = {"modality": "oct", "root": "oct/Kermany_OCT2017",
                                    "images": "images/*", "masks": None, "fov": None,
                                    "split": f"kermany-oct:{_part}"}

SPLITS_DIR = Path(__file__).resolve().parent / "splits"


def data_root() -> Path | None:
    """The data root, or None when neither ``$SAME_FAST_DATA`` nor ``../shared/data`` exists."""
    env = os.environ.get("SAME_FAST_DATA")
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    here = Path(__file__).resolve().parent.parent  # the checkout (editable install)
    for cand in (here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
                 Path.cwd() / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


def require_data_root() -> Path:
    root = data_root()
    if root is None:
        raise InputError("no data folder: set SAME_FAST_DATA or place shared/data beside the checkout")
    return root


def split_files(spec: str) -> set[str]:
    """The file names of one part of a committed split: ``"kermany-oct:train"`` reads
    ``splits/kermany-oct.json``'s ``train.files``."""
    name, _, part = spec.partition(":")
    path = SPLITS_DIR / f"{name}.json"
    if not path.is_file():
        raise InputError(f"split '{spec}': {path} not found")
    import json

    parts = json.loads(path.read_text())
    if part not in parts or "files" not in parts[part]:
        raise InputError(f"split '{spec}': no part '{part}' in {path}")
    return set(parts[part]["files"])
