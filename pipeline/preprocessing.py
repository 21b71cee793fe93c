"""Preprocessing learned from the training split, as modules that sit in front of ``model.net``.

The network that is trained, exported and compared is model.net with the preprocessing attached
(``attach``: a child module run by a forward pre-hook): every artifact
(ONNX, Keras, SavedModel, TFLite) then takes the data as it is stored (pixels in [0, 255], raw table
columns, category ids), and parity feeds all of them the raw values, proving the whole path. An app
cannot forget a normalisation that lives in the graph. The statistics are non-persistent buffers:
``model.pt`` stays the user's network's own state_dict, and the dataset computes them again.
"""
import torch
from torch import nn

# The attribute of model.net that holds the preprocessing (its ops are named after it in model.onnx).
ATTRIBUTE = "pipeline_preprocessing"


def attach(net: nn.Module, pre: nn.Module | None) -> nn.Module:
    """``net`` taking the dataset's raw inputs: ``pre`` becomes a child module (non-persistent buffers: the
    state_dict is unchanged) run by a forward pre-hook, so that every name in the network, its weights
    file and its exported graph stays the network's own, and training, export and parity all see it."""
    if pre is not None:
        net.add_module(ATTRIBUTE, pre)
        net.register_forward_pre_hook(_preprocess, with_kwargs=True)
    return net


def _preprocess(net: nn.Module, args: tuple, kwargs: dict):
    """The hook: raw inputs (positional, or named in the dataset's input order) -> what model.net takes.
    A module-level function, so that the network still pickles (DDP's spawned workers)."""
    x = getattr(net, ATTRIBUTE)(*args, *kwargs.values())
    return ((), x) if isinstance(x, dict) else ((x,), {})


class ImageScaling(nn.Module):
    """Pixels in [0, 255] -> (x / 255 - mean) / std per channel, one multiply-add in the graph."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        mean_t = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)
        self.mean, self.std = list(mean), list(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift

    def describe(self) -> dict:
        return {"kind": "image_scaling", "formula": "(x / 255 - mean) / std", "mean": self.mean, "std": self.std}


class TableEncoding(nn.Module):
    """Numeric columns standardised with the training split's mean/std; categorical ids one-hot encoded
    (id 0, the unknown value, encodes as zeros). Returns one float feature row per sample."""

    def __init__(self, mean: list[float], std: list[float], cardinalities: list[int]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32), persistent=False)
        # One-hot as a comparison with each column's ids 1..K: Equal + Cast, which every converter and
        # TFLite kernel set has (OneHot is not), and ids outside 1..K (unknown) match nothing.
        self.cardinalities = list(cardinalities)
        for i, count in enumerate(self.cardinalities):
            self.register_buffer(f"ids_{i}", torch.arange(1, count + 1, dtype=torch.int64), persistent=False)
        self.has_numeric = len(mean) > 0

    @property
    def width(self) -> int:
        return int(self.mean.numel()) + sum(self.cardinalities)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.has_numeric:
            parts.append((inputs[0] - self.mean) * self.inv_std)
        if self.cardinalities:
            ids = inputs[-1]
            for i in range(len(self.cardinalities)):
                column = ids[:, i : i + 1]
                parts.append((column == getattr(self, f"ids_{i}")).to(torch.float32))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def describe(self) -> dict:
        return {"kind": "table_encoding",
                "formula": "numeric: (x - mean) / std; categorical: one-hot of ids 1..K (0 = unknown: zeros)",
                "mean": [float(v) for v in self.mean], "std": [float(1 / v) for v in self.inv_std],
                "cardinalities": self.cardinalities}
