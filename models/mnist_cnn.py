"""Seed 000: the MNIST CNN from the PyTorch-to-ONNX tutorial (431,080 parameters)."""
import torch
import torch.nn.functional as F
from torch import nn


class MnistCNN(nn.Module):
    """conv 1->20 k5, pool, conv 20->50 k5, pool, fc 800->500, fc 500->10, log_softmax."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)
