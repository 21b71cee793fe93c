"""A small UNet: two down blocks, a bottleneck, up by ConvTranspose2d and by Upsample, skip concats.

Input [N, C, H, W] (H, W divisible by 4), output [N, classes, H, W]: per-pixel class logits.
"""
import torch
from torch import nn

from models.warmup import warm_up_batchnorm


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallUNet(nn.Module):
    def __init__(self, in_channels: int = 3, classes: int = 4, width: int = 8, size: int = 64,
                 bn_warmup_batches: int = 4):
        super().__init__()
        self.down1, self.down2 = _block(in_channels, width), _block(width, 2 * width)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = _block(4 * width, 2 * width)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = _block(2 * width + width, width)
        self.head = nn.Conv2d(width, classes, 1)
        warm_up_batchnorm(self, (in_channels, size, size), batches=bn_warmup_batches)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(self.pool(d1))
        b = self.bottleneck(self.pool(d2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], dim=1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], dim=1))
        return self.head(u1)
