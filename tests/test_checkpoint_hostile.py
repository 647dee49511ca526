"""Hostile checkpoints are refused before anything is built: exit 2, one line, no big allocation."""
import json
import resource
import time

import pytest
import torch

from same_fast import checkpoint
from same_fast.cli import main
from same_fast.errors import CheckpointError
from same_fast.models import load_model, save_model
from same_fast.nn import SAMENet


@pytest.fixture()
def tiny(tmp_path):
    torch.manual_seed(0)
    return save_model(tmp_path / "tiny.safetensors", SAMENet(1, "lite", base=4, levels=2),
                      modality="ultrasound")


def _raw(path, header: dict, payload: bytes = b"") -> str:
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + payload)
    return str(path)


def _rewrite(src, dst, **meta_changes):
    tensors, meta = checkpoint.load(src)
    meta.update(meta_changes)
    return checkpoint.save(dst, tensors, meta)


def test_huge_config_is_refused_before_building(tiny, tmp_path):
    tensors, meta = checkpoint.load(tiny)
    meta["config"]["base"] = 3000  # today: a 10 GB model built for 37 s, then refused
    p = checkpoint.save(tmp_path / "bomb.safetensors", tensors, meta)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="base=3000"):
        load_model(p)
    assert time.perf_counter() - t0 < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200 * 1024  # KiB


def test_config_within_limits_but_not_the_weights_is_refused_on_shapes(tiny, tmp_path):
    tensors, meta = checkpoint.load(tiny)
    meta["config"]["base"] = 200  # allowed, but ~50x the file's tensors: caught on the meta build
    p = checkpoint.save(tmp_path / "big.safetensors", tensors, meta)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(p)
    assert time.perf_counter() - t0 < 2


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_json_header(tmp_path, depth):
    p = _raw(tmp_path / "deep.safetensors", {"x": json.loads("[" * 40 + "]" * 40)})
    if depth > 40:  # too deep for Python's json: today RecursionError, exit 1
        blob = b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
        (tmp_path / "deep.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob)
    with pytest.raises(CheckpointError):
        checkpoint.read_metadata(p)


def test_deeply_nested_metadata_value(tiny, tmp_path):
    deep = "[" * 5000 + "]" * 5000
    tensors, meta = checkpoint.load(tiny)
    p = checkpoint.save(tmp_path / "m.safetensors", tensors, {**meta, "provenance": deep})
    with pytest.raises(CheckpointError, match="nested"):
        load_model(p)
    p = checkpoint.save(tmp_path / "n.safetensors", tensors,
                        {**meta, "provenance": "[" * 60 + "]" * 60})
    with pytest.raises(CheckpointError, match="nested deeper"):
        load_model(p)


def test_nan_and_inf_weights_are_refused(tiny, tmp_path):
    for bad in (float("nan"), float("inf")):
        tensors, meta = checkpoint.load(tiny)
        name = next(iter(tensors))
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = bad
        p = checkpoint.save(tmp_path / "nan.safetensors", tensors, meta)
        with pytest.raises(CheckpointError, match="NaN or infinite"):
            load_model(p)


def test_integer_weights_are_refused(tiny, tmp_path):
    tensors, meta = checkpoint.load(tiny)
    ints = {k: v.round().to(torch.int64) for k, v in tensors.items()}
    p = checkpoint.save(tmp_path / "int.safetensors", ints, meta)
    with pytest.raises(CheckpointError, match="must be float"):
        load_model(p)


@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]},
    {"dtype": "F32", "shape": [1, 2, 3, 4, 5, 6, 7, 8, 9], "data_offsets": [0, 4]},
    {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]},
    {"dtype": "F32", "shape": "big", "data_offsets": [0, 4]},
    "not a tensor",
])
def test_malformed_tensor_entries(tmp_path, entry):
    p = _raw(tmp_path / "e.safetensors", {"w": entry}, b"\x00" * 4)
    with pytest.raises(CheckpointError):
        checkpoint.read_metadata(p)


def test_cli_gives_exit_2_and_one_line(tiny, tmp_path, capsys):
    tensors, meta = checkpoint.load(tiny)
    meta["config"]["levels"] = 500
    p = checkpoint.save(tmp_path / "lv.safetensors", tensors, meta)
    img = tmp_path / "a.png"
    from same_fast.io import write_image
    write_image(img, torch.zeros(8, 8, 1, dtype=torch.uint8).numpy())
    with pytest.raises(SystemExit) as e:
        main(["enhance", "-m", str(p), "-i", str(img), "-o", str(tmp_path / "o"), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "levels=500" in err[0]
