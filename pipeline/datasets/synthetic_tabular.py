"""Simulated tabular binary classification (seed 002), generated deterministically from the seed."""
import numpy as np
import torch

from pipeline.datasets.base import InMemoryData, Splits
from pipeline.errors import PipelineError


class SyntheticTabularData(InMemoryData):
    suggested_models = "tabular_mlp"  # the models made for it (conf/model)

    def __init__(self, samples: int = 4000, features: int = 20, informative: int = 10, noise: float = 0.5,
                 test_fraction: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        if not 1 <= informative <= features:
            raise PipelineError(f"dataset.informative={informative} must be between 1 and dataset.features={features}.",
                                "Lower dataset.informative or raise dataset.features.")
        self.samples, self.features, self.informative = samples, features, informative
        self.noise, self.test_fraction = noise, test_fraction

    def load(self) -> Splits:
        x, y = self._generate(np.random.default_rng(self.seed))
        n_test = int(round(self.samples * self.test_fraction))
        n_val = int(round(self.samples * self.val_fraction))
        train = slice(n_test + n_val, None)
        mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-8  # fitted on train only
        x = ((x - mean) / std).astype(np.float32)

        def pair(rows):
            return torch.from_numpy(x[rows]), torch.from_numpy(y[rows])

        return Splits(train=pair(train), val=pair(slice(n_test, n_test + n_val)), test=pair(slice(0, n_test)))

    def _generate(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A linear signal on the informative features plus an interaction, with label noise."""
        x = rng.normal(size=(self.samples, self.features))
        weights = np.zeros(self.features)
        weights[: self.informative] = rng.normal(size=self.informative)
        score = x @ weights + 0.5 * x[:, 0] * x[:, 1] + self.noise * rng.normal(size=self.samples)
        return x, (score > 0).astype(np.int64)
