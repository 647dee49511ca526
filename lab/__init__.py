"""The evaluation lab: experiments, ceilings and one-off studies, beside the installed package.

Nothing in ``same_fast`` imports it, and it is not installed: run it from a checkout, e.g.
``python -m lab --only drive-cataract`` (every experiment: ``lab.config.EXPERIMENTS``),
``python -m lab.picker_auroc`` or ``python -m lab.adapt_pseudo_clean``. Modules:

- ``config``: ``ExperimentConfig`` and the named experiments.
- ``images``: the test images (DRIVE, held-out BUSI) and their degraded copies.
- ``planted``: implausible pseudo-labels and the picker's AUROC against them.
- ``segmenter``: the frozen downstream vessel U-Net.
- ``baselines``: CLAHE.
- ``experiment``: ``run_experiment``, every arm on the same images.
- ``report``: the Markdown table and image grids.
"""
