"""Link a source model's held-out images of one data set into a folder, for synth/enhance/eval.

    python benchmarks/heldout_set.py -m ultrasound-lite --set BUSI -o busi_heldout

``train-source`` records the images it held out (``provenance.held_out``, names such as
``BUSI/benign/benign (4).png``). This writes symbolic links to those of ``--set`` under
``OUT/images`` (the data folder's files, never copies), so the README's source-model numbers can
be reproduced with ``same-fast synth -i OUT/images ...``. Prints how many were linked.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from same_fast.data import require_data_root
    from same_fast.models import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", required=True, help="shipped name or checkpoint")
    p.add_argument("--set", required=True, help="data set name as recorded (BUSI, CCAUS, HRF, ...)")
    p.add_argument("-o", "--out", required=True)
    args = p.parse_args(argv)
    _, meta = load_model(args.model)
    prov = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
    names = [n for n in prov.get("held_out", []) if n.split("/", 1)[0] == args.set]
    if not names:
        print(f"{args.model} records no held-out images of {args.set}", file=sys.stderr)
        return 2
    root = require_data_root()
    sets = [d for d in root.iterdir() if (d / args.set).is_dir()]
    if not sets:
        print(f"no {args.set} under {root}", file=sys.stderr)
        return 2
    base = sets[0] / args.set
    out = Path(args.out) / "images"
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        parts = name.split("/")[1:]  # set/[class/]file
        src = base / parts[0] / "images" / parts[1] if len(parts) == 2 else base / "images" / parts[0]
        if not src.is_file():
            print(f"{src}: missing", file=sys.stderr)
            return 2
        dst = out / src.name
        if not dst.exists():
            dst.symlink_to(src.resolve())
    print(f"linked {len(names)} held-out {args.set} image(s) into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
