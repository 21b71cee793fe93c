"""onnx_int8 -> model_int8.onnx with onnxruntime.quantization: static int8 (QDQ) or dynamic.

``export.onnx_int8.mode``: ``static`` quantizes weights (per channel) and activations (ranges calibrated
on ``export.calibration_samples`` training inputs, MinMax) as QuantizeLinear/DequantizeLinear pairs that
onnxruntime fuses into integer kernels; ``dynamic`` quantizes the weights and computes activation
ranges per call (it is the one that covers LSTM/GRU: ``DynamicQuantizeLSTM``). ``auto`` (the default):
dynamic for recurrent models, static otherwise.

For a static model the per-layer error is measured with onnxruntime's ``qdq_loss_debug`` (every
activation of a quantized copy against the float model's, on validation inputs the calibration never saw)
and the layers that add most go to the report; ``float_fallback`` (node names or parts of them) and
``float_fallback_top_k`` exclude nodes from quantization (``nodes_to_exclude``).
"""
import contextlib
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pipeline.atomic import write_with
from pipeline.converters import ConvertJob, backend, layer_errors, recurrent_ops
from pipeline.converters.layer_errors import LAYERS_REPORTED
from pipeline.errors import ConversionError
from pipeline.quantized import ABSURD_RANGE

log = logging.getLogger(__name__)
MODES = ("auto", "static", "dynamic")
CALIBRATION_BATCH = 32
LOAD = "onnxruntime.InferenceSession(path); inputs and outputs as model.onnx's (names, dtypes)"


@backend("onnx_int8", "onnxruntime", order=10)
def convert(job: ConvertJob) -> dict:
    """onnxruntime.quantization: quantize_static (QDQ, int8, per-channel weights) calibrated on training
    inputs, or quantize_dynamic for recurrent models."""
    import onnx

    model = onnx.load(str(job.onnx_path), load_external_data=False)
    recurrent = recurrent_ops(model)
    requested = str(job.options.get("mode", "auto") or "auto")
    if requested not in MODES:
        raise ConversionError(f"export.onnx_int8.mode={requested!r} is not a mode.",
                              f"Pick one of: {', '.join(MODES)}.")
    mode = requested if requested != "auto" else ("dynamic" if recurrent else "static")
    info: dict = {"quantization": f"int8, {mode}" + (f" (recurrent: {', '.join(recurrent)})" if recurrent else ""),
                  "mode": mode, "calibration_samples": 0, "float_fallback": [],
                  "float32_bytes": Path(job.onnx_path).stat().st_size, "float32_artifact": Path(job.onnx_path).name,
                  "load": LOAD}
    work = Path(tempfile.mkdtemp(prefix=".onnx_int8.", dir=job.out_path.parent)).resolve()
    try:
        source = _preprocess(job.onnx_path, work / "preprocessed.onnx", info)
        if mode == "static":
            calibration = job.calibration_inputs()
            info["calibration_samples"] = len(next(iter(calibration.values())))
            unrepresentable = _unrepresentable(source, calibration, work)
            kept = {**_unquantizable(source), **unrepresentable}
            if kept:
                info["kept_in_float"] = kept
            layers = _static_layers(job, source, calibration, work, info, list(unrepresentable))
            excluded = _excluded(job.options, layers, source)
            _quantize_static(source, work / "quantized.onnx", calibration, [*unrepresentable, *excluded])
        else:
            if int(job.options.get("float_fallback_top_k") or 0):
                info["float_fallback_top_k_ignored"] = ("dynamic mode measures no per-layer error to rank; name "
                                                        "nodes with export.onnx_int8.float_fallback instead")
                log.warning("onnx_int8: float_fallback_top_k ignored: %s", info["float_fallback_top_k_ignored"])
            excluded = _excluded(job.options, [], source)
            _quantize_dynamic(source, work / "quantized.onnx", excluded)
        excluded = list(dict.fromkeys([*excluded, *info.get("kept_in_float", {})]))
        if excluded:
            info["float_fallback"] = excluded
        write_with(job.out_path, lambda tmp: shutil.copyfile(work / "quantized.onnx", tmp))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info


def _preprocess(onnx_path: Path, out: Path, info: dict) -> Path:
    """onnxruntime's recommended pre-processing (shape inference, graph optimisation); the model as it is
    when that fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:  # in the work dir: when shapes stay unknown, onnxruntime saves debug files into the cwd
        with contextlib.chdir(out.parent):
            quant_pre_process(str(Path(onnx_path).resolve()), str(out))
        info["preprocessed"] = True
        return out
    except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation
        log.info("onnx_int8: pre-processing skipped (%s: %s)", type(exc).__name__, exc)
        info["preprocessed"] = False
        return Path(onnx_path)


class _Reader:
    """A CalibrationDataReader over calibration inputs, in batches."""

    def __init__(self, inputs: dict[str, np.ndarray], batch: int = CALIBRATION_BATCH, limit: int | None = None):
        count = len(next(iter(inputs.values())))
        count = count if limit is None else min(limit, count)
        self.batches = iter([{name: value[i:min(i + batch, count)] for name, value in inputs.items()}
                             for i in range(0, count, batch)])

    def get_next(self):
        return next(self.batches, None)

    def __iter__(self):
        return iter(self.get_next, None)


def _unquantizable(source: Path) -> dict[str, str]:
    """Nodes static quantization cannot take, by name, with why: they stay in float32 (reported as
    ``kept_in_float``). A grouped ConvTranspose: onnxruntime quantizes its weight per channel along axis 1,
    which holds out_channels / group, and then its bias (out_channels) cannot be scaled (``operands could
    not be broadcast``)."""
    import onnx

    kept = {}
    for node in onnx.load(str(source), load_external_data=False).graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "ConvTranspose" and group > 1 and node.name:  # torch.onnx names every node
            kept[node.name] = (
                f"grouped ConvTranspose (group={group}): onnxruntime's per-channel quantization of its "
                "weight does not match its bias")
    return kept


def _unrepresentable(source: Path, calibration: dict, work: Path, rounds: int = 4) -> dict[str, str]:
    """Nodes around tensors that calibration gives an infinite or ~+-3.4e38 range (an attention mask filled
    with -inf: nn.MultiheadAttention's key_padding_mask): quantized, every value of those tensors would sit
    on one level (onnxruntime writes a scale of inf). The producer and consumers of each stay in float,
    by name, so the tensor is never quantized (every quantization of this conversion leaves them out);
    repeated until no such range is left."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(source), load_external_data=False).graph
    producers = {out: node.name for node in graph.node for out in node.output if node.name}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            if node.name:
                consumers.setdefault(name, []).append(node.name)
    kept: dict[str, str] = {}
    for _ in range(rounds):
        _quantize_static(source, work / "ranges.onnx", calibration, list(kept))
        quantized = onnx.load(str(work / "ranges.onnx"), load_external_data=False).graph
        scales = {init.name: numpy_helper.to_array(init) for init in quantized.initializer}
        absurd = {_unquantized(node.input[0]) for node in quantized.node if node.op_type == "QuantizeLinear"
                  and node.input[1] in scales and not (np.all(np.isfinite(scales[node.input[1]])) and
                                                       float(np.max(scales[node.input[1]])) * 255 < ABSURD_RANGE)}
        new = {name: tensor for tensor in sorted(absurd) for name in [producers.get(tensor), *consumers.get(tensor, [])]
               if name and name not in kept}
        if not new:
            break
        kept.update({name: f"calibrated to an infinite range at {tensor} (a -inf or float32-max constant, e.g. an "
                     "attention mask): int8 would put every value on one level" for name, tensor in new.items()})
    if kept:
        log.warning("onnx_int8: %d node(s) kept in float around tensors calibrated to an infinite range: %s",
                    len(kept), ", ".join(list(kept)[:6]))
    return kept


def _quantize_static(source: Path, out: Path, calibration: dict, excluded: list[str]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    excluded = list(dict.fromkeys([*excluded, *_unquantizable(source)]))
    try:  # _Reader is a CalibrationDataReader by its get_next (the ABC's subclass hook)
        quantize_static(str(source), str(out), _Reader(calibration), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        nodes_to_exclude=excluded)
    except Exception as exc:
        raise ConversionError(f"onnxruntime quantize_static failed: {type(exc).__name__}: {_first(exc)}",
                              "Try export.onnx_int8.mode=dynamic, or exclude the failing nodes with "
                              "export.onnx_int8.float_fallback.") from exc


def _quantize_dynamic(source: Path, out: Path, excluded: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, nodes_to_exclude=excluded)
    except Exception as exc:
        raise ConversionError(f"onnxruntime quantize_dynamic failed: {type(exc).__name__}: {_first(exc)}",
                              "Exclude the failing nodes with export.onnx_int8.float_fallback.") from exc


def _static_layers(job: ConvertJob, source: Path, calibration: dict, work: Path, info: dict,
                   kept: list[str]) -> list[dict]:
    """The layers of a plainly quantized copy (``kept`` in float) by the error each adds, worst first (a
    diagnostic: a failure is reported, never fatal)."""
    try:
        inputs, info["layers_measured_on"] = job.layer_error_inputs()
        layers = activation_errors(source, calibration, inputs, work, kept)
        layers = _ranked(job, source, calibration, inputs, layers, work, kept)
    except Exception as exc:  # noqa: BLE001
        log.warning("onnx_int8: per-layer statistics failed: %s", exc)
        info["layers_error"] = f"{type(exc).__name__}: {_first(exc)}"
        return []
    info["worst_layers"] = layers[:LAYERS_REPORTED]
    return layers


def activation_errors(source: Path, calibration: dict, inputs: dict, work: Path, kept: list[str]) -> list[dict]:
    """Per node of the statically quantized model: the relative RMSE of its (dequantized) output against the
    float model's same tensor on ``inputs`` (``accumulated_relative_rmse``, onnxruntime's
    ``qdq_loss_debug``), and what the node adds to its inputs' (``relative_rmse``, the ranking)."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    plain = work / "plain.onnx"
    _quantize_static(source, plain, calibration, kept)
    collected = []
    for model in (plain, source):
        augmented = work / f"augmented_{model.stem}.onnx"
        modify_model_output_intermediate_tensors(str(model), str(augmented))
        collected.append(collect_activations(str(augmented), _Reader(inputs)))
    errors = {name: error["xmodel_err"] for name, error in
              compute_activation_error(create_activation_matching(*collected), err_func=_relative_rmse).items()
              if np.isfinite(error.get("xmodel_err", np.nan))}
    layers = []
    for node in onnx.load(str(plain)).graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        outputs = [_unquantized(name) for name in node.output if _unquantized(name) in errors]
        if not outputs:
            continue
        before = max((errors.get(_unquantized(name), 0.0) for name in node.input), default=0.0)
        after = max(errors[name] for name in outputs)
        layers.append({"node": node.name or outputs[0], "layer": node.name or outputs[0], "op": node.op_type,
                       "tensor": outputs[0], "relative_rmse": max(0.0, after - before),
                       "accumulated_relative_rmse": after})
    return sorted(layers, key=lambda layer: -layer["relative_rmse"])


def _ranked(job: ConvertJob, source: Path, calibration: dict, inputs: dict, layers: list[dict],
            work: Path, kept: list[str]) -> list[dict]:
    """``layers`` ranked by what excluding each from quantization gains at the model's output."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(None, inputs), strict=True))

    def error(excluded: list[str]) -> float:
        out = work / "candidate.onnx"
        _quantize_static(source, out, calibration, [*kept, *excluded])
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        return layer_errors.output_error(dict(zip(names, session.run(None, inputs), strict=True)), reference,
                                         job.output_kind)

    return layer_errors.rank(layers, lambda layer: error([layer["node"]]), error([]))


def _unquantized(name: str) -> str:
    """The float tensor a quantize/dequantize pair stands around (a graph output's pair renames the producer's
    output to ``<name>_QuantizeLinear_Input``)."""
    from onnxruntime.quantization.quant_utils import DEQUANT_OUTPUT_SUFFIX, QUANT_INPUT_SUFFIX

    for suffix in (DEQUANT_OUTPUT_SUFFIX, QUANT_INPUT_SUFFIX):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def _relative_rmse(reference, quantized) -> float:
    left = np.concatenate([np.ravel(a) for a in reference]).astype(np.float64)
    right = np.concatenate([np.ravel(a) for a in quantized]).astype(np.float64)
    error = float(np.linalg.norm(left - right))
    return error / max(float(np.linalg.norm(left)), 1e-12) if error > 0 else 0.0


def _excluded(options: dict, layers: list[dict], source: Path) -> list[str]:
    """Node names to keep in float: those ``float_fallback`` names (whole or in part), and the first
    ``float_fallback_top_k`` ranked layers (static mode; dynamic mode measures none)."""
    import onnx

    nodes = [node.name for node in onnx.load(str(source), load_external_data=False).graph.node if node.name]
    candidates = layers + [{"node": n, "layer": n, "relative_rmse": 0.0} for n in nodes
                           if n not in {layer["node"] for layer in layers}]
    return list(dict.fromkeys(layer["node"] for layer in layer_errors.choose(options, candidates, "onnx_int8", nodes)))


def _first(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
