"""same_fast.batch: the pipeline keeps input order, isolates failures per item, groups same-key
items, holds no more than its pixel budget; a pipelined enhance run equals the sequential one."""
import json
import time

import numpy as np
import pytest
import torch

from same_fast.batch import EnhanceConfig, enhance_files
from same_fast.batch import pipeline as pl
from same_fast.io import load, write_image
from same_fast.models import save_model
from same_fast.nn import SAMENet


def _stages(n, fail_read=(), fail_model=(), fail_write=(), delay=0.0, log=None, px=10):
    failed = {}

    def read(i):
        time.sleep(delay * ((i * 7) % 3))  # reads finish out of order
        if i in fail_read:
            raise ValueError(f"bad read {i}")
        return {"i": i, "key": "even" if i % 2 == 0 else "odd"}

    def model(items):
        if log is not None:
            log.append([it["i"] for it in items])
        if any(it["i"] in fail_model for it in items):
            raise RuntimeError("bad model")
        return [it["i"] * 10 for it in items]

    def write(item, y):
        time.sleep(delay * (item["i"] % 2))  # writes finish out of order
        if item["i"] in fail_write:
            raise OSError("disk full")
        return {"i": item["i"], "y": y}

    def fail(i, e):
        failed[i] = str(e)
        return {"i": i, "error": str(e)}

    return pl.Stages(read=read, model=model, write=write, fail=fail, pixels=lambda it: px,
                     key=lambda it: it["key"]), failed


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_order_and_per_item_failures(workers):
    stages, failed = _stages(20, fail_read={3}, fail_model={8}, fail_write={13}, delay=0.002)
    out = pl.run(20, stages, workers, budget=1000)
    assert [r["i"] for r in out] == list(range(20))
    assert set(failed) == {3, 8, 13}
    assert all(r["y"] == r["i"] * 10 for r in out if r["i"] not in failed)


def test_model_sees_input_order_and_groups_by_key():
    log = []
    stages, _ = _stages(12, log=log)
    stages.key = lambda it: "same" if it["i"] < 8 else None
    pl.run(12, stages, workers=2, budget=1000, group_frames=4)
    assert [i for g in log for i in g] == list(range(12))  # in order, each once
    assert log[:2] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(len(g) == 1 for g in log[2:])


def test_a_failing_group_is_retried_item_by_item():
    log = []
    stages, failed = _stages(4, fail_model={2}, log=log)
    stages.key = lambda it: "same"
    out = pl.run(4, stages, workers=2, budget=1000, group_frames=4)
    assert set(failed) == {2} and [r["i"] for r in out] == [0, 1, 2, 3]
    assert log[0] == [0, 1, 2, 3] and [0] in log and [3] in log


def test_pixels_held_stay_within_budget_plus_reads_in_flight():
    stages, _ = _stages(200, px=100)
    write = stages.write

    def slow_write(item, y):  # writes lag: the budget, not the reads, must stop the intake
        time.sleep(0.001)
        return write(item, y)

    stages.write = slow_write
    times = pl.StageTimes()
    out = pl.run(200, stages, workers=2, budget=500, times=times)
    assert len(out) == 200
    assert 0 < times.peak_pixels <= 500 + 2 * 2 * 100


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    return str(save_model(path, SAMENet(3, "lite", base=4, levels=2), modality="fundus"))


def test_pipelined_run_equals_sequential_run(model, tmp_path, retina):
    src = tmp_path / "in"
    src.mkdir()
    for k in range(9):  # two shapes (batched apart), one corrupt file in the middle
        h = 40 if k < 6 else 56
        write_image(src / f"a{k}.png", retina[k * 3:k * 3 + h, 100:164])
    (src / "a4b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        runs[workers] = enhance_files(EnhanceConfig(model=model, input=str(src), output=str(out),
                                                    progress=False, workers=workers, batch=4))
    seq, par = runs[0], runs[2]
    assert [r["input"] for r in par["files"]] == [r["input"] for r in seq["files"]]
    assert [f["input"] for f in par["failed"]] == [str(src / "a4b.png")]
    assert par["n_files"] == 9 and par["workers"] == 2
    assert par["pipeline"]["peak_pixels"] > 0
    for r in seq["files"]:
        a = load(r["output"]).frames.astype(int)
        b = load(r["output"].replace("/out0/", "/out2/")).frames.astype(int)
        assert np.abs(a - b).max() <= 1
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["n_failed"] == 1
