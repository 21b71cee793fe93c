"""A TensorFlow SavedModel, called through its ``serving_default`` signature."""
import numpy as np


class TensorFlowRuntime:
    name = "tensorflow"

    def __init__(self, path):
        import tensorflow as tf

        self._tf = tf
        self.loaded = tf.saved_model.load(str(path))
        self.signature = self.loaded.signatures["serving_default"]
        self.input_name = next(iter(self.signature.structured_input_signature[1]))
        self.output_name = next(iter(self.signature.structured_outputs))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        outputs = self.signature(**{self.input_name: self._tf.constant(batch)})
        return outputs[self.output_name].numpy()


def load(path, **_) -> TensorFlowRuntime:
    return TensorFlowRuntime(path)
