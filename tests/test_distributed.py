"""same_fast.distributed on a real local Ray cluster (two one-CPU workers): the enhance job with a
worker killed mid-run (nothing lost, nothing duplicated, outputs equal to the local run's), the
--ray flag, and offline adaptation as one task per clinic."""
import json
import os
import sys

import numpy as np
import pytest
import ray
import torch

from same_fast.adapt.config import AdaptConfig
from same_fast.batch import EnhanceConfig, enhance_files
from same_fast.cli import main
from same_fast.distributed import ClinicJob, adapt_clinics_on_ray, enhance_on_ray
from same_fast.io import load, write_image
from same_fast.models import load_model, save_model
from same_fast.nn import SAMENet

pytestmark = pytest.mark.slow  # one local Ray cluster for the module: ~15 s to start

DIE_ONCE = "SAME_FAST_TEST_DIE_ONCE"


def _setup_hook():
    """Runs in every Ray worker process. Where ``SAME_FAST_TEST_DIE_ONCE`` names a marker file,
    the first process to reach its second image write creates the marker and dies inside the
    atomic write (``os._exit``: no cleanup, a temporary left behind), like a killed worker."""
    import os

    import same_fast.io as sio
    from same_fast.files import atomic_path

    marker = os.environ.get("SAME_FAST_TEST_DIE_ONCE")
    if not marker:
        return
    real, calls = sio.write_image, [0]

    def write_image(path, arr, **kw):
        calls[0] += 1
        if calls[0] == 2:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return real(path, arr, **kw)
            with atomic_path(path) as tmp:
                tmp.write_bytes(b"half a png")
                os._exit(1)
        return real(path, arr, **kw)

    sio.write_image = write_image


@pytest.fixture(scope="module")
def cluster():
    # pickled by value: Ray workers cannot import this test module
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"worker_process_setup_hook": _setup_hook,
                          "env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    return str(save_model(path, SAMENet(3, "lite", base=4, levels=2), modality="fundus"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, retina):
    d = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(0)
    for k in range(12):  # crops of the retina with a little noise, PNG and JPEG
        y, x = rng.integers(0, retina.shape[0] - 48), rng.integers(0, retina.shape[1] - 64)
        img = retina[y:y + 48, x:x + 64].astype(np.int16) + rng.integers(-8, 9, (48, 64, 3))
        write_image(d / f"img{k}.{'jpg' if k % 4 == 3 else 'png'}",
                    img.clip(0, 255).astype(np.uint8))
    return d


def test_killed_worker_loses_and_duplicates_nothing(cluster, model, folder, tmp_path):
    local = enhance_files(EnhanceConfig(model=model, input=str(folder),
                                        output=str(tmp_path / "local"), progress=False))
    marker = tmp_path / "died"
    s = enhance_on_ray(EnhanceConfig(model=model, input=str(folder), output=str(tmp_path / "ray")),
                       shard_files=2, runtime_env={"env_vars": {DIE_ONCE: str(marker)}})
    assert marker.exists() and s["ray"]["shard_retries"] >= 1  # a worker really died
    # the half-written temporary it left (and any its other writer thread had open)
    assert s["ray"]["orphans_removed"] >= 1
    assert s["n_failed"] == 0 and s["n_files"] == 12
    assert [r["input"] for r in s["files"]] == [r["input"] for r in local["files"]]
    names = sorted(p.name for p in (tmp_path / "ray").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "local").iterdir())  # no .tmp left
    assert len(s["ray"]["written"]) == 12
    on_disk = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert on_disk["n_files"] == 12 and on_disk["ray"]["workers"] == 2
    for r in local["files"]:
        a = load(r["output"]).frames.astype(int)
        b = load(r["output"].replace("/local/", "/ray/")).frames.astype(int)
        assert np.abs(a - b).max() <= 1


def test_ray_flag_joins_the_session_and_writes_the_local_names(cluster, model, folder,
                                                                tmp_path, capsys):
    rc = main(["enhance", "-m", model, "-i", str(folder), "-o", str(tmp_path / "o"),
               "--ray", "--no-progress"])
    assert rc == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["n_files"] == 12 and s["ray"]["shard_retries"] == 0
    assert "img3.jpg.png" in {os.path.basename(r["output"]) for r in s["files"]}


def test_adaptation_runs_one_task_per_clinic(cluster, model, folder, tmp_path):
    clinics = []
    for name in ("north", "south"):
        d = tmp_path / name
        d.mkdir()
        for p in sorted(folder.glob("*.png"))[:3]:
            (d / p.name).write_bytes(p.read_bytes())
        clinics.append(ClinicJob(name, str(d), str(tmp_path / "ckpt" / f"{name}.safetensors")))
    (tmp_path / "empty").mkdir()
    clinics.append(ClinicJob("empty", str(tmp_path / "empty"), str(tmp_path / "e.safetensors")))
    out = adapt_clinics_on_ray(model, clinics, AdaptConfig(steps=2, batch=2, size=32),
                               picker="none")
    assert [r["clinic"] for r in out] == ["north", "south", "empty"]
    assert "no images" in out[2]["error"]
    for r in out[:2]:
        assert r["steps"] == 2 and r["frames"] == 3
        net, meta = load_model(r["checkpoint"])
        assert meta["provenance"]["target"] == str(tmp_path / r["clinic"])
        steps = [json.loads(line) for line in open(r["audit"])]
        assert sum(1 for e in steps if e.get("event") == "step" or "loss" in e) >= 2
    assert not (tmp_path / "e.safetensors").exists()
