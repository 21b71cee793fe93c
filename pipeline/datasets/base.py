"""What every dataset gives the stages, and the in-memory datasets (tensors prepared once, batched by index).

A dataset has a LightningDataModule's loaders and set-up (they train the network; the train stage hands
it to Lightning as one) and answers what the later stages ask without knowing how it stores its data
(``DatasetApi``): the first samples of a split, a
seeded random draw, the labels, and its ``DataSpec``: each raw input (shape, dtype, layout, value
range, columns, category ids), the task and the class names. A dataset whose values need scaling
learned from the training split (pixel mean/std, column statistics) returns that as a module
(``preprocessing``): it is put in front of ``model.net`` (``pipeline.preprocessing``), so that every
exported artifact takes the data as it is stored.
"""
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from pipeline.errors import PipelineError

Pair = tuple[torch.Tensor, torch.Tensor]
SPLITS = ("train", "val", "test")


@dataclass
class InputSpec:
    """One raw input of the exported model: what an app must feed it."""

    name: str
    shape: list[int]  # one sample, no batch axis
    dtype: str  # float32, int64, ...
    layout: str | None = None  # NCHW (images), NC (table rows), NCL/NTC (series)
    value_range: list[float] | None = None  # the raw values' range, e.g. [0, 255] for pixels
    columns: list[str] | None = None  # table features, in the order the input holds them
    categories: dict[str, list[str]] | None = None  # per categorical column: its values by id (0: unknown)


@dataclass
class DataSpec:
    """What a dataset declares: its raw inputs, its task and classes, and what model.net receives."""

    inputs: list[InputSpec]
    task: str | None = None  # classification | multi_label (0/1 per class) | regression | None (no labels)
    classes: list[str] | None = None  # class names by label id (classification)
    # One sample's shape as model.net receives it (after ``preprocessing``); None: the raw input's.
    model_input_shape: list[int] | None = None
    streaming: bool = False  # read from disk by the loaders' workers, not held in memory
    # Regression: one sample's target shape when it is more than one value ([3]: three values per sample).
    target_shape: list[int] | None = None

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes else None

    @property
    def net_input_shape(self) -> list[int] | None:
        if self.model_input_shape is not None:
            return list(self.model_input_shape)
        return list(self.inputs[0].shape) if len(self.inputs) == 1 else None

    def read_as(self, kind: str) -> "DataSpec":
        """The spec as ``model.output`` reads the targets. 0/1 per column ([N, C]) is a multi-label task for
        ``multi_label`` (and ``value``), but two classes per position for a single-label output (a binary mask
        per time step: logits [N, 2, T] on targets [N, T])."""
        if self.task != "multi_label" or kind in ("multi_label", "value"):
            return self
        return replace(self, task="classification", classes=["0", "1"])

    @property
    def target_width(self) -> int:
        """Values per sample a regressor returns: 1, or the product of ``target_shape``."""
        return int(np.prod(self.target_shape)) if self.target_shape else 1

    def as_report(self) -> dict:
        extra = {"target_shape": self.target_shape} if self.target_shape else {}
        return {"task": self.task, "classes": self.classes, "streaming": self.streaming,
                "model_input_shape": self.net_input_shape, **extra,
                "inputs": [{k: v for k, v in asdict(i).items() if v is not None} for i in self.inputs]}


def spec_of_tensors(x, y, labels: list[torch.Tensor] | None = None) -> DataSpec:
    """A DataSpec read off tensors (the datasets that declare nothing more); ``labels``: every split's
    targets, for the number of classes."""
    named = x.items() if isinstance(x, dict) else [("input", x)]
    inputs = [InputSpec(name, list(t.shape[1:]), str(t.dtype).replace("torch.", "")) for name, t in named]
    if y is None:
        return DataSpec(inputs)
    every = [t for t in labels or [y] if t is not None and len(t)]
    if y.dim() == 2 and y.shape[1] > 1 and all(bool(((t == 0) | (t == 1)).all()) for t in every):
        return DataSpec(inputs, task="multi_label", classes=[str(i) for i in range(y.shape[1])])  # 0/1 per class
    if torch.is_floating_point(y):
        shape = list(y.shape[1:])  # several values per sample: the network returns as many
        return DataSpec(inputs, task="regression", target_shape=shape if int(np.prod(shape)) > 1 else None)
    count = max((int(t.max()) + 1 for t in every), default=0)
    return DataSpec(inputs, task="classification", classes=[str(i) for i in range(count)])


def rows_of(x, index):
    """Rows ``index`` (a slice or an index tensor) of one input tensor or a dict of them."""
    return {n: t[index] for n, t in x.items()} if isinstance(x, dict) else x[index]


def length_of(x) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def seeded_rows(total: int, count: int, seed: int) -> torch.Tensor:
    """``count`` distinct row indices of ``total`` (sorted), drawn reproducibly from ``seed``."""
    rows = np.sort(np.random.default_rng(int(seed)).choice(total, min(int(count), total), replace=False))
    return torch.from_numpy(rows)


class DatasetApi:
    """What the stages ask of any dataset, however it stores its data (see the module docstring). Not a
    LightningDataModule itself, so that a run without training never imports Lightning (seconds)."""

    suggested_models: str | None = None  # the models made for it (model=...), for a network that does not fit

    # Maps scaled regression values back to the data's original units (None: identity).
    inverse: Callable[[np.ndarray], np.ndarray] | None = None

    # --- what Lightning's trainer asks (through pipeline.lit_module.DatasetModule) ---
    def prepare_data(self) -> None:
        """Downloads and other one-time work (Lightning calls it on one process only)."""

    def setup(self, stage: str | None = None) -> None:
        """Loads the splits; called again by the trainer, so it must be cheap after the first time."""

    def train_dataloader(self):
        raise NotImplementedError

    def val_dataloader(self):
        return []

    def test_dataloader(self):
        return []

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """A collated batch before it goes to the device (e.g. leaving out files that did not decode)."""
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """A batch on the device, before the training step sees it."""
        return batch

    def spec(self) -> DataSpec:
        raise NotImplementedError

    def preprocessing(self) -> torch.nn.Module | None:
        """Scaling learned from the training split, applied in the exported graph before model.net."""
        return None

    def size(self, split: str) -> int:
        raise NotImplementedError

    def head(self, split: str, count: int | None = None) -> Pair:
        """The first ``count`` samples of ``split`` (all when None) as tensors: inputs (a tensor, or a dict
        of them by input name) and targets (None without labels)."""
        raise NotImplementedError

    def draw(self, split: str, count: int, seed: int):
        """``count`` inputs of ``split`` drawn at random (reproducibly, from ``seed``), None when it is empty:
        a split stored in class or time order is represented as a whole."""
        raise NotImplementedError

    def targets(self, split: str) -> torch.Tensor | None:
        """Every label of ``split`` (None without labels)."""
        return self.head(split)[1]

    def files(self) -> list[Path]:
        """Files read to build the data: their sha256 goes into report.json."""
        return []

    def report(self) -> dict:
        """What report.json records of the data beyond its spec (e.g. files skipped as corrupt)."""
        return {}


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


class TensorRows(Dataset):
    """Rows of an input tensor (or a dict of named ones) and their targets, indexed a batch at a time."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return length_of(self.x)

    def __getitem__(self, index):
        return rows_of(self.x, index), self.y[index]


def index_batches(pair: Pair, batch_size: int, shuffle: bool) -> DataLoader:
    """A DataLoader that slices whole batches out of tensors (one index op per batch). Shuffled (training), a
    last batch of one sample is left out (``lone_last_sample``)."""
    dataset = TensorRows(*pair)
    order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    drop = shuffle and lone_last_sample(len(dataset), batch_size)
    return DataLoader(dataset, batch_size=None, sampler=BatchSampler(order, batch_size, drop_last=drop))


def lone_last_sample(total: int, batch_size: int) -> bool:
    """Whether training batches of ``batch_size`` end in a batch of one sample, on which BatchNorm cannot train
    ("Expected more than 1 value per channel"): such a batch is left out. The order is shuffled every epoch,
    so it is another sample each time; a split of one sample is left to the pre-flight check."""
    return total > batch_size and total % batch_size == 1


class InMemoryData(DatasetApi):
    """Base of the datasets held in memory as tensors: subclasses implement ``load() -> Splits``."""

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

    @property
    def inverse(self):  # noqa: D102 - DatasetApi.inverse, known once the splits are loaded
        return self.splits.inverse

    def spec(self) -> DataSpec:
        x, y = self.splits.train if self.size("train") else self.splits.test
        return spec_of_tensors(x, y, [getattr(self.splits, split)[1] for split in SPLITS])

    def size(self, split: str) -> int:
        return length_of(getattr(self.splits, split)[0])

    def head(self, split: str, count: int | None = None) -> Pair:
        x, y = getattr(self.splits, split)
        index = slice(None, count)
        return rows_of(x, index), None if y is None else y[index]

    def draw(self, split: str, count: int, seed: int):
        x = getattr(self.splits, split)[0]
        total = length_of(x)
        return rows_of(x, seeded_rows(total, count, seed)) if total else None

    def files(self) -> list[Path]:
        return list(self.splits.files)

    def train_dataloader(self) -> DataLoader:
        return index_batches(self.splits.train, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return index_batches(self.splits.val, self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return index_batches(self.splits.test, self.batch_size, shuffle=False)
