"""A bidirectional LSTM classifier: input [N, T, F] (batch first), logits from the mean over time."""
import torch
from torch import nn


class BiLSTMClassifier(nn.Module):
    def __init__(self, n_features: int = 1, hidden_size: int = 24, num_layers: int = 1, num_classes: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden_size, num_layers=num_layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out.mean(dim=1))
