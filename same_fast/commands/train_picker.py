"""``same-fast train-picker -i DATA [-i DATA2] -o CKPT --modality M``: train the IQA and the ISD."""
from __future__ import annotations

import argparse
import dataclasses
import json

HELP = "train the pseudo-label picker (image-quality assessor + structure VAE)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from same_fast.train.picker import PickerTrainConfig

    d = PickerTrainConfig()
    p.add_argument("-i", "--input", dest="inputs", action="append", required=True, metavar="DIR",
                   help="folder with images/ and masks/ (or <class>/images, <class>/masks); "
                        "repeat for several sets")
    p.add_argument("-o", "--output", required=True, metavar="CKPT",
                   help="picker checkpoint to write (.safetensors)")
    p.add_argument("--modality", choices=["fundus", "ultrasound", "oct"], default=d.modality)
    p.add_argument("--load-size", type=int, default=d.load_size, help="in-memory image side (px)")
    p.add_argument("--iqa-size", type=int, default=d.iqa_size, help="IQA input side (px)")
    p.add_argument("--isd-size", type=int, default=d.isd_size, help="ISD input side (px, 2^k)")
    p.add_argument("--iqa-width", type=int, default=d.iqa_width, help="IQA base channels")
    p.add_argument("--isd-latent", type=int, default=d.isd_latent, help="VAE latent dimensions")
    p.add_argument("--iqa-steps", type=int, default=d.iqa_steps)
    p.add_argument("--isd-steps", type=int, default=d.isd_steps)
    p.add_argument("--isd-adversarial", type=float, default=d.isd_adversarial, metavar="W",
                   help="weight of the VAE-GAN adversarial term (the paper's ISD; 0 = plain VAE)")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--percentile", type=float, default=d.percentile,
                   help="ISD threshold = this percentile of training-mask scores")
    p.add_argument("--max-images", type=int, default=d.max_images, help="0 = all")
    p.add_argument("--exclude-from", default=d.exclude_from, metavar="MODEL",
                   help="leave out the images this source checkpoint held out (its provenance)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch CPU threads (0 = default; 1 is fastest on a busy shared CPU)")


def run(args: argparse.Namespace) -> int:
    from same_fast.train.picker import PickerTrainConfig, train_picker

    fields = {f.name for f in dataclasses.fields(PickerTrainConfig)}
    cfg = PickerTrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    bars: dict[str, object] = {}

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        from same_fast.progress import progress_bar

        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = progress_bar(total=total, desc=f"train {stage}", unit="step")
        bar.update(1)  # type: ignore[attr-defined]
        bar.set_postfix(loss=f"{loss:.4f}")  # type: ignore[attr-defined]
        if step == total:
            bar.close()  # type: ignore[attr-defined]

    summary = train_picker(cfg, progress)
    print(json.dumps(summary, indent=2))
    print(f"wrote {cfg.output}")
    return 0
