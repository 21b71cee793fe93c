"""Any torchvision model by name, with random weights (pretrained ones need the internet).

``arch`` is a function of ``torchvision.models`` (``resnet18``, ``mobilenet_v3_small``, ``vit_b_16``...);
other keyword arguments go to it (``image_size`` for ViT). BatchNorm statistics are warmed up on
random inputs of ``input_shape`` so that they are not the trivial 0/1.
"""
import inspect

from torch import nn

from models.warmup import warm_up_batchnorm


def build(arch: str, num_classes: int = 10, input_shape=(3, 64, 64), bn_warmup_batches: int = 4,
          **kwargs) -> nn.Module:
    import torchvision

    try:
        factory = torchvision.models.get_model_builder(arch)
    except ValueError as exc:
        available = ", ".join(sorted(torchvision.models.list_models()))
        raise ValueError(f"model.net.arch={arch!r} is not a torchvision model; pick one of: {available}") from exc
    if "weights_backbone" in inspect.signature(factory).parameters:  # segmentation/detection: no download
        kwargs.setdefault("weights_backbone", None)
    net = factory(weights=None, num_classes=num_classes, **kwargs)
    _randomise_zero_weights(net)
    return warm_up_batchnorm(net, tuple(input_shape), batches=bn_warmup_batches).eval()


def _randomise_zero_weights(net: nn.Module) -> None:
    """Some models start a layer at zero (ViT's head): its outputs would all be 0 and compare trivially."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in net.parameters():
            if parameter.dim() >= 2 and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
