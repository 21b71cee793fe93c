"""A GRU sequence classifier: input [N, T, F] (batch first), class logits from the last step."""
import torch
from torch import nn


class GRUClassifier(nn.Module):
    def __init__(self, n_features: int = 1, hidden_size: int = 32, num_layers: int = 2, num_classes: int = 2):
        super().__init__()
        self.gru = nn.GRU(n_features, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])
