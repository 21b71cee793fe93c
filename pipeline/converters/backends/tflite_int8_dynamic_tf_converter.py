"""tflite_int8_dynamic -> model_int8_dynamic.tflite: int8 weights, activations quantized at run time."""
from pipeline.converters import ConvertJob, backend
from pipeline.converters.backends.tflite_tf_converter import convert_file


@backend("tflite_int8_dynamic", "tf-converter", order=10, needs="tensorflow")
def convert(job: ConvertJob) -> dict:
    """TensorFlow's converter with dynamic-range quantization (no calibration data needed)."""
    import tensorflow as tf

    def configure(converter):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

    return {**convert_file(job.artifacts["tensorflow"], job.out_path, configure),
            "quantization": "int8 weights, dynamic-range activations"}
