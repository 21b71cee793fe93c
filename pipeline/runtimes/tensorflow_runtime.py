"""A TensorFlow SavedModel, called through its ``serving_default`` signature by tensor name."""
import numpy as np

from pipeline.runtimes import Adapter, RuntimeSpec, feed_keys, register


class TensorFlowRuntime(Adapter):
    name = "tensorflow"

    def __init__(self, path, inputs, outputs, input_perms=None, output_perms=None):
        import tensorflow as tf

        super().__init__(inputs, outputs, input_perms, output_perms)
        self._tf = tf
        self.loaded = tf.saved_model.load(str(path))
        self.signature = self.loaded.signatures["serving_default"]
        self.feed_names = feed_keys(inputs, list(self.signature.structured_input_signature[1]))
        self.fetch_names = feed_keys(outputs, list(self.signature.structured_outputs))

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        result = self.signature(**{name: self._tf.constant(a) for name, a in zip(self.feed_names, arrays, strict=True)})
        return [result[name].numpy() for name in self.fetch_names]


def load(path, inputs, outputs, input_perms=None, output_perms=None, **_) -> TensorFlowRuntime:
    return TensorFlowRuntime(path, inputs, outputs, input_perms, output_perms)


def signature_outputs(path) -> list[str]:
    """The serving signature's output names, in its own order."""
    import tensorflow as tf

    return list(tf.saved_model.load(str(path)).signatures["serving_default"].structured_outputs)


register(RuntimeSpec("tensorflow", load, needs_tensorflow=True, output_names=signature_outputs))
