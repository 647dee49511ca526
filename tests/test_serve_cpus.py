"""CPU placement of online adaptation (``--adapt-cpus``): the adapter really runs on its CPUs,
the stream loop's workers on the others, and bad lists are one-line usage errors."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from same_fast.adapt.config import AdaptConfig
from same_fast.errors import InputError
from same_fast.nn import SAMENet
from same_fast.serve import cpus
from same_fast.serve.adaptation import OnlineAdaptation, ProcessAdaptation
from same_fast.serve.config import ServeConfig
from same_fast.serve.model import served_from_module
from same_fast.serve.service import Service

USABLE = cpus.usable_cpus()
needs_two = pytest.mark.skipif(not cpus.SUPPORTED or len(USABLE) < 2,
                               reason="CPU affinity with at least 2 usable CPUs")


def _served(backend: str = "torch"):
    torch.manual_seed(0)
    net = SAMENet(1, "lite", base=4, max_channels=8, levels=2)
    return served_from_module(net, "tiny", backend=backend)


def _affinity(tid: int) -> set[int]:
    return set(os.sched_getaffinity(tid))


def _tids(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


@pytest.mark.parametrize("usable", [{0}, {0, 1}, {0, 1, 2, 3}, set(range(16)), {3, 7}])
def test_auto_keeps_serving_at_least_one_cpu(usable):
    plan = cpus.plan_adapter_cpus("auto", threads=1, usable=usable)
    if len(usable) < 2 or not cpus.SUPPORTED:
        assert plan.adapter is None and plan.serving == frozenset(usable)
        assert "not placed" in plan.note
        return
    assert plan.serving and plan.adapter and plan.adapter | plan.serving == usable
    assert not plan.adapter & plan.serving
    assert plan.adapter == {max(usable)}  # one adapter thread, one CPU: the highest-numbered


def test_auto_gives_the_adapter_one_cpu_per_thread_but_never_all():
    if not cpus.SUPPORTED:
        pytest.skip("no CPU affinity on this platform")
    assert cpus.plan_adapter_cpus("auto", threads=3, usable=range(8)).adapter == {5, 6, 7}
    plan = cpus.plan_adapter_cpus("auto", threads=8, usable={0, 1})
    assert plan.adapter == {1} and plan.serving == {0}


def test_auto_on_this_machine_leaves_serving_a_cpu():
    plan = cpus.plan_adapter_cpus("auto")
    assert plan.serving and plan.serving <= USABLE
    assert plan.adapter is None or (plan.adapter | plan.serving == USABLE)


def test_cpu_lists_parse_and_format():
    assert cpus.parse_cpu_list("1,3,5-7") == {1, 3, 5, 6, 7}
    assert cpus.format_cpus({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert cpus.plan_adapter_cpus("off").adapter is None


@pytest.mark.parametrize("spec", ["x", "1,", "3-1", "-1", "", "99999"])
def test_bad_cpu_lists_are_input_errors(spec):
    with pytest.raises(InputError, match="--adapt-cpus"):
        cpus.plan_adapter_cpus(spec, usable={0, 1})


@needs_two
def test_a_list_of_every_usable_cpu_leaves_none_for_serving():
    every = ",".join(str(c) for c in sorted(USABLE))
    with pytest.raises(InputError, match="leaves no CPU for serving"):
        ServeConfig(adapt="online", adaptation=AdaptConfig.serving(cpus=every)).validate()


@pytest.mark.parametrize("spec", ["nonsense", "3-1", "99999", "all-of-them"])
def test_bad_cpu_list_on_the_command_line_is_a_one_line_usage_error(spec):
    # Checked before any model loads: the synthetic model is enough.
    proc = subprocess.run([sys.executable, "-m", "same_fast.cli", "serve", "-m", "identity",
                           "--adapt", "online", "--adapt-cpus", spec, "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("same-fast: error: --adapt-cpus"), proc.stderr
    assert "Traceback" not in proc.stderr


@needs_two
def test_adapter_process_and_its_pipe_threads_run_on_the_configured_cpus():
    cpu = max(USABLE)
    served = _served("onnxruntime")  # a standby build starts ONNX Runtime threads
    ad = ProcessAdaptation(served, AdaptConfig.serving(batch=2, every=2, size=16, buffer=8,
                                               cpus=str(cpu), publish_every_s=0))
    try:
        assert ad.ready.wait(120), ad.last_error
        assert ad.describe()["cpus"] == [cpu]
        assert _affinity(ad.proc.pid) == {cpu}
        assert all(_affinity(t) == {cpu} for t in _tids(ad.proc.pid))  # torch's threads too
        assert _affinity(ad._writer.native_id) == {cpu}
        assert _affinity(ad._reader.native_id) == {cpu}
        before = set(_tids(os.getpid()))
        for _ in range(200):  # until the child has published, i.e. a standby backend was built
            ad.observe(torch.rand(2, 1, 16, 16))
            served.frame_step([np.zeros((16, 16, 1), np.uint8)])
            if served.weights_version >= 1:
                break
            time.sleep(0.05)
        assert served.weights_version >= 1 and ad.errors == 0, ad.last_error
        # The child publishes after every step: a later standby build may still be running, its
        # threads confined until the build ends. Closing joins the reader, so every build ended.
        ad.close()
        # Threads born while a standby backend was built serve: they get every CPU back.
        for t in set(_tids(os.getpid())) - before:
            with contextlib.suppress(ProcessLookupError):  # a thread may end while we look
                assert _affinity(t) == set(USABLE)
    finally:
        ad.close()


@needs_two
def test_adapter_thread_runs_on_the_configured_cpus():
    cpu = max(USABLE)
    ad = OnlineAdaptation(_served(), AdaptConfig.serving(batch=2, every=2, size=16, buffer=8,
                                                 cpus=str(cpu)))
    try:
        for _ in range(100):  # the thread confines itself when it starts
            if _affinity(ad._thread.native_id) == {cpu}:
                break
            time.sleep(0.05)
        assert _affinity(ad._thread.native_id) == {cpu}
        assert ad.describe()["cpus"] == [cpu]
        assert _affinity(threading.get_native_id()) == set(USABLE)  # the caller is untouched
    finally:
        ad.close()


@needs_two
@pytest.mark.parametrize("adapt_in", ["process", "thread"])
def test_serve_auto_places_the_adapter_and_keeps_the_loop_workers_off_its_cpus(adapt_in):
    served = _served()
    seen: list[set[int]] = []
    step = served.frame_step

    def frame_step(frames, observe=None):  # runs in the stream loop's worker thread
        seen.append(_affinity(threading.get_native_id()))
        return step(frames, observe)

    served.frame_step = frame_step
    svc = Service(ServeConfig(adapt="online", adapt_in=adapt_in, adaptation=AdaptConfig.serving(
        every=2, batch=2, size=16, safety="off")), model=served)
    try:
        plan = svc.adaptation.cpus
        assert plan.adapter and plan.serving and not plan.adapter & plan.serving
        if adapt_in == "process":
            assert svc.adaptation.ready.wait(120), svc.adaptation.last_error
            assert _affinity(svc.adaptation.proc.pid) == set(plan.adapter)
        for f in [svc.accept(np.zeros((16, 16, 1), np.uint8)) for _ in range(4)]:
            f.result(timeout=60)
        assert seen and all(s == set(plan.serving) for s in seen)
        assert svc.describe()["adaptation"]["cpus"] == sorted(plan.adapter)
    finally:
        svc.close()


@needs_two
def test_adapt_cpus_off_places_nothing():
    served = _served()
    ad = ProcessAdaptation(served, AdaptConfig.serving(batch=2, every=2, size=16, cpus="off"))
    try:
        assert ad.ready.wait(120), ad.last_error
        assert _affinity(ad.proc.pid) == set(USABLE) and ad.describe()["cpus"] is None
    finally:
        ad.close()


@pytest.mark.parametrize("adapt_in", ["process", "thread"])
def test_weights_held_back_by_the_publish_interval_are_published_when_frames_stop(adapt_in):
    served = _served()
    cfg = AdaptConfig.serving(batch=2, every=1, size=16, buffer=8, safety="off", publish_every_s=0.3)
    ad = ProcessAdaptation(served, cfg) if adapt_in == "process" else OnlineAdaptation(served,
                                                                                        cfg)
    try:
        if adapt_in == "process":
            assert ad.ready.wait(120), ad.last_error
        ad.observe(torch.rand(3, 1, 16, 16))  # steps; the first publish goes out at once
        _wait(lambda: served.frame_step([np.zeros((16, 16, 1), np.uint8)]) and
              served.weights_version >= 1)
        ad.observe(torch.rand(3, 1, 16, 16))  # more steps within the interval: held back
        # No more frames: the held-back weights still reach the server (with the stats of the
        # sixth step, in process mode), and they are the adapter's latest.
        _wait(lambda: served.frame_step([np.zeros((16, 16, 1), np.uint8)]) and
              ad.describe()["steps"] == 6 and served.weights_version >= 2)
        if adapt_in == "thread":
            from same_fast.serve.model import short_hash

            assert served.weights_hash == short_hash(ad.adapter.served.state_dict())
        assert ad.errors == 0, ad.last_error
    finally:
        ad.close()


def test_a_long_publish_interval_holds_weights_back_until_freeze():
    served = _served()
    ad = OnlineAdaptation(served, AdaptConfig.serving(batch=2, every=1, size=16, buffer=8,
                                              safety="off", publish_every_s=3600))
    try:
        ad.observe(torch.rand(1, 1, 16, 16))
        _wait(lambda: ad.steps >= 1)
        ad.observe(torch.rand(2, 1, 16, 16))
        _wait(lambda: ad.steps >= 3)
        served.frame_step([np.zeros((16, 16, 1), np.uint8)])
        assert served.weights_version == 1  # the first publish only
        ad.freeze()  # publishes what was held back
        served.frame_step([np.zeros((16, 16, 1), np.uint8)])
        assert served.weights_version == 2
    finally:
        ad.close()


def _wait(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_process_adaptation_hands_frames_to_the_child_in_chunks():
    """The writer thread wakes per chunk of ``every`` frames (or a partial chunk after the
    hand-off time), not after every served batch: fewer wake-ups beside the serving thread."""
    from same_fast.serve import adapter_proc

    served = _served()
    ad = ProcessAdaptation(served, AdaptConfig.serving(batch=2, every=4, size=16, buffer=16,
                                               cpus="off", safety="off"))
    sent: list[int] = []

    class Spy:  # records the frame messages on their way to the child
        read_msg = staticmethod(adapter_proc.read_msg)
        load_weights = staticmethod(adapter_proc.load_weights)

        @staticmethod
        def write_msg(f, header, payload=b""):
            if header.get("type") == "frames":
                sent.append(int(header["shape"][0]))
            adapter_proc.write_msg(f, header, payload)

    ad._ipc = Spy
    try:
        assert ad.ready.wait(120), ad.last_error
        for _ in range(8):  # eight served batches of one frame, 5 ms apart (a 200 fps stream)
            ad.observe(torch.rand(1, 1, 16, 16))
            time.sleep(0.005)
        _wait(lambda: sum(sent) == 8, timeout=10)
        assert len(sent) <= 4 and max(sent) >= 4, sent  # one message per frame before chunking
        ad.observe(torch.rand(1, 1, 16, 16))  # a partial chunk still goes, after a moment
        _wait(lambda: sum(sent) == 9, timeout=10)
        assert sent[-1] == 1
        _wait(lambda: ad.steps >= 2)  # and the child trains on what it received
    finally:
        ad.close()


def test_thread_adaptation_takes_frames_in_chunks():
    """The adapter thread, too, wakes per chunk of ``every`` frames (or a partial chunk after
    the hand-off time), not after every served batch."""
    ad = OnlineAdaptation(_served(), AdaptConfig.serving(batch=2, every=4, size=16, buffer=16,
                                                 cpus="off", safety="off"))
    fed: list[int] = []
    feed = ad.feed
    ad.feed = lambda frames: (fed.append(len(frames)) if frames else None, feed(frames))[1]
    try:
        for _ in range(8):  # eight served batches of one frame, 5 ms apart (a 200 fps stream)
            ad.observe(torch.rand(1, 1, 16, 16))
            time.sleep(0.005)
        _wait(lambda: sum(fed) == 8, timeout=10)
        assert len(fed) <= 4 and max(fed) >= 4, fed  # one wake-up per frame before chunking
        ad.observe(torch.rand(1, 1, 16, 16))  # a partial chunk still goes, after a moment
        _wait(lambda: sum(fed) == 9, timeout=10)
        assert fed[-1] == 1
        _wait(lambda: ad.adapter.steps >= 2)  # and the adapter trains on what it took
    finally:
        ad.close()


def test_served_integer_frames_reach_the_adapter_as_they_are():
    """``frame_step`` observes the integer frames it served. The process adapter sends them
    unconverted (uint8 is half the bytes of float16, and exact); the child and the adapter
    thread turn them into float [0, 1] on their own side, off the serving thread."""
    from same_fast.serve import adapter_proc

    served = _served()
    ad = ProcessAdaptation(served, AdaptConfig.serving(batch=2, every=4, size=16, buffer=16,
                                               cpus="off", safety="off"))
    sent: list[tuple[dict, int]] = []

    class Spy:
        read_msg = staticmethod(adapter_proc.read_msg)
        load_weights = staticmethod(adapter_proc.load_weights)

        @staticmethod
        def write_msg(f, header, payload=b""):
            if header.get("type") == "frames":
                sent.append((dict(header), len(payload)))
            adapter_proc.write_msg(f, header, payload)

    ad._ipc = Spy
    rng = np.random.default_rng(0)
    try:
        assert ad.ready.wait(120), ad.last_error
        for _ in range(4):  # what the stream's frame step does after each batch of two
            out = served.frame_step(list(rng.integers(0, 256, (2, 16, 16, 1), dtype=np.uint8)),
                                    ad.observe)
            assert out[0][0].dtype == np.uint8
        _wait(lambda: sum(h["shape"][0] for h, _ in sent) == 8, timeout=10)
        for header, n in sent:
            assert header["dtype"] == "uint8" and header["layout"] == "NHWC"
            assert header["shape"][1:] == [16, 16, 1] and n == 256 * header["shape"][0]
        _wait(lambda: ad.steps >= 2)  # the child trains on them
        assert ad.errors == 0, ad.last_error
    finally:
        ad.close()

    thread = OnlineAdaptation(_served(), AdaptConfig.serving(batch=2, every=4, size=16, buffer=16,
                                                     cpus="off", safety="off"))
    try:
        for _ in range(4):
            thread.observe(rng.integers(0, 65536, (2, 16, 16, 1), dtype=np.uint16))
        _wait(lambda: thread.adapter.steps >= 2)
        assert thread.errors == 0, thread.last_error
    finally:
        thread.close()


def test_frame_messages_decode_to_float01_and_bad_ones_are_errors():
    from same_fast.io import to_tensor
    from same_fast.serve.adapter_proc import _frames01

    f = np.random.default_rng(1).integers(0, 65536, (3, 5, 7, 2), dtype=np.uint16)
    x = _frames01({"shape": [3, 5, 7, 2], "dtype": "uint16", "layout": "NHWC"},
                  bytearray(f.tobytes()))
    assert x.shape == (3, 2, 5, 7) and torch.equal(x, to_tensor(f))
    h = torch.rand(2, 1, 4, 4).half()
    y = _frames01({"shape": [2, 1, 4, 4]}, bytearray(h.view(torch.uint8).numpy().tobytes()))
    assert torch.equal(y, h.float())
    for bad in ({"shape": [1, 4, 4, 1], "dtype": "int64", "layout": "NHWC"},
                {"shape": [1, 4, 4, 1], "dtype": "uint8", "layout": "NCHW"},
                {"shape": [16], "dtype": "uint8", "layout": "NHWC"}):
        with pytest.raises(ValueError, match="expected uint8/uint16 NHWC"):
            _frames01(bad, bytearray(16))


@needs_two
def test_onnxruntime_intra_op_threads_are_not_pinned_to_one_cpu():
    """ORT left at its default thread count pins each intra-op thread to one CPU: on 2 CPUs, the
    one ``--adapt-cpus auto`` gives the adapter. The backend sets the count itself, so the pool's
    threads keep the CPUs of the thread that built them."""
    before = set(_tids(os.getpid()))
    served = _served("onnxruntime")
    new = set(_tids(os.getpid())) - before
    assert served._current.describe()["threads"] >= 1  # set, not ORT's default (0)
    assert new, "the session started no intra-op thread"
    time.sleep(0.05)  # a pool thread pins itself when it starts
    for t in new:
        with contextlib.suppress(ProcessLookupError):
            assert _affinity(t) == set(USABLE)


@needs_two
@pytest.mark.parametrize("adapt", ["online", "off"])
def test_serve_sizes_the_onnxruntime_pool_to_the_serving_cpus(tmp_path, adapt):
    """With the adapter placed, ORT gets one thread per serving CPU (no pool thread beside the
    adapter); without adaptation, the backend's default (one per physical core)."""
    from same_fast.engine.ort_backend import physical_cores
    from same_fast.models import save_model

    torch.manual_seed(0)
    path = save_model(tmp_path / "m.safetensors", SAMENet(1, "lite", base=4, max_channels=8,
                                                          levels=2))
    svc = Service(ServeConfig(model=str(path), backend="onnxruntime", adapt=adapt,
                              adapt_in="thread", adaptation=AdaptConfig.serving(every=2, batch=2,
                                                                        size=16)))
    try:
        threads = svc.model._current.describe()["threads"]
        if adapt == "online":
            assert threads == len(svc.adaptation.cpus.serving) == len(USABLE) - 1
        else:
            assert threads == physical_cores()
        assert svc.accept(np.zeros((16, 16, 1), np.uint8)).result(timeout=60)[0].shape == \
            (16, 16, 1)
    finally:
        svc.close()
