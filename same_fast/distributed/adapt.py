"""Adaptation at scale: one Ray task per clinic, each adapting the source model offline to its
own folder and writing its own checkpoint and audit log (``batch.adapt_folder``).

SFUDA is per site by nature: clinics share nothing but the source model, so their adaptations
are independent tasks, as many at once as the cluster has CPUs (or GPUs, with ``num_gpus``). A
task whose worker dies is retried by Ray (``max_retries``); its checkpoint is written atomically,
so a retried clinic ends with one whole checkpoint, and its audit log (append-only) shows the
interrupted attempt followed by the complete one. A clinic that fails with an error (no images,
a bad mask folder) is reported on its own; the others still finish.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from same_fast.adapt.config import AdaptConfig
from same_fast.distributed.cluster import connect


@dataclass(frozen=True)
class ClinicJob:
    """One clinic: its folder of unlabeled images, its checkpoint, optional masks and audit log
    (default: beside the checkpoint, ``<checkpoint without suffix>.audit.jsonl``)."""

    name: str
    input: str
    output: str
    mask: str | None = None
    audit: str | None = None


def _adapt_one(model: str, job: ClinicJob, fields: dict[str, Any], picker: str,
               device: str) -> dict[str, Any]:
    from same_fast.batch.adapt import adapt_folder
    from same_fast.errors import SameFastError

    try:
        out = adapt_folder(model, job.input, job.output, AdaptConfig(**fields), picker,
                           job.mask, job.audit, device)
    except SameFastError as e:  # this clinic's own problem: reported, the others go on
        return {"clinic": job.name, "error": str(e).splitlines()[0] if str(e) else repr(e)}
    return {"clinic": job.name, **out}


def adapt_clinics_on_ray(model: str, jobs: list[ClinicJob], config: AdaptConfig | None = None,
                         picker: str = "auto", address: str | None = None,
                         device: str = "cpu", num_cpus: float = 1, num_gpus: float = 0,
                         max_retries: int = 2,
                         runtime_env: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Adapt ``model`` to each clinic of ``jobs`` as one Ray task each; returns one result per
    job, in order (``batch.adapt_folder``'s, or ``{"clinic", "error"}``).

    Paths must be reachable from every node. ``config``: the offline schedule (steps, batch,
    size, ...), the same for every clinic.
    """
    cfg = config or AdaptConfig()
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "mode"}
    model = str(Path(model).resolve()) if Path(model).exists() else model
    jobs = [dataclasses.replace(j, input=str(Path(j.input).resolve()),
                                output=str(Path(j.output).resolve()),
                                mask=j.mask and str(Path(j.mask).resolve()),
                                audit=j.audit and str(Path(j.audit).resolve())) for j in jobs]
    with connect(address) as ray:
        options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus,
                                   "max_retries": max_retries}
        if runtime_env:
            options["runtime_env"] = runtime_env
        task = ray.remote(_adapt_one).options(**options)
        return ray.get([task.remote(model, j, fields, picker, device) for j in jobs])
