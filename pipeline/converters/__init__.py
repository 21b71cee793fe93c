"""Converters, one module per target; each exposes ``convert(onnx_path, out_path) -> dict``.

The returned dict goes into report.json under ``targets.<name>``; ``input_layout`` defaults to the
ONNX model's own layout (channels first) unless the converter changed it.
"""
import importlib

# target -> (module, artifact file name, target it is converted from)
TARGETS = {
    "keras": ("pipeline.converters.to_keras", "model.keras", None),
    "tensorflow": ("pipeline.converters.to_tensorflow", "saved_model", None),
    "tflite": ("pipeline.converters.to_tflite", "model.tflite", "tensorflow"),
}


def converter(target: str):
    from pipeline import tf_env

    tf_env.prepare()  # every converter imports TensorFlow
    return importlib.import_module(TARGETS[target][0])


def onnx_layout(onnx_model) -> str:
    """The layout PyTorch (and so the ONNX model) takes: channels first."""
    rank = len(onnx_model.graph.input[0].type.tensor_type.shape.dim)
    return {4: "NCHW", 3: "NCW"}.get(rank, "NC")
