"""A small nn.TransformerEncoder classifier over a sequence [N, T, F]: project, encode, mean-pool, classify."""
import torch
from torch import nn


class TransformerClassifier(nn.Module):
    def __init__(self, n_features: int = 1, d_model: int = 32, nhead: int = 4, num_layers: int = 2,
                 dim_feedforward: int = 64, num_classes: int = 2, length: int = 24):
        super().__init__()
        self.project = nn.Linear(n_features, d_model)
        self.position = nn.Parameter(torch.randn(1, length, d_model) * 0.1)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0.1, activation="gelu",
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.project(x) + self.position)
        return self.head(self.norm(h).mean(dim=1))
