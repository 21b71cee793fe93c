"""A TensorFlow SavedModel, called through its ``serving_default`` signature by tensor name."""
import numpy as np

from pipeline.runtimes import Adapter


class TensorFlowRuntime(Adapter):
    name = "tensorflow"

    def __init__(self, path, inputs, outputs, input_perms=None, output_perms=None):
        import tensorflow as tf

        super().__init__(inputs, outputs, input_perms, output_perms)
        self._tf = tf
        self.loaded = tf.saved_model.load(str(path))
        self.signature = self.loaded.signatures["serving_default"]
        signature_inputs = list(self.signature.structured_input_signature[1])
        signature_outputs = list(self.signature.structured_outputs)
        # Match by name; a single input or output may carry another name.
        self.feed_names = inputs if set(inputs) <= set(signature_inputs) else signature_inputs
        self.fetch_names = outputs if set(outputs) <= set(signature_outputs) else sorted(signature_outputs)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        result = self.signature(**{name: self._tf.constant(a) for name, a in zip(self.feed_names, arrays, strict=True)})
        return [result[name].numpy() for name in self.fetch_names]


def load(path, inputs, outputs, input_perms=None, output_perms=None, **_) -> TensorFlowRuntime:
    return TensorFlowRuntime(path, inputs, outputs, input_perms, output_perms)
