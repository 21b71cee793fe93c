"""tflite_int8_dynamic -> model_int8_dynamic.tflite: int8 weights (dynamic range quantization), from the SavedModel."""
from pipeline.converters import ConvertJob, backend, tflite_quantize


@backend("tflite_int8_dynamic", "tf-converter", order=10, needs="tensorflow")
def convert(job: ConvertJob) -> dict:
    """TFLiteConverter with Optimize.DEFAULT and no calibration: int8 weights, activations quantized per call."""
    return tflite_quantize.convert(job, "int8_dynamic")
