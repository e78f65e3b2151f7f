"""ONNX export of a model directory, with the decoding inside the graph.

The graph is written directly with ``onnx.helper`` from the batch-norm-folded weights
(:mod:`engines.inference.fused`) rather than traced: it is eight convolutions and a
gather, the result does not depend on which torch exporter a release ships, and the
folding is explicit.

Graph (opset 17)::

    frames     float32 (batch, P, height, width)   raw camera values
    threshold  float32 (1,)                        runtime input: changes need no rebuild
    -> locs    float32 (N, 5)                      rows (frame-in-batch, x nm, y nm, z nm, conf)

Decoding on the device: ``conf > threshold`` -> ``NonZero`` -> ``GatherND`` of confidence
and the three sub-voxel offsets -> nm. Only the N localization rows leave the device, not
the ``(B, 4P, H, W)`` output. ``NonZero`` gives a data-dependent N; ONNX Runtime handles
that natively (CPU and CUDA EP) and TensorRT >= 8.5 through an output allocator, so no
fixed-capacity top-K output (which would silently drop localizations beyond K, or cost a
sort) is needed. Rows come out in row-major (frame, plane, row, column) order, like
:func:`engines.decode.decode`.

``model.onnx`` carries its provenance in metadata (weights SHA-256, export format
version): an ONNX whose weights no longer match ``weights.pt`` is stale and re-exported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engines.errors import EngineError, OutputError
from engines.inference.fused import fold_batchnorm
from engines.io.atomic import write_bytes
from engines.modeldir import SHIPPED_MODELS, WEIGHTS, ModelInfo, load_model, resolve_model
from engines.network import VoxelNet

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
EXPORT_VERSION = "2"  # bump when the graph's inputs, outputs, decoding or node names change
OPSET = 17
INPUT_FRAMES, INPUT_THRESHOLD, OUTPUT_LOCS = "frames", "threshold", "locs"
# node-name prefix of the decoding, which stays float32 in every graph (fp16_network too):
# (column + zeta) * px in float16 would be off by up to half a pixel at column 1000
DECODE_PREFIX = "decode/"


def cache_root() -> Path:
    """Writable cache for exports and engines: ``$VOXLOC_CACHE`` or ``~/.cache/voxloc``."""
    env = os.environ.get("VOXLOC_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "voxloc"


def weights_sha256(model_dir: Path) -> str:
    path = Path(model_dir) / WEIGHTS
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise EngineError(f"cannot read weights {path}: {exc}") from exc


def cache_dir_for(model_dir: Path, info: ModelInfo) -> Path:
    """Per-model cache folder, keyed by name, version and weights (used when read-only)."""
    return cache_root() / "models" / f"{info.name}-{info.version}-{weights_sha256(model_dir)[:16]}"


def build_onnx(model_dir: Path) -> onnx.ModelProto:
    """The decoding ONNX graph of a model directory (see module docstring)."""
    net, info = load_model(model_dir)
    g = info.settings.geometry
    p = info.planes
    nodes, inits = _network_nodes(net, info)
    dec_nodes, dec_inits = _decode_nodes("y", p, px_nm=g.px_nm, dz_nm=g.dz_nm)
    for node in nodes:
        node.name = f"net/{node.output[0]}"
    for node in dec_nodes:
        node.name = f"{DECODE_PREFIX}{node.output[0]}"
    graph = helper.make_graph(
        nodes + dec_nodes,
        "voxloc_decoding",
        [
            helper.make_tensor_value_info(
                INPUT_FRAMES, TensorProto.FLOAT, ["batch", p, "height", "width"]
            ),
            helper.make_tensor_value_info(INPUT_THRESHOLD, TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info(OUTPUT_LOCS, TensorProto.FLOAT, ["n_locs", 5])],
        initializer=inits + dec_inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="voxloc"
    )
    model.ir_version = 8
    helper.set_model_props(
        model,
        {
            "voxloc_export_version": EXPORT_VERSION,
            "weights_sha256": weights_sha256(model_dir),
            "model_name": info.name,
            "model_version": info.version,
            "planes": str(p),
            "px_nm": str(g.px_nm),
            "dz_nm": str(g.dz_nm),
        },
    )
    onnx.checker.check_model(model)
    return model


def _network_nodes(
    net: VoxelNet, info: ModelInfo
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Normalisation, the BN-folded convolutions and the sigmoid: ``frames`` -> ``y``."""
    mk = helper.make_node
    inits = [
        _const("offset", np.float32(info.input_offset)),
        _const("scale", np.float32(info.input_scale)),
    ]
    nodes = [mk("Sub", [INPUT_FRAMES, "offset"], ["x_sub"]), mk("Div", ["x_sub", "scale"], ["x0"])]
    x = "x0"
    for n, layer in enumerate(fold_batchnorm(net)):
        w, b, out = f"conv{n}_w", f"conv{n}_b", f"conv{n}"
        inits += [numpy_helper.from_array(layer.weight, w), numpy_helper.from_array(layer.bias, b)]
        pad = layer.kernel // 2
        nodes.append(
            mk(
                "Conv",
                [x, w, b],
                [out],
                kernel_shape=[layer.kernel] * 2,
                pads=[pad] * 4,
                strides=[1, 1],
            )
        )
        x = out
        if layer.relu:
            nodes.append(mk("Relu", [x], [f"relu{n}"]))
            x = f"relu{n}"
    nodes.append(mk("Sigmoid", [x], ["y"]))
    return nodes, inits


def _decode_nodes(
    y: str, planes: int, *, px_nm: float, dz_nm: float
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Threshold + gather of ``y (B, 4P, H, W)`` into ``locs (N, 5)``; channel = 4 * plane + q."""
    inits = [_const(f"ch{q}", np.arange(q, 4 * planes, 4, dtype=np.int64)) for q in range(4)]
    inits += [
        _const("px_nm", np.float32(px_nm)),
        _const("dz_nm", np.float32(dz_nm)),
        _const("split4", np.ones(4, np.int64)),
        _const("axis0", np.zeros(1, np.int64)),
    ]
    mk = helper.make_node
    nodes = [mk("Gather", [y, f"ch{q}"], [f"plane_q{q}"], axis=1) for q in range(4)]
    nodes += [
        mk("Greater", ["plane_q0", INPUT_THRESHOLD], ["mask"]),
        mk("NonZero", ["mask"], ["nz"]),  # (4, N): b, k, i, j
        mk("Transpose", ["nz"], ["nz_t"], perm=[1, 0]),  # (N, 4)
        mk("Cast", ["nz"], ["nz_f"], to=TensorProto.FLOAT),
        mk("Split", ["nz_f", "split4"], ["b_f", "k_f", "i_f", "j_f"], axis=0),  # (1, N) each
    ]
    for q in range(4):
        nodes.append(mk("GatherND", [f"plane_q{q}", "nz_t"], [f"g{q}"]))  # (N,)
    for axis, (index, q, step) in {
        "x": ("j_f", 1, "px_nm"),
        "y": ("i_f", 2, "px_nm"),
        "z": ("k_f", 3, "dz_nm"),
    }.items():
        nodes += [
            mk("Add", [index, f"g{q}"], [f"{axis}_vox"]),
            mk("Mul", [f"{axis}_vox", step], [f"{axis}_nm"]),
        ]
    nodes += [
        mk("Unsqueeze", ["g0", "axis0"], ["conf_row"]),
        mk("Concat", ["b_f", "x_nm", "y_nm", "z_nm", "conf_row"], ["locs_t"], axis=0),
        mk("Transpose", ["locs_t"], [OUTPUT_LOCS], perm=[1, 0]),
    ]
    return nodes, inits


def fp16_network(model: onnx.ModelProto) -> onnx.ModelProto:
    """The decoding graph with its convolutions in float16, for strongly typed builders
    (TensorRT 11 has no FP16 flag or per-layer precision: the graph's types are the
    engine's). Input normalisation, sigmoid and decoding stay float32, as in the torch
    engine: ``(column + zeta) * px`` in float16 would be off by up to half a pixel."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for init in g.initializer:
        if init.name.startswith("conv"):
            init.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name)
            )
    first = next(n for n in g.node if n.op_type == "Conv")
    sigmoid = next(n for n in g.node if n.op_type == "Sigmoid")
    mk = helper.make_node
    to_half = mk("Cast", [first.input[0]], ["net/x_fp16"], to=TensorProto.FLOAT16)
    to_half.name = "net/x_fp16"
    first.input[0] = "net/x_fp16"
    to_float = mk("Cast", [sigmoid.input[0]], ["net/logits_fp32"], to=TensorProto.FLOAT)
    to_float.name = "net/logits_fp32"
    sigmoid.input[0] = "net/logits_fp32"
    nodes = list(g.node)
    i_first, i_sigmoid = nodes.index(first), nodes.index(sigmoid)
    nodes = nodes[:i_first] + [to_half] + nodes[i_first:i_sigmoid] + [to_float] + nodes[i_sigmoid:]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(out)
    return out


INPUT_RAW, INPUT_GRID, INPUT_BASELINE, INPUT_GAIN = "raw_frames", "grid", "baseline", "gain"
RAW_TYPES = {"uint16": TensorProto.UINT16, "float32": TensorProto.FLOAT}


def with_input_stage(model: onnx.ModelProto, raw_dtype: str) -> onnx.ModelProto:
    """The decoding graph with the registration in front (in memory, not written).

    Inputs ``raw_frames`` (batch, P, height, width) ``raw_dtype`` camera values as sent,
    ``grid`` (P, height, width, 2) float32 normalised sampling grid
    (:func:`engines.inference.registration.sampling_grid`), ``baseline`` and ``gain``
    (1, P, 1, 1) float32, and ``threshold``: all runtime inputs, so a new registration
    needs no rebuild. ``Cast`` -> planes onto the batch axis -> ``GridSample`` (bilinear,
    border, align_corners=0, as ``torch.nn.functional.grid_sample``) -> back ->
    ``(x - baseline) / gain`` -> the network's ``frames``.
    """
    if raw_dtype not in RAW_TYPES:
        raise EngineError(f"raw frames must be one of {sorted(RAW_TYPES)}, got {raw_dtype!r}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    frames = next(i for i in g.input if i.name == INPUT_FRAMES)
    p = frames.type.tensor_type.shape.dim[1].dim_value
    g.input.remove(frames)
    mk = helper.make_node
    stage = [
        mk("Cast", [INPUT_RAW], ["stage/x"], to=TensorProto.FLOAT),
        mk("Transpose", ["stage/x"], ["stage/planes_first"], perm=[1, 0, 2, 3]),
        mk(
            "GridSample",
            ["stage/planes_first", INPUT_GRID],
            ["stage/sampled"],
            mode="bilinear",
            padding_mode="border",
            align_corners=0,
        ),
        mk("Transpose", ["stage/sampled"], ["stage/registered"], perm=[1, 0, 2, 3]),
        mk("Sub", ["stage/registered", INPUT_BASELINE], ["stage/minus_baseline"]),
        mk("Div", ["stage/minus_baseline", INPUT_GAIN], [INPUT_FRAMES]),
    ]
    for node in stage:
        node.name = node.output[0]
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(stage + nodes)
    g.input.extend(
        [
            helper.make_tensor_value_info(
                INPUT_RAW, RAW_TYPES[raw_dtype], ["batch", p, "height", "width"]
            ),
            helper.make_tensor_value_info(INPUT_GRID, TensorProto.FLOAT, [p, "height", "width", 2]),
            helper.make_tensor_value_info(INPUT_BASELINE, TensorProto.FLOAT, [1, p, 1, 1]),
            helper.make_tensor_value_info(INPUT_GAIN, TensorProto.FLOAT, [1, p, 1, 1]),
        ]
    )
    onnx.checker.check_model(out)
    return out


def _const(name: str, value: np.ndarray | np.generic) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """Metadata of an exported ONNX; :class:`EngineError` if the file is not valid ONNX."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError, ...
        raise EngineError(
            f"corrupt or unreadable ONNX file {path}: {exc}; delete it or re-export with "
            f"`voxloc export --force`"
        ) from exc
    return {p.key: p.value for p in model.metadata_props}


def is_fresh(path: Path, model_dir: Path) -> bool:
    """True if ``path`` was exported by this export version from the current weights."""
    meta = read_onnx_metadata(path)
    return meta.get("voxloc_export_version") == EXPORT_VERSION and meta.get(
        "weights_sha256"
    ) == weights_sha256(model_dir)


def write_onnx(model_dir: Path, out: Path) -> Path:
    """Export ``model_dir`` to ``out`` atomically (:mod:`engines.io.atomic`)."""
    data = build_onnx(model_dir).SerializeToString()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, data)
    log.info("exported %s -> %s (%.1f kB)", model_dir, out, len(data) / 1e3)
    return out


def export_onnx(model: str | os.PathLike, out: Path | None = None, *, force: bool = False) -> Path:
    """Write ``model.onnx`` into the model directory (or ``out``); skip if already fresh."""
    model_dir = resolve_model(model)
    out = Path(out) if out is not None else model_dir / ONNX_FILE
    if out.is_file() and not force:
        try:
            if is_fresh(out, model_dir):
                log.info("%s is up to date", out)
                return out
        except EngineError:
            log.warning("%s is corrupt; exporting again", out)
    try:
        return write_onnx(model_dir, out)
    except (PermissionError, OutputError) as exc:
        raise EngineError(f"cannot write {out}: {exc}; pass another output path") from exc


def onnx_for_engine(model_dir: Path, info: ModelInfo) -> Path:
    """A fresh ONNX for ``model_dir``, exported on first use.

    Looks at ``<model_dir>/model.onnx`` then the cache; exports into the model directory,
    or into the cache when the model directory is read-only (a model shipped inside
    site-packages). A corrupt file raises :class:`EngineError`; a stale one is replaced.
    """
    candidates = [model_dir / ONNX_FILE, cache_dir_for(model_dir, info) / ONNX_FILE]
    for path in candidates:
        if path.is_file():
            if is_fresh(path, model_dir):
                return path
            log.warning(
                "%s was exported from other weights or an older exporter; exporting again", path
            )
    # never write into the package: a shipped model may sit in a read-only site-packages
    shipped = model_dir.resolve().is_relative_to(SHIPPED_MODELS.resolve())
    for path in candidates[1:] if shipped else candidates:
        if _writable(path.parent):
            try:
                return write_onnx(model_dir, path)
            except (OSError, OutputError) as exc:
                log.warning("cannot write %s (%s); trying the cache", path, exc)
    raise EngineError(
        f"cannot export {model_dir}: neither {candidates[0].parent} nor "
        f"{candidates[1].parent} is writable; set VOXLOC_CACHE"
    )


def artifact_dir(model_dir: Path, info: ModelInfo, name: str) -> Path:
    """``<model_dir>/<name>`` if writable (and not a shipped model), else the cache's."""
    shipped = model_dir.resolve().is_relative_to(SHIPPED_MODELS.resolve())
    if not shipped and _writable(model_dir / name):
        return model_dir / name
    return cache_dir_for(model_dir, info) / name


def _writable(folder: Path) -> bool:
    """Try it (``os.access`` says yes to root on read-only mounts)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False
