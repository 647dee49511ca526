"""Inference backends: same output as torch eager (before and after update_weights), the front's
padding/cropping/FOV, typed errors, the auto choice and its cache, and the TensorRT plumbing that
can be checked without TensorRT (ONNX graph, shape profiles, refit name mapping)."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from same_fast.engine import create_backend
from same_fast.engine.onnx_export import (
    OUTPUT,
    STRUCTURE,
    ExportConfig,
    export_onnx,
    initializer_map,
    replace_initializers,
)
from same_fast.engine.tensorrt import refit_weights, shape_profile
from same_fast.engine.testing import TinyEnhancer, perturbed_state
from same_fast.errors import DependencyError, InputError, SameFastError
from same_fast.nn import SAMENet, enhance

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

# fp32 ONNX Runtime vs torch eager: same maths, different kernels and summation order.
TOL = 2e-5


def _lite() -> SAMENet:
    torch.manual_seed(0)
    return SAMENet(3, "lite", base=8, levels=3).eval()  # multiple 8, ~30k parameters


def _lite_with(block: str, last_layer: str, seed: int) -> SAMENet:
    """A toy lite network with a zero-started ``block`` whose ``last_layer`` is made non-zero."""
    torch.manual_seed(seed)
    m = SAMENet(3, "lite", base=8, levels=3, **{block: True}).eval()
    with torch.no_grad():  # the block starts at zero; make it matter
        m.get_submodule(f"{block}.{last_layer}").weight.normal_(0, 0.3)
    return m


def _lite_context() -> SAMENet:
    return _lite_with("context", "fc2", seed=2)


def _lite_field() -> SAMENet:
    return _lite_with("field", "out", seed=4)


def _paper() -> SAMENet:
    torch.manual_seed(1)
    # The paper preset's layers (instance norm, stem 1, tanh) at toy width and depth.
    return SAMENet(1, "paper", base=4, max_channels=16, levels=4).eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("engine-cache"))


@pytest.mark.parametrize("make", [_lite, _lite_context, _lite_field, _paper],
                         ids=["lite", "lite-context", "lite-field", "paper"])
def test_onnxruntime_matches_eager_before_and_after_update(make, cache: str) -> None:
    model = make()
    c = model.config["in_channels"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, c, 45, 61, generator=g)  # not a multiple: exercises pad and crop
    eager = create_backend("torch", model, cache_dir=cache)
    rt = create_backend("onnxruntime", model, cache_dir=cache)
    ref = enhance(model, x)  # the library's own inference
    assert torch.equal(eager.enhance(x), ref)
    y = rt.enhance(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert (y - ref).abs().max().item() < TOL

    adapted = perturbed_state(model, 0.3, seed=3)
    eager.update_weights(adapted)
    rt.update_weights(adapted)
    model.load_state_dict(adapted)
    ref2 = enhance(model, x)
    assert (ref2 - ref).abs().max().item() > 1e-2  # the update really changes the output
    assert torch.equal(eager.enhance(x), ref2)
    assert (rt.enhance(x) - ref2).abs().max().item() < TOL
    assert rt.describe()["weights_version"] == 1


@pytest.mark.parametrize("make", [_lite, _lite_context, _paper, lambda: TinyEnhancer(width=4)],
                         ids=["lite", "lite-context", "paper", "stand-in"])
def test_torchscript_matches_eager_across_shapes_and_updates(make, cache: str) -> None:
    model = make().eval()
    c = getattr(model, "config", {}).get("in_channels", 3)
    eager = create_backend("torch", model, cache_dir=cache)
    ts = create_backend("torchscript", model, cache_dir=cache)
    g = torch.Generator().manual_seed(0)
    xs = [torch.rand(s, generator=g) for s in ((2, c, 45, 61), (1, c, 16, 24), (2, c, 45, 61))]
    before = [eager.enhance(x) for x in xs]
    for x, ref in zip(xs, before, strict=True):
        assert (ts.enhance(x) - ref).abs().max().item() < TOL
    assert ts.describe()["traced_shapes"] == 2  # one trace per padded shape, reused

    adapted = perturbed_state(model, 0.3, seed=3)
    eager.update_weights(adapted)
    ts.update_weights(adapted)
    for x, old in zip(xs, before, strict=True):
        ref = eager.enhance(x)
        assert (ref - old).abs().max().item() > 1e-2  # the update really changes the output
        # the traced graphs share the parameters: they follow the in-place update untraced
        assert (ts.enhance(x) - ref).abs().max().item() < TOL
    assert ts.describe()["traced_shapes"] == 2 and ts.describe()["weights_version"] == 1

    f = _ints((2, 20, 28, c), np.uint8, 9)
    got, ref = ts.enhance_frames(f), eager.enhance_frames(f)
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    ts.max_shapes = 2  # the oldest trace goes
    ts.enhance(torch.rand(1, c, 8, 8, generator=g))
    assert ts.describe()["traced_shapes"] == 2


def test_partial_update_and_private_copy(cache: str) -> None:
    model = _lite()
    b = create_backend("onnxruntime", model, cache_dir=cache)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    before = b.enhance(x)
    with torch.no_grad():  # the caller's own model keeps training: the backend must not follow
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(b.enhance(x), before)
    name = "image_decoder.head.bias"
    b.update_weights({name: torch.full_like(model.state_dict()[name], 0.5)})
    assert not torch.equal(b.enhance(x), before)


def test_onnxruntime_takes_new_weights_without_a_protobuf_edit(cache: str, monkeypatch) -> None:
    """Sessions load a weightless graph once serialised, the weights handed over as external
    initializers: re-serialising an edited protobuf per update held the GIL for milliseconds
    beside the serving thread."""
    import same_fast.engine.ort_backend as ob

    model = _lite()
    rt = create_backend("onnxruntime", model, cache_dir=cache)
    weightless = onnx.load_from_string(rt._weightless)
    mapped = set(initializer_map(model, weightless).values())
    assert mapped and all(i.data_location == onnx.TensorProto.EXTERNAL and not i.raw_data
                          for i in weightless.graph.initializer if i.name in mapped)

    def edited(*a, **k):
        raise AssertionError("an fp32 update edited the protobuf")

    monkeypatch.setattr(ob, "replace_initializers", edited)
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    adapted = perturbed_state(model, 0.3, seed=4)
    rt.update_weights(adapted)
    model.load_state_dict(adapted)
    ref = enhance(model, x)
    assert (rt.enhance(x) - ref).abs().max().item() < TOL
    for v in adapted.values():  # the session holds its own copy of what it was given
        v.add_(1.0)
    assert (rt.enhance(x) - ref).abs().max().item() < TOL


def test_front_pads_crops_and_masks(cache: str) -> None:
    b = create_backend("torch", _lite(), cache_dir=cache)
    x = torch.rand(1, 3, 13, 7, generator=torch.Generator().manual_seed(2))
    fov = torch.zeros(13, 7, dtype=torch.bool)
    fov[2:10, 1:5] = True
    y = b.enhance(x, fov=fov)
    assert y.shape == (1, 3, 13, 7)
    assert float(y[..., ~fov].abs().max()) == 0.0
    assert float(y[..., fov].abs().max()) > 0.0
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((1, 3, 8, 8), np.float32), "torch.Tensor"),
    (torch.zeros(3, 8, 8), "(N, C, H, W)"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float"),
    (torch.zeros(1, 1, 8, 8), "3 channel"),
    (torch.zeros(0, 3, 8, 8), "empty"),
])
def test_bad_batches_are_typed_errors(bad, msg: str, cache: str) -> None:
    b = create_backend("torch", _lite(), cache_dir=cache)
    with pytest.raises(InputError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        b.enhance(bad)


def test_bad_weights_and_names_are_typed_errors(cache: str) -> None:
    model = _lite()
    b = create_backend("onnxruntime", model, cache_dir=cache)
    with pytest.raises(InputError, match="unknown tensor"):
        b.update_weights({"nope.weight": torch.zeros(1)})
    k = "image_decoder.head.bias"
    with pytest.raises(InputError, match="shape"):
        b.update_weights({k: torch.zeros(99)})
    assert b.describe()["weights_version"] == 0
    with pytest.raises(InputError, match="unknown backend"):
        create_backend("magic", model)
    with pytest.raises(InputError, match="fp32"):
        create_backend("torch", model, dtype="fp16")
    with pytest.raises(DependencyError, match="tensorrt"):
        create_backend("tensorrt", model, cache_dir=cache)


def test_update_while_serving_never_mixes_weights(cache: str) -> None:
    """Frames served during a session swap come from the old or the new weights, never a mix."""
    model = _lite()
    b = create_backend("onnxruntime", model, cache_dir=cache)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    old = b.enhance(x)
    states = [perturbed_state(model, 0.3, seed=s) for s in range(3)]
    refs = [old]
    for st in states:
        m = _lite()
        m.load_state_dict(st)
        refs.append(enhance(m, x))
    seen, errors = [], []

    def serve() -> None:
        try:
            for _ in range(30):
                seen.append(b.enhance(x))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=serve)
    t.start()
    for st in states:
        b.update_weights(st)
    t.join()
    assert not errors
    for y in seen:
        assert min((y - r).abs().max().item() for r in refs) < TOL


def test_auto_measures_once_and_caches(cache: str, monkeypatch) -> None:
    from pathlib import Path

    tmp_path = Path(cache)
    (tmp_path / "auto.json").unlink(missing_ok=True)
    model = _lite()
    b = create_backend("auto", model, cache_dir=str(tmp_path),
                       options={"auto_size": 32, "auto_batch": 1})
    table = json.loads((tmp_path / "auto.json").read_text())
    (entry,) = table.values()
    assert entry["backend"] == b.name
    assert entry["channels_last"] == b.config.channels_last
    times = entry["seconds_per_batch"]
    assert set(times) >= {"torch", "torch+channels_last", "onnxruntime"}
    assert entry["label"] == min(times, key=times.get)
    assert entry["label"] == b.name + ("+channels_last" if b.config.channels_last else "")

    import same_fast.engine.select as sel

    def boom(*a, **k):
        raise AssertionError("measured again despite the cache")

    assert entry["probe"] == {"batch": 1, "height": 32, "width": 32}
    monkeypatch.setattr(sel, "_measure", boom)
    again = create_backend("auto", model, cache_dir=str(tmp_path),
                           options={"auto_size": 32, "auto_batch": 1})
    assert again.name == b.name
    assert again.describe()["channels_last"] == b.config.channels_last


def test_auto_measures_again_at_another_shape(cache: str, monkeypatch) -> None:
    """Backends rank differently at different shapes, so a choice made at one probe shape is
    not reused at another: each shape gets its own cached entry, timed at that shape."""
    from pathlib import Path

    import same_fast.engine.select as sel

    tmp_path = Path(cache) / "shapes"
    model = _lite()
    create_backend("auto", model, cache_dir=str(tmp_path), options={"auto_size": 32})
    seen = []
    real = sel._cls

    def spy(name):
        class Spied(real(name)):
            def enhance(self, x, *a, **k):
                seen.append(tuple(x.shape))
                return super().enhance(x, *a, **k)
        return Spied

    monkeypatch.setattr(sel, "_cls", spy)
    create_backend("auto", model, cache_dir=str(tmp_path),
                   options={"auto_size": [24, 40], "auto_batch": 2})
    assert seen and set(seen) == {(2, 3, 24, 40)}
    probes = sorted(tuple(e["probe"].values())
                    for e in json.loads((tmp_path / "auto.json").read_text()).values())
    assert probes == [(1, 32, 32), (2, 24, 40)]
    with pytest.raises(InputError, match="probe batch and size must be >= 1"):
        create_backend("auto", model, cache_dir=str(tmp_path), options={"auto_batch": 0})


def test_channels_last_matches_eager_before_and_after_update(cache: str) -> None:
    """NHWC weights and inputs (oneDNN's preferred layout on the CPU): same maths as eager."""
    model = _lite()
    x = torch.rand(2, 3, 45, 61, generator=torch.Generator().manual_seed(4))
    eager = create_backend("torch", model, cache_dir=cache)
    cl = create_backend("torch", model, cache_dir=cache, channels_last=True)
    assert cl.describe()["channels_last"] and not eager.describe()["channels_last"]
    assert (cl.enhance(x) - eager.enhance(x)).abs().max().item() < TOL
    adapted = perturbed_state(model, 0.3, seed=5)
    before = eager.enhance(x)
    eager.update_weights(adapted)
    cl.update_weights(adapted)
    after = eager.enhance(x)
    assert (after - before).abs().max().item() > 1e-2
    assert (cl.enhance(x) - after).abs().max().item() < TOL


@pytest.mark.parametrize("make", [_paper, _lite_context, _lite_field],
                         ids=["paper", "lite-context", "lite-field"])
def test_refit_mapping_covers_every_parameter_once(make) -> None:
    """The ONNX graph TensorRT parses holds every trainable weight as its own initializer."""
    model = make()
    c = model.config["in_channels"]
    data = export_onnx(model, None, ExportConfig(structure=True, sample_size=16))
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == [OUTPUT, STRUCTURE]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1] == c and all(isinstance(d, str) for d in dims[2:])
    mapping = initializer_map(model, proto)
    params = dict(model.named_parameters())
    assert set(params) <= set(mapping)
    assert len(set(mapping.values())) == len(mapping)  # one to one
    inits = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    for name, p in params.items():
        assert inits[mapping[name]] == tuple(p.shape)
    # TensorRT can refit a weight only when a weighted layer consumes it directly.
    consumers: dict[str, set[str]] = {}
    for node in proto.graph.node:
        for i in node.input:
            consumers.setdefault(i, set()).add(node.op_type)
    weighted = {"Conv", "ConvTranspose", "BatchNormalization", "Gemm", "MatMul"}
    for name in params:
        assert consumers[mapping[name]] and consumers[mapping[name]] <= weighted, name
    # The arrays handed to the refitter, and an ONNX graph rebuilt from them, hold new weights.
    new = perturbed_state(model, 0.2, seed=5)
    arrays = refit_weights(mapping, new)
    assert set(arrays) == {mapping[k] for k in params}
    k = next(iter(params))
    np.testing.assert_array_equal(arrays[mapping[k]], new[k].numpy())
    rebuilt = replace_initializers(proto, mapping, new)
    sess = ort.InferenceSession(rebuilt.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.rand(2, c, 16, 32, generator=torch.Generator().manual_seed(6))
    model.load_state_dict(new)
    with torch.no_grad():
        img, logits = model(x * 2 - 1)
    got_img, got_s = sess.run(None, {"input": x.numpy()})
    assert np.abs(got_img - ((img + 1) / 2).clamp(0, 1).numpy()).max() < TOL
    assert np.abs(got_s - logits.numpy()).max() < 1e-4


def test_image_only_export_prunes_the_structure_decoder(cache: str) -> None:
    from same_fast.engine.ort_backend import cached_onnx

    model = _lite()
    proto = onnx.load_from_string(cached_onnx(model, ExportConfig(), cache))
    mapping = initializer_map(model, proto)
    assert not any(k.startswith("structure_decoder.") for k in mapping)
    assert all(k in mapping for k, _ in model.named_parameters()
               if k.startswith(("downs.", "image_decoder.")))


def test_shape_profile_rounds_and_orders() -> None:
    p = shape_profile(3, 32, opt_hw=(500, 700), max_hw=(1000, 1030), opt_batch=4, max_batch=16)
    assert p.min == (1, 3, 32, 32)
    assert p.opt == (4, 3, 512, 704)
    assert p.max == (16, 3, 1024, 1056)
    for shape in (p.min, p.opt, p.max):
        assert shape[2] % 32 == 0 and shape[3] % 32 == 0
    assert p.contains((2, 3, 64, 1056)) and not p.contains((17, 3, 64, 64))
    clipped = shape_profile(1, 256, opt_hw=(4096, 4096), max_hw=(1024, 1024), opt_batch=64,
                            max_batch=8)
    assert clipped.opt == (8, 1, 1024, 1024)
    with pytest.raises(InputError):
        shape_profile(3, 32, min_hw=(2048, 2048), max_hw=(512, 512))


@pytest.mark.slow
def test_int8_onnxruntime_is_close_but_not_exact(cache: str) -> None:
    """Static int8 (QDQ) costs accuracy; pin how much, by SSIM against the fp32 output."""
    from skimage.metrics import structural_similarity

    from same_fast.engine.quantize import default_calibration

    model = _lite()
    x = default_calibration(3, 8, size=64, count=2, seed=9)
    fp32 = create_backend("onnxruntime", model, cache_dir=cache).enhance(x)
    q = create_backend("onnxruntime", model, cache_dir=cache, int8=True).enhance(x)
    assert q.shape == fp32.shape
    ssim = structural_similarity(fp32[0].numpy(), q[0].numpy(), channel_axis=0, data_range=1.0)
    assert 0.9 < ssim < 1.0


def test_stand_in_works_too(cache: str) -> None:
    model = TinyEnhancer(width=4).eval()
    x = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(7))
    a = create_backend("torch", model, cache_dir=cache).enhance(x)
    b = create_backend("onnxruntime", model, cache_dir=cache).enhance(x)
    assert (a - b).abs().max().item() < TOL
    assert issubclass(DependencyError, SameFastError)


def _ints(shape: tuple[int, ...], dtype, seed: int) -> np.ndarray:
    hi = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, hi + 1, shape).astype(dtype)


@pytest.mark.parametrize("make", [_lite, _lite_context, _lite_field, _paper,
                                  lambda: TinyEnhancer(width=4)],
                         ids=["lite", "lite-context", "lite-field", "paper", "stand-in"])
def test_enhance_frames_equals_the_float_path_in_every_backend(make, cache: str) -> None:
    """Integer frames in, integer frames out: ONNX Runtime converts, pads, rounds and crops
    inside its graph; the result is the float path's, rounded the same way."""
    from same_fast.io import to_array, to_tensor

    model = make().eval()
    c = getattr(model, "config", {}).get("in_channels", 3)
    eager = create_backend("torch", model, cache_dir=cache)
    rt = create_backend("onnxruntime", model, cache_dir=cache)
    # a multiple, two that are not (reflect pad in the graph), uint16, and one too small to
    # reflect-pad (ONNX Runtime takes the float path there, which replicates)
    cases = [((2, 16, 24, c), np.uint8), ((2, 45, 61, c), np.uint8),
             ((1, 17, 30, c), np.uint16), ((1, 3, 2, c), np.uint8)]
    for i, (shape, dtype) in enumerate(cases):
        f = _ints(shape, dtype, i)
        ref = to_array(enhance(model, to_tensor(f)), dtype)
        got_eager = eager.enhance_frames(f)
        assert got_eager.dtype == dtype and np.array_equal(got_eager, ref)
        got = rt.enhance_frames(f).astype(np.int64)
        assert got.shape == f.shape and rt.enhance_frames(f).dtype == dtype
        # against ONNX Runtime's own float path: the same graph inside, so the same values but
        # where a fused conversion moves a rounding by one step
        own = to_array(rt.enhance(to_tensor(f)), dtype).astype(np.int64)
        diff = np.abs(got - own)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-2, (shape, dtype, diff.max())
        # against eager: fp32 kernels differ by up to TOL, i.e. TOL * full scale steps
        steps = int(np.ceil(TOL * np.iinfo(dtype).max)) + 1
        assert np.abs(got - ref.astype(np.int64)).max() <= steps, (shape, dtype)
    assert sorted(rt._sessions) == ["float", "uint16", "uint8"]


def test_a_weight_update_rebuilds_only_the_sessions_in_use(cache: str) -> None:
    """A serving standby that only ever ran integer frames builds one session per publish."""
    from same_fast.io import to_array, to_tensor

    model = _lite()
    rt = create_backend("onnxruntime", model, cache_dir=cache)
    assert sorted(rt._sessions) == ["float"]  # built at creation, so a bad graph fails there
    f = _ints((1, 24, 32, 3), np.uint8, 5)
    rt.enhance_frames(f)
    adapted = perturbed_state(model, 0.3, seed=6)
    rt.update_weights(adapted)
    assert sorted(rt._sessions) == ["uint8"]  # float was never asked for: dropped, not rebuilt
    model.load_state_dict(adapted)
    ref = to_array(enhance(model, to_tensor(f)), np.uint8)
    before = to_array(enhance(_lite(), to_tensor(f)), np.uint8)
    assert np.abs(ref.astype(int) - before.astype(int)).max() > 2  # the update matters
    assert np.abs(rt.enhance_frames(f).astype(int) - ref.astype(int)).max() <= 1
    # a kind dropped at the update is rebuilt on demand with the new weights
    x = to_tensor(f)
    assert (rt.enhance(x) - enhance(model, x)).abs().max().item() < TOL
    assert sorted(rt._sessions) == ["float", "uint8"]


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((16, 16, 3), np.uint8), "(N, H, W, C)"),
    (np.zeros((1, 16, 16, 3), np.float32), "uint8 or uint16"),
    (np.zeros((1, 16, 16, 1), np.uint8), "3 channel"),
    (np.zeros((0, 16, 16, 3), np.uint8), "empty"),
    ("frames", "numpy array"),
])
def test_bad_frames_are_typed_errors(bad, msg: str, cache: str) -> None:
    for name in ("torch", "onnxruntime"):
        b = create_backend(name, _lite(), cache_dir=cache)
        with pytest.raises(InputError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            b.enhance_frames(bad)


def test_interleaved_times_the_cases_round_robin() -> None:
    """``auto`` and the bench suites time their cases in turns, so drift hits all alike."""
    from same_fast.engine.machine import interleaved

    log: list[str] = []
    r = interleaved({k: (lambda k=k: log.append(k)) for k in "abc"}, repeats=3, warmup=2,
                    gap_s=0)
    assert log == ["a", "a", "b", "b", "c", "c"] + ["a", "b", "c"] * 3
    assert set(r) == set("abc") and all(len(v["samples_s"]) == 3 for v in r.values())
    assert all(v["min_s"] <= v["median_s"] <= v["p90_s"] for v in r.values())
