"""Seed 003: the MNIST MLP converted to Keras (784 -> 128 sigmoid -> 10 logits, 101,770 parameters)."""
import math

import torch
from torch import nn


class MnistMLP(nn.Module):
    """``input_shape`` (1x28x28 for MNIST) and ``num_classes`` follow the dataset unless set."""

    def __init__(self, hidden: int = 128, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28)):
        super().__init__()
        self.flatten = nn.Flatten()  # the seed flattened outside; inside, the model takes images
        self.hidden = nn.Linear(math.prod(int(v) for v in input_shape), hidden)
        self.output = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.sigmoid(self.hidden(self.flatten(x))))
