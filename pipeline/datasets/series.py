"""Sliding windows over a univariate series (seed 004): predict the next value from ``window`` values.

The default series is aeon's bundled airline passengers (offline); any CSV works with
``dataset.path=... dataset.column=...``. Splits are chronological; scaling is fitted on train only.

A CSV column is checked before anything trains: text that is not a number, infinite values and a
series too short for the window are errors naming the lines. Missing values (empty cells, NaN,
"n/a") follow ``dataset.missing``: ``error`` (default), ``drop`` (windows never span a gap) or
``interpolate`` (linear between neighbours; leading and trailing gaps are cut off).
"""
from pathlib import Path

import numpy as np
import torch

from pipeline.datasets import delimited
from pipeline.datasets.base import InMemoryData, Splits
from pipeline.errors import PipelineError

MIN_WINDOWS = 10  # train, validation and test need a few windows each
MISSING_MODES = ("error", "drop", "interpolate")


class SeriesData(InMemoryData):
    suggested_models = "lstm_forecaster"  # the models made for it (conf/model)

    def __init__(self, path: str | None = None, column: str | None = None, window: int = 12,
                 test_fraction: float = 0.15, missing: str = "error", separator: str | None = None,
                 decimal: str | None = None, encoding: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if path is not None and not str(path).strip():
            raise PipelineError("dataset.path='' names no file.",
                                "Point dataset.path at a CSV file, or set dataset.path=null for the bundled airline "
                                "series.")
        self.path = Path(path).expanduser() if path else None
        self.column = column
        self.window = int(window)
        self.test_fraction = test_fraction
        self.missing = str(missing)
        self.text = delimited.TextFormat.from_config(separator, decimal, encoding)
        if self.missing not in MISSING_MODES:
            raise PipelineError(f"dataset.missing={missing!r} is not a choice.",
                                f"Use one of: {', '.join(MISSING_MODES)}.")
        if self.window < 1:
            raise PipelineError(f"dataset.window={window} must be >= 1.", "Set e.g. dataset.window=12.")
        if not 0 < test_fraction < 1 or test_fraction + self.val_fraction >= 1:
            raise PipelineError(f"dataset.test_fraction={test_fraction} and dataset.val_fraction={self.val_fraction} "
                                "leave no windows to train on.",
                                "Keep both in (0, 1) with a sum below 1, e.g. 0.15 each.")

    def load(self) -> Splits:
        values = self._read()
        starts = window_starts(values, self.window)
        if len(starts) < MIN_WINDOWS:
            raise PipelineError(
                f"The series has {np.isfinite(values).sum()} values, which give {len(starts)} windows of "
                f"dataset.window={self.window} values plus a target: too short (at least {MIN_WINDOWS} are needed).",
                f"Use a longer series or a smaller dataset.window (at most {max(1, len(values) - MIN_WINDOWS)}).")
        n_windows = len(starts)
        n_test = max(1, int(round(n_windows * self.test_fraction)))
        n_val = max(1, int(round(n_windows * self.val_fraction)))
        n_train = n_windows - n_val - n_test
        if n_train < 1:
            raise PipelineError(f"The series gives {n_windows} windows: none is left to train on after dataset."
                                f"val_fraction={self.val_fraction} and dataset.test_fraction={self.test_fraction}.",
                                "Use a longer series or smaller fractions.")
        covered = np.zeros(len(values), dtype=bool)  # every value a training window or its target touches
        for start in starts[:n_train]:
            covered[start:start + self.window + 1] = True
        fitted = values[covered]
        mean, std = float(fitted.mean()), float(fitted.std() + 1e-8)
        if not (np.isfinite(mean) and np.isfinite(std)):
            raise PipelineError(f"The series' values are too large to scale (mean {mean}, std {std}).",
                                "Rescale the column (e.g. to thousands) before training.")
        scaled = ((values - mean) / std).astype(np.float32)
        rows = starts[:, None] + np.arange(self.window)
        x = scaled[rows][..., None].copy()
        y = scaled[starts + self.window, None].copy()

        def pair(part):
            return torch.from_numpy(x[part]), torch.from_numpy(y[part])

        return Splits(train=pair(slice(0, n_train)), val=pair(slice(n_train, n_train + n_val)),
                      test=pair(slice(n_train + n_val, None)), inverse=lambda v: np.asarray(v) * std + mean,
                      files=[self.path or _airline_file()])

    def _read(self) -> np.ndarray:
        if self.path is None:
            from aeon.datasets import load_airline

            return np.asarray(load_airline(), dtype=np.float64)
        return read_csv_column(self.path, self.column, self.missing, self.text)


def window_starts(values: np.ndarray, window: int) -> np.ndarray:
    """Start of every window of ``window`` values plus a target that holds no gap (NaN)."""
    gaps = np.concatenate([[0], np.cumsum(np.isnan(values))])  # gaps[i]: NaNs among values[:i]
    starts = np.arange(max(0, len(values) - window))
    return starts[gaps[starts + window + 1] == gaps[starts]]


def _airline_file() -> Path:
    import aeon.datasets

    return Path(aeon.datasets.__file__).parent / "data" / "Airline" / "Airline.csv"


def read_csv_column(path: Path, column: str | None, missing: str = "error",
                    text: delimited.TextFormat = delimited.TextFormat()) -> np.ndarray:
    """The column as floats, checked; with ``missing=drop`` gaps stay NaN (``window_starts`` skips them).
    The separator, decimal mark and encoding as ``pipeline.datasets.delimited`` finds them, unless given."""
    frame, read_as = delimited.read_delimited(path, text)
    if column is None or column not in frame.columns:
        import pandas as pd

        numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
        what = "dataset.column is not set" if column is None else f"dataset.column={column!r} is not a column of {path}"
        delimited.check_not_one_column(frame, path, read_as, what)
        wanted = None if column is None else column.strip().casefold()
        near = [c for c in frame.columns if str(c).strip().casefold() == wanted]
        if near:  # ' value ' or 'Value' in the header: the difference is invisible in a list of names
            raise PipelineError(f"{what} (dataset.path={str(path)!r}), but {str(near[0])!r} is (spaces or case "
                                "differ).",
                                f"Set dataset.column={str(near[0])!r} (quoted as shown), or fix the header.")
        raise PipelineError(f"{what} (dataset.path={str(path)!r}).",
                            f"Set dataset.column to one of its numeric columns: {delimited.names(numeric) or '(none)'} "
                            f"(all columns: {delimited.names(frame.columns)}).")
    delimited.check_number_notation(frame[column], path, column, read_as["decimal"])
    return _checked_values(frame[column], path, column, missing)


def _checked_values(raw, path: Path, column: str, missing: str) -> np.ndarray:
    import pandas as pd

    where = f"dataset.column={column!r} of {path}"
    if pd.api.types.is_bool_dtype(raw):
        raise PipelineError(f"{where} holds true/false values, not numbers.",
                            "Pick a numeric column with dataset.column=...")
    numbers = pd.to_numeric(raw, errors="coerce")
    text = raw.notna() & numbers.isna()  # present, but not a number (NaN/"n/a"/empty are missing, not text)
    if text.any():
        raise PipelineError(f"{where} holds values that are not numbers: {delimited.lines(raw, text, show=True)}.",
                            "Fix those cells, or pick a numeric column with dataset.column=...")
    values = numbers.to_numpy(dtype=np.float64)
    infinite = np.isinf(values)
    if infinite.any():
        raise PipelineError(f"{where} holds infinite values: {delimited.lines(raw, infinite, show=True)}.",
                            "Replace them with real values (an infinite value is not a missing one), or delete "
                            "those lines and set dataset.missing=drop.")
    gaps = np.isnan(values)
    if not gaps.any():
        return values
    if missing == "error":
        raise PipelineError(f"{where} has {int(gaps.sum())} missing value(s): {delimited.lines(raw, gaps)}.",
                            "Fill them in the file, or say how to treat them: dataset.missing=drop (no window "
                            "spans a gap) or dataset.missing=interpolate (linear between neighbours).")
    if missing == "interpolate":
        filled = pd.Series(values).interpolate(method="linear", limit_area="inside").to_numpy()
        present = np.flatnonzero(~np.isnan(filled))
        return filled[present[0]:present[-1] + 1] if len(present) else filled[:0]
    return values  # drop: the gaps stay NaN and no window spans them
