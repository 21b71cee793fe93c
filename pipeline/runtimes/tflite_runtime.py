"""A ``.tflite`` flatbuffer run by LiteRT's interpreter, through its signature (tensors by name).

A full-integer model with int8 (or uint8) inputs and outputs (``export.tflite_int8.int8_io``) gets float
data quantized with each input tensor's scale and zero point, and its outputs dequantized with theirs:
callers, parity included, always see floats in the ONNX model's layout.
"""
import numpy as np

from pipeline.runtimes import Adapter, RuntimeSpec, feed_keys, register


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter
    return Interpreter


class TFLiteRuntime(Adapter):
    name = "tflite"

    def __init__(self, path, inputs, outputs, input_perms=None, output_perms=None, threads: int = 0):
        super().__init__(inputs, outputs, input_perms, output_perms)
        self.interpreter = _interpreter_class()(model_path=str(path), num_threads=threads or None)
        signatures = self.interpreter.get_signature_list()
        self.runner = self.interpreter.get_signature_runner(next(iter(signatures))) if signatures else None
        if self.runner is not None:
            described = signatures[next(iter(signatures))]
            self.feed_names = feed_keys(inputs, described["inputs"])
            self.fetch_names = feed_keys(outputs, described["outputs"])
            feeds, fetches = self.runner.get_input_details(), self.runner.get_output_details()
            self.input_details = [feeds[name] for name in self.feed_names]
            self.output_details = [fetches[name] for name in self.fetch_names]
        else:
            self.input_details = self.interpreter.get_input_details()
            self.output_details = self.interpreter.get_output_details()
        self._shapes = None

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        results = self.invoke(self._quantized(arrays))
        return [dequantize(r, d) for r, d in zip(results, self.output_details, strict=True)]

    def prepare(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._quantized(super().prepare(feeds))

    def _quantized(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [quantize(np.ascontiguousarray(a), d) for a, d in zip(arrays, self.input_details, strict=True)]

    def invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """The interpreter on inputs in its own dtype; outputs as it returns them (int8 when quantized)."""
        if self.runner is None:
            return self._run_by_index(arrays)
        result = self.runner(**dict(zip(self.feed_names, arrays, strict=True)))  # resizes the batch axis itself
        return [np.array(result[name]) for name in self.fetch_names]

    def _run_by_index(self, arrays):
        details = self.interpreter.get_input_details()
        shapes = [a.shape for a in arrays]
        if self._shapes != shapes:  # the batch axis is dynamic: resize only when it changes
            for detail, array in zip(details, arrays, strict=True):
                self.interpreter.resize_tensor_input(detail["index"], array.shape, strict=False)
            self.interpreter.allocate_tensors()
            self._shapes = shapes
        for detail, array in zip(details, arrays, strict=True):
            self.interpreter.set_tensor(detail["index"], array)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]).copy() for d in self.interpreter.get_output_details()]


def _scale(detail: dict) -> tuple[float, int] | None:
    """A tensor's (scale, zero point) when it is quantized per tensor, else None."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero_point)) if scale else None


def quantize(array: np.ndarray, detail: dict) -> np.ndarray:
    """Float data for a quantized integer input: ``round(x / scale) + zero_point`` (rounding half away from
    zero, as TFLite does), clipped to the integer type."""
    dtype = np.dtype(detail["dtype"])
    params = _scale(detail)
    if dtype.kind not in "iu" or array.dtype.kind != "f" or params is None:
        return array
    scale, zero_point = params
    scaled = array.astype(np.float64) / scale
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + zero_point
    info = np.iinfo(dtype)
    return np.clip(rounded, info.min, info.max).astype(dtype)


def dequantize(array: np.ndarray, detail: dict) -> np.ndarray:
    """A quantized integer output as floats: ``(q - zero_point) * scale``."""
    params = _scale(detail)
    if array.dtype.kind not in "iu" or params is None:
        return array
    scale, zero_point = params
    return ((array.astype(np.float32) - zero_point) * scale).astype(np.float32)


def load(path, inputs, outputs, input_perms=None, output_perms=None, threads: int = 0, **_) -> TFLiteRuntime:
    return TFLiteRuntime(path, inputs, outputs, input_perms, output_perms, threads)


def signature_outputs(path) -> list[str]:
    """The first signature's output names, in its own order."""
    signatures = _interpreter_class()(model_path=str(path)).get_signature_list()
    return list(next(iter(signatures.values()))["outputs"])


register(RuntimeSpec("tflite", load, needs_tensorflow=True, output_names=signature_outputs, reuses_memory=True))
