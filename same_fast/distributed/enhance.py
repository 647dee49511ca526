"""``same-fast enhance --ray``: the enhance job as Ray actor tasks over an archive.

The driver plans the run exactly as a local run does (``batch.plan``: same checks, same output
names), cuts the files into shards and hands them to one actor per worker. Each actor loads the
model once (``batch.ModelStep``) and runs its shards through the same pipeline as a local run
(``batch.enhance_tasks``), writing every output atomically under its planned name. A shard whose
actor dies (killed, out of memory, node lost) goes to a fresh actor, up to ``max_retries`` times;
since outputs are keyed by name and written whole or not at all, a file written before the crash
is simply written again, never twice and never half. Derived DICOM series get UIDs drawn from the
run's key, so files of one series that land on different workers still share one series.

Finally the driver reconciles: one record per input (written or failed, in input order),
temporaries orphaned by a killed writer removed, and the list of outputs on disk checked against
the records, all in ``summary.json``. Inputs, outputs and a checkpoint path must be reachable
under the same paths from every node (a shared file system), as for any Ray job reading files.
"""
from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from same_fast.batch import EnhanceConfig, ModelStep, SeriesUids, Task, enhance_tasks, plan
from same_fast.batch.enhance import auto_probe, check_flags, summarize, write_summary
from same_fast.distributed.cluster import cluster_cpus, connect
from same_fast.errors import InputError


class EnhanceWorker:
    """One Ray actor: the model loaded once, then any number of shards."""

    def __init__(self, fields: dict[str, Any], run_key: str,
                 probe: dict[str, Any] | None = None) -> None:
        self.cfg = EnhanceConfig.from_dict(fields)
        self.model_step = ModelStep.load(self.cfg, probe)
        self.series = SeriesUids(self.cfg.uid_root, run_key)

    def run(self, shard: list[tuple[int, Task]]) -> tuple[dict[int, dict[str, Any]], dict]:
        """``{index: record}`` for the shard (a failed file's record has an ``error``), and the
        backend's description."""
        tasks = [t for _, t in shard]
        records, failed, _ = enhance_tasks(self.cfg, self.model_step, tasks, self.series)
        by_input = {r["input"]: r for r in records + failed}
        return {i: by_input[str(t.path)] for i, t in shard}, self.model_step.info


def absolute(cfg: EnhanceConfig) -> EnhanceConfig:
    """``cfg`` with its paths absolute (workers do not share the driver's working folder)."""
    def abs_(p: str | None) -> str | None:
        return None if p is None else str(Path(p).expanduser().resolve())

    model = abs_(cfg.model) if Path(cfg.model).expanduser().exists() else cfg.model
    return dataclasses.replace(cfg, input=abs_(cfg.input), output=abs_(cfg.output),
                               mask=abs_(cfg.mask), model=model, progress=False)


def shards(tasks: list[Task], workers: int, size: int | None = None) -> list[list[tuple[int, Task]]]:
    """Consecutive ``(index, task)`` runs; by default about four shards per worker, so a lost
    worker costs a quarter of its share and the last shards balance the load."""
    size = size or max(1, math.ceil(len(tasks) / (4 * workers)))
    items = list(enumerate(tasks))
    return [items[i:i + size] for i in range(0, len(items), size)]


def enhance_on_ray(cfg: EnhanceConfig, address: str | None = None, workers: int | None = None,
                   shard_files: int | None = None, max_retries: int = 3,
                   runtime_env: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the enhance job ``cfg`` on Ray; returns the summary also written to ``summary.json``.

    ``address``: a cluster to join (None: this process's Ray session if it has one, else a local
    cluster). ``workers``: actors (default: the cluster's CPUs, one CPU each). ``shard_files``:
    files per shard. ``max_retries``: how often a shard whose actor died is handed on.
    ``runtime_env``: Ray's, for the actors (packages, environment variables, setup hooks).
    """
    if cfg.adapt:
        raise InputError("--adapt adapts in input order on one machine; run it without --ray")
    from same_fast.models import load_model

    cfg = absolute(cfg)
    check_flags(cfg)
    _, meta = load_model(cfg.model, "cpu")  # a bad model name fails before any worker starts
    tasks = plan(cfg)
    t0 = time.perf_counter()
    with connect(address, workers) as ray:
        n = max(1, min(workers or cluster_cpus(ray), len(tasks)))
        parts = shards(tasks, n, shard_files)
        results, engine, retries = _schedule(ray, cfg, parts, n, max_retries, runtime_env,
                                             auto_probe(cfg, [t.path for t in tasks]))
    summary = reconcile(cfg, meta, engine, tasks, results, time.perf_counter() - t0)
    summary["ray"] = {"address": address or "local", "workers": n, "shards": len(parts),
                      "shard_retries": retries, **summary.pop("reconciled")}
    write_summary(Path(cfg.output), summary)
    return summary


def _schedule(ray: Any, cfg: EnhanceConfig, parts: list[list[tuple[int, Task]]], n: int,
              max_retries: int, runtime_env: dict[str, Any] | None,
              probe: dict[str, Any] | None = None
              ) -> tuple[dict[int, dict[str, Any]], dict[str, Any], int]:
    """Hand shards to idle actors; a shard whose actor died goes to a fresh actor. Returns the
    records by input index, the backend's description and how many shards were handed on.
    ``probe``: ``--backend auto``'s probe shape, the same for every actor."""
    from ray.exceptions import RayActorError, WorkerCrashedError

    fields = dataclasses.asdict(cfg)
    key = uuid.uuid4().hex
    options: dict[str, Any] = {"num_cpus": 1, "max_restarts": 0, "max_task_retries": 0}
    if runtime_env:
        options["runtime_env"] = runtime_env
    actor_cls = ray.remote(EnhanceWorker).options(**options)

    def spawn() -> Any:
        return actor_cls.remote(fields, key, probe)

    idle = [spawn() for _ in range(n)]
    queue = deque(range(len(parts)))
    tries = [0] * len(parts)
    inflight: dict[Any, tuple[Any, int]] = {}
    results: dict[int, dict[str, Any]] = {}
    engine: dict[str, Any] = {"backend": cfg.backend}
    retries = 0
    while queue or inflight:
        while idle and queue:
            actor, s = idle.pop(), queue.popleft()
            inflight[actor.run.remote(parts[s])] = (actor, s)
        [ref], _ = ray.wait(list(inflight), num_returns=1)
        actor, s = inflight.pop(ref)
        try:
            done, engine = ray.get(ref)
            results.update(done)
            idle.append(actor)
        except (RayActorError, WorkerCrashedError) as e:
            if getattr(e, "actor_init_failed", False):  # the same flags fail on every worker
                raise InputError(f"--ray: a worker could not start: {_cause(e)}") from None
            ray.kill(actor, no_restart=True)
            idle.append(spawn())
            tries[s] += 1
            if tries[s] <= max_retries:
                retries += 1
                queue.appendleft(s)
            else:
                results.update({i: _lost(t, tries[s], e) for i, t in parts[s]})
    for actor in idle:
        ray.kill(actor, no_restart=True)
    return results, engine, retries


def _cause(e: Exception) -> str:
    """The last line of a Ray error that says what went wrong (the original exception)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    named = [ln for ln in lines if "Error" in ln.split(":")[0]]
    return (named or lines or [type(e).__name__])[-1][:300]


def _lost(task: Task, tries: int, e: Exception) -> dict[str, str]:
    return {"input": str(task.path), "output": str(task.dst),
            "error": f"{task.path}: its worker died {tries} time(s) ({_cause(e)})"}


def reconcile(cfg: EnhanceConfig, meta: dict[str, Any], engine: dict[str, Any], tasks: list[Task],
              results: dict[int, dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The run's summary from what the workers reported and what is on disk.

    One entry per input, in input order: its record when its output exists, else a failure.
    Temporaries a killed writer left beside a planned output are removed. ``reconciled``:
    outputs on disk, orphans removed.
    """
    from same_fast.files import remove_orphans

    records, failed = [], []
    for i, t in enumerate(tasks):
        r = results.get(i) or {"input": str(t.path), "output": str(t.dst),
                               "error": f"{t.path}: no worker reported it"}
        if "error" not in r and not t.dst.is_file():
            r = {"input": str(t.path), "output": str(t.dst),
                 "error": f"{t.path}: reported written, but {t.dst} is missing"}
        (failed if "error" in r else records).append(r)
    orphans = sum(remove_orphans(t.dst) for t in tasks)
    written = sorted(str(t.dst) for t in tasks if t.dst.is_file())
    summary = summarize(cfg, meta, engine, records, failed, seconds)
    summary["reconciled"] = {"written": written, "orphans_removed": orphans}
    return summary
