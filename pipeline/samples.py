"""Real inputs for the runtimes, by ONNX input name, as NumPy arrays: the held-out split that the check,
the convert-time verification, parity and the diagnosis run; seeded draws of the training split that
quantization calibrates on, and of the validation split its per-layer error is measured on."""
import numpy as np

from pipeline.errors import PipelineError


class Samples:
    def __init__(self, data, input_names: list[str], seed: int):
        self.data, self.input_names, self.seed = data, list(input_names), seed
        self._calibration: dict[int, dict[str, np.ndarray]] = {}  # by count: read once for every target

    def held_out(self, count: int | None = None, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """The first ``count`` held-out inputs (all when None)."""
        x = self.data.head("test", count)[0]
        return self._by_name(x, names or self.input_names)

    def calibration(self, count: int) -> dict[str, np.ndarray]:
        """``count`` training-split inputs drawn at random (seeded) so that a split stored in class or time
        order is represented as a whole: what quantization calibrates on, never the test split that parity
        measures on."""
        if count not in self._calibration:
            inputs = self.data.draw("train", count, self.seed)
            if inputs is None:
                raise PipelineError("The training split is empty: there is nothing to calibrate the quantized "
                                    "targets on.", "Use a dataset with training data, or drop the int8 targets.")
            self._calibration[count] = self._by_name(inputs, self.input_names)
        return self._calibration[count]

    def validation(self, count: int) -> dict[str, np.ndarray] | None:
        """``count`` validation-split inputs (drawn as ``calibration``), None when it is empty: data the
        calibration never saw, on which the per-layer quantization error is measured."""
        inputs = self.data.draw("val", count, self.seed)
        return None if inputs is None else self._by_name(inputs, self.input_names)

    def _by_name(self, x, names: list[str]) -> dict[str, np.ndarray]:
        if isinstance(x, dict):
            missing = sorted(set(names) - set(x))
            if missing:
                raise PipelineError(f"The dataset gives inputs {sorted(x)}; the model takes {names}.",
                                    "Name the dataset's inputs after the model's (dataset.inputs).")
            return {name: x[name].numpy().copy() for name in names}
        return {names[0]: x.numpy().copy()}  # copies: the caller's runtimes never change the split
