"""The reference runtime: the trained PyTorch network in eval mode."""
import numpy as np
import torch

from pipeline.runtimes import Adapter, RuntimeSpec, register


def standard_paths() -> None:
    """Turn off torch's inference-only fast paths for attention (fused multi-head attention, nested
    tensors in ``nn.TransformerEncoder``). They are not what training computes nor what the export
    traces: with a ``src_key_padding_mask`` the nested-tensor path returns zeros at padded positions
    where the traced graph (and every converted model) computes values, so the reference would differ
    from every runtime for any model that reads those positions."""
    fastpath = getattr(getattr(torch.backends, "mha", None), "set_fastpath_enabled", None)
    if fastpath is not None:
        fastpath(False)


class TorchRuntime(Adapter):
    name = "torch"

    def __init__(self, net: torch.nn.Module, inputs, outputs):
        super().__init__(inputs, outputs)
        self.net = net.eval()

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            # Copies: a network that changes its input in place must not change what the next runtime gets.
            result = self.net(*(torch.from_numpy(np.array(a, order="C", copy=True)) for a in arrays))
        return [t.numpy() for t in flatten_outputs(result)]


def flatten_outputs(result) -> list[torch.Tensor]:
    """A network's outputs in the order torch.onnx.export lists them (tuples and dicts flattened)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        result = list(result.values())
    return [t for item in result for t in flatten_outputs(item)]


def load(net: torch.nn.Module, inputs, outputs, **_) -> TorchRuntime:
    return TorchRuntime(net, inputs, outputs)


register(RuntimeSpec("torch", load))
