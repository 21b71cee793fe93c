"""tflite_fp16 -> model_fp16.tflite: float16 weights (half the size; computed in float32 on CPU)."""
from pipeline.converters import ConvertJob, backend
from pipeline.converters.backends.tflite_tf_converter import convert_file


@backend("tflite_fp16", "tf-converter", order=10, needs="tensorflow")
def convert(job: ConvertJob) -> dict:
    """TensorFlow's converter with float16 weights, from this run's SavedModel."""
    import tensorflow as tf

    def configure(converter):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]

    return {**convert_file(job.artifacts["tensorflow"], job.out_path, configure), "quantization": "float16 weights"}
