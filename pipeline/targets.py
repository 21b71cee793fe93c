"""Export targets, each declared once by a ``TargetSpec``: its artifact, the runtime that runs it in parity,
its ``export.<target>`` options, how an app loads it. The schema, the convert stage, parity, the diagnosis,
report.md, the matrices and from_run all read these specs; none names a target.

A new target is its spec (``TARGETS.add(TargetSpec(...))``, here or in its backend module), its backend
(``pipeline/converters/backends/``) and ``conf/export/<target>.yaml``.
"""
from dataclasses import dataclass, field
from enum import StrEnum

from pipeline.ranges import between, ranged
from pipeline.registry import Registry

# The ONNX export itself: an artifact and a parity runtime's input, not a converted target.
ONNX = "onnx"


# --- export.<target> options ---

@dataclass
class TargetOptions:
    backend: str = "auto"  # auto: the target's backends in order (pipeline/converters/backends), or one by name


class OnnxInt8Mode(StrEnum):
    """How onnxruntime quantizes onnx_int8."""

    auto = "auto"  # dynamic for recurrent models (LSTM/GRU/RNN), static otherwise
    static = "static"  # int8 weights and activations (QDQ), calibrated on export.calibration_samples
    dynamic = "dynamic"  # int8 weights, activation ranges computed per call


class IOLayout(StrEnum):
    """The layout a TensorFlow or TFLite artifact takes and returns (pipeline/converters/io_layout.py)."""

    nchw = "nchw"  # PyTorch's, channels first (the signature transposes at the boundary)
    nhwc = "nhwc"  # channels last: image tensors [N, H, W, C] in and out, no transpose at the boundary


@dataclass
class LayoutOptions(TargetOptions):
    layout: IOLayout | None = None  # null: export.layout


@dataclass
class FloatFallbackOptions(TargetOptions):
    """Layers of a quantized model kept in float32 (pipeline/converters/tflite_quantize.py)."""

    float_fallback: list[str] = field(default_factory=list)  # names (report: worst_layers[].node/.layer) or parts
    float_fallback_top_k: int = ranged(0, between(0, 10_000, integer=True))  # the k layers that lose most


@dataclass
class TFLiteInt8Options(FloatFallbackOptions, LayoutOptions):
    int8_io: bool = False  # int8 input and output tensors (the runtime quantizes and dequantizes around them)


@dataclass
class OnnxInt8Options(FloatFallbackOptions):
    mode: OnnxInt8Mode = OnnxInt8Mode.auto


# --- the spec ---

@dataclass(frozen=True)
class TargetSpec:
    name: str
    artifact: str  # file or directory name in the run dir
    runtime: str  # the runtime (pipeline/runtimes) that runs it in parity
    description: str
    load_hint: str = ""  # how an app loads it (report.md)
    options: type = TargetOptions  # the schema of export.<name>
    quantized: bool = False  # int8 or float16: judged by the task metric (parity.quantized), not by allclose
    float_twin: str | None = None  # the report artifact holding the float32 model of the same format
    needs_tensorflow: bool = True  # its backends import TensorFlow (prepared before: pipeline.tf_env)
    # parity locates a drift of it node by node (pipeline/diagnose.py); a quantized target's report names
    # its lossy layers instead
    diagnosable: bool = True
    # the signature is called by ONNX tensor name (a SavedModel's or a TFLite model's): recorded in the report
    named_signature: bool = False
    instead: str = ""  # what to use when its quantization loses too much (a quantized target's failure says it)


TARGETS: Registry[TargetSpec] = Registry("export target")

_LITERT = "`ai_edge_litert.interpreter.Interpreter(model_path=path)`"
for _spec in (
    TargetSpec("keras", "model.keras", "keras",
               "Keras 3 model; loads with keras.saving.load_model(path, safe_mode=True)",
               "`keras.saving.load_model(path, safe_mode=True)`"),
    TargetSpec("tensorflow", "saved_model", "tensorflow", "TensorFlow SavedModel with a serving_default signature",
               "`tf.saved_model.load(path).signatures['serving_default'](input=x)['output']`", LayoutOptions,
               named_signature=True),
    TargetSpec("tflite", "model.tflite", "tflite", "TFLite flatbuffer for the LiteRT interpreter", _LITERT,
               LayoutOptions, named_signature=True),
    TargetSpec("tflite_fp16", "model_fp16.tflite", "tflite", "TFLite with float16 weights (computes in float32)",
               f"{_LITERT} (float16 weights; I/O as model.tflite: float32, integer ids stay integer)", LayoutOptions,
               quantized=True, float_twin="tflite", diagnosable=False, named_signature=True),
    TargetSpec("tflite_int8_dynamic", "model_int8_dynamic.tflite", "tflite",
               "TFLite with int8 weights; activations quantized on the fly (dynamic range)",
               f"{_LITERT} (I/O as model.tflite: float32, integer ids stay integer)", LayoutOptions,
               quantized=True, float_twin="tflite", diagnosable=False, named_signature=True),
    TargetSpec("tflite_int8", "model_int8.tflite", "tflite",
               "TFLite full integer (int8 weights and activations), calibrated on training inputs",
               f"{_LITERT}; with int8 I/O, quantize float inputs and dequantize float outputs with each tensor's "
               "`quantization` (scale, zero point); integer tensors (ids, indices) are not scaled", TFLiteInt8Options,
               quantized=True, float_twin="tflite", diagnosable=False, named_signature=True,
               instead="use tflite_int8_dynamic, tflite_fp16 or onnx_int8 (in export=deploy)"),
    TargetSpec("onnx_int8", "model_int8.onnx", "onnxruntime",
               "ONNX quantized by onnxruntime: static int8 (QDQ) calibrated on training inputs, dynamic for recurrent "
               "models", "`onnxruntime.InferenceSession(path)`; inputs and outputs as model.onnx's (names, dtypes)",
               OnnxInt8Options, quantized=True, float_twin=ONNX, needs_tensorflow=False, diagnosable=False,
               instead="use export.onnx_int8.mode=dynamic, or tflite_int8_dynamic / tflite_fp16"),
):
    TARGETS.add(_spec)

# How an app loads the run's other artifacts (report.md), by report.json artifact key.
ARTIFACT_LOAD_HINTS = {
    ONNX: "`onnxruntime.InferenceSession(path)`; input `input`, output `output`, dynamic batch",
    "weights": "`model.load_state_dict(torch.load(path, weights_only=True))`",
    "checkpoint": "Lightning checkpoint: `from_run=<this dir>` resumes from it",
    "labels": "class names, one per line, in output index order",
}


def load_hint(key: str) -> str:
    """How an app loads the artifact under report.json key ``key``."""
    spec = TARGETS.get(key)
    return spec.load_hint if spec is not None else ARTIFACT_LOAD_HINTS.get(key, "")


def quantized_targets() -> list[str]:
    return [name for name, spec in TARGETS.items() if spec.quantized]
