"""Arrays saved with NumPy: ``dataset=arrays dataset.path=FILE.npz``.

Inputs under ``dataset.x`` (default ``x``; several named inputs: ``dataset.x=[ids,mask]``), targets
under ``dataset.y`` (default ``y``; null or absent: no labels). Splits are the file's own when it holds
``<key>_train`` and ``<key>_test`` (and optionally ``<key>_val``) arrays, else drawn with the seed by
``dataset.test_fraction`` / ``dataset.val_fraction``. Integer targets are class labels (names from
``dataset.classes``), floating-point ones regression values. Values are fed to every artifact as stored:
no scaling is added. The file is read with ``allow_pickle=False``: it is data, never code.
"""
from pathlib import Path

import numpy as np
import torch

from pipeline import limits
from pipeline.datasets.base import DataSpec, InMemoryData, Splits, split_off
from pipeline.errors import PipelineError


class ArraysData(InMemoryData):
    def __init__(self, path: str | None = None, x="x", y: str | None = "y", classes: list[str] | None = None,
                 test_fraction: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        if path is None or not str(path).strip():
            raise PipelineError("dataset=arrays needs dataset.path: a .npz file.",
                                "Set dataset.path=FILE.npz (arrays x and y, or x_train/y_train/x_test/y_test).")
        self.path = Path(path).expanduser()
        self.x_keys = [str(k) for k in x] if isinstance(x, list | tuple) else [str(x)]
        self.y_key = None if y is None else str(y)
        self.classes = None if classes is None else [str(c) for c in classes]
        self.test_fraction = test_fraction

    def load(self) -> Splits:
        arrays = self._read()
        presplit = all(f"{k}_train" in arrays and f"{k}_test" in arrays for k in self.x_keys)
        if presplit:
            parts = {s: self._pair(arrays, f"_{s}") for s in ("train", "val", "test")
                     if all(f"{k}_{s}" in arrays for k in self.x_keys)}
            if "val" not in parts:
                parts["train"], parts["val"] = split_off(parts["train"], self.val_fraction, self.seed)
        else:
            missing = [k for k in self.x_keys if k not in arrays]
            if missing:
                raise PipelineError(f"{self.path} has no array {', '.join(map(repr, missing))} (it holds "
                                    f"{', '.join(sorted(arrays)) or 'nothing'}).",
                                    "Name the inputs' arrays with dataset.x=<key> (or [key1,key2]) and the targets' "
                                    "with dataset.y=<key>, or save x_train/y_train/x_test/y_test.")
            whole = self._pair(arrays, "")
            rest, test = split_off(whole, self.test_fraction, self.seed)
            train, val = split_off(rest, self.val_fraction, self.seed + 1)
            parts = {"train": train, "val": val, "test": test}
        return Splits(**parts, files=[self.path])

    def _read(self) -> dict[str, np.ndarray]:
        if not self.path.is_file():
            raise PipelineError(f"dataset.path={str(self.path)!r} is not a file.", "Point dataset.path at a .npz file.")
        with open(self.path, "rb") as handle:
            head = handle.read(6)
        if not head.startswith(b"PK"):  # numpy would read any other file as a pickle, and refuse it as one
            kind = "a single .npy array" if head == b"\x93NUMPY" else f"not a zip archive (it starts with {head!r})"
            raise PipelineError(f"dataset.path={str(self.path)!r} is not a .npz archive of named arrays: {kind}.",
                                "Save the arrays with numpy.savez(path, x=..., y=...); a CSV or Parquet table is "
                                "dataset=table.")
        limits.check_file(self.path, "dataset.path")  # the arrays' declared sizes, before any is extracted
        try:
            with np.load(self.path, allow_pickle=False) as loaded:
                if not hasattr(loaded, "files"):
                    raise ValueError("a single array (.npy), not an archive of named arrays (.npz)")
                return {name: loaded[name] for name in loaded.files}
        except Exception as exc:  # noqa: BLE001 - zipfile/pickle/format errors all mean the same to the user
            reason = ("it holds Python objects, which are never unpickled (it could run code)"
                      if "pickle" in str(exc).lower() else f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            raise PipelineError(f"dataset.path={str(self.path)!r} is not a readable .npz archive: {reason}.",
                                "Save the arrays with numpy.savez(path, x=..., y=...) (numbers only).") from None

    def _pair(self, arrays: dict, suffix: str):
        inputs = {}
        for key in self.x_keys:
            value = arrays[f"{key}{suffix}"]
            if value.dtype.kind not in "biuf" or value.ndim < 1:
                raise PipelineError(f"Array {key}{suffix!r} of {self.path} holds {value.dtype} values of shape "
                                    f"{list(value.shape)}; inputs must be numbers with a sample axis first.",
                                    "Save numeric arrays shaped [samples, ...].")
            value = value.astype(np.float32) if value.dtype.kind == "f" else value.astype(np.int64)
            inputs[key] = torch.from_numpy(np.ascontiguousarray(value))
        counts = {k: len(v) for k, v in inputs.items()}
        y = self._targets(arrays, suffix, counts)
        x = inputs[self.x_keys[0]] if len(self.x_keys) == 1 else inputs
        return x, y

    def _targets(self, arrays: dict, suffix: str, counts: dict):
        key = None if self.y_key is None else f"{self.y_key}{suffix}"
        if key is None or key not in arrays:
            return None
        value = arrays[key]
        if len({*counts.values(), len(value)}) != 1:
            raise PipelineError(f"{self.path}: the inputs have {counts} samples but {key!r} has {len(value)}.",
                                "Save one target per input sample.")
        if value.dtype.kind in "biu":  # [N] (or [N, 1]) labels; [N, C] 0/1 per class or [N, T] per token as they are
            labels = value.astype(np.int64)
            return torch.from_numpy(labels.reshape(len(value)) if labels[0].size == 1 else labels)
        if value.dtype.kind == "f":
            return torch.from_numpy(value.astype(np.float32).reshape(len(value), -1))
        raise PipelineError(f"Array {key!r} of {self.path} holds {value.dtype} values: targets must be integer "
                            "class labels or floating-point values.", "Save numeric targets.")

    def spec(self) -> DataSpec:
        spec = super().spec()
        if spec.task in ("classification", "multi_label") and self.classes:
            if spec.task == "multi_label" and len(self.classes) != spec.num_classes:
                raise PipelineError(f"dataset.classes names {len(self.classes)} classes, but the targets of "
                                    f"{self.path} have {spec.num_classes} columns of 0/1 (one per class).",
                                    "Name every class, in column order.")
            if len(self.classes) < (spec.num_classes or 0):
                raise PipelineError(f"dataset.classes names {len(self.classes)} classes, but {self.path} has labels up "
                                    f"to {spec.num_classes - 1}.", "Name every class, in label order.")
            spec.classes = list(self.classes)
        return spec
