"""Enhance files with a source model: one image, a folder, DICOM series and cines, pipelined.

``enhance_files(cfg)`` is what ``same-fast enhance`` runs: the plan (``batch.plan``), a
``ModelStep`` (the model and the step that runs it: plain torch, an engine backend, or an online
adapter), then ``enhance_tasks``, which decodes in a reader pool, enhances in input order in the
calling thread (consecutive single-frame files of one shape share a batch) and encodes in a
writer pool (``batch.pipeline``), and finally ``summary.json``. A failure (load, enhance or write)
costs its own file only; every output is written atomically under its planned name, so a file
written twice (a retried Ray task) is written whole, once.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from same_fast.batch import pipeline
from same_fast.batch.config import EnhanceConfig
from same_fast.batch.plan import SeriesUids, Task, inputs, plan
from same_fast.engine.tiles import batch_within, enhance_in_tiles
from same_fast.enhancer import Step, enhance_array
from same_fast.errors import InputError, SameFastError


@dataclass
class ModelStep:
    """The model side of a run, built once (per process; a Ray worker builds its own)."""

    model: torch.nn.Module
    meta: dict[str, Any]
    step: Step
    adapter: Any
    info: dict[str, Any]

    @classmethod
    def load(cls, cfg: EnhanceConfig, probe: dict[str, Any] | None = None) -> ModelStep:
        """Check the flags, load the model and build its step (``InputError`` on bad flags).
        ``probe``: the shape ``--backend auto`` times its candidates at (``auto_probe``)."""
        model, meta = cls.check(cfg)
        step, adapter, info = make_step(cfg, model, meta, probe)
        return cls(model, meta, step, adapter, info)

    @staticmethod
    def check(cfg: EnhanceConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The flags, the UID root and the model, checked; the model and its metadata."""
        from same_fast.io.dicom_derived import uid_root
        from same_fast.models import load_model

        check_flags(cfg)
        uid_root(cfg.uid_root)  # a bad root fails now, not on the first DICOM
        return load_model(cfg.model, cfg.device)


def auto_probe(cfg: EnhanceConfig, paths: Sequence[Path] | None = None) -> dict[str, Any]:
    """The batch and frame size the job's first input (of ``paths``; default: of ``cfg``'s
    inputs) will be enhanced at, as ``auto``'s probe options (``create_backend``); empty
    (``auto``'s default probe) for another backend, when that input's header cannot be read, or
    when its frames are tiled."""
    from same_fast.io import peek_shape

    if cfg.backend != "auto":
        return {}
    if paths is None:
        try:
            paths = [p for p, _ in inputs(cfg)[:1]]
        except SameFastError:
            paths = []  # the plan refuses the run, after the model has been checked
    shape = peek_shape(paths[0]) if paths else None
    if shape is None or shape[1] * shape[2] > cfg.tile_pixels:
        return {}
    frames, h, w = shape
    batch = batch_within(cfg.batch, h, w, cfg.tile_pixels)
    return {"auto_batch": batch if frames == 1 else min(batch, frames), "auto_size": [h, w]}


def check_flags(cfg: EnhanceConfig) -> None:
    if cfg.batch < 1:
        raise InputError("--batch must be >= 1")
    if cfg.queue_pixels < 1:
        raise InputError("--queue-pixels must be >= 1")
    if not 0 <= cfg.png_level <= 9:
        raise InputError(f"--png-level must be 0-9, got {cfg.png_level}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device available (use --device cpu)")


@dataclass
class Decoded:
    """A file read and checked, waiting for the model (``ms_per_frame`` set by it)."""

    task: Task
    loaded: Any  # same_fast.io.Loaded
    fov: np.ndarray | None
    ms_per_frame: float = 0.0

    @property
    def frames(self) -> np.ndarray:
        return self.loaded.frames


class Stages:
    """Read, enhance and write of one run: the ``pipeline.Stages`` callables, bound to it."""

    def __init__(self, cfg: EnhanceConfig, model_step: ModelStep, tasks: Sequence[Task],
                 series: SeriesUids, raise_errors: bool = False) -> None:
        self.cfg, self.model_step, self.tasks, self.series = cfg, model_step, tasks, series
        self.raise_errors = raise_errors
        self.failed: dict[int, dict[str, str]] = {}

    def read(self, i: int) -> Decoded:
        from same_fast.io import load, load_mask
        from same_fast.io.dicom_derived import check_derivable
        from same_fast.models import check_modality

        task = self.tasks[i]
        loaded = load(task.path)
        if loaded.is_dicom:
            check_modality(self.model_step.meta.get("modality"), loaded.dataset.get("Modality"),
                           str(task.path), self.cfg.force_modality)
            check_derivable(loaded.dataset, str(task.path))
        fov = load_mask(task.mask, loaded.frames.shape[1:3]) if task.mask else None
        return Decoded(task, loaded, fov)

    def key(self, d: Decoded) -> tuple | None:
        """Files that may share one batch: single frames of one shape, dtype and mask use,
        within the pixel budget, and not while adapting (each frame sees the weights adapted
        on every frame before it)."""
        f, h, w, c = d.frames.shape
        if self.model_step.adapter or f != 1 or h * w > self.cfg.tile_pixels:
            return None
        return (h, w, c, d.frames.dtype.str, d.fov is None)

    def model(self, items: Sequence[Decoded]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        if len(items) == 1:
            outs = [self._enhance(items[0].frames, items[0].fov)]
        else:
            x = np.concatenate([d.frames for d in items])
            fov = None if items[0].fov is None else np.stack([d.fov for d in items])
            y = self._enhance(x, fov)
            outs = list(np.split(y, np.cumsum([d.frames.shape[0] for d in items])[:-1]))
        ms = 1000 * (time.perf_counter() - t0) / sum(d.frames.shape[0] for d in items)
        for d in items:
            d.ms_per_frame = ms
        return outs

    def _enhance(self, frames: np.ndarray, fov: np.ndarray | None) -> np.ndarray:
        e, cfg = self.model_step, self.cfg
        # With --adapt, frames go one at a time so that each is enhanced with weights adapted
        # on every frame before it (a cine adapts within itself).
        batch = 1 if e.adapter else batch_within(cfg.batch, *frames.shape[1:3], cfg.tile_pixels)

        def run(tile: np.ndarray, tile_fov: np.ndarray | None) -> np.ndarray:
            return enhance_array(e.model, tile, tile_fov, batch, cfg.device, e.step)

        return enhance_in_tiles(frames, fov, run, cfg.tile_pixels,
                                getattr(e.model, "multiple", 1))

    def write(self, d: Decoded, y: np.ndarray) -> dict[str, Any]:
        from same_fast.io import write_dicom_derived, write_image

        task, loaded = d.task, d.loaded
        if loaded.is_dicom:
            uid = self.series.uid_for(str(loaded.dataset.get("SeriesInstanceUID", "")))
            write_dicom_derived(loaded.dataset, y, task.dst, series_uid=uid,
                                uid_root=self.cfg.uid_root,
                                description=f"Enhanced by same-fast (SAME, {self.cfg.model})")
        else:
            write_image(task.dst, y[0], png_level=self.cfg.png_level)
        f, h, w = d.frames.shape[:3]
        return {"input": str(task.path), "output": str(task.dst), "frames": int(f),
                "height": int(h), "width": int(w),
                "mask": str(task.mask) if task.mask else None,
                "ms_per_frame": round(d.ms_per_frame, 2)}

    def fail(self, i: int, e: BaseException) -> None:
        if self.raise_errors or not isinstance(e, Exception):
            raise e
        task = self.tasks[i]
        message = file_error(task.path, e)
        sys.stderr.write(f"same-fast: error: {message}\n")
        self.failed[i] = {"input": str(task.path), "output": str(task.dst), "error": message}

    def bind(self) -> pipeline.Stages[Decoded]:
        return pipeline.Stages(read=self.read, model=self.model, write=self.write,
                               fail=self.fail, pixels=lambda d: int(np.prod(d.frames.shape[:3])),
                               key=self.key, frames=lambda d: int(d.frames.shape[0]))


def enhance_tasks(cfg: EnhanceConfig, model_step: ModelStep, tasks: Sequence[Task],
                  series: SeriesUids | None = None, raise_errors: bool = False,
                  progress: Callable[[], None] | None = None
                  ) -> tuple[list[dict[str, Any]], list[dict[str, str]], pipeline.StageTimes]:
    """Run ``tasks`` through the pipeline; returns (records, failures, stage times), each list
    in input order. ``raise_errors``: the first failure raises instead of being recorded."""
    stages = Stages(cfg, model_step, tasks, series or SeriesUids(cfg.uid_root), raise_errors)
    times = pipeline.StageTimes()
    results = pipeline.run(len(tasks), stages.bind(), cfg.threads(), cfg.queue_pixels,
                           group_frames=cfg.batch, done=progress, times=times)
    records = [r for i, r in enumerate(results) if i not in stages.failed]
    return records, [stages.failed[i] for i in sorted(stages.failed)], times


def enhance_files(cfg: EnhanceConfig) -> dict[str, Any]:
    """Enhance every input of ``cfg`` into ``cfg.output``; returns the summary also written.

    Everything that can be refused for the whole run (flags, the model, names, ``-o`` inside
    ``-i``) is refused before anything is written; after that each file is loaded, enhanced and
    written on its own, and a failure costs that file only (the single-file input re-raises).
    """
    check_flags(cfg)
    # the folder is listed once: auto's probe reads the first input's header, the plan names
    # the outputs; a refused listing is raised once the model has been checked, before any
    # backend is built
    try:
        pairs = inputs(cfg)
    except SameFastError:
        ModelStep.check(cfg)
        raise
    model_step = ModelStep.load(cfg, auto_probe(cfg, [p for p, _ in pairs[:1]]))
    tasks = plan(cfg, pairs)
    from same_fast.progress import progress_bar

    bar = progress_bar(None, cfg.progress, total=len(tasks), desc="enhance", unit="file")
    t0 = time.perf_counter()
    try:
        records, failed, times = enhance_tasks(cfg, model_step, tasks,
                                               raise_errors=len(tasks) == 1,
                                               progress=bar.update)
    finally:
        bar.close()
    summary = summarize(cfg, model_step.meta, model_step.info, records, failed,
                        time.perf_counter() - t0,
                        model_step.adapter.stats() if model_step.adapter else None)
    summary["workers"] = cfg.threads()
    summary["pipeline"] = times.as_dict()
    write_summary(Path(cfg.output), summary)
    return summary


def summarize(cfg: EnhanceConfig, meta: dict[str, Any], engine: dict[str, Any],
              records: list[dict[str, Any]], failed: list[dict[str, str]], seconds: float,
              adaptation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of a run (``summary.json``): every file written and every file that failed.
    ``engine``: the backend's description; ``adaptation``: the online adapter's statistics."""
    n_frames = sum(r["frames"] for r in records)
    return {
        "model": cfg.model, "preset": meta.get("preset"), "modality": meta.get("modality"),
        "device": cfg.device, "batch": cfg.batch, "engine": engine, "adaptation": adaptation,
        "files": records, "n_files": len(records), "failed": failed, "n_failed": len(failed),
        "n_frames": n_frames, "seconds": round(seconds, 3),
        "mean_ms_per_frame": round(sum(r["ms_per_frame"] * r["frames"] for r in records)
                                   / n_frames, 2) if n_frames else None,
    }


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    from same_fast.files import atomic_path

    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")


def file_error(path: Path, e: BaseException) -> str:
    """One line for a file that failed: our own message, or what went wrong and where."""
    if isinstance(e, SameFastError):
        text = str(e)
    elif isinstance(e, MemoryError) or "allocate" in str(e):
        text = f"{path}: out of memory while enhancing (lower --tile-pixels or --batch)"
    else:
        text = f"{path}: internal error: {type(e).__name__}: {e}"
    return (text.strip().splitlines() or [type(e).__name__])[0]


def make_step(cfg: EnhanceConfig, model: torch.nn.Module, meta: dict[str, Any],
              probe: dict[str, Any] | None = None) -> tuple[Step, Any, dict[str, Any]]:
    """The enhancement step for ``cfg``: plain torch, an engine backend, or an online adapter
    (``probe``: ``auto``'s probe options)."""
    if cfg.adapt:
        return _adapt_step(cfg, model, meta)
    if cfg.backend == "torch" and not cfg.channels_last:
        from same_fast.nn import enhance

        def torch_step(t: torch.Tensor, mm: torch.Tensor | None) -> torch.Tensor:
            return enhance(model, t, mm)

        return torch_step, None, {"backend": "torch"}
    from same_fast.engine import create_backend

    backend = create_backend(cfg.backend, model, device=cfg.device, metadata=meta,
                             channels_last=cfg.channels_last, options=probe)
    info = backend.describe()
    if cfg.backend == "auto":  # what auto chose at, for summary.json
        info["auto_probe"] = dict(probe) if probe else "default"
    return backend.enhance, None, info


def _adapt_step(cfg: EnhanceConfig, model: torch.nn.Module, meta: dict[str, Any]
                ) -> tuple[Step, Any, dict[str, Any]]:
    if cfg.backend not in ("torch", "auto") or cfg.channels_last:
        raise InputError("--adapt serves the adapting torch student; use --backend torch "
                         "without --channels-last")
    from same_fast.adapt.online import OnlineAdapter
    from same_fast.picker import PickerConfig, resolve_picker

    modality = str(meta.get("modality", "fundus"))
    acfg = dataclasses.replace(cfg.adaptation, mode="online", modality=modality)
    picker = resolve_picker(acfg.picker, modality, cfg.device,
                            PickerConfig(calibrate=acfg.picker_calibrate))
    adapter = OnlineAdapter(model, picker, acfg)

    def adapt_step(t: torch.Tensor, mm: torch.Tensor | None) -> torch.Tensor:
        adapter.observe(t, mm)
        return adapter.enhance(t, mm)

    return adapt_step, adapter, {"backend": "torch", "adapt": "online", "picker": acfg.picker,
                                 "picker_calibrate": acfg.picker_calibrate,
                                 "adaptation": acfg.to_dict()}
