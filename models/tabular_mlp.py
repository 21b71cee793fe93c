"""Seed 002: an MLP on tabular data (20 -> [50, 50] ReLU -> 1 sigmoid, 3,651 parameters on the seed's data).

``in_features`` follows the dataset (the width model.net receives, categories one-hot encoded) unless set.
``num_classes`` null: one sigmoid probability (model.output=probability); N: N raw scores
(model.output=logits, for a table of N classes; 1 for a regression, model.output=value).
"""
import torch
from torch import nn


class TabularMLP(nn.Module):
    def __init__(self, in_features: int = 20, hidden: tuple[int, ...] = (50, 50), num_classes: int | None = None):
        super().__init__()
        layers, width = [], in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers += [nn.Linear(width, 1), nn.Sigmoid()] if num_classes is None else [nn.Linear(width, num_classes)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
