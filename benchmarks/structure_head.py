"""A model's structure head (the vessel map of SPEC's structure loss) on train-source's validation.

    python benchmarks/structure_head.py --arm fundus-lite=fundus-lite --arm new=PATH \
        [--val DRIVE] [--recipe same_fast/weights/fundus-lite.recipe.json] [--json FILE]

The validation frames are the ones ``train-source --config RECIPE --val-data VAL`` scores (the
recipe's load size, degradation, target and split seed); each arm's per-frame Dice (threshold
0.5, ``train.source.structure_dice``) is reported with a bootstrap 95 % interval over frames, and
every arm after the first also as a paired difference to the first. The JSON records the git
commit, the seeds and the command. Adaptation's structure terms (``w_struct``, ``w_entropy``)
act on this head, so it tells whether they have anything to work with.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

RECIPE = Path(__file__).resolve().parents[1] / "same_fast" / "weights" / "fundus-lite.recipe.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from same_fast.benchsuites.common import write_json
    from same_fast.eval import bootstrap_ci, provenance
    from same_fast.models import load_model
    from same_fast.train.source import (
        MODALITIES,
        SourceConfig,
        holdout_seed,
        load_samples,
        structure_dice,
        validation_set,
    )

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arm", action="append", required=True, metavar="LABEL=MODEL")
    p.add_argument("--val", default="DRIVE", help="data spec of the validation frames")
    p.add_argument("--recipe", type=Path, default=RECIPE)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    arms = [s.partition("=") for s in a.arm]
    if any(not m for _, _, m in arms):
        p.error("--arm expects LABEL=MODEL")
    torch.set_num_threads(a.threads)
    recipe = json.loads(a.recipe.read_text())
    known = SourceConfig.__dataclass_fields__
    cfg = SourceConfig(**{k: v for k, v in recipe.items() if k in known and k not in ("data", "out")},
                       data=a.val, out="")
    channels = MODALITIES[cfg.modality][0]
    val = [s for _, grp in load_samples(a.val, channels, cfg.load_size, cfg.modality) for s in grp]
    vs = validation_set(val, cfg, torch.device("cpu"))
    seed = holdout_seed(cfg)
    res: dict[str, Any] = {"provenance": provenance({"validation_degradation": seed + 1000,
                                                     "bootstrap": 0}),
                           "recipe": str(a.recipe), "val": a.val, "arms": {}}
    first = None
    for label, _, model in arms:
        net, _meta = load_model(model)
        dice = np.array(structure_dice(net, vs))
        if dice.size == 0:
            p.error(f"{a.val}: no validation frame has a structure mask")
        row: dict[str, Any] = {"model": model, "dice": bootstrap_ci(dice), "per_frame": dice.tolist()}
        if first is None:
            first = dice
        else:
            row["minus_first"] = bootstrap_ci(dice - first)
        res["arms"][label] = row
        d = row["dice"]
        print(f"{label:16s} Dice {d['mean']:.4f} [{d['lo']:.4f}, {d['hi']:.4f}] on {dice.size} "
              f"frames of {a.val}", flush=True)
    write_json(a.json, res)
    return res


if __name__ == "__main__":
    main()
    sys.exit(0)
