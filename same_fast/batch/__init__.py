"""Batch work over files: the pipelined folder/series run behind ``same-fast enhance``.

- ``EnhanceConfig`` (``batch.config``): one field per flag.
- ``enhance_files(cfg)``: plan, load the model once, decode / enhance / encode overlapped
  (``batch.pipeline``), write ``summary.json``; ``enhance_tasks`` runs a list of planned tasks
  with a loaded ``ModelStep`` (what a Ray worker calls, ``same_fast.distributed``).
Frames go through ``same_fast.model_step.enhance_array`` (integer frames in and out).
"""
from same_fast.batch.config import DEFAULT_QUEUE_PIXELS, EnhanceConfig, default_workers
from same_fast.batch.enhance import ModelStep, enhance_files, enhance_tasks
from same_fast.batch.plan import SeriesUids, Task, plan

__all__ = ["DEFAULT_QUEUE_PIXELS", "EnhanceConfig", "ModelStep", "SeriesUids", "Task",
           "default_workers", "enhance_files", "enhance_tasks", "plan"]
