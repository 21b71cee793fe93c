"""Sliding windows over a univariate series (seed 004): predict the next value from ``window`` values.

The default series is aeon's bundled airline passengers (offline); any CSV works with
``dataset.path=... dataset.column=...``. Splits are chronological; scaling is fitted on train only.
"""
from pathlib import Path

import numpy as np
import torch

from pipeline.datasets.base import InMemoryData, Splits
from pipeline.errors import PipelineError


class SeriesData(InMemoryData):
    def __init__(self, path: str | None = None, column: str | None = None, window: int = 12,
                 test_fraction: float = 0.15, **kwargs):
        super().__init__(**kwargs)
        self.path = Path(path) if path else None
        self.column = column
        self.window = window
        self.test_fraction = test_fraction

    def load(self) -> Splits:
        values = self._read().astype(np.float64)
        if len(values) < self.window + 10:
            raise PipelineError(f"The series has {len(values)} values: too short for window={self.window}.",
                                "Use a longer series or a smaller dataset.window.")
        n_windows = len(values) - self.window
        n_test = max(1, int(round(n_windows * self.test_fraction)))
        n_val = max(1, int(round(n_windows * self.val_fraction)))
        n_train = n_windows - n_val - n_test
        fitted = values[: n_train + self.window]  # every value a training window or target touches
        mean, std = float(fitted.mean()), float(fitted.std() + 1e-8)
        scaled = ((values - mean) / std).astype(np.float32)
        x = np.lib.stride_tricks.sliding_window_view(scaled[:-1], self.window)[..., None].copy()
        y = scaled[self.window:, None].copy()

        def pair(rows):
            return torch.from_numpy(x[rows]), torch.from_numpy(y[rows])

        return Splits(train=pair(slice(0, n_train)), val=pair(slice(n_train, n_train + n_val)),
                      test=pair(slice(n_train + n_val, None)), inverse=lambda v: np.asarray(v) * std + mean,
                      files=[self.path or _airline_file()])

    def _read(self) -> np.ndarray:
        if self.path is None:
            from aeon.datasets import load_airline

            return np.asarray(load_airline(), dtype=np.float64)
        return read_csv_column(self.path, self.column)


def _airline_file() -> Path:
    import aeon.datasets

    return Path(aeon.datasets.__file__).parent / "data" / "Airline" / "Airline.csv"


def read_csv_column(path: Path, column: str | None) -> np.ndarray:
    import pandas as pd

    if not path.is_file():
        raise PipelineError(f"dataset.path={str(path)!r} does not exist.", "Point dataset.path at a CSV file.")
    frame = pd.read_csv(path)
    if column is None or column not in frame.columns:
        numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
        raise PipelineError(f"dataset.column={column!r} is not a column of {path}.",
                            f"Pick one of its numeric columns: {', '.join(map(str, numeric)) or '(none)'}.")
    values = pd.to_numeric(frame[column], errors="coerce").dropna().to_numpy()
    return values
