"""A ``.tflite`` flatbuffer run by LiteRT's interpreter (TensorFlow's if LiteRT is missing)."""
import numpy as np


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter
    return Interpreter


class TFLiteRuntime:
    name = "tflite"

    def __init__(self, path, threads: int = 0):
        self.interpreter = _interpreter_class()(model_path=str(path), num_threads=threads or None)
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self._shape = None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self._shape != batch.shape:  # the batch axis is dynamic: resize only when it changes
            self.interpreter.resize_tensor_input(self.input_index, batch.shape, strict=False)
            self.interpreter.allocate_tensors()
            self._shape = batch.shape
        self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(batch, dtype=np.float32))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index).copy()


def load(path, threads: int = 0, **_) -> TFLiteRuntime:
    return TFLiteRuntime(path, threads)
