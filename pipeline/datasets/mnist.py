"""MNIST through torchvision, kept as tensors of raw pixels in [0, 255].

The normalisation ``(x / 255 - mean) / std`` is part of the exported graph
(``pipeline.preprocessing.ImageScaling``): the artifacts take pixels as an app has them."""
import os
import socket
from contextlib import nullcontext
from pathlib import Path

import torch

from pipeline.datasets.base import DataSpec, InMemoryData, InputSpec, Splits, split_off
from pipeline.errors import PipelineError

DOWNLOAD_TIMEOUT_S = 15
DOWNLOAD_LOCK_TIMEOUT_S = 900
LOCK_NAME = ".pipeline-download.lock"


class MnistData(InMemoryData):
    suggested_models = "mnist_cnn or mnist_mlp"  # the models made for it (conf/model)

    def __init__(self, root: str = "data", download: bool = True, mean: float = 0.1307,
                 std: float = 0.3081, **kwargs):
        super().__init__(**kwargs)
        if not str(root).strip():  # Path("") is the working directory: never download into it by accident
            raise PipelineError("dataset.root='' names no folder (an empty PIPELINE_MNIST_ROOT?).",
                                "Point dataset.root at a folder holding MNIST/raw/*-ubyte files, or at a new folder "
                                "to download into (the default is data).")
        self.root = Path(root).expanduser()
        self.download = download
        self.mean = mean
        self.std = std

    def load(self) -> Splits:
        train, test = self._read(train=True), self._read(train=False)
        for split, mnist in (("train", train), ("test", test)):
            if len(mnist.data) != len(mnist.targets) or len(mnist.data) == 0:
                raise PipelineError(f"MNIST in dataset.root={str(self.root)!r} is inconsistent: its {split} split has "
                                    f"{len(mnist.data)} images and {len(mnist.targets)} labels.",
                                    "The *-ubyte files are truncated or mixed from different copies: replace "
                                    "MNIST/raw/ with a complete copy (or delete it and download again).")
        train_pair, val_pair = split_off(self._tensors(train), self.val_fraction, self.seed)
        files = sorted(Path(train.raw_folder).glob("*-ubyte"))
        return Splits(train=train_pair, val=val_pair, test=self._tensors(test), files=files)

    def _tensors(self, mnist) -> tuple[torch.Tensor, torch.Tensor]:
        return mnist.data.float().unsqueeze(1).contiguous(), mnist.targets.long()

    def spec(self) -> DataSpec:
        return DataSpec([InputSpec("input", [1, 28, 28], "float32", layout="NCHW", value_range=[0.0, 255.0])],
                        task="classification", classes=[str(digit) for digit in range(10)])

    def preprocessing(self):
        from pipeline.preprocessing import ImageScaling

        return ImageScaling([self.mean], [self.std])

    def _read(self, train: bool):
        from torchvision import datasets

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # offline must fail fast, never hang
        # What a failed download leaves behind (folders, partial files, the lock file) is removed again.
        created = _missing_dirs(self.root)
        lock_existed = (self.root / LOCK_NAME).exists() or (self.root / LOCK_NAME).is_symlink()
        download = False
        try:
            # Parallel jobs: one downloads, the others wait on its lock. Complete files that no job is
            # downloading (no lock file) are only read: nothing is written into the data dir.
            download = self.download and not _present(self.root)
            locked = download or (self.root / LOCK_NAME).exists()
            with cache_lock(self.root) if locked else nullcontext():
                try:
                    return datasets.MNIST(str(self.root), train=train, download=download)
                except BaseException:
                    if download:  # under the lock: nobody else writes into the folders this run created
                        _remove_created(created, self.root)
                    raise
        except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError, and more on corrupt files
            if download:
                _remove_created(created, self.root, lock_too=not lock_existed)
            text = " ".join(str(exc).split())[:300]
            corrupt = _present(self.root) and not isinstance(exc, OSError)
            raise PipelineError(
                f"MNIST could not be read from dataset.root={str(self.root)!r} "
                f"(download={self.download}): {type(exc).__name__}{': ' + text if text else ''}"
                + (" (the *-ubyte files there look truncated or corrupt)" if corrupt else ""),
                "Point dataset.root at a folder holding MNIST/raw/*-ubyte files "
                "(e.g. dataset.root=../shared/data/mnist-10k), or allow the download with "
                "network access and dataset.download=true.",
            ) from exc
        finally:
            socket.setdefaulttimeout(previous)


def _missing_dirs(root: Path) -> list[Path]:
    """The data folders a download would create (deepest first), of those that do not exist yet."""
    missing = []
    try:
        for path in (root / "MNIST" / "raw", root / "MNIST", root, *root.absolute().parents):
            if path.exists():
                break
            missing.append(path)
    except OSError:
        return []
    return missing


def _remove_created(created: list[Path], root: Path, lock_too: bool = False) -> None:
    """Undo a failed download: the partial files in folders this run created, those folders when empty, and
    (after the lock is released, ``lock_too``) the lock file it created. Nothing that existed before is touched."""
    import shutil

    if lock_too:
        try:
            (root / LOCK_NAME).unlink(missing_ok=True)
        except OSError:
            pass
    for folder in created:
        try:
            if folder == root / "MNIST" / "raw" and folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)  # only this run's partial downloads can be in a folder it created
            elif folder.is_dir():
                folder.rmdir()
        except OSError:  # not empty (another job's files): left as it is
            pass


def _present(root: Path) -> bool:
    """Whether the four MNIST/raw/*-ubyte files are there (torchvision then reads them, downloads nothing)."""
    raw = root / "MNIST" / "raw"
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return all((raw / name).is_file() for name in names)


def cache_lock(root: Path):
    """A file lock on a writable data cache; a read-only copy cannot be half-written, so needs none."""
    from filelock import FileLock

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only location: torchvision reports the missing files itself
        pass
    if root.is_dir() and os.access(root, os.W_OK):
        return FileLock(str(root / LOCK_NAME), timeout=DOWNLOAD_LOCK_TIMEOUT_S)
    return nullcontext()
