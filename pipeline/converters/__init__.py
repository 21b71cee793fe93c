"""Export targets and the converter backends that produce them.

A target is an artifact kind (``keras``: model.keras, ...) declared once in ``TARGETS``. A backend is
one module in ``pipeline/converters/backends/`` whose ``convert(job)`` function is registered for a
target with ``@backend(...)``; the modules there are found on their own, so a new backend is one
new module. ``export.<target>.backend`` picks one by name, or ``auto`` tries them in ``order``.

Quantized and half-precision targets (``quantized=True``) are judged in parity by the task metric
and top-1 agreement (``parity.quantized``), not by a float tolerance, and their size is compared with
their ``float_twin``'s, the float32 artifact of the same format.
"""
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Target:
    name: str
    artifact: str  # file or directory name in the run dir
    runtime: str  # the runtime adapter (pipeline.runtimes) that runs it in parity
    description: str
    quantized: bool = False  # int8 or float16: judged by the task metric (parity.quantized), not by allclose
    float_twin: str | None = None  # the report artifact holding the float32 model of the same format


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("keras", "model.keras", "keras", "Keras 3 model; loads with keras.saving.load_model(path, safe_mode=True)"),
    Target("tensorflow", "saved_model", "tensorflow", "TensorFlow SavedModel with a serving_default signature"),
    Target("tflite", "model.tflite", "tflite", "TFLite flatbuffer for the LiteRT interpreter"),
    Target("tflite_fp16", "model_fp16.tflite", "tflite", "TFLite with float16 weights (computes in float32)",
           quantized=True, float_twin="tflite"),
    Target("tflite_int8_dynamic", "model_int8_dynamic.tflite", "tflite",
           "TFLite with int8 weights; activations quantized on the fly (dynamic range)", quantized=True,
           float_twin="tflite"),
    Target("tflite_int8", "model_int8.tflite", "tflite",
           "TFLite full integer (int8 weights and activations), calibrated on training inputs", quantized=True,
           float_twin="tflite"),
    Target("onnx_int8", "model_int8.onnx", "onnxruntime",
           "ONNX quantized by onnxruntime: static int8 (QDQ) calibrated on training inputs, dynamic for recurrent "
           "models", quantized=True, float_twin="onnx"),
)}
# ONNX ops that carry a recurrence: what some quantized targets do not apply to.
RECURRENT_OPS = ("LSTM", "GRU", "RNN", "Loop", "Scan")


@dataclass
class ConvertJob:
    """What a backend gets: the ONNX model, where to write, real inputs, and the run's other artifacts."""

    target: str
    onnx_path: Path
    out_path: Path
    sample: dict[str, np.ndarray]  # a few real held-out inputs, by ONNX input name, in ONNX layout
    artifacts: dict[str, Path] = field(default_factory=dict)  # targets already converted in this run
    options: dict = field(default_factory=dict)  # export.<target>
    cache: dict = field(default_factory=dict)  # shared by every backend of one convert stage
    # Intermediate ONNX tensors to expose as extra outputs, for locating a drift (pipeline.diagnose);
    # a backend that cannot raises ConversionError.
    debug_outputs: list[str] = field(default_factory=list)
    # Training-split inputs (by ONNX input name, ONNX layout) that calibrate the quantized targets; the
    # convert stage gives a loader that reads them on first use (export.calibration_samples).
    calibration: Callable[[], dict[str, np.ndarray]] | None = None
    # Inputs the calibration never saw (the validation split) on which the per-layer quantization error is
    # measured; None: the validation split is empty (the calibration inputs stand in).
    validation: Callable[[], dict[str, np.ndarray] | None] | None = None
    output_kind: str | None = None  # model.output (log_probs, logits, probability, value): what the outputs mean

    def calibration_inputs(self) -> dict[str, np.ndarray]:
        from pipeline.errors import ConversionError

        if self.calibration is None:
            raise ConversionError(f"The {self.target} target needs calibration inputs and none were given.",
                                  "Run it through the convert stage, which draws them from the training split.")
        return self.calibration()

    def layer_error_inputs(self) -> tuple[dict[str, np.ndarray], str]:
        """Where the per-layer quantization error is measured: validation inputs, else the calibration's."""
        validation = self.validation() if self.validation is not None else None
        return (validation, "validation") if validation is not None else (self.calibration_inputs(), "calibration")


@dataclass(frozen=True)
class Backend:
    target: str
    name: str
    order: int  # auto tries lower first
    needs: str | None  # another target whose artifact it converts from (tflite <- tensorflow), or None
    convert: Callable[[ConvertJob], dict]


_BACKENDS: list[Backend] = []


def backend(target: str, name: str, order: int, needs: str | None = None):
    """Register ``convert(job) -> dict`` as the backend ``name`` for ``target``."""
    def register(function):
        _BACKENDS.append(Backend(target, name, order, needs, function))
        return function
    return register


def backends_for(target: str) -> list[Backend]:
    """The target's backends, in the order ``auto`` tries them."""
    _discover()
    return sorted((b for b in _BACKENDS if b.target == target), key=lambda b: b.order)


def _discover() -> None:
    package = importlib.import_module(f"{__name__}.backends")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def with_outputs(onnx_model, names: list[str]):
    """A copy of ``onnx_model`` whose graph also outputs the tensors ``names`` (typed by shape inference),
    for backends without a node map of their own: they convert it as any other model."""
    import onnx

    marked = onnx.shape_inference.infer_shapes(onnx_model)
    known = {o.name for o in marked.graph.output}
    typed = {info.name: info for info in marked.graph.value_info}
    for name in names:
        if name not in known:
            info = onnx.ValueInfoProto()
            info.CopyFrom(typed.get(name, onnx.ValueInfoProto(name=name)))
            marked.graph.output.append(info)
    return marked


def recurrent_ops(onnx_model) -> list[str]:
    """The recurrent op types the ONNX graph holds (LSTM, GRU...), in graph order."""
    return list(dict.fromkeys(n.op_type for n in onnx_model.graph.node if n.op_type in RECURRENT_OPS))


def prepare_tensorflow() -> None:
    from pipeline import tf_env

    tf_env.prepare()  # every backend imports TensorFlow: Triton must come first


def onnx_layout(onnx_model) -> str:
    """The layout PyTorch (and so the ONNX model) takes: channels first."""
    rank = len(onnx_model.graph.input[0].type.tensor_type.shape.dim)
    return {4: "NCHW", 3: "NCW"}.get(rank, "NC")
