"""Link a source model's held-out images of one data set into a folder, for synth/enhance/eval.

    python benchmarks/heldout_set.py -m ultrasound-lite --set BUSI -o busi_heldout

``train-source`` records the images it held out (``provenance.held_out``, names such as
``BUSI/benign/benign (4).png``). This resolves ``--set`` as training does and writes symbolic
links to the held-out files under ``OUT/images`` (the data folder's files, never copies), so the
README's source-model numbers can be reproduced with ``same-fast synth -i OUT/images ...``.
Prints how many were linked.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from same_fast.errors import SameFastError
    from same_fast.models import load_model
    from same_fast.train.source import data_folders, sample_name

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", required=True, help="shipped name or checkpoint")
    p.add_argument("--set", required=True, help="data set name (BUSI, CCAUS, HRF, FIVES, ...)")
    p.add_argument("-o", "--out", required=True)
    args = p.parse_args(argv)
    try:
        _, meta = load_model(args.model)
        prov = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
        held = set(prov.get("held_out", []))
        files = [f for set_name, _root, fs, _m, _f in data_folders(args.set) for f in fs
                 if sample_name(set_name, f) in held]
    except SameFastError as e:
        print(e, file=sys.stderr)
        return 2
    if not files:
        print(f"{args.model} records no held-out images of {args.set}", file=sys.stderr)
        return 2
    out = Path(args.out) / "images"
    out.mkdir(parents=True, exist_ok=True)
    for src in files:
        dst = out / src.name
        if not dst.exists():
            dst.symlink_to(src.resolve())
    print(f"linked {len(files)} held-out {args.set} image(s) into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
