"""The TensorRT builder uses only the strongly typed API that TensorRT 10 and 11 share.

``tensorrt`` does not import without a GPU stack (it is not installed on the CPU machine
these tests run on), so the builder runs here against a recording fake of the documented
TensorRT 11 Python API surface: no ``BuilderFlag.FP16`` or ``OBEY_PRECISION_CONSTRAINTS``
(accessing them raises, as on TensorRT 11), layers whose ``precision`` /
``set_output_type`` are gone, ``NetworkDefinitionCreationFlag`` with and without
``STRONGLY_TYPED``. Where the real package imports, the last test checks every attribute
the backend calls against it.
"""

from __future__ import annotations

import enum
import importlib
import io
import sys
import types

import onnx
import pytest

from engines.export import onnx_for_engine
from engines.inference.engine_cache import Profile
from engines.modeldir import read_info


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class _ILogger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = list(_Severity)
    Severity = _Severity

    def __init__(self) -> None:
        pass


class _Layer:
    """A TensorRT 11 layer: weak-typing setters are gone."""

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"TensorRT 11 layers have no {name!r}")

    def set_output_type(self, *args: object) -> None:
        raise AttributeError("TensorRT 11 layers have no 'set_output_type'")


def fake_trt(calls: list, *, strongly_typed_flag: bool) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.4.0.106"
    trt.ILogger = _ILogger
    trt.IOutputAllocator = type("IOutputAllocator", (), {"__init__": lambda self: None})
    trt.float32, trt.float16 = "float32", "float16"

    class BuilderFlag:  # TensorRT 11: FP16 / OBEY_PRECISION_CONSTRAINTS removed
        TF32 = 1

    trt.BuilderFlag = BuilderFlag
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    flags = {"STRONGLY_TYPED": 5} if strongly_typed_flag else {}
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)

    class Network:
        num_layers = 1

        def get_layer(self, i: int) -> _Layer:
            return _Layer()

    class Parser:
        num_errors = 0

        def __init__(self, network: Network, logger: object) -> None:
            calls.append(("OnnxParser", type(network).__name__))

        def parse(self, graph: bytes) -> bool:
            calls.append(("parse", onnx.load_model(io.BytesIO(graph))))
            return True

    class Profile_:
        def set_shape(self, name: str, *shapes: tuple) -> None:
            calls.append(("set_shape", name, shapes))

    class Config:
        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool))

        def set_flag(self, flag: object) -> None:
            calls.append(("set_flag", flag))

        def add_optimization_profile(self, p: Profile_) -> int:
            calls.append(("add_optimization_profile",))
            return 0

    class Builder:
        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile_:
            return Profile_()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            calls.append(("build_serialized_network",))
            return b"engine"

    trt.Builder, trt.OnnxParser = Builder, Parser
    return trt


@pytest.fixture
def backend_with(monkeypatch: pytest.MonkeyPatch):
    def load(strongly_typed_flag: bool) -> tuple[types.ModuleType, list]:
        calls: list = []
        monkeypatch.setitem(
            sys.modules, "tensorrt", fake_trt(calls, strongly_typed_flag=strongly_typed_flag)
        )
        monkeypatch.delitem(sys.modules, "engines.inference.tensorrt_backend", raising=False)
        return importlib.import_module("engines.inference.tensorrt_backend"), calls

    yield load
    sys.modules.pop("engines.inference.tensorrt_backend", None)


@pytest.mark.parametrize("flag", [True, False], ids=["flag", "no-flag"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_builder_is_strongly_typed_and_sets_no_removed_flag(
    backend_with, shared_model_dir, precision: str, flag: bool
) -> None:
    be, calls = backend_with(flag)
    path = onnx_for_engine(shared_model_dir, read_info(shared_model_dir))
    graph = be.onnx_bytes(path, precision)
    assert be.build_serialized(graph, 4, Profile(), precision) == b"engine"
    assert ("create_network", (1 << 5) if flag else 0) in calls
    assert not [c for c in calls if c[0] == "set_flag"]
    (parsed,) = [c[1] for c in calls if c[0] == "parse"]
    conv_types = {i.data_type for i in parsed.graph.initializer if i.name.startswith("conv")}
    want = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.FLOAT
    assert conv_types == {want}
    # decoding and the graph's inputs/outputs stay float32
    assert parsed.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in parsed.graph.input)


def test_cache_key_hashes_the_graph_built_from(backend_with, shared_model_dir) -> None:
    be, _ = backend_with(True)
    path = onnx_for_engine(shared_model_dir, read_info(shared_model_dir))
    assert be.onnx_bytes(path, "fp16") != be.onnx_bytes(path, "fp32")


def test_real_tensorrt_has_every_call_the_backend_makes() -> None:
    trt = pytest.importorskip("tensorrt", reason="tensorrt does not import here (no GPU stack)")
    for owner, attr in [
        (trt, "Builder"),
        (trt.Builder, "create_network"),
        (trt.Builder, "create_builder_config"),
        (trt.Builder, "create_optimization_profile"),
        (trt.Builder, "build_serialized_network"),
        (trt, "OnnxParser"),
        (trt.OnnxParser, "parse"),
        (trt.IBuilderConfig, "set_memory_pool_limit"),
        (trt.IBuilderConfig, "add_optimization_profile"),
        (trt.IOptimizationProfile, "set_shape"),
        (trt.MemoryPoolType, "WORKSPACE"),
        (trt.IExecutionContext, "set_input_shape"),
        (trt.IExecutionContext, "set_tensor_address"),
        (trt.IExecutionContext, "set_output_allocator"),
        (trt.IExecutionContext, "execute_async_v3"),
        (trt.Runtime, "deserialize_cuda_engine"),
        (trt, "IOutputAllocator"),
    ]:
        assert hasattr(owner, attr), f"tensorrt {trt.__version__} has no {attr}"
