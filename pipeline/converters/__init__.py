"""The converter backends that produce the export targets (declared in ``pipeline.targets``).

A backend is one module in ``pipeline/converters/backends/`` whose ``convert(job)`` function is registered
for a target with ``@backend(...)``; the modules there are found on their own, so a new backend is one
new module. ``export.<target>.backend`` picks one by name, or ``auto`` tries them in ``order``.

Quantized and half-precision targets (``quantized=True``) are judged in parity by the task metric
and top-1 agreement (``parity.quantized``), not by a float tolerance, and their size is compared with
their ``float_twin``'s, the float32 artifact of the same format.
"""
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.registry import discover
from pipeline.targets import TARGETS, TargetSpec  # noqa: F401 - backends look targets up here

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


AUTO = "auto"  # export.<target>.backend: try the target's backends in order
_BACKENDS: list[Backend] = []
_discovered = False


def backend(target: str, name: str, order: int, needs: str | None = None):
    """Register ``convert(job) -> dict`` as the backend ``name`` for ``target``."""
    def register(function):
        _BACKENDS.append(Backend(target, name, order, needs, function))
        return function
    return register


def remove_backend(target: str, name: str) -> None:
    """Unregister a backend (a plugin tried out, a test's own)."""
    _BACKENDS[:] = [b for b in _BACKENDS if (b.target, b.name) != (target, name)]


def backends_for(target: str) -> list[Backend]:
    """The target's backends, in the order ``auto`` tries them."""
    global _discovered
    if not _discovered:
        _discovered = True
        discover(f"{__name__}.backends")
    return sorted((b for b in _BACKENDS if b.target == target), key=lambda b: b.order)


def chain(cfg, target: str) -> list[Backend]:
    """The backends to try for ``target``: all in order under ``auto``, else the one named."""
    options = cfg.export.get(target) or {}
    requested = options.get("backend", AUTO) or AUTO
    available = backends_for(target)
    if requested == AUTO:
        return available
    picked = [b for b in available if b.name == requested]
    if not picked:
        raise PipelineError(f"export.{target}.backend={requested!r} is not a backend of the {target} target.",
                            f"Pick one of: {AUTO}, {', '.join(b.name for b in available)}.")
    return picked


def selected_targets(cfg) -> list[str]:
    """Targets in conversion order, with the targets their backends convert from (tflite <- tensorflow)."""
    wanted = [name for name, on in (cfg.export.get("targets") or {}).items() if on]
    unknown = sorted(set(wanted) - set(TARGETS))
    if unknown:
        raise PipelineError(f"Unknown export target(s) {unknown} in export.targets.",
                            f"Valid targets: {', '.join(TARGETS)} (or export=onnx|{'|'.join(TARGETS)}|all|deploy).")
    needed = set(wanted)
    for target in wanted:
        needed |= {b.needs for b in chain(cfg, target) if b.needs}
    return [t for t in TARGETS if t in needed]


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
