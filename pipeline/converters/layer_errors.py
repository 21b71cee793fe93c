"""Which layers of an int8 model lose most, and which to keep in float (tflite_int8, onnx_int8 static).

Two measurements, both on inputs the calibration never saw (the validation split; the calibration inputs
when there is none):

- ``relative_rmse``: each layer's own quantization error, the RMS of (quantized - float) output over the
  float output's RMS, the quantized op and its float twin fed the same input (TFLite's QuantizationDebugger;
  for onnxruntime, the error a node adds to its inputs');
- ``output_gain``: for the ``CANDIDATES`` layers with the largest own error, the share of the whole
  model's output error that disappears when that layer alone is kept in float (1: all of it, 0: none,
  negative: it grows). The output compared is the task's (the first, which the target is judged on) as
  the task reads it: probabilities for classifiers (``log_probs`` and ``logits`` through softmax), the
  values for regressors.

Layers are ranked by ``output_gain``, then by ``relative_rmse``: a layer whose error the rest of the
network amplifies comes before one whose error it absorbs. ``float_fallback_top_k`` keeps the first
k in float; ``float_fallback`` names layers (whole names or parts of them).
"""
from collections.abc import Callable

import numpy as np

from pipeline import tasks
from pipeline.errors import ConversionError

# Layers listed in report.json (targets.<t>.worst_layers), ranked.
LAYERS_REPORTED = 10
# Layers whose effect on the output is measured (each one costs a quantization and a run).
CANDIDATES = 12


def comparable(outputs: dict[str, np.ndarray], kind: str | None) -> np.ndarray:
    """The task's output as the task reads it, flattened: the first output (the one a quantized target is
    judged on; a second output such as an embedding must not decide which layers to keep in float), in
    probabilities for classifiers."""
    if not outputs:
        return np.zeros(0)
    value = np.asarray(next(iter(outputs.values())), dtype=np.float64)
    if kind == "log_probs":
        value = np.exp(value)
    elif kind == "multi_label":
        value = 1 / (1 + np.exp(-value))  # each class's own probability
    elif kind in ("logits", "token_logits") and value.ndim >= 2:
        axis = tasks.task(kind).class_axis
        shifted = np.exp(value - value.max(axis=axis, keepdims=True))
        value = shifted / shifted.sum(axis=axis, keepdims=True)
    return value.reshape(-1)


def output_error(outputs: dict, reference: dict, kind: str | None) -> float:
    """Relative RMSE of ``outputs`` against the float ``reference``, as the task reads them."""
    got, expected = comparable(outputs, kind), comparable(reference, kind)
    error = float(np.sqrt(np.mean((got - expected) ** 2))) if expected.size else 0.0
    scale = float(np.sqrt(np.mean(expected ** 2))) if expected.size else 0.0
    return error / scale if scale > 0 else error


def rank(layers: list[dict], without: Callable[[dict], float], base_error: float) -> list[dict]:
    """``layers`` (each with ``relative_rmse``) ranked by ``output_gain``: ``without(layer)`` is the model's
    output error with that layer kept in float, ``base_error`` the error with every layer quantized."""
    ordered = sorted(layers, key=lambda layer: -layer["relative_rmse"])
    for layer in [layer for layer in ordered if layer["relative_rmse"] > 0][:CANDIDATES]:
        layer["output_gain"] = (base_error - without(layer)) / base_error if base_error > 0 else 0.0
    return sorted(ordered, key=lambda layer: (layer.get("output_gain") is None, -(layer.get("output_gain") or 0.0),
                                              -layer["relative_rmse"]))


def choose(options: dict, layers: list[dict], target: str, known: list[str]) -> list[dict]:
    """The layers ``float_fallback`` names (a whole ``node``/``layer`` name or part of one) and the first
    ``float_fallback_top_k`` ranked layers that gain anything; an unknown name is an error listing ``known``."""
    named = [str(n) for n in (options.get("float_fallback") or [])]
    top_k = int(options.get("float_fallback_top_k") or 0)
    chosen: dict[str, dict] = {}
    for name in named:
        matches = [layer for layer in layers if name in layer["node"] or name in layer["layer"]]
        if not matches:
            shown = ", ".join(known[:40]) + (" ..." if len(known) > 40 else "")
            raise ConversionError(f"export.{target}.float_fallback: {name!r} matches no quantized layer.",
                                  f"Name one of (or part of) these layers: {shown or '(none measured)'}.")
        chosen.update({layer["node"]: layer for layer in matches})
    gaining = [layer for layer in layers if (layer.get("output_gain") or 0) > 0 or
               (layer.get("output_gain") is None and layer["relative_rmse"] > 0)]
    for layer in gaining[:top_k]:
        chosen.setdefault(layer["node"], layer)
    return list(chosen.values())
