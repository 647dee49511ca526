"""``same-fast export``: ONNX round-trips through ONNX Runtime, a Triton repository whose
config.pbtxt parses with the right fields, TensorRT absent is a clear error (exit 3)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from same_fast.cli import main
from same_fast.engine.triton import TritonConfig, config_pbtxt, parse_pbtxt
from same_fast.errors import InputError
from same_fast.models import save_model
from same_fast.nn import SAMENet, enhance

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = SAMENet(3, "lite", base=8, levels=3).eval()
    path = tmp_path_factory.mktemp("export") / "tiny-lite.safetensors"
    save_model(path, model, modality="fundus", provenance={"what": "export test"})
    return path, model


def test_export_onnx_round_trips(ckpt, tmp_path, capsys) -> None:
    path, model = ckpt
    out = tmp_path / "m.onnx"
    assert main(["export", "-m", str(path), "--format", "onnx", "-o", str(out),
                 "--opset", "18"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["max_abs_diff_vs_torch"] < 2e-5
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {18}
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n, h, w in ((1, 16, 16), (3, 40, 24)):  # dynamic batch, height and width
        x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(n))
        (y,) = sess.run(None, {"input": x.numpy()})
        assert y.shape == (n, 3, h, w)
        assert np.abs(y - enhance(model, x).numpy()).max() < 2e-5


def test_export_triton_repository(ckpt, tmp_path, capsys) -> None:
    path, model = ckpt
    repo = tmp_path / "repo"
    assert main(["export", "-m", str(path), "--format", "triton", "-o", str(repo),
                 "--model-name", "fundus_lite", "--max-batch", "8",
                 "--max-queue-delay-us", "500", "--instances", "2", "--kind", "cpu",
                 "--no-check"]) == 0
    capsys.readouterr()
    cfg = parse_pbtxt((repo / "fundus_lite" / "config.pbtxt").read_text())
    assert cfg["name"] == "fundus_lite"
    assert cfg["platform"] == "onnxruntime_onnx"
    assert cfg["max_batch_size"] == 8
    (inp,) = cfg["input"]
    (out,) = cfg["output"]
    assert (inp["name"], inp["data_type"], inp["dims"]) == ("input", "TYPE_FP32", [3, -1, -1])
    assert (out["name"], out["data_type"], out["dims"]) == ("enhanced", "TYPE_FP32", [3, -1, -1])
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    (group,) = cfg["instance_group"]
    assert group == {"count": 2, "kind": "KIND_CPU"}
    params = {p["key"]: p["value"]["string_value"] for p in cfg["parameters"]}
    assert params["same_fast.multiple"] == str(model.multiple)
    # The model file is the one Triton's onnxruntime backend loads: names and dims must agree.
    proto = onnx.load(str(repo / "fundus_lite" / "1" / "model.onnx"))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == [inp["name"]]
    assert [o.name for o in proto.graph.output] == [out["name"]]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 3  # batch dim dynamic for max_batch_size


def test_pbtxt_parser_and_config_validation() -> None:
    text = config_pbtxt(1, 32, TritonConfig(structure=True, preferred_batch_sizes=(2, 64)))
    cfg = parse_pbtxt(text + '\n# a comment\nversion_policy: { latest { num_versions: 1 } }\n')
    assert [o["name"] for o in cfg["output"]] == ["enhanced", "structure"]
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [2]
    assert cfg["version_policy"]["latest"]["num_versions"] == 1
    with pytest.raises(InputError):
        config_pbtxt(3, 32, TritonConfig(model_name="bad name/../x"))
    with pytest.raises(InputError):
        parse_pbtxt("input [ { name: \"x\" ")


def test_export_errors_are_one_line(ckpt, tmp_path, capsys) -> None:
    path, _ = ckpt
    with pytest.raises(SystemExit) as e:
        main(["export", "-m", str(path), "--format", "tensorrt", "-o", str(tmp_path / "m.plan")])
    err = capsys.readouterr().err
    assert e.value.code == 3 and err.count("\n") == 1 and "tensorrt" in err
    with pytest.raises(SystemExit) as e:
        main(["export", "-m", str(tmp_path / "missing.safetensors"), "--format", "onnx",
              "-o", str(tmp_path / "m.onnx")])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("same-fast: error:")
