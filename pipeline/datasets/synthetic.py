"""Generated inputs of a configured shape, for checking a model's conversion without a dataset.

``shape`` is one sample's shape (no batch axis); ``inputs`` instead names several inputs, each with
its own ``shape`` (and optionally ``distribution``, ``dtype``...). Values are drawn from
``distribution``: ``normal`` (``mean``, ``std``), ``uniform`` (``low``, ``high``) or ``integers``
(token ids in [``low``, ``high``)). No labels unless ``num_classes`` is set (then random ones: enough
to exercise training, not to learn anything).
"""
import numpy as np
import torch

from pipeline.datasets.base import InMemoryData, Splits
from pipeline.errors import PipelineError

DISTRIBUTIONS = ("normal", "uniform", "integers")
SPEC_KEYS = ("shape", "distribution", "mean", "std", "low", "high", "dtype")
MAX_BYTES = 64 * 2**30  # generated inputs beyond this are a typo in a shape, not a plan


class SyntheticData(InMemoryData):
    def __init__(self, shape=(3, 64, 64), inputs: dict | None = None, distribution: str = "normal",
                 mean: float = 0.0, std: float = 1.0, low: float = 0.0, high: float = 1.0, samples: int = 256,
                 num_classes: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.defaults = {"distribution": distribution, "mean": mean, "std": std, "low": low, "high": high}
        if inputs is not None and (not isinstance(inputs, dict) or not inputs):
            raise PipelineError(f"dataset.inputs={inputs!r} is not a mapping of input names to their specs.",
                                "Give e.g. dataset.inputs={image: {shape: [3,64,64]}}, or null for one input "
                                "of dataset.shape.")
        self.specs = {}
        for name, spec in (inputs or {"input": shape}).items():
            if isinstance(spec, list | tuple):  # a shape alone
                spec = {"shape": spec}
            if not isinstance(spec, dict):  # dataset.shape=5, dataset.inputs={a: 5}
                raise PipelineError(f"dataset.inputs.{name}={spec!r} is not an input spec.",
                                    f"Give e.g. dataset.inputs.{name}={{shape: [3,64,64]}} (and optionally "
                                    "distribution, mean, std, low, high).")
            self.specs[str(name)] = dict(spec)
        self.multiple = inputs is not None
        if not isinstance(samples, int) or samples < 1:
            raise PipelineError(f"dataset.samples={samples!r} is not a positive integer.",
                                "Set e.g. dataset.samples=256.")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise PipelineError(f"dataset.num_classes={num_classes!r} is not a positive integer.",
                                "Set dataset.num_classes=N for random labels, or null for none.")
        self.samples, self.num_classes = samples, num_classes
        for name, spec in self.specs.items():
            self._check(name, spec)

    def _check(self, name: str, spec: dict) -> None:
        key = "dataset" if not self.multiple else f"dataset.inputs.{name}"
        unknown = sorted(str(k) for k in spec if k not in SPEC_KEYS)
        if unknown:  # a typo (distrib: uniform) would be ignored and the default drawn
            raise PipelineError(f"dataset input {name!r}: unknown key(s) {', '.join(unknown)} in {key}.",
                                f"An input spec takes: {', '.join(SPEC_KEYS)}.")
        shape = spec.get("shape")
        if not isinstance(shape, list | tuple) or not shape or \
                not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise PipelineError(f"dataset input {name!r}: shape={shape!r} is not a list of positive integers.",
                                "Give one sample's shape without the batch axis, e.g. dataset.shape=[3,64,64].")
        distribution = spec.get("distribution", self.defaults["distribution"])
        if distribution not in DISTRIBUTIONS:
            raise PipelineError(f"dataset input {name!r}: distribution={distribution!r} is not known.",
                                f"Use one of: {', '.join(DISTRIBUTIONS)}.")
        options = {**self.defaults, **spec}
        for field in ("mean", "std", "low", "high"):
            if not isinstance(options[field], int | float) or isinstance(options[field], bool) \
                    or not np.isfinite(options[field]):
                raise PipelineError(f"{key}.{field}={options[field]!r} is not a finite number.",
                                    f"Set {key}.{field} to a number.")
        if "dtype" in spec:
            try:
                dtype = None if spec["dtype"] is None else np.dtype(spec["dtype"])
            except TypeError:
                dtype = None
            if dtype is None or dtype.kind not in "iuf":
                raise PipelineError(f"{key}.dtype={spec['dtype']!r} is not a numeric NumPy dtype.",
                                    f"Set {key}.dtype to e.g. float32 (the default for normal/uniform) or int64 "
                                    "(the default for integers), or drop it.")
        low, high = options["low"], options["high"]
        if distribution == "integers" and int(low) >= int(high):
            raise PipelineError(f"{key}: low={low} and high={high} leave no integer to draw (ids are drawn from "
                                "[low, high)).", f"Set {key}.high above {key}.low, e.g. low=0 high=1000.")
        if distribution == "uniform" and low > high:
            raise PipelineError(f"{key}: low={low} is above high={high}.", f"Set {key}.low <= {key}.high.")
        if distribution == "normal" and options["std"] < 0:
            raise PipelineError(f"{key}.std={options['std']} is negative.", f"Set {key}.std >= 0.")
        # Three splits of `samples` each are held in memory (float64 while drawn).
        needed = 3 * self.samples * int(np.prod(shape, dtype=object)) * 8
        if needed > MAX_BYTES:
            raise PipelineError(f"{key}: {self.samples} samples of shape {list(shape)} need about "
                                f"{needed / 2**30:,.0f} GiB in memory (three splits).",
                                f"Lower dataset.samples or the shape (at most {MAX_BYTES // 2**30} GiB).")

    def load(self) -> Splits:
        rng = np.random.default_rng(self.seed)
        return Splits(train=self._split(rng), val=self._split(rng), test=self._split(rng))

    def _split(self, rng: np.random.Generator):
        arrays = {name: torch.from_numpy(self._draw(rng, spec)) for name, spec in self.specs.items()}
        x = arrays if self.multiple else arrays["input"]
        y = None if self.num_classes is None else torch.from_numpy(rng.integers(0, self.num_classes, self.samples))
        return x, y

    def _draw(self, rng: np.random.Generator, spec: dict) -> np.ndarray:
        options = {**self.defaults, **spec}
        size = (self.samples, *options["shape"])
        if options["distribution"] == "integers":
            return rng.integers(int(options["low"]), int(options["high"]), size).astype(options.get("dtype", "int64"))
        if options["distribution"] == "uniform":
            values = rng.uniform(options["low"], options["high"], size)
        else:
            values = rng.normal(options["mean"], options["std"], size)
        return values.astype(options.get("dtype", "float32"))
