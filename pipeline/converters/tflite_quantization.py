"""What the quantized TFLite backends share: calibration data for TensorFlow's converter, and the
per-layer report of TFLite's QuantizationDebugger (which layers lose most when quantized to int8).

A full-integer model that misses its threshold names its worst layers; listing them in
``export.tflite_int8.float_fallback`` keeps those layers in float (selective quantization).
"""
import csv
import io
import math
from pathlib import Path

from pipeline.errors import ConversionError

WORST_LAYERS = 5


def representative_dataset(job, saved_model: Path, as_list: bool = False):
    """A generator function yielding one calibration sample at a time, keyed as the SavedModel's signature
    names its inputs (or as a list in that order, which the QuantizationDebugger wants)."""
    import tensorflow as tf

    from pipeline.runtimes import feed_keys

    if job.calibration is None:
        raise ConversionError(f"{job.target} needs calibration data, which this run has none of.",
                              "Use a dataset with a training split.")
    samples = job.calibration()
    names = list(samples)
    signature = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    keys = feed_keys(names, list(signature.structured_input_signature[1]))
    count = len(next(iter(samples.values())))

    def generate():
        for i in range(count):
            rows = [samples[name][i:i + 1] for name in names]
            yield rows if as_list else dict(zip(keys, rows, strict=True))
    return generate


def full_integer(converter, job, saved_model: Path, int8_io: bool) -> None:
    """Int8 weights and activations, calibrated on training data; builtin int8 kernels only."""
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(job, saved_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8


def debugger(converter, job, saved_model: Path, denylist: list[str] | None = None):
    import tensorflow as tf

    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(denylist)) if denylist else None
    return tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative_dataset(job, saved_model, as_list=True),
        debug_options=options)


def worst_layers(debug) -> list[dict]:
    """The layers whose int8 output departs most from float, by RMSE over the quantization step."""
    debug.run()
    text = io.StringIO()
    debug.layer_statistics_dump(text)
    rows = []
    for row in csv.DictReader(io.StringIO(text.getvalue())):
        try:
            scale = float(row["scale"])
            rmse = math.sqrt(float(row["mean_squared_error"]))
        except (KeyError, ValueError):
            continue
        rows.append({"op": row["op_name"], "node": row["tensor_name"], "rmse": rmse,
                     "rmse_over_scale": rmse / scale if scale > 0 else float("inf"),
                     "max_abs_error": float(row["max_abs_error"])})
    rows.sort(key=lambda r: -r["rmse_over_scale"])
    return [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in rows[:WORST_LAYERS]]


def samples_of(job) -> int:
    return len(next(iter(job.calibration().values()))) if job.calibration else 0

