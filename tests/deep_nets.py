"""Deep networks whose float32 round-off exceeds parity.atol=1e-5: the noise floor's test models
(``model.net._target_=tests.deep_nets.DeepConvBN``)."""
import numpy as np
import torch
from torch import nn

from models.warmup import warm_up_batchnorm


class DeepConvBN(nn.Module):
    """``depth`` conv-bn-relu blocks with weights ``gain`` times the variance-preserving scale and BatchNorm
    statistics warmed up on random inputs (not the trivial 0/1): activations grow through the stack, and
    so does float32's round-off (about 4.5e-4 on a per-pixel output of scale 70 at the defaults). Seeded:
    the same weights every time."""

    def __init__(self, in_channels: int = 1, input_shape=(1, 16, 16), depth: int = 32, channels: int = 8,
                 gain: float = 1.8, out_channels: int = 4, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        for _ in range(depth):
            conv = nn.Conv2d(channels, channels, 3, padding=1)
            layers += [conv, nn.BatchNorm2d(channels), nn.ReLU()]
        layers.append(nn.Conv2d(channels, out_channels, 1))  # per pixel: values near 0 beside large ones
        self.body = nn.Sequential(*layers)
        with torch.no_grad():
            for module in self.body:
                if isinstance(module, nn.Conv2d):
                    fan_in = module.weight[0].numel()
                    module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * gain / np.sqrt(fan_in))
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
        torch.manual_seed(seed)  # warm_up_batchnorm is seeded itself; this keeps any other draw fixed
        warm_up_batchnorm(self, tuple(input_shape))
        self.eval()

    def forward(self, x):
        return self.body(x)


def timm_model(name: str = "dla34", in_channels: int = 3, num_classes: int = 10, input_shape=(3, 32, 32),
               bn_warmup_batches: int = 4) -> nn.Module:
    """A timm model by name with random weights and warmed-up BatchNorm statistics (no download)."""
    import timm

    net = timm.create_model(name, pretrained=False, in_chans=in_channels, num_classes=num_classes)
    return warm_up_batchnorm(net, tuple(input_shape), batches=bn_warmup_batches).eval()


def smp_model(arch: str = "FPN", encoder_name: str = "resnet18", in_channels: int = 3, classes: int = 2,
              input_shape=(3, 64, 64), bn_warmup_batches: int = 4) -> nn.Module:
    """A segmentation_models_pytorch model (``FPN``, ``UPerNet``, ...) with random weights (no download)."""
    import segmentation_models_pytorch as smp

    net = getattr(smp, arch)(encoder_name=encoder_name, encoder_weights=None, in_channels=in_channels,
                             classes=classes)
    return warm_up_batchnorm(net, tuple(input_shape), batches=bn_warmup_batches).eval()
