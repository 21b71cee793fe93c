"""A ``.tflite`` flatbuffer run by LiteRT's interpreter, through its signature (tensors by name).

A full-integer model with int8 inputs/outputs gets float data quantized with each input's scale and
zero point, and its outputs dequantized: callers always see floats, as the other runtimes give."""
import numpy as np

from pipeline.runtimes import Adapter, feed_keys


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
            self.input_details = self.runner.get_input_details()
            self.output_details = self.runner.get_output_details()
        self._shapes = None

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        arrays = [np.ascontiguousarray(a) for a in arrays]
        if self.runner is not None:  # resizes the (dynamic) batch axis itself
            feeds = {name: quantize(a, self.input_details[name]) for name, a in zip(self.feed_names, arrays,
                                                                                      strict=True)}
            result = self.runner(**feeds)
            return [dequantize(np.array(result[name]), self.output_details[name]) for name in self.fetch_names]
        return self._run_by_index(arrays)

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


def quantize(array: np.ndarray, detail: dict) -> np.ndarray:
    """Float data for an int8/uint8 input: ``round(x / scale) + zero_point``, clipped to the type."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if dtype.kind not in "iu" or array.dtype.kind != "f" or not scale:
        return array
    info = np.iinfo(dtype)
    return np.clip(np.round(array / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(array: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if array.dtype.kind not in "iu" or not scale:
        return array
    return ((array.astype(np.float32) - zero_point) * scale).astype(np.float32)


def load(path, inputs, outputs, input_perms=None, output_perms=None, threads: int = 0, **_) -> TFLiteRuntime:
    return TFLiteRuntime(path, inputs, outputs, input_perms, output_perms, threads)
