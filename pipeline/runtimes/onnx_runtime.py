"""onnxruntime on the CPU."""
import numpy as np

from pipeline.runtimes import Adapter, RuntimeSpec, register


class OnnxRuntime(Adapter):
    name = "onnxruntime"

    def __init__(self, path, inputs, outputs, threads: int = 0):
        import onnxruntime as ort

        super().__init__(inputs, outputs)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0 = onnxruntime's default
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.outputs, dict(zip(self.inputs, arrays, strict=True)))


def load(path, inputs, outputs, threads: int = 0, **_) -> OnnxRuntime:
    return OnnxRuntime(path, inputs, outputs, threads)


register(RuntimeSpec("onnxruntime", load))
