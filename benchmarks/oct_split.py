"""Write the fixed patient split of the Kermany OCT B-scans (``same_fast/splits/kermany-oct.json``).

Patients, not images, are split (one patient has several B-scans, and one patient id can appear
under two classes), stratified by class: each patient's class is the first of its classes in
alphabetical order; per class the patients are shuffled with ``SEED`` and cut into training,
selection and reporting shares. Run once; the committed JSON is the split.

    .venv/bin/python benchmarks/oct_split.py
"""
from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from pathlib import Path

from same_fast.data import DATASETS, require_data_root

SEED = 20251208
SHARES = {"train": 0.60, "select": 0.12, "report": 0.28}
OUT = Path(__file__).resolve().parent.parent / "same_fast" / "splits" / "kermany-oct.json"


def main() -> None:
    root = require_data_root() / str(DATASETS["Kermany-train"]["root"])
    rows = list(csv.DictReader(open(root / "manifest.csv")))
    classes: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        classes[r["patient_id"]].add(r["class"])
    by_class: dict[str, list[str]] = defaultdict(list)
    for pid, cs in sorted(classes.items()):
        by_class[sorted(cs)[0]].append(pid)
    rng = random.Random(SEED)
    part_of: dict[str, str] = {}
    for cls in sorted(by_class):
        pids = by_class[cls]
        rng.shuffle(pids)
        n_sel = round(SHARES["select"] * len(pids))
        n_rep = round(SHARES["report"] * len(pids))
        for i, pid in enumerate(pids):
            part_of[pid] = "select" if i < n_sel else "report" if i < n_sel + n_rep else "train"
    split = {"data": "oct/Kermany_OCT2017 (manifest.csv)", "seed": SEED, "shares": SHARES,
             "method": "by patient_id, stratified by the patient's first class (alphabetical)",
             "command": "python benchmarks/oct_split.py"}
    for part in SHARES:
        files = sorted(r["file"].split("/")[-1] for r in rows if part_of[r["patient_id"]] == part)
        split[part] = {"patients": sorted(p for p, q in part_of.items() if q == part),
                       "files": files,
                       "per_class": {c: sum(f.startswith(c + "-") for f in files)
                                     for c in sorted(by_class)}}
    OUT.write_text(json.dumps(split, indent=1) + "\n")
    print(OUT, {p: len(split[p]["files"]) for p in SHARES})


if __name__ == "__main__":
    main()
