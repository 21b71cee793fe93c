"""Generated inputs that a third-party model source declares (``model=timm``, ``hf``, ``smp``).

``net`` is ``model.net``; its module (``models.hf``...) answers ``input_specs(**net)``: each input's
name as the library names it, shape, dtype and distribution. Token ids are drawn in [0, vocab_size);
an attention mask (``distribution: mask``) is 1 with up to ``padding`` of each row's tail 0 (the
first row unpadded), so that a conversion that ignores the mask shows in parity. No labels unless
``num_classes`` is set.
"""
import importlib

import numpy as np
import torch

from pipeline.datasets.base import InMemoryData, Splits
from pipeline.errors import PipelineError


def source_specs(net) -> dict:
    """``input_specs`` of the module of ``net._target_`` (models.timm.build -> models.timm)."""
    values = dict(net.items()) if hasattr(net, "items") else {}
    target = str(values.pop("_target_", ""))
    module_name = target.rpartition(".")[0]
    try:
        specs = importlib.import_module(module_name).input_specs
    except (ImportError, AttributeError, ValueError):
        raise PipelineError(f"dataset=model_inputs: model.net._target_={target or None} declares no inputs "
                            "(only model=timm, model=hf and model=smp do).",
                            "Use dataset=synthetic (dataset.shape=[...] or dataset.inputs={...}) for other "
                            "models.") from None
    return specs(**values)


class ModelInputs(InMemoryData):
    def __init__(self, net=None, padding: float = 0.25, samples: int = 128, num_classes: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        if not isinstance(samples, int) or samples < 1:
            raise PipelineError(f"dataset.samples={samples!r} is not a positive integer.",
                                "Set e.g. dataset.samples=128.")
        if not isinstance(padding, int | float) or not 0 <= padding < 1:
            raise PipelineError(f"dataset.padding={padding!r} is not a fraction in [0, 1).",
                                "Set e.g. dataset.padding=0.25 (up to a quarter of each row is padding).")
        self.specs = source_specs(net)
        self.padding, self.samples, self.num_classes = float(padding), samples, num_classes

    def load(self) -> Splits:
        rng = np.random.default_rng(self.seed)
        return Splits(train=self._split(rng), val=self._split(rng), test=self._split(rng))

    def _split(self, rng: np.random.Generator):
        x = {name: torch.from_numpy(self._draw(rng, spec)) for name, spec in self.specs.items()}
        if list(x) == ["input"]:  # one unnamed input: a tensor, as every single-input dataset gives it
            x = x["input"]
        y = None if self.num_classes is None else torch.from_numpy(rng.integers(0, self.num_classes, self.samples))
        return x, y

    def _draw(self, rng: np.random.Generator, spec: dict) -> np.ndarray:
        size = (self.samples, *spec["shape"])
        kind = spec.get("distribution", "normal")
        if kind == "integers":
            return rng.integers(int(spec["low"]), int(spec["high"]), size).astype(spec.get("dtype", "int64"))
        if kind == "mask":
            length = size[-1]
            padded = rng.integers(0, int(self.padding * length) + 1, self.samples)
            padded[0] = 0
            mask = (np.arange(length)[None, :] < (length - padded)[:, None])
            return np.broadcast_to(mask.reshape(self.samples, *([1] * (len(size) - 2)), length), size) \
                .astype(spec.get("dtype", "int64"))
        return rng.normal(0.0, 1.0, size).astype(spec.get("dtype", "float32"))
