"""In-memory datasets: tensors prepared once, batched by index (no per-sample transforms)."""
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from pipeline.errors import PipelineError

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Splits:
    train: Pair
    val: Pair
    test: Pair
    # Maps scaled regression values back to the data's original units (None: identity).
    inverse: Callable[[np.ndarray], np.ndarray] | None = None
    # Files read to build the splits: their sha256 goes into report.json.
    files: list[Path] = field(default_factory=list)


def split_off(pair: Pair, fraction: float, seed: int) -> tuple[Pair, Pair]:
    """Randomly split ``fraction`` of ``pair`` off (a validation set from train)."""
    x, y = pair
    count = int(round(len(x) * fraction))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    keep, held = order[count:], order[:count]
    return (x[keep], y[keep]), (x[held], y[held])


def index_batches(pair: Pair, batch_size: int, shuffle: bool) -> DataLoader:
    """A DataLoader that slices whole batches out of tensors (one index op per batch)."""
    dataset = TensorDataset(*pair)
    order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=None, sampler=BatchSampler(order, batch_size, drop_last=False))


class InMemoryData(pl.LightningDataModule):
    """Base for every dataset: subclasses implement ``load() -> Splits``."""

    def __init__(self, batch_size: int = 128, val_fraction: float = 0.1, seed: int = 0):
        super().__init__()
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise PipelineError(f"dataset.batch_size={batch_size!r} is not a positive integer.",
                                "Set e.g. dataset.batch_size=128.")
        if not isinstance(val_fraction, int | float) or not 0 <= val_fraction < 1:
            raise PipelineError(f"dataset.val_fraction={val_fraction!r} is not a number in [0, 1).",
                                "Set e.g. dataset.val_fraction=0.1.")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self._splits: Splits | None = None

    def load(self) -> Splits:
        raise NotImplementedError

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = self.load()
        return self._splits

    def setup(self, stage: str | None = None) -> None:
        self.splits  # noqa: B018 - loads once, before the loaders are asked for

    def train_dataloader(self) -> DataLoader:
        return index_batches(self.splits.train, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return index_batches(self.splits.val, self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return index_batches(self.splits.test, self.batch_size, shuffle=False)
