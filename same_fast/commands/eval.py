"""``same-fast eval``: SSIM/PSNR of predictions against references, paired by file name."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from same_fast.errors import InputError

HELP = "measure PSNR/SSIM of predictions against references"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", help="folder of predictions (enhanced images)")
    p.add_argument("--gt", help="folder of references (clean images), paired with --pred by name")
    p.add_argument("--mask", help="folder of field-of-view masks, paired with --gt by name")
    p.add_argument("--protocol", choices=["paper", "native"], default="paper",
                   help="paper: 256x256, 8-bit, x FOV mask (default); native: own resolution")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")


def run(args: argparse.Namespace) -> int:
    if not args.pred or not args.gt:
        raise InputError("eval needs --pred DIR and --gt DIR (the adaptation experiments run from "
                         "a checkout: python -m lab)")
    for flag, d in (("--pred", args.pred), ("--gt", args.gt), ("--mask", args.mask)):
        if d is not None and not Path(d).is_dir():
            raise InputError(f"{flag} {d}: no such folder")
    from same_fast.eval import evaluate_folders

    result = evaluate_folders(args.pred, args.gt, args.mask, args.protocol,
                              progress=True)
    _print_table(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _fmt(v: float | None, digits: int) -> str:
    return "inf" if v is None else f"{v:.{digits}f}"


def _print_table(result: dict) -> None:
    rows = result["per_image"]
    width = max([len("image")] + [len(r["name"]) for r in rows])
    print(f"{'image':<{width}}  {'SSIM':>8}  {'PSNR(dB)':>9}")
    for r in rows:
        print(f"{r['name']:<{width}}  {_fmt(r['ssim'], 4):>8}  {_fmt(r['psnr'], 2):>9}")
    print(f"{'mean (n=' + str(result['n']) + ')':<{width}}  {_fmt(result['ssim'], 4):>8}  "
          f"{_fmt(result['psnr'], 2):>9}   protocol={result['protocol']}")

