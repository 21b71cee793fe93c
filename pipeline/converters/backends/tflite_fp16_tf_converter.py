"""tflite_fp16 -> model_fp16.tflite: float16 weights, by TensorFlow's converter from this run's SavedModel."""
from pipeline.converters import ConvertJob, backend, tflite_quantize


@backend("tflite_fp16", "tf-converter", order=10, needs="tensorflow")
def convert(job: ConvertJob) -> dict:
    """TFLiteConverter with Optimize.DEFAULT and float16 as the supported type: half the size, float32 math."""
    return tflite_quantize.convert(job, "fp16")
