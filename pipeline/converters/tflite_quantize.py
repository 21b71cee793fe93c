"""TFLite's post-training quantization from this run's SavedModel: float16, int8 dynamic range, full integer.

- ``fp16``: float16 weights, dequantized to float32 at load (half the size, float32 arithmetic);
- ``int8_dynamic``: int8 weights, activations quantized on the fly per batch (no calibration);
- ``int8``: full integer, weights and activations, activation ranges calibrated on training inputs
  (``export.calibration_samples``); ``int8_io`` makes the input and output tensors int8 as well.

For ``int8`` the per-layer quantization error is measured with TFLite's QuantizationDebugger (NumericVerify
ops compare each quantized op with its float twin fed the same quantized input) on validation inputs,
which the calibration never saw (a range calibrated too narrowly clips there, not on its own data), and
each candidate layer is denylisted alone to measure what keeping it in float gains at the output
(``pipeline.converters.layer_errors``): ``layers`` in the report lists the layers that lose most.
``float_fallback`` (names or parts of names) and ``float_fallback_top_k`` keep layers in float32 through
the debugger's denylist (``denylisted_nodes`` of TFLite's MLIR quantizer).
"""
import csv
import io
import logging
from pathlib import Path

import numpy as np

from pipeline.atomic import write_with
from pipeline.converters import ConvertJob, io_layout, layer_errors, recurrent_ops
from pipeline.converters.layer_errors import LAYERS_REPORTED
from pipeline.errors import ConversionError, NotApplicable
from pipeline.quantized import ABSURD_RANGE

log = logging.getLogger(__name__)

MODES = ("fp16", "int8_dynamic", "int8")
DESCRIBED = {"fp16": "float16 weights", "int8_dynamic": "int8 weights, dynamic-range activations",
             "int8": "full integer (int8)"}  # report.json targets.<t>.quantization
LOAD = "ai_edge_litert.interpreter.Interpreter(model_path=path)"


def convert(job: ConvertJob, mode: str) -> dict:
    """``job.out_path`` <- the quantized flatbuffer; returns the report entry (sizes, settings, layers)."""
    import onnx

    saved_model, layout = io_layout.saved_model_for(job)  # export.<target>.layout: nchw or nhwc
    info: dict = {**layout, "converted_from": "tensorflow", "quantization": DESCRIBED[mode], "load": LOAD}
    if mode == "int8":
        recurrent = recurrent_ops(onnx.load(str(job.onnx_path), load_external_data=False))
        if recurrent:
            raise NotApplicable(
                f"tflite_int8 does not apply to recurrent models (this one has {', '.join(recurrent)}): full-integer "
                "TFLite carries the recurrent state in int8 from step to step (the unrolled cell has no 16-bit "
                "state); seed 004's forecaster loses 25 % in MSE, still 12 % with its output layer kept in float.",
                "Use tflite_int8_dynamic (int8 weights, float activations) or onnx_int8 (dynamic quantization for "
                "recurrent models), both in export=deploy.", unsupported_op=recurrent[0])
        flatbuffer = _full_integer(job, saved_model, info)
    else:
        flatbuffer = _convert(saved_model, lambda c: _configure(c, mode))
    write_with(job.out_path, lambda tmp: tmp.write_bytes(flatbuffer))
    info["float32_bytes"], info["float32_artifact"] = float32_size(job, saved_model)
    return info


def float32_size(job: ConvertJob, saved_model: Path) -> tuple[int, str]:
    """The float32 TFLite model's size and name: this run's tflite artifact, or a conversion made only to
    measure it."""
    if "tflite" in job.artifacts and Path(job.artifacts["tflite"]).is_file():
        return Path(job.artifacts["tflite"]).stat().st_size, Path(job.artifacts["tflite"]).name
    if "tflite_float32_bytes" not in job.cache:
        job.cache["tflite_float32_bytes"] = len(_convert(saved_model, lambda c: None))
    return job.cache["tflite_float32_bytes"], "model.tflite (converted to measure it)"


def _configure(converter, mode: str) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]


def _convert(saved_model: Path, configure) -> bytes:
    import tensorflow as tf

    from pipeline.converters.backends.tflite_tf_converter import explain

    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        configure(converter)
        return converter.convert()
    except ConversionError:
        raise
    except Exception as exc:
        raise explain(exc) from exc


# --- full integer ---------------------------------------------------------------------------------------

def _full_integer(job: ConvertJob, saved_model: Path, info: dict) -> bytes:
    import tensorflow as tf

    # Calibration, per-layer statistics and TFLite runs take the artifact's layout (nhwc: channels last).
    calibration = io_layout.to_artifact(job.calibration_inputs(), info.get("input_perms"))
    samples = len(next(iter(calibration.values())))
    int8_io = bool(job.options.get("int8_io", False))
    info.update(calibration_samples=samples, int8_io=int8_io, float_fallback=[])

    def full_integer(converter, calibrate_only: bool = False):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        converter._experimental_calibrate_only = calibrate_only  # noqa: SLF001 - the debugger's own route

    flatbuffer = _convert(saved_model, full_integer)  # the converter's standard route, its checks included
    calibrated, kept = None, []
    absurd = _absurd_tensors(flatbuffer)
    if absurd:
        # An attention mask filled with -inf (nn.MultiheadAttention's key_padding_mask): the ops around those
        # tensors stay in float, by name; before the per-layer statistics, whose NumericVerify model aborted
        # the whole process on such ranges.
        calibrated = _convert(saved_model, lambda c: full_integer(c, calibrate_only=True))
        kept = _kept_in_float(calibrated)
        flatbuffer = quantize(calibrated, int8_io, denylisted=kept)
        _refuse_unrepresentable_ranges(flatbuffer, list(absurd.values()))
        info["kept_in_float"] = {short_name(name): UNREPRESENTABLE for name in kept}
        info["float_fallback"] = list(info["kept_in_float"])
    try:  # diagnostic: a failure here never fails the conversion
        calibrated = calibrated or _convert(saved_model, lambda c: full_integer(c, calibrate_only=True))
        inputs, info["layers_measured_on"] = job.layer_error_inputs()
        layers = ranked_layers(job, calibrated, inputs, kept, info)
    except Exception as exc:  # noqa: BLE001
        log.warning("tflite_int8: per-layer statistics failed: %s", exc)
        info["layers_error"] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        layers = []
    info["worst_layers"] = layers[:LAYERS_REPORTED]
    fallback = layer_errors.choose(job.options, layers, "tflite_int8", list(dict.fromkeys(x["layer"] for x in layers)))
    if fallback:
        if not layers and "layers_error" in info:
            raise ConversionError(f"export.tflite_int8.float_fallback needs the per-layer statistics, which failed: "
                                  f"{info['layers_error']}", "Drop export.tflite_int8.float_fallback(_top_k).")
        flatbuffer = quantize(calibrated, int8_io, denylisted=[*kept, *(layer["node"] for layer in fallback)])
        info["float_fallback"] = list(dict.fromkeys([*info["float_fallback"], *(x["layer"] for x in fallback)]))
        _refuse_unrepresentable_ranges(flatbuffer)
    return flatbuffer


UNREPRESENTABLE = ("calibrated to an infinite range (a -inf or float32-max constant, e.g. an attention mask): int8 "
                   "would put every value on one level")


def _absurd_tensors(flatbuffer: bytes, constants: bool = False) -> dict[int, str]:
    """Quantized tensors (with a producing op, or any with ``constants``) whose calibrated scale is not
    finite or spans more than ``ABSURD_RANGE``, by index: ``name (OP)``."""
    from pipeline.runtimes.tflite_runtime import _interpreter_class

    interpreter = _interpreter_class()(model_content=flatbuffer)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    producers = {out: op["op_name"] for op in interpreter._get_ops_details() for out in op["outputs"]}  # noqa: SLF001
    return {i: f"{short_name(t['name'])} ({producers.get(i, 'constant')})" for i, t in tensors.items()
            if (constants or i in producers) and t["quantization"][0] != 0 and
            (not np.isfinite(t["quantization"][0]) or t["quantization"][0] * 255 > ABSURD_RANGE)}


def _kept_in_float(calibrated: bytes, rounds: int = 4) -> list[str]:
    """The output tensors of every op that reads or writes a tensor calibrated to an absurd range, denylisted
    (TFLite's MLIR quantizer keeps them in float32), repeated until no such range is left."""
    from pipeline.runtimes.tflite_runtime import _interpreter_class

    kept: list[str] = []
    for _ in range(rounds):
        flatbuffer = quantize(calibrated, False, denylisted=kept)
        absurd = set(_absurd_tensors(flatbuffer, constants=True))
        if not absurd:
            break
        interpreter = _interpreter_class()(model_content=flatbuffer)
        names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
        new = [names[out] for op in interpreter._get_ops_details()  # noqa: SLF001
               if absurd & {*op["inputs"], *op["outputs"]} for out in op["outputs"] if names[out] not in kept]
        if not new:
            break
        kept += list(dict.fromkeys(new))
    return kept


def _refuse_unrepresentable_ranges(flatbuffer: bytes, named: list[str] | None = None) -> None:
    """A ConversionError naming the tensors calibrated to an absurd range (``named``: as first calibrated,
    before the ops around them were kept in float), if ``flatbuffer`` still has any."""
    absurd = list(_absurd_tensors(flatbuffer).values())
    if absurd:
        absurd = named or absurd
        raise ConversionError(
            f"tflite_int8: calibration gave {len(absurd)} tensor(s) a range of about +-3.4e38, which int8 cannot "
            f"represent (every value would quantize to one level), and keeping the ops around them in float did not "
            f"remove it: {', '.join(absurd[:5])}. Such a range comes from "
            "a -inf or float32-max constant in the graph (an attention mask filled with -inf, as nn.MultiheadAttention "
            "and nn.TransformerEncoder do with a key_padding_mask or attn_mask; a padding a max pool must not see).",
            "Use the targets that keep activations in float: tflite_int8_dynamic, onnx_int8 (both in export=deploy), "
            "or tflite_fp16; or, in your own attention, mask with a finite value near the scores' range.")


def ranked_layers(job: ConvertJob, calibrated: bytes, inputs: dict[str, np.ndarray],
                  kept: list[str] | None = None, layout: dict | None = None) -> list[dict]:
    """The quantized layers by their own error, then ranked by what keeping each in float gains at the output
    (``kept``: tensors every quantization keeps in float; ``layout``: the artifact's input/output perms,
    ``inputs`` being in ONNX layout)."""
    from pipeline import runtimes

    kept, layout = list(kept or []), layout or {}
    stored = io_layout.to_artifact(inputs, layout.get("input_perms"))
    layers = [layer for layer in layer_statistics(calibrated, stored, kept) if layer["node"] not in kept]
    names = list(inputs)
    onnx = runtimes.load("onnxruntime", job.onnx_path, names, _output_names(job.onnx_path))
    reference = onnx.predict(inputs)

    def error(flatbuffer: bytes) -> float:
        outputs = io_layout.from_artifact(run(flatbuffer, stored, list(reference)), layout.get("output_perms"))
        return layer_errors.output_error(outputs, reference, job.output_kind)

    def without(layer: dict) -> float:
        return error(quantize(calibrated, False, denylisted=[*kept, layer["node"]]))

    return layer_errors.rank(layers, without, error(quantize(calibrated, False, denylisted=kept)))


def _output_names(onnx_path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(onnx_path), load_external_data=False).graph.output]


def run(flatbuffer: bytes, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """A flatbuffer in memory run by LiteRT on ``inputs`` (by ONNX name), its outputs by ONNX name."""
    from pipeline.runtimes import feed_keys
    from pipeline.runtimes.tflite_runtime import _interpreter_class, dequantize, quantize

    interpreter = _interpreter_class()(model_content=flatbuffer)
    signature = next(iter(interpreter.get_signature_list().items()))
    runner = interpreter.get_signature_runner(signature[0])
    feeds, fetches = feed_keys(list(inputs), signature[1]["inputs"]), feed_keys(outputs, signature[1]["outputs"])
    inputs_detail, outputs_detail = runner.get_input_details(), runner.get_output_details()
    result = runner(**{key: quantize(np.ascontiguousarray(inputs[name]), inputs_detail[key])
                       for key, name in zip(feeds, inputs, strict=True)})
    return {name: dequantize(np.array(result[key]), outputs_detail[key]) for key, name in zip(fetches, outputs,
                                                                                             strict=True)}


def _representative(calibration: dict[str, np.ndarray]):
    """One sample at a time, as TFLite's calibrator expects; a list for one input, by signature key for several."""
    from pipeline.runtimes import signature_key

    names = list(calibration)
    count = len(calibration[names[0]])
    for i in range(count):
        if len(names) == 1:
            yield [calibration[names[0]][i:i + 1]]
        else:
            yield {signature_key(name): calibration[name][i:i + 1] for name in names}


def quantize(calibrated: bytes, int8_io: bool, denylisted: list[str] | None = None, debug: bool = False) -> bytes:
    """The calibrated model quantized by TFLite's MLIR quantizer (the QuantizationDebugger's route), with the
    ``denylisted`` tensors' ops kept in float32; ``debug`` adds the NumericVerify ops."""
    import tensorflow as tf
    from tensorflow.lite.python.convert import mlir_quantize

    io_type = tf.int8 if int8_io and not debug else tf.float32
    return mlir_quantize(calibrated, input_data_type=io_type, output_data_type=io_type,
                         enable_numeric_verify=debug, denylisted_nodes=list(denylisted or []))


def layer_statistics(calibrated: bytes, inputs: dict[str, np.ndarray], kept: list[str] | None = None) -> list[dict]:
    """Every quantized layer's error against its float twin on ``inputs`` (one at a time), worst first."""
    import tensorflow as tf

    debug_model = quantize(calibrated, False, denylisted=kept, debug=True)
    names, dtypes, outputs = _interpreter_io(debug_model, list(inputs))

    def dataset():  # the debugger feeds a list in the interpreter's input order, not the signature's
        for i in range(len(inputs[names[0]])):
            yield [inputs[name][i:i + 1].astype(dtype, copy=False) for name, dtype in zip(names, dtypes, strict=True)]

    def squared_error(float_tensor, quant_tensor, scale, zero_point):
        dequantized = (quant_tensor.astype(np.float64) - zero_point) * scale
        return float(np.mean((float_tensor.astype(np.float64) - dequantized) ** 2))

    def squared_reference(float_tensor, quant_tensor, scale, zero_point):
        return float(np.mean(float_tensor.astype(np.float64) ** 2))

    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"squared_error": squared_error, "squared_reference": squared_reference})
    debugger = tf.lite.experimental.QuantizationDebugger(
        quant_debug_model_content=debug_model, debug_dataset=dataset,
        debug_options=options)
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    layers = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        scale = float(row["scale"] or 0.0)
        error, reference = float(row["squared_error"]), float(row["squared_reference"])
        # The error over the float output's RMS; one quantization step at least, so that a near-zero
        # tensor's rounding does not look like a large relative error.
        relative = float(np.sqrt(error) / max(np.sqrt(reference), scale, 1e-12)) if error > 0 else 0.0
        name = outputs.get(row["tensor_name"]) or short_name(row["tensor_name"])
        layers.append({"node": row["tensor_name"], "layer": name, "op": row["op_name"],
                       "rmse": float(np.sqrt(error)), "relative_rmse": relative,
                       "rmse_over_scale": float(np.sqrt(error) / scale) if scale else None,
                       "max_abs_error": float(row["max_abs_error"])})
    layers = [layer for layer in layers if np.isfinite(layer["relative_rmse"])]
    return layers


def _interpreter_io(flatbuffer: bytes, onnx_inputs: list[str]) -> tuple[list[str], list, dict[str, str]]:
    """The ONNX input names in the interpreter's own input order with the dtype each tensor takes (ids
    given as int64 go in as the model's int32), and the model's output tensors by signature key (a layer
    that writes a model output is named after it: ``output_1``, not ``StatefulPartitionedCall:1``)."""
    from pipeline.runtimes import feed_keys
    from pipeline.runtimes.tflite_runtime import _interpreter_class

    interpreter = _interpreter_class()(model_content=flatbuffer)
    signatures = interpreter.get_signature_list()
    details = interpreter.get_input_details()
    if not signatures:
        return onnx_inputs, [d["dtype"] for d in details], {}
    key, described = next(iter(signatures.items()))
    runner = interpreter.get_signature_runner(key)
    by_index = {detail["index"]: name for name, detail in zip(
        onnx_inputs, (runner.get_input_details()[k] for k in feed_keys(onnx_inputs, described["inputs"])),
        strict=True)}
    outputs = {detail["name"]: name for name, detail in runner.get_output_details().items()}
    return [by_index[d["index"]] for d in details], [d["dtype"] for d in details], outputs


def short_name(tensor: str) -> str:
    """A fused op's tensor by the layer it comes from: its deepest name, without the model's scope
    (``converted_1/Relu;converted_1/conv1_Conv_1/convolution;...`` -> ``conv1_Conv_1/convolution``)."""
    first = max(tensor.split(";"), key=lambda part: part.count("/"))
    parts = first.split("/")
    return "/".join(parts[1:]) if len(parts) > 1 and parts[0].startswith("converted") else first
