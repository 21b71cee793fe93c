"""Any timm model by name (``timm.list_models()``): ``model=timm model.net.name=convnext_atto``.

Pretrained weights are used when they are in the local Hugging Face cache (nothing is downloaded);
otherwise the model is built with random weights, layers initialised at zero (heads, LayerScale) made
non-trivial and BatchNorm statistics warmed up (``models/warmup.py``). The input size is the model's
``pretrained_cfg`` one unless ``input_size`` (or the dataset's shape) says otherwise; models that fix
it at construction (ViTs: ``img_size``) are built for it.
"""
import difflib

from torch import nn

from models.extras import require
from models.warmup import untrivialise_parameters, warm_up_batchnorm
from pipeline.errors import PipelineError

PRETRAINED_CHOICES = ("auto", True, False)


def check_name(name) -> str:
    """``name`` if timm knows it, else a PipelineError listing the closest names."""
    timm = require("timm")
    names = timm.list_models()
    if isinstance(name, str) and name.split(".")[0] in names:  # resnet18, or with a weights tag: resnet18.a1_in1k
        return name
    close = difflib.get_close_matches(str(name), names, n=8, cutoff=0.5)
    hint = f"Close matches: {', '.join(close)}." if close else "See timm.list_models() (e.g. resnet18, convnext_atto)."
    raise PipelineError(f"model.net.name={name!r} is not a timm model ({len(names)} are known).",
                        f"{hint} Set model.net.name to one of timm.list_models().")


def default_input_size(name: str) -> list[int]:
    """[C, H, W] from the model's pretrained_cfg."""
    timm = require("timm")
    cfg = timm.models.get_pretrained_cfg(check_name(name))
    return list(cfg.input_size) if cfg is not None and cfg.input_size else [3, 224, 224]


def input_specs(name: str, input_size=None, **_) -> dict:
    """What ``dataset=model_inputs`` generates for this model: one image input."""
    shape = list(input_size) if input_size else default_input_size(name)
    return {"input": {"shape": shape, "distribution": "normal", "dtype": "float32"}}


def cached_weights(name: str) -> str | None:
    """The local path of the model's pretrained weights when the Hugging Face cache holds them."""
    timm = require("timm")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", cfg.hf_hub_filename or "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(found, str) and found.endswith(".safetensors"):  # weights as data, never a pickle
            return found
    return None


def build(name: str, num_classes: int | None = None, input_shape=None, input_size=None, pretrained="auto",
          bn_warmup_batches: int = 4, **kwargs) -> nn.Module:
    timm = require("timm")
    name = check_name(name)
    if pretrained not in PRETRAINED_CHOICES:
        raise PipelineError(f"model.net.pretrained={pretrained!r} is not one of auto, true, false.",
                            "auto: the cached weights when there are any, else random ones.")
    shape = list(input_shape or input_size or default_input_size(name))
    weights = cached_weights(name) if pretrained in ("auto", True) else None
    if pretrained is True and weights is None:
        raise PipelineError(f"model.net.pretrained=true but timm's weights of {name} are not in the local "
                            "Hugging Face cache (nothing is downloaded).",
                            "Download them once where there is internet (timm.create_model(name, pretrained=True)), "
                            "or set model.net.pretrained=auto for random weights.")
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    kwargs["in_chans"] = int(shape[0])
    extra = {"pretrained": True, "pretrained_cfg_overlay": {"file": weights}} if weights else {}
    net = _create(timm, name, shape, kwargs, extra)
    if not weights:
        untrivialise_parameters(net)
        warm_up_batchnorm(net, tuple(shape), batches=bn_warmup_batches)
    return net.eval()


def _create(timm, name: str, shape: list[int], kwargs: dict, extra: dict) -> nn.Module:
    """create_model at the input size: models built for one (img_size) get it, the others ignore it."""
    default = default_input_size(name)
    if list(shape[1:]) != list(default[1:]) and len(shape) == 3:
        try:
            return timm.create_model(name, img_size=tuple(shape[1:]), **kwargs, **extra)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
    return timm.create_model(name, **kwargs, **extra)
