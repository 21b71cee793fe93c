"""Conv1d + BatchNorm1d + ReLU blocks over [N, C, L], global average pool, class logits."""
import torch
from torch import nn

from models.warmup import warm_up_batchnorm


class Conv1dBN(nn.Module):
    def __init__(self, in_channels: int = 1, channels: tuple[int, ...] = (16, 32), num_classes: int = 2,
                 length: int = 24, bn_warmup_batches: int = 4):
        super().__init__()
        layers, width = [], in_channels
        for size in channels:
            layers += [nn.Conv1d(width, size, kernel_size=5, padding=2), nn.BatchNorm1d(size), nn.ReLU(),
                       nn.MaxPool1d(2, ceil_mode=True)]
            width = size
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        warm_up_batchnorm(self, (in_channels, length), batches=bn_warmup_batches)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=2))
