"""The reference runtime: the trained PyTorch network in eval mode."""
import numpy as np
import torch


class TorchRuntime:
    name = "torch"

    def __init__(self, net: torch.nn.Module):
        self.net = net.eval()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.net(torch.from_numpy(np.ascontiguousarray(batch))).numpy()


def load(net: torch.nn.Module, **_) -> TorchRuntime:
    return TorchRuntime(net)
