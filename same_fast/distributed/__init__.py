"""Batch work past one machine, on Ray (the optional extra ``ray``; imported only when used).

- ``enhance_on_ray(cfg, address)``: ``same-fast enhance --ray``, the enhance job sharded over
  Ray actors that each load the model once; lost workers' shards are retried, outputs are
  written atomically under the local run's names and reconciled at the end.
- ``adapt_clinics_on_ray(jobs, address)``: offline adaptation, one Ray task per clinic folder,
  each writing its own checkpoint and audit log (``docs/SCALE.md``).
"""
from same_fast.distributed.adapt import ClinicJob, adapt_clinics_on_ray
from same_fast.distributed.enhance import enhance_on_ray

__all__ = ["ClinicJob", "adapt_clinics_on_ray", "enhance_on_ray"]
