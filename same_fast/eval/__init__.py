"""Quality metrics and evaluation protocols.

- ``metrics``: PSNR, SSIM (7x7 uniform as scikit-image's default, or Gaussian 11/1.5), each
  optionally inside a mask; Dice, IoU, F1 and Cohen's kappa for binary maps.
- ``protocol``: the ``paper`` protocol of SAME (256x256, 8-bit, both images times the FOV mask)
  and ``native``; pairing of prediction and ground-truth folders.
- ``stats``: bootstrap 95 % intervals and the provenance (git commit, command, seeds) that every
  results JSON records.
"""
from same_fast.eval.metrics import (
    binary_scores,
    cohen_kappa,
    dice,
    f1,
    iou,
    psnr,
    ssim,
)
from same_fast.eval.protocol import PROTOCOLS, ImageScore, evaluate_folders, score_pair
from same_fast.eval.stats import bootstrap_ci, provenance

__all__ = [
    "PROTOCOLS", "ImageScore", "binary_scores", "bootstrap_ci", "cohen_kappa", "dice",
    "evaluate_folders", "f1", "iou", "provenance", "psnr", "score_pair", "ssim",
]
