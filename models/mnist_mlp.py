"""Seed 003: the MNIST MLP converted to Keras (784 -> 128 sigmoid -> 10 logits, 101,770 parameters)."""
import torch
from torch import nn


class MnistMLP(nn.Module):
    def __init__(self, hidden: int = 128, num_classes: int = 10):
        super().__init__()
        self.flatten = nn.Flatten()  # the seed flattened outside; inside, the model takes images
        self.hidden = nn.Linear(28 * 28, hidden)
        self.output = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.sigmoid(self.hidden(self.flatten(x))))
