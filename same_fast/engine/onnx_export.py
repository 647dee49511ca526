"""Export an enhancer to ONNX, check it, and map our parameter names to its initializers.

The exported graph is ``DeployModule``: input ``input`` ``(N, C, H, W)`` float32 in [0, 1],
output ``enhanced`` (same shape, [0, 1]) and, with ``structure=True``, ``structure`` logits
``(N, 1, H, W)``. Batch, height and width are dynamic (H, W must be multiples of the model's
``multiple``). The graph keeps one initializer per weight, named after the parameter (no
folding at export): ONNX Runtime and TensorRT fold normalisation themselves when they build,
and weight refresh (ORT session swap, TensorRT refit) needs the names.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from same_fast.engine.base import DeployModule, model_channels, model_multiple
from same_fast.errors import InputError, missing_dependency

INPUT = "input"
OUTPUT = "enhanced"
STRUCTURE = "structure"
DEFAULT_OPSET = 18


@dataclass
class ExportConfig:
    """``same-fast export`` options that shape the ONNX graph (one field per flag)."""

    opset: int = DEFAULT_OPSET
    dynamic: bool = True
    structure: bool = False  # also output the structure logits
    sample_size: int = 64  # H = W of the tracing input (rounded up to the model's multiple)


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise missing_dependency("onnx", "ONNX export", "onnx") from None
    return onnx


def export_onnx(model: nn.Module, path: str | Path | None = None,
                config: ExportConfig | None = None) -> bytes:
    """Export ``model`` (SAMENet-like, CPU copy used) to ONNX; returns the model bytes.

    Writes ``path`` too when given. Raises DependencyError without onnx/onnxscript.
    """
    onnx = _require_onnx()
    cfg = config or ExportConfig()
    channels = model_channels(model) or 3
    mult = model_multiple(model)
    size = max(mult, -(-cfg.sample_size // mult) * mult)
    module = DeployModule(cpu_eval_copy(model), structure=cfg.structure).eval()
    sample = torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(0))
    outputs = [OUTPUT, STRUCTURE] if cfg.structure else [OUTPUT]
    data = _dynamo_export(module, sample, outputs, cfg)
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto)
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(p)
    return data


def cpu_eval_copy(model: nn.Module) -> nn.Module:
    """A frozen float32 CPU copy in eval mode (export and ORT weight mapping never touch the caller's)."""
    import copy

    m = copy.deepcopy(model).to("cpu").float().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _dynamo_export(module: nn.Module, sample: torch.Tensor, outputs: list[str],
                   cfg: ExportConfig) -> bytes:
    dyn = {"x": {0: "batch", 2: "height", 3: "width"}} if cfg.dynamic else None
    buf = io.BytesIO()
    # The exporter is chatty (progress lines, deprecation warnings): keep the CLI's output clean.
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(module, (sample,), dynamo=True, input_names=[INPUT],
                                     output_names=outputs, dynamic_shapes=dyn,
                                     opset_version=cfg.opset, optimize=False, verbose=False)
            prog.save(buf)  # type: ignore[union-attr]
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)
    return buf.getvalue()


def initializer_map(model: nn.Module, onnx_model: Any) -> dict[str, str]:
    """Our ``state_dict`` names -> ONNX initializer names (same shape, one to one).

    The exporter names initializers after the module path inside ``DeployModule``
    (``model.<name>``). Tensors the graph does not use (the structure decoder when it is not
    exported, BatchNorm's step counter) are absent from the result.
    """
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    inits = {i.name: tuple(i.dims) for i in onnx_model.graph.initializer}
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name, shape in own.items():
        for cand in (f"model.{name}", name):
            if cand in inits and cand not in taken:
                if inits[cand] != shape:
                    raise InputError(f"ONNX initializer '{cand}' has shape {inits[cand]}, "
                                     f"parameter '{name}' has {shape}")
                out[name] = cand
                taken.add(cand)
                break
    return out


def replace_initializers(onnx_model: Any, mapping: Mapping[str, str],
                         state: Mapping[str, torch.Tensor]) -> Any:
    """A copy of ``onnx_model`` whose initializers hold ``state`` (our names, via ``mapping``)."""
    from onnx import numpy_helper

    new = type(onnx_model)()
    new.CopyFrom(onnx_model)
    by_name = {i.name: i for i in new.graph.initializer}
    for ours, v in state.items():
        name = mapping.get(ours)
        if name is None:
            continue  # not used by this graph
        init = by_name[name]
        arr = v.detach().to("cpu").numpy().astype(numpy_helper.to_array(init).dtype, copy=False)
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), name))
    return new


def weightless_graph(onnx_model: Any, names: set[str]) -> bytes:
    """``onnx_model`` serialised with the initializers in ``names`` emptied and marked as
    external data (a placeholder location that is never read): a session gets them as
    ``OrtValue``s (``SessionOptions.add_external_initializers``) instead, so new weights need
    no protobuf edit. Initializers not in ``names`` keep their data."""
    from onnx import TensorProto

    new = type(onnx_model)()
    new.CopyFrom(onnx_model)
    for init in new.graph.initializer:
        if init.name not in names:
            continue
        for f in ("raw_data", "float_data", "double_data", "int32_data", "int64_data"):
            init.ClearField(f)
        del init.external_data[:]
        init.data_location = TensorProto.EXTERNAL
        entry = init.external_data.add()
        entry.key, entry.value = "location", "same-fast-weights-in-memory"
    return new.SerializeToString()


FRAMES_IN = "frames"
FRAMES_OUT = "enhanced_frames"


def frames_graph(onnx_model: Any, dtype: Any, multiple: int) -> Any:
    """``onnx_model`` (the ``DeployModule`` graph) wrapped to take and give integer frames.

    Input ``frames`` ``(N, H, W, C)`` uint8 or uint16, any H and W; output ``enhanced_frames``,
    same shape and dtype. Around the float graph: NHWC -> NCHW, cast, divide by full scale,
    reflect-pad H and W at the bottom/right up to ``multiple``; after it: crop back, multiply by
    full scale, round half to even, cast, NCHW -> NHWC. These are the steps of
    ``same_fast.io.to_tensor`` / ``to_array`` (round half to even, as ``np.rint``) and of the reference
    padding (which replicates instead of reflecting when a pad is not smaller than the side:
    callers send such tiny frames the float way). Initializer names are kept, so the weight
    mapping and ``weightless_graph`` apply unchanged.
    """
    from onnx import TensorProto, helper, numpy_helper

    from same_fast.io.convert import SCALES

    dt = np.dtype(dtype)
    elem = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.uint16): TensorProto.UINT16}[dt]
    scale = SCALES[dt]
    new = type(onnx_model)()
    new.CopyFrom(onnx_model)
    g = new.graph
    src_in = next(i for i in g.input if i.name == INPUT)
    channels = src_in.type.tensor_type.shape.dim[1]
    c = channels.dim_value if channels.HasField("dim_value") else None
    consts = {
        "sf_scale": np.array(scale, np.float32),
        "sf_mult": np.array([multiple, multiple], np.int64),
        "sf_zeros6": np.zeros(6, np.int64),
        "sf_starts": np.zeros(2, np.int64),
        "sf_axes": np.array([2, 3], np.int64),
        "sf_hw_s": np.array([2], np.int64),
        "sf_hw_e": np.array([4], np.int64),
    }
    if c == 1:
        # One channel: move the axis by Squeeze/Unsqueeze. ONNX Runtime's transpose optimiser
        # pushes a Transpose down past the element-wise ops, which then run on (N, H, W, 1),
        # where its broadcasting is slow (a one-off ORT profile at 64x64: ~44 us for each such
        # op, against ~4).
        consts["sf_ax1"] = np.array([1], np.int64)
        consts["sf_ax3"] = np.array([3], np.int64)
        to_nchw = [helper.make_node("Squeeze", [FRAMES_IN, "sf_ax3"], ["sf_nhw"]),
                   helper.make_node("Unsqueeze", ["sf_nhw", "sf_ax1"], ["sf_nchw"])]
        to_nhwc = [helper.make_node("Squeeze", ["sf_int", "sf_ax1"], ["sf_int_nhw"]),
                   helper.make_node("Unsqueeze", ["sf_int_nhw", "sf_ax3"], [FRAMES_OUT])]
    else:
        to_nchw = [helper.make_node("Transpose", [FRAMES_IN], ["sf_nchw"], perm=[0, 3, 1, 2])]
        to_nhwc = [helper.make_node("Transpose", ["sf_int"], [FRAMES_OUT], perm=[0, 2, 3, 1])]
    for name, arr in consts.items():
        g.initializer.append(numpy_helper.from_array(arr, name))
    pre = [
        *to_nchw,
        helper.make_node("Cast", ["sf_nchw"], ["sf_float"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["sf_float", "sf_scale"], ["sf_x01"]),
        helper.make_node("Shape", ["sf_x01"], ["sf_shape"]),
        helper.make_node("Slice", ["sf_shape", "sf_hw_s", "sf_hw_e"], ["sf_hw"]),
        helper.make_node("Mod", ["sf_hw", "sf_mult"], ["sf_rem"]),
        helper.make_node("Sub", ["sf_mult", "sf_rem"], ["sf_short"]),
        helper.make_node("Mod", ["sf_short", "sf_mult"], ["sf_pad_hw"]),
        helper.make_node("Concat", ["sf_zeros6", "sf_pad_hw"], ["sf_pads"], axis=0),
        helper.make_node("Pad", ["sf_x01", "sf_pads"], [INPUT], mode="reflect"),
    ]
    post = [
        helper.make_node("Slice", [OUTPUT, "sf_starts", "sf_hw", "sf_axes"], ["sf_crop"]),
        helper.make_node("Mul", ["sf_crop", "sf_scale"], ["sf_scaled"]),
        helper.make_node("Round", ["sf_scaled"], ["sf_round"]),
        helper.make_node("Cast", ["sf_round"], ["sf_int"], to=elem),
        *to_nhwc,
    ]
    nodes = pre + list(g.node) + post
    del g.node[:]
    g.node.extend(nodes)
    # The unpadded sizes get names of their own. The padded tensor keeps the float input's type
    # (rank, channels, symbolic sizes): ONNX Runtime cannot infer it through a Pad with
    # computed pads, and without it the graph's element-wise ops lose their fused, blocked-
    # layout kernels (a one-off ORT profile, 1-channel lite at 64 px: 0.72 -> 1.05 ms a frame).
    dims = ["frames_batch", "frames_height", "frames_width", c if c is not None else "channels"]
    g.value_info.append(src_in)
    g.input.remove(src_in)
    g.input.insert(0, helper.make_tensor_value_info(FRAMES_IN, elem, dims))
    g.output.remove(next(o for o in g.output if o.name == OUTPUT))
    g.output.append(helper.make_tensor_value_info(FRAMES_OUT, elem, dims))
    return new


def check_against_torch(model: nn.Module, onnx_bytes: bytes, sizes: tuple[tuple[int, int, int], ...]
                        = ((1, 64, 64), (2, 96, 128)), seed: int = 0) -> float:
    """Max |ORT - torch| of the enhanced output over random batches of the given (N, H, W).

    H and W are rounded up to the model's multiple. Raises DependencyError without onnxruntime.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing_dependency("onnxruntime", "checking an ONNX export", "onnx") from None
    mult = model_multiple(model)
    channels = model_channels(model) or 3
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    module = DeployModule(cpu_eval_copy(model)).eval()
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n, h, w in sizes:
        h, w = -(-h // mult) * mult, -(-w // mult) * mult
        x = torch.rand(n, channels, h, w, generator=g)
        with torch.inference_mode():
            ref = module(x).numpy()
        got = sess.run([OUTPUT], {INPUT: x.numpy()})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst
