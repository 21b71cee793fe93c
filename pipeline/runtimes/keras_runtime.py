"""A ``.keras`` file loaded with ``safe_mode=True``; inputs moved to its layout (NHWC on CPU)."""
import numpy as np

from pipeline.runtimes import channels_last


class KerasRuntime:
    name = "keras"

    def __init__(self, path, layout: str = "NCHW"):
        import keras

        self.model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
        self.layout = layout

    def predict(self, batch: np.ndarray) -> np.ndarray:
        # The functional model was built with a list of inputs: pass one, or Keras warns per call.
        return np.asarray(self.model([channels_last(batch, self.layout)], training=False))


def load(path, layout: str = "NCHW", **_) -> KerasRuntime:
    return KerasRuntime(path, layout)
