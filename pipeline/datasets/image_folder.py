"""A folder of labelled images: ``DIR/<class>/*`` (split here) or ``DIR/train|val|test/<class>/*`` (split by you).

Images (png, jpg/jpeg, bmp, gif, webp, tif/tiff, avif; other files are left out, counted by extension in
report.json ``data.ignored_files``; dot files and folders and ``__MACOSX/`` are skipped) are decoded from
disk by the DataLoader's workers (``dataset.num_workers``) with ``torchvision.io.decode_image``,
resized to ``dataset.image_size`` and, for training only, augmented by ``dataset.augment`` (a list of
``torchvision.transforms.v2`` configs); nothing is held in memory but the file list, so a folder larger
than memory trains. Inputs are float32 pixels in [0, 255], NCHW with ``dataset.channels`` channels: the
scaling ``(x / 255 - mean) / std`` (per channel, measured on training images unless given) is part of
the exported graph (``pipeline.preprocessing.ImageScaling``). A corrupt or truncated image is an error
naming the file, or, with ``dataset.skip_corrupt=true``, left out and listed in report.json.
"""
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.datasets.base import DatasetApi, DataSpec, InputSpec, Pair, lone_last_sample, seeded_rows
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".avif")
# PIL modes of more than 8 bits per pixel: scaled to [0, 255] like a 16-bit PNG, never clipped (PIL's
# own convert("L") saturates everything above 255).
WIDE_GREY_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}
SPLIT_FOLDERS = ("train", "val", "test")
STATS_IMAGES = 256  # training images the default mean/std are measured on
CHANNEL_PROBES = 32  # training images whose mode decides the default channels
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
# Held-out images decoded into memory at once (parity's whole test split): beyond this, parity.samples.
MAX_HELD_BYTES = 2 * 2**30


def _hidden(name: str) -> bool:
    """Not data: dot files and folders (.DS_Store, .ipynb_checkpoints, AppleDouble ._x.png) and the __MACOSX
    folder a macOS zip unpacks with."""
    return name.startswith(".") or name == "__MACOSX"


class CorruptImage(Exception):
    """An image file that cannot be decoded (raised in a worker, named in the main process)."""


def decode(path: str, channels: int) -> torch.Tensor:
    """One image as uint8 [C, H, W] with ``channels`` channels (the first frame of an animation)."""
    from torchvision.io import ImageReadMode, decode_image

    # libwebp decodes colour only (and says so on stderr for every grey request): made grey below
    grey = channels == 1 and not path.lower().endswith(".webp")
    mode = ImageReadMode.GRAY if grey else ImageReadMode.RGB
    try:
        image = decode_image(path, mode=mode)
    except Exception as torchvision_error:  # noqa: BLE001 - BMP and odd files: PIL reads more formats
        image = _decode_with_pil(path, channels, torchvision_error)
    image = image[0] if image.dim() == 4 else image  # an animation: its first frame
    return _with_channels(_as_uint8(image), channels)


def _as_uint8(image: torch.Tensor) -> torch.Tensor:
    """16-bit PNGs to 8 bits (the artifacts take pixels in [0, 255])."""
    if image.dtype == torch.uint8:
        return image
    from torchvision.transforms.v2 import functional

    return functional.to_dtype(image, torch.uint8, scale=True)


def _with_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Decoders that ignore the requested mode (GIF) give 1, 3 or 4 channels: made ``channels``."""
    from torchvision.transforms.v2 import functional

    if image.shape[0] == 4:  # RGBA
        image = image[:3]
    if image.shape[0] == channels:
        return image
    if channels == 1:
        return functional.rgb_to_grayscale(image)
    return image.expand(3, -1, -1).contiguous()


def _decode_with_pil(path: str, channels: int, first_error: Exception) -> torch.Tensor:
    """BMP, TIFF, AVIF and what else torchvision does not decode; the first frame of a multi-page file."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            opened.load()
            if opened.mode in WIDE_GREY_MODES:  # 16-bit TIFFs: scaled, then given the channels asked for
                return _with_channels(torch.from_numpy(_wide_to_uint8(np.asarray(opened), opened.mode, path))[None],
                                      channels)
            if opened.mode == "F":
                raise CorruptImage(f"{path}: a floating-point image (PIL mode F) has no fixed value range to read "
                                   "as pixels in [0, 255]; save it with 8 or 16 bits per channel")
            array = np.array(opened.convert("L" if channels == 1 else "RGB"))  # writable: torch shares it
    except CorruptImage:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error means the file is not a readable image
        raise CorruptImage(f"{path}: {type(first_error).__name__}: {first_error}; PIL: {exc}") from exc
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def _wide_to_uint8(array: np.ndarray, mode: str, path: str) -> np.ndarray:
    """16-bit grey (PIL's I;16*, or I holding 16-bit values) to 8 bits, as ``to_dtype(scale=True)`` does."""
    values = array.astype(np.int64)
    if values.min(initial=0) < 0 or values.max(initial=0) > WIDE_GREY_MODES[mode]:
        raise CorruptImage(f"{path}: 32-bit integer pixels outside 0..65535 (PIL mode {mode}) have no range to "
                           "read as [0, 255]; save it with 8 or 16 bits per channel")
    return (values // 257).astype(np.uint8)


class ImageFiles(Dataset):
    """(path, label) pairs decoded on access: float32 pixels [C, H, W] in [0, 255], and the label. A file
    that does not decode gives None (the collate names it)."""

    def __init__(self, items: list[tuple[str, int]], channels: int, size: list[int], augment=None):
        from torchvision.transforms import v2

        self.items, self.channels = items, channels
        self.resize = v2.Resize(list(size), antialias=True)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        try:
            image = decode(path, self.channels)
        except CorruptImage:
            return path
        image = self.resize(image)
        if self.augment is not None:
            image = self.augment(image)
        return image.to(torch.float32), label


def collate(samples: list):
    """A batch, and the paths of the files in it that did not decode (checked in the main process)."""
    good = [s for s in samples if not isinstance(s, str)]
    corrupt = [s for s in samples if isinstance(s, str)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), corrupt
    images = torch.stack([image for image, _ in good])
    labels = torch.tensor([label for _, label in good], dtype=torch.int64)
    return images, labels, corrupt


class ImageFolderData(DatasetApi):
    suggested_models = "mnist_cnn, mnist_mlp or torchvision"  # the models made for it (conf/model)

    def __init__(self, path: str | None = None, image_size: list[int] | None = None, channels: int | None = None,
                 augment: list | None = None, mean: list[float] | None = None, std: list[float] | None = None,
                 num_workers: int = 2, skip_corrupt: bool = False, batch_size: int = 32, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, seed: int = 0):
        super().__init__()
        if path is None or not str(path).strip():
            raise PipelineError("dataset=image_folder needs dataset.path: the folder of images.",
                                "Set dataset.path=DIR with one sub-folder per class (DIR/cats/*.jpg, DIR/dogs/*.jpg), "
                                "or DIR/train/<class>/ and DIR/test/<class>/ when you have split it.")
        self.root = Path(path).expanduser()
        self.image_size = None if image_size is None else [int(v) for v in image_size]
        self.channels = None if channels is None else int(channels)
        self.augment_cfg = list(augment or [])
        self.mean, self.std = mean, std
        self.num_workers, self.skip_corrupt = int(num_workers), bool(skip_corrupt)
        self.batch_size, self.seed = batch_size, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self._items: dict[str, list[tuple[str, int]]] | None = None
        self.classes: list[str] = []
        self.skipped: set[str] = set()
        self.ignored: dict[str, int] = {}  # files of other kinds in the class folders, by extension
        self._pre = None
        self._held: dict[str, Pair] = {}

    # --- the file lists ---
    def setup(self, stage: str | None = None) -> None:
        if self._items is None:
            self._items = self._scan()
            if self.ignored:  # a .heic or .jp2 folder must not look like a small dataset without a word
                log.warning("image_folder: left out %d file(s) that are not images of a kind read here (%s): %s",
                            sum(self.ignored.values()), ", ".join(EXTENSIONS),
                            ", ".join(f"{kind} ({n})" for kind, n in sorted(self.ignored.items())))
            self._settle_size()

    @property
    def items(self) -> dict[str, list[tuple[str, int]]]:
        self.setup()
        return self._items

    def _scan(self) -> dict[str, list[tuple[str, int]]]:
        if not self.root.is_dir():
            raise PipelineError(f"dataset.path={str(self.root)!r} is not a folder.",
                                "Point dataset.path at a folder with one sub-folder of images per class.")
        presplit = [s for s in SPLIT_FOLDERS if (self.root / s).is_dir()]
        if presplit:
            if not {"train", "test"} <= set(presplit):
                raise PipelineError(f"dataset.path={str(self.root)!r} has {', '.join(presplit)}/ but not both train/ "
                                    "and test/.",
                                    "Split it as DIR/train/<class>/ and DIR/test/<class>/ (val/ optional), or put "
                                    "the class folders directly in DIR to have it split here.")
            found = {split: self._class_files(self.root / split) for split in presplit}
            self.classes = sorted(found["train"])
            for split, by_class in found.items():
                unknown = sorted(set(by_class) - set(self.classes))
                if unknown:
                    raise PipelineError(f"{self.root / split} has class folder(s) {', '.join(unknown)} that "
                                        f"{self.root / 'train'} lacks: the network cannot learn them.",
                                        "Give every class training images, or remove those folders.")
            self._check_classes(self.classes)
            items = {split: self._labelled(by_class) for split, by_class in found.items()}
            if "val" not in items:
                items["train"], items["val"] = self._split_off(items["train"], self.val_fraction, 1)
            return items
        by_class = self._class_files(self.root)
        self.classes = sorted(by_class)
        self._check_classes(self.classes)
        every = self._labelled(by_class)
        rest, test = self._split_off(every, self.test_fraction, 0)
        train, val = self._split_off(rest, self.val_fraction / (1 - self.test_fraction), 1)
        return {"train": train, "val": val, "test": test}

    def _class_files(self, folder: Path) -> dict[str, list[str]]:
        found = {}
        for child in sorted(folder.iterdir()):
            if child.is_dir() and not _hidden(child.name):
                every = [f for f in child.rglob("*")
                         if f.is_file() and not any(_hidden(part) for part in f.relative_to(child).parts)]
                files = sorted(str(f) for f in every if f.suffix.lower() in EXTENSIONS)
                for other in (f for f in every if f.suffix.lower() not in EXTENSIONS):
                    kind = other.suffix.lower() or "(no extension)"
                    self.ignored[kind] = self.ignored.get(kind, 0) + 1
                if not files:
                    raise PipelineError(f"The class folder {child} holds no images ({', '.join(EXTENSIONS)}).",
                                        "Add images to it or remove it (each sub-folder is a class).")
                found[child.name] = files
        if not found:
            loose = sum(1 for f in folder.iterdir() if f.suffix.lower() in EXTENSIONS)
            raise PipelineError(f"{folder} has no class sub-folders" + (f" ({loose} images lie directly in it)"
                                                                       if loose else "") + ".",
                                "Put each class's images in a sub-folder named after it: DIR/<class>/*.png.")
        return found

    def _check_classes(self, classes: list[str]) -> None:
        if len(classes) < 2:
            raise PipelineError(f"dataset.path={str(self.root)!r} has one class folder ({classes[0]}): a classifier "
                                "needs at least two.",
                                "Add a folder of images for every other class.")

    def _labelled(self, by_class: dict[str, list[str]]) -> list[tuple[str, int]]:
        index = {name: i for i, name in enumerate(self.classes)}
        return [(f, index[name]) for name, files in by_class.items() for f in files]

    def _split_off(self, items: list, fraction: float, salt: int) -> tuple[list, list]:
        """Per class, a seeded ``fraction`` of the items split off (every class in both parts where it can)."""
        rng = np.random.default_rng([int(self.seed), salt])
        kept, held = [], []
        for label in sorted({label for _, label in items}):
            members = [item for item in items if item[1] == label]
            order = rng.permutation(len(members))
            count = int(round(len(members) * fraction))
            if fraction > 0 and count == 0 and len(members) > 1:
                count = 1
            held += [members[i] for i in order[:count]]
            kept += [members[i] for i in order[count:]]
        return kept, held

    def _settle_size(self) -> None:
        """image_size defaults to the first training image's; channels to 3 if any of a few images spread over
        the classes has colour, else 1 (a folder of scans stays grey, a mixed one becomes RGB)."""
        if self.image_size is not None and self.channels is not None:
            return
        from PIL import Image

        train = self._items["train"]
        looked_at = [train[i][0] for i in range(0, len(train), max(1, len(train) // CHANNEL_PROBES))]
        bands = set()
        for index, path in enumerate(looked_at):
            try:
                with Image.open(path) as image:
                    if index == 0:
                        size = [image.height, image.width]
                    bands.add(image.mode)
            except Exception as exc:  # noqa: BLE001 - an unreadable file is named
                raise PipelineError(f"The image {path} cannot be read ({type(exc).__name__}: {exc}).",
                                    "Replace or remove that file, or set dataset.image_size=[H,W] and "
                                    "dataset.channels=1|3.") from exc
        self.image_size = self.image_size or size
        self.channels = self.channels or (1 if bands <= GREY_MODES else 3)

    # --- loaders ---
    def _files(self, split: str, augment: bool = False) -> ImageFiles:
        return ImageFiles(self.items[split], self.channels, self.image_size,
                          self._augmentation() if augment else None)

    def _augmentation(self):
        """dataset.augment as one transform (Hydra has built its ``_target_`` entries already)."""
        if not self.augment_cfg:
            return None
        from torchvision.transforms import v2

        odd = [t for t in self.augment_cfg if not callable(t)]
        if odd:
            raise PipelineError(f"dataset.augment holds {odd[0]!r}, which is not a transform.",
                                "Give a list of torchvision.transforms.v2 configs, e.g. dataset.augment="
                                "[{_target_: torchvision.transforms.v2.RandomHorizontalFlip}]")
        return v2.Compose(list(self.augment_cfg))

    def _loader(self, split: str, shuffle: bool = False, augment: bool = False, batch_size: int | None = None):
        workers, files, batch_size = self.num_workers, self._files(split, augment), batch_size or self.batch_size
        return DataLoader(files, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate,
                          drop_last=shuffle and lone_last_sample(len(files), batch_size),
                          persistent_workers=workers > 0 and shuffle,
                          generator=torch.Generator().manual_seed(int(self.seed)) if shuffle else None)

    def train_dataloader(self):
        return self._loader("train", shuffle=True, augment=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return self.checked(batch)

    def checked(self, batch) -> Pair:
        """A collated batch without the files that did not decode: an error naming them, or (skip_corrupt)
        the batch without them, the files listed in report.json."""
        images, labels, corrupt = batch
        if corrupt and not self.skip_corrupt:
            raise PipelineError(f"The image {corrupt[0]} is corrupt or truncated: it cannot be decoded"
                                + (f" (and {len(corrupt) - 1} more in the same batch)" if len(corrupt) > 1 else "")
                                + ".",
                                "Replace or remove the file, or set dataset.skip_corrupt=true to leave such files "
                                "out (they are listed in report.json data.skipped_files).")
        self.skipped.update(corrupt)
        return images, labels

    # --- what the stages ask ---
    def spec(self) -> DataSpec:
        self.setup()
        shape = [self.channels, *self.image_size]
        return DataSpec([InputSpec("input", shape, "float32", layout="NCHW", value_range=[0.0, 255.0])],
                        task="classification", classes=list(self.classes), streaming=True)

    def preprocessing(self):
        from pipeline.preprocessing import ImageScaling

        if self._pre is None:
            mean, std = self._statistics()
            self._pre = ImageScaling(mean, std)
        return self._pre

    def _statistics(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of pixels / 255 over up to STATS_IMAGES training images (unless given)."""
        if self.mean is not None and self.std is not None:
            return _per_channel(self.mean, self.channels, "mean"), _per_channel(self.std, self.channels, "std")
        rows = seeded_rows(len(self.items["train"]), STATS_IMAGES, self.seed).tolist()
        images = self._decoded([self.items["train"][i] for i in rows])[0] / 255.0
        mean = images.mean(dim=(0, 2, 3))
        std = images.std(dim=(0, 2, 3)).clamp_min(1e-3)  # a constant channel would divide by zero
        return ([float(v) for v in mean] if self.mean is None else _per_channel(self.mean, self.channels, "mean"),
                [float(v) for v in std] if self.std is None else _per_channel(self.std, self.channels, "std"))

    def size(self, split: str) -> int:
        return len(self.items[split])

    def head(self, split: str, count: int | None = None) -> Pair:
        items = self.items[split][:count]
        key = (split, len(items))
        if key not in self._held:
            self._check_memory(len(items))
            self._held = {key: self._decoded(items)}  # the latest only: parity asks once, with one count
        return self._held[key]

    def draw(self, split: str, count: int, seed: int):
        items = self.items[split]
        if not items:
            return None
        rows = seeded_rows(len(items), count, seed).tolist()
        self._check_memory(len(rows))
        return self._decoded([items[i] for i in rows])[0]

    def targets(self, split: str) -> torch.Tensor:
        return torch.tensor([label for _, label in self.items[split]], dtype=torch.int64)

    def _decoded(self, items: list[tuple[str, int]]) -> Pair:
        files = ImageFiles(items, self.channels, self.image_size)
        loader = DataLoader(files, batch_size=64, num_workers=self.num_workers if len(items) > 64 else 0,
                            collate_fn=collate)
        parts = [self.checked(batch) for batch in loader]
        images = torch.cat([p[0] for p in parts]) if parts else torch.empty(0, self.channels, *self.image_size)
        labels = torch.cat([p[1] for p in parts]) if parts else torch.empty(0, dtype=torch.int64)
        return images, labels

    def _check_memory(self, count: int) -> None:
        needed = count * self.channels * math.prod(self.image_size) * 4
        if needed > MAX_HELD_BYTES:
            raise PipelineError(f"{count} images of {self.channels}x{self.image_size[0]}x{self.image_size[1]} would "
                                f"need {needed / 2**30:.1f} GiB in memory at once.",
                                "Compare the runtimes on fewer held-out images (e.g. parity.samples=1000) or "
                                "calibrate on fewer (export.calibration_samples).")

    def files(self) -> list[Path]:
        return []  # a folder of many images: its file list is the data's identity, not each file's hash

    def report(self) -> dict:
        sizes = {split: len(items) for split, items in self.items.items()}
        extra = {"path": str(self.root), "images": sizes, "image_size": self.image_size, "channels": self.channels}
        if self.skipped:
            extra["skipped_files"] = sorted(self.skipped)
        if self.ignored:
            extra["ignored_files"] = dict(sorted(self.ignored.items()))
        return extra


def _per_channel(values, channels: int, key: str) -> list[float]:
    values = [float(v) for v in (values if isinstance(values, list | tuple) else [values])]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise PipelineError(f"dataset.{key} has {len(values)} values for {channels} channels.",
                            f"Give one value per channel (or one for all), e.g. dataset.{key}=[0.5,0.5,0.5].")
    return values
