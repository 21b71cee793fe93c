"""A segmentation_models_pytorch model: ``model=smp model.net.arch=Unet model.net.encoder=resnet18``.

Random weights (no encoder download), layers started at zero made non-trivial and BatchNorm warmed
up (``models/warmup.py``). Returns the per-pixel class logits [N, classes, H, W]; H and W must be
multiples of the encoder's output stride (32 for most encoders).
"""
import difflib

from torch import nn

from models.extras import require
from models.warmup import untrivialise_parameters, warm_up_batchnorm
from pipeline.errors import PipelineError

DEFAULT_INPUT = [3, 64, 64]


def _check(smp, arch: str, encoder: str) -> None:
    archs = getattr(smp, "MODEL_ARCHITECTURES_MAPPING", {})
    if archs and arch.lower() not in archs:
        names = [a.__name__ for a in getattr(smp, "_MODEL_ARCHITECTURES", [])] or sorted(archs)
        raise PipelineError(f"model.net.arch={arch!r} is not a segmentation_models_pytorch architecture.",
                            f"Pick one of: {', '.join(names)}.")
    encoders = smp.encoders.get_encoder_names()
    if encoder not in encoders:
        close = difflib.get_close_matches(encoder, encoders, n=8, cutoff=0.5)
        raise PipelineError(f"model.net.encoder={encoder!r} is not a segmentation_models_pytorch encoder.",
                            f"Close matches: {', '.join(close) or 'none'} (smp.encoders.get_encoder_names()).")


def input_specs(input_size=None, in_channels=None, **_) -> dict:
    """What ``dataset=model_inputs`` generates: one image input."""
    shape = list(input_size or DEFAULT_INPUT)
    if in_channels:
        shape[0] = int(in_channels)
    return {"input": {"shape": shape, "distribution": "normal", "dtype": "float32"}}


def build(arch: str = "Unet", encoder: str = "resnet18", classes: int = 2, in_channels: int | None = None,
          input_shape=None, input_size=None, encoder_depth: int | None = None, bn_warmup_batches: int = 4,
          **kwargs) -> nn.Module:
    smp = require("segmentation_models_pytorch")
    _check(smp, str(arch), str(encoder))
    shape = list(input_shape or input_size or DEFAULT_INPUT)
    channels = int(in_channels or shape[0])
    if encoder_depth is not None:
        kwargs["encoder_depth"] = int(encoder_depth)
    net = smp.create_model(str(arch), encoder_name=str(encoder), encoder_weights=None, in_channels=channels,
                           classes=int(classes), **kwargs)
    untrivialise_parameters(net)
    warm_up_batchnorm(net, (channels, *shape[1:]), batches=bn_warmup_batches)
    return net.eval()
