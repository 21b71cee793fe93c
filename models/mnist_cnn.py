"""Seed 000: the MNIST CNN from the PyTorch-to-ONNX tutorial (431,080 parameters on 28x28 digits)."""
import torch
import torch.nn.functional as F
from torch import nn


class MnistCNN(nn.Module):
    """conv C->20 k5, pool, conv 20->50 k5, pool, fc ->500, fc 500->classes, log_softmax.

    ``input_shape`` ([C, H, W], 1x28x28 for MNIST) and ``num_classes`` follow the dataset unless set."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"MnistCNN takes images [C, H, W], not samples of shape {list(input_shape)}")
        channels, height, width = (int(v) for v in input_shape)
        self.conv1 = nn.Conv2d(channels, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(_pooled(height) * _pooled(width) * 50, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)


def _pooled(size: int) -> int:
    """A side after conv k5, pool 2, conv k5, pool 2 (28 -> 4)."""
    side = ((size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"MnistCNN needs images of at least 16x16 pixels, got a side of {size}")
    return side
