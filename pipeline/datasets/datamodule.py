"""A LightningDataModule of the user's own, read through its loaders.

``dataset=datamodule dataset._target_=my_pkg.MyDataModule +dataset.<argument>=...``: training uses the
module's own loaders; parity, calibration and the diagnosis draw their samples from its test loader
(else its val loader), the int8 calibration from its train loader. Batches are ``(inputs, targets)``
(inputs a tensor or a dict of named tensors) or ``inputs`` alone. Class names come from a ``classes``
attribute (a list) when the module has one, else labels 0..K-1.
"""
from collections.abc import Iterator

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException

from pipeline.datasets.base import DatasetApi, DataSpec, Pair, length_of, rows_of, seeded_rows, spec_of_tensors
from pipeline.errors import PipelineError

LOADERS = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader"}
# Samples read from a loader into memory for one question (parity, calibration): beyond this, parity.samples
# or export.calibration_samples must say how many.
MAX_HELD = 50_000


def as_dataset(built) -> DatasetApi:
    """``built`` as a dataset the stages can ask (ours are already; the run context checks that first, so
    that Lightning is imported only for a LightningDataModule of the user's, which imported it anyway)."""
    if isinstance(built, DatasetApi):
        return built
    if isinstance(built, pl.LightningDataModule):
        return UserDataModule(built)
    raise PipelineError(f"dataset._target_ built a {type(built).__module__}.{type(built).__qualname__}, which is "
                        "not a LightningDataModule.",
                        "Point dataset._target_ at a pytorch_lightning.LightningDataModule subclass (dataset="
                        "datamodule), or pick a built-in dataset: mnist, image_folder, table, arrays, series, ...")


class UserDataModule(DatasetApi):
    def __init__(self, module: pl.LightningDataModule):
        super().__init__()
        self.module = module
        self.name = f"{type(module).__module__}.{type(module).__qualname__}"
        self._held: dict[str, Pair] = {}
        self._ready = False

    # --- Lightning: the module's own loaders ---
    def prepare_data(self) -> None:
        self.module.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if not self._ready:
            self.module.prepare_data()
            self.module.setup("fit")
            self._ready = True

    def train_dataloader(self):
        return self.module.train_dataloader()

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return self.module.on_before_batch_transfer(batch, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return self.module.on_after_batch_transfer(batch, dataloader_idx)

    def val_dataloader(self):
        return self._loader("val") or []

    def test_dataloader(self):
        return self._loader("test") or []

    # --- what the stages ask ---
    def spec(self) -> DataSpec:
        x, y = self.head(self._held_out_split())
        spec = spec_of_tensors(x, y)
        classes = getattr(self.module, "classes", None)
        if spec.task in ("classification", "multi_label") and isinstance(classes, list | tuple) and classes:
            spec.classes = [str(c) for c in classes]
        return spec

    def size(self, split: str) -> int:
        split = self._held_out_split() if split == "test" else split
        loader = self._loader(split)
        if loader is None:
            return 0
        try:
            return len(loader.dataset)
        except (AttributeError, TypeError):  # an IterableDataset: count what it gives
            return length_of(self.head(split)[0])

    def head(self, split: str, count: int | None = None) -> Pair:
        split = self._held_out_split() if split == "test" else split
        if split not in self._held:
            self._held[split] = self._read(split)
        x, y = self._held[split]
        index = slice(None, count)
        return rows_of(x, index), None if y is None else y[index]

    def targets(self, split: str):
        split = self._held_out_split() if split == "test" else split
        return None if self._loader(split) is None else self.head(split)[1]

    def draw(self, split: str, count: int, seed: int):
        if self._loader(split) is None:
            return None
        x = self.head(split)[0]
        total = length_of(x)
        return rows_of(x, seeded_rows(total, count, seed)) if total else None

    def _held_out_split(self) -> str:
        if self._loader("test") is not None:
            return "test"
        if self._loader("val") is not None:
            return "val"
        raise PipelineError(f"dataset._target_={self.name} has neither a test_dataloader nor a val_dataloader: "
                            "parity has no held-out data to compare the runtimes on.",
                            "Give the DataModule a test_dataloader() (or val_dataloader()) over held-out data.")

    def _loader(self, split: str):
        self.setup()
        if split == "test" and not getattr(self, "_test_set_up", False):
            self._test_set_up = True
            self.module.setup("test")
        try:
            loader = getattr(self.module, LOADERS[split])()
        except (NotImplementedError, AttributeError, MisconfigurationException):  # the module has no such loader
            return None
        return loader if loader else None

    def _read(self, split: str) -> Pair:
        """The split's samples through its loader, as tensors (at most MAX_HELD)."""
        inputs, targets = [], []
        for batch in self._batches(split):
            x, y = self._unpack(batch)
            inputs.append(x)
            targets.append(y)
            if sum(length_of(i) for i in inputs) >= MAX_HELD:
                break
        if not inputs:
            raise PipelineError(f"dataset._target_={self.name}'s {split} loader gives no batches.",
                                f"Give the DataModule's {LOADERS[split]}() some data.")
        x = ({n: torch.cat([i[n] for i in inputs]) for n in inputs[0]} if isinstance(inputs[0], dict)
             else torch.cat(inputs))
        y = None if targets[0] is None else torch.cat(targets)
        return x, y

    def _batches(self, split: str) -> Iterator:
        loader = self._loader(split)
        return iter(loader) if loader is not None else iter(())

    def _unpack(self, batch) -> Pair:
        if isinstance(batch, list | tuple) and len(batch) == 2:
            x, y = batch
        elif isinstance(batch, torch.Tensor | dict):
            x, y = batch, None
        else:
            raise PipelineError(f"dataset._target_={self.name} gives batches of {type(batch).__name__} "
                                f"({len(batch) if hasattr(batch, '__len__') else '?'} items); the pipeline reads "
                                "(inputs, targets) pairs or inputs alone.",
                                "Make the loaders yield (x, y) with x a tensor (or a dict of named tensors).")
        if not (isinstance(x, torch.Tensor) or (isinstance(x, dict) and all(
                isinstance(t, torch.Tensor) for t in x.values()))):
            raise PipelineError(f"dataset._target_={self.name} gives inputs of type {type(x).__name__}.",
                                "Make the loaders yield tensors (or a dict of named tensors) as inputs.")
        return x, y
