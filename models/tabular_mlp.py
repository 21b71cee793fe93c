"""Seed 002: an MLP on simulated tabular data (20 -> [50, 50] ReLU -> 1 sigmoid, 3,651 parameters)."""
import torch
from torch import nn


class TabularMLP(nn.Module):
    def __init__(self, in_features: int = 20, hidden: tuple[int, ...] = (50, 50)):
        super().__init__()
        layers, width = [], in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers += [nn.Linear(width, 1), nn.Sigmoid()]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
