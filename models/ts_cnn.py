"""Seed 001: a 1-D CNN over 24 hourly power-demand values, input [N, 1, 24], two class logits."""
import torch
import torch.nn.functional as F
from torch import nn


class TimeSeriesCNN(nn.Module):
    def __init__(self, length: int = 24, channels: tuple[int, int] = (16, 32), hidden: int = 64,
                 num_classes: int = 2):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels[0], kernel_size=3)
        self.conv2 = nn.Conv1d(channels[0], channels[1], kernel_size=3)
        pooled = ((length - 2) // 2 - 2) // 2
        self.fc1 = nn.Linear(channels[1] * pooled, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool1d(F.relu(self.conv1(x)), 2)
        x = F.max_pool1d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))
