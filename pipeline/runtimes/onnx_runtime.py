"""onnxruntime on the CPU."""
import numpy as np


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, path, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0 = onnxruntime's default
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


def load(path, threads: int = 0, **_) -> OnnxRuntime:
    return OnnxRuntime(path, threads)
