"""UCR ItalyPowerDemand (seed 001): 24 hourly values per day, 2 classes; bundled in aeon (offline)."""
from pathlib import Path

import numpy as np
import torch

from pipeline.datasets.base import InMemoryData, Splits, split_off


class ItalyPowerData(InMemoryData):
    suggested_models = "ts_cnn"  # the models made for it (conf/model)

    NAME = "ItalyPowerDemand"

    def load(self) -> Splits:
        from aeon.datasets import load_classification

        x_train, y_train = load_classification(self.NAME, split="train")
        x_test, y_test = load_classification(self.NAME, split="test")
        classes = np.unique(y_train)  # labels '1'/'2' -> 0/1

        def pair(x, y):
            return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(np.searchsorted(classes, y))

        train, val = split_off(pair(x_train, y_train), self.val_fraction, self.seed)
        return Splits(train=train, val=val, test=pair(x_test, y_test), files=self._files())

    def _files(self) -> list[Path]:
        import aeon.datasets

        folder = Path(aeon.datasets.__file__).parent / "data" / self.NAME
        return sorted(folder.glob("*.ts"))
