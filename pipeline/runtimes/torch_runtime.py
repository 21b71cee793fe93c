"""The reference runtime: the trained PyTorch network in eval mode."""
import numpy as np
import torch

from pipeline.runtimes import Adapter


class TorchRuntime(Adapter):
    name = "torch"

    def __init__(self, net: torch.nn.Module, inputs, outputs):
        super().__init__(inputs, outputs)
        self.net = net.eval()

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            result = self.net(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
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
