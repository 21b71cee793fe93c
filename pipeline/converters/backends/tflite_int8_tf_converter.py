"""tflite_int8 -> model_int8.tflite: full integer quantization calibrated on training inputs, from the SavedModel."""
from pipeline.converters import ConvertJob, backend, tflite_quantize


@backend("tflite_int8", "tf-converter", order=10, needs="tensorflow")
def convert(job: ConvertJob) -> dict:
    """TFLiteConverter with a representative dataset and int8 builtins only; per-layer error by the
    QuantizationDebugger, float fallback of the layers named in export.tflite_int8."""
    return tflite_quantize.convert(job, "int8")
