"""nn.MultiheadAttention used the classic way (sequence first, [T, N, E] inside), with a residual and LayerNorm."""
import torch
from torch import nn


class AttentionClassifier(nn.Module):
    def __init__(self, n_features: int = 1, embed_dim: int = 32, num_heads: int = 4, num_classes: int = 2):
        super().__init__()
        self.embed = nn.Linear(n_features, embed_dim)
        self.attention = nn.MultiheadAttention(embed_dim, num_heads)  # batch_first=False: [T, N, E]
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).transpose(0, 1)  # [N, T, E] -> [T, N, E]
        attended, _ = self.attention(h, h, h, need_weights=False)
        h = self.norm(h + attended)
        return self.head(h.max(dim=0).values)
