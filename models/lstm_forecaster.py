"""Seed 004: an LSTM next-value forecaster, input [N, window, 1] (batch first), output [N, 1]."""
import torch
from torch import nn


class LSTMForecaster(nn.Module):
    def __init__(self, n_features: int = 1, hidden_size: int = 32, num_layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden_size, num_layers=num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])
