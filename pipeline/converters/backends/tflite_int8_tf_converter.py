"""tflite_int8 -> model_int8.tflite: full integer, calibrated on ``export.calibration_samples`` training inputs.

``export.tflite_int8.int8_io=true`` makes the input and output tensors int8 too (the runtime adapter
quantizes and dequantizes with their scale and zero point). The layers that lose most are measured
with TFLite's QuantizationDebugger and listed in the report; ``export.tflite_int8.float_fallback``
keeps the named ones in float (then float kernels are allowed beside the int8 ones).
"""
from pipeline.converters import ConvertJob, backend, tflite_quantization
from pipeline.converters.backends.tflite_tf_converter import convert_file
from pipeline.errors import NotApplicable

# Full-integer recurrent layers lose too much: seed 004's LSTM forecaster measured a test MSE 41 %
# higher than float (and a model larger than float, its unrolled steps each quantized).
RECURRENT_OPS = ("LSTM", "GRU", "RNN")


@backend("tflite_int8", "tf-converter", order=10, needs="tensorflow")
def convert(job: ConvertJob) -> dict:
    """TensorFlow's converter, full integer quantization with a representative dataset."""
    import onnx
    import tensorflow as tf

    recurrent = sorted({n.op_type for n in onnx.load(str(job.onnx_path), load_external_data=False).graph.node}
                       & set(RECURRENT_OPS))
    if recurrent:
        raise NotApplicable(f"full-integer quantization of recurrent layers ({', '.join(recurrent)}) is refused: "
                              "int8 activations through every time step lose too much (seed 004's LSTM: MSE +41 %).",
                              "Use tflite_int8_dynamic (int8 weights) or tflite_fp16 for this model.",
                              unsupported_op=recurrent[0])

    saved_model = job.artifacts["tensorflow"]
    int8_io = bool(job.options.get("int8_io", False))
    fallback = list(job.options.get("float_fallback") or [])
    worst: list[dict] = []

    def configure(converter):
        tflite_quantization.full_integer(converter, job, saved_model, int8_io)
        if fallback:  # selective quantization: int8 kernels where possible, float for the denylisted nodes
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS]
            return tflite_quantization.debugger(converter, job, saved_model, fallback).get_nondebug_quantized_model()
        flatbuffer = converter.convert()
        if len(job.sample) == 1:  # the debugger feeds one input; several are not matched reliably
            # on a converter of its own: the debugger re-configures the one it is given
            probe = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
            tflite_quantization.full_integer(probe, job, saved_model, int8_io)
            worst.extend(tflite_quantization.worst_layers(tflite_quantization.debugger(probe, job, saved_model)))
        return flatbuffer

    info = convert_file(saved_model, job.out_path, configure)
    return {**info, "quantization": "full integer (int8)", "int8_io": int8_io,
            "calibration_samples": tflite_quantization.samples_of(job), "float_fallback": fallback,
            **({"worst_layers": worst} if worst else {})}
