"""Runtime adapters, one module per runtime, each with ``predict(batch: np.ndarray) -> np.ndarray``.

Inputs are always given in PyTorch's layout (channels first); an adapter whose runtime wants
another layout transposes inside ``predict``.
"""
import importlib

# runtime name (as in report.json) -> module implementing ``load(path, **options)``
ADAPTERS = {
    "torch": "pipeline.runtimes.torch_runtime",
    "onnxruntime": "pipeline.runtimes.onnx_runtime",
    "keras": "pipeline.runtimes.keras_runtime",
    "tensorflow": "pipeline.runtimes.tensorflow_runtime",
    "tflite": "pipeline.runtimes.tflite_runtime",
}


def load(name: str, artifact, **options):
    """Load ``artifact`` (a path, or the network for torch) into the runtime adapter ``name``."""
    if name not in ("torch", "onnxruntime"):
        from pipeline import tf_env

        tf_env.prepare()
    return importlib.import_module(ADAPTERS[name]).load(artifact, **options)


def channels_last(batch, layout: str):
    """Move the channel axis to the end when the runtime's layout is channels-last (NHWC/NWC)."""
    import numpy as np

    if layout in ("NHWC", "NWC") and batch.ndim >= 3:
        return np.ascontiguousarray(np.moveaxis(batch, 1, -1))
    return batch
