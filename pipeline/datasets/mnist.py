"""MNIST through torchvision, normalised once and kept as tensors."""
import os
import socket
from contextlib import nullcontext
from pathlib import Path

import torch

from pipeline.datasets.base import InMemoryData, Splits, split_off
from pipeline.errors import PipelineError

DOWNLOAD_TIMEOUT_S = 15
DOWNLOAD_LOCK_TIMEOUT_S = 900


class MnistData(InMemoryData):
    def __init__(self, root: str = "data", download: bool = True, mean: float = 0.1307,
                 std: float = 0.3081, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root)
        self.download = download
        self.mean = mean
        self.std = std

    def load(self) -> Splits:
        train, test = self._read(train=True), self._read(train=False)
        train_pair, val_pair = split_off(self._tensors(train), self.val_fraction, self.seed)
        files = sorted(Path(train.raw_folder).glob("*-ubyte"))
        return Splits(train=train_pair, val=val_pair, test=self._tensors(test), files=files)

    def _tensors(self, mnist) -> tuple[torch.Tensor, torch.Tensor]:
        images = (mnist.data.float().div(255.0) - self.mean) / self.std
        return images.unsqueeze(1).contiguous(), mnist.targets.long()

    def _read(self, train: bool):
        from torchvision import datasets

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # offline must fail fast, never hang
        try:
            with cache_lock(self.root):  # parallel sweep jobs: one downloads, the others wait
                return datasets.MNIST(str(self.root), train=train, download=self.download)
        except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError
            raise PipelineError(
                f"MNIST could not be read from dataset.root={str(self.root)!r} "
                f"(download={self.download}): {exc}",
                "Point dataset.root at a folder holding MNIST/raw/*-ubyte files "
                "(e.g. dataset.root=../shared/data/mnist-10k), or allow the download with "
                "network access and dataset.download=true.",
            ) from exc
        finally:
            socket.setdefaulttimeout(previous)


def cache_lock(root: Path):
    """A file lock on a writable data cache; a read-only copy cannot be half-written, so needs none."""
    from filelock import FileLock

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only location: torchvision reports the missing files itself
        pass
    if root.is_dir() and os.access(root, os.W_OK):
        return FileLock(str(root / ".pipeline-download.lock"), timeout=DOWNLOAD_LOCK_TIMEOUT_S)
    return nullcontext()
