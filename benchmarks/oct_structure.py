"""Write the OCT structure folders (issue #25): each split's clean B-scans (linked) with their
hyper-reflective layers read off the scan (``same_fast.train.structure``) as masks, in the
``images/`` + ``masks/`` layout ``train-source`` and ``train-picker`` read.

    .venv/bin/python benchmarks/oct_structure.py --out runs/oct-structure

writes ``runs/oct-structure/train`` (Kermany training patients: what oct-lite's structure head
and oct-picker learn from) and ``runs/oct-structure/select`` (selection patients: validation
Dice). The reporting patients get no folder: nothing trains or chooses on them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from same_fast.train.source import data_folders
from same_fast.train.structure import write_structure_folder

SPLITS = {"train": "Kermany-train", "select": "Kermany-select"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/oct-structure")
    a = ap.parse_args(argv)
    for name, spec in SPLITS.items():
        files = [f for _s, _r, fs, _m, _f in data_folders(spec) for f in fs]
        n = write_structure_folder(files, Path(a.out) / name)
        print(f"{spec}: {n} scans -> {Path(a.out) / name}")


if __name__ == "__main__":
    main()
