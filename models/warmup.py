"""Give a randomly initialised network non-trivial BatchNorm statistics.

A fresh BatchNorm has running mean 0 and variance 1, which makes folding it into a convolution an
identity and hides conversion errors. A few train-mode forward passes on random inputs move them.
"""
import torch
from torch import nn

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def warm_up_batchnorm(net: nn.Module, input_shape, batches: int = 4, batch_size: int = 8, seed: int = 0) -> nn.Module:
    norms = [m for m in net.modules() if isinstance(m, _NORMS)]
    if not norms or batches <= 0:
        return net
    generator = torch.Generator().manual_seed(seed)
    was_training = net.training
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            net(torch.randn(batch_size, *input_shape, generator=generator) * 2 + 0.5)
    return net.train(was_training)


def untrivialise_parameters(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random-weight libraries start some layers at zero or near it: a classifier head (ViT's), the last
    norm scale of a residual branch (timm's ``zero_init_last``), LayerScale gammas (1e-6). Their outputs
    would be constant or the branch an identity, which compares trivially: give them ordinary values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if parameter.dim() >= 2 and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
            elif parameter.dim() == 1 and name.rsplit(".", 1)[-1] in ("weight", "gamma", "scale") \
                    and parameter.numel() and float(parameter.abs().max()) < 1e-4:
                parameter.copy_(torch.rand(parameter.shape, generator=generator) + 0.5)
    return net
