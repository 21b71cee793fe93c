"""A table with a target column: CSV, TSV or Parquet, classification or regression.

``dataset=table dataset.path=FILE dataset.target=COLUMN``. Features are every other column unless
``dataset.features=[...]``. The task follows the target (``dataset.task=auto``): text, true/false or
few distinct integers make a classification (classes are the sorted distinct values; a ``probability``
output is the probability of the second class), other numbers a regression (scaled with the training
split's mean/std; metrics in the original units). Text feature columns are categories (ids 1..K by
sorted training value, 0 for a value training never saw); numeric columns are fed raw and standardised
inside the exported graph (``pipeline.preprocessing.TableEncoding``) with training-split statistics.

Several target columns (``dataset.target=[a,b,c]``): 0/1 flags make a multi-label classification (the
columns are the classes), numbers a regression with one output per column, each scaled on its own.

CSV/TSV files are read by ``pipeline.datasets.delimited``: a spreadsheet's ``;``-separated export with
decimal commas in Windows-1252 as it is; numbers are never taken for text categories.

The artifacts take ``input`` [N, numeric columns] float32 in file order, or, when there are text
columns, ``numeric`` (float32) and ``categorical`` (int64 ids) in file order. Missing cells follow
``dataset.missing``: ``error`` (naming column and lines), ``drop`` (those rows) or ``interpolate``
(numeric columns linear between neighbouring rows, rows still incomplete dropped; a missing category
is the unknown one, id 0).
"""
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.datasets.base import DataSpec, InMemoryData, InputSpec, Splits
from pipeline.datasets.delimited import (
    TextFormat,
    check_not_one_column,
    check_number_notation,
    lines,
    names,
    read_delimited,
)
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)
TASKS = ("auto", "classification", "regression")
MAX_CLASSES_FROM_INTEGERS = 20  # an integer target with more distinct values is a regression (auto)
# A text column with a distinct value in more than this share of the training rows (and more than
# MANY_CATEGORIES of them) is most likely an identifier, a date or free text: one-hot, it is noise.
IDENTIFIER_SHARE = 0.5
MANY_CATEGORIES = 50
SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": ","}


class TableData(InMemoryData):
    suggested_models = "tabular_mlp"  # the models made for it (conf/model)

    def __init__(self, path: str | None = None, target: str | None = None, features: list[str] | None = None,
                 categorical: list[str] | None = None, task: str = "auto", missing: str = "error",
                 test_fraction: float = 0.2, separator: str | None = None, decimal: str | None = None,
                 encoding: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if path is None or not str(path).strip():
            raise PipelineError("dataset=table needs dataset.path: a CSV, TSV or Parquet file.",
                                "Set dataset.path=FILE dataset.target=<the label column>.")
        self.target_columns = _target_columns(target)
        if task not in TASKS:
            raise PipelineError(f"dataset.task={task!r} is not a choice.", f"Use one of: {', '.join(TASKS)}.")
        # one column: the label or value; several: 0/1 flags (multi-label) or values (multi-output regression)
        self.path, self.target = Path(path).expanduser(), ", ".join(self.target_columns)
        self.features = None if features is None else [str(f) for f in features]
        self.categorical = [str(c) for c in categorical or []]
        self.task, self.missing, self.test_fraction = task, str(missing), test_fraction
        self.text = TextFormat.from_config(separator, decimal, encoding)
        self._read_as: dict = {}
        self._spec: DataSpec | None = None
        self._encoding = None
        self._target_scaling: dict | None = None

    # --- reading and checking ---
    def load(self) -> Splits:
        frame, self._read_as = read_table(self.path, self.text)
        frame = self._checked_frame(frame)
        several = len(self.target_columns) > 1
        task = self._several_task(frame[self.target_columns]) if several else self._task(frame[self.target])
        frame = self._without_missing(frame)
        y, classes, inverse = self._several_targets(frame[self.target_columns], task) if several else \
            self._targets(frame[self.target], task)
        train, val, test = self._split_rows(len(frame), y if task == "classification" else None)
        numeric = [c for c in self.features if c not in self._text_columns]
        text = [c for c in self.features if c in self._text_columns]
        x_num = frame[numeric].to_numpy(dtype=np.float32) if numeric else None
        categories = {c: sorted({str(v) for v in frame[c].iloc[train].dropna()}) for c in text}
        _warn_of_identifiers(categories, len(train), self.path)
        x_cat = np.stack([_ids(frame[c], categories[c]) for c in text], axis=1) if text else None
        if inverse is not None:  # regression: scaled with the training rows' statistics, per column
            y, inverse = self._scaled(y.reshape(len(y), -1), train)
        self._make_encoding(x_num, train, numeric, categories)
        self._spec = DataSpec(self._input_specs(numeric, x_num, categories), task=task, classes=classes,
                              model_input_shape=[self._encoding.width],
                              target_shape=[len(self.target_columns)] if several and task == "regression" else None)

        def pair(rows):
            parts = {"numeric": x_num, "categorical": x_cat}
            named = {name: torch.from_numpy(np.ascontiguousarray(v[rows])) for name, v in parts.items()
                     if v is not None}
            # numbers alone: one input, as every single-input dataset; with categories: named inputs
            return named["numeric"] if x_cat is None else named, torch.from_numpy(np.ascontiguousarray(y[rows]))

        return Splits(train=pair(train), val=pair(val), test=pair(test), inverse=inverse, files=[self.path])

    def _scaled(self, y: np.ndarray, train: np.ndarray):
        """[N, K] values standardised with the training rows' mean/std per column, and the inverse. The network
        learns (and its artifacts return) the scaled values: an app multiplies back (data.target_scaling)."""
        mean, std = y[train].mean(axis=0), y[train].std(axis=0) + 1e-8
        scaled = ((y - mean) / std).astype(np.float32)
        if len(self.target_columns) == 1:
            self._target_scaling = {"column": self.target, "mean": float(mean[0]), "std": float(std[0]),
                                    "original": "output * std + mean"}
            return scaled, _unscale(float(mean[0]), float(std[0]))
        self._target_scaling = {"columns": list(self.target_columns), "mean": [float(v) for v in mean],
                                "std": [float(v) for v in std], "original": "output[:, i] * std[i] + mean[i]"}
        return scaled, _unscale_columns(mean, std)

    def _checked_frame(self, frame):
        columns = [str(c) for c in frame.columns]
        frame.columns = columns
        check_not_one_column(frame, self.path, self._read_as, f"dataset.target={self.target!r}")
        for target in self.target_columns:
            if target not in columns:
                near = [c for c in columns if c.strip().casefold() == target.strip().casefold()]
                hint = (f"Set dataset.target={near[0]!r} (spaces or case differ)." if near
                        else f"Set dataset.target to one of: {names(columns, 30)}.")
                raise PipelineError(f"dataset.target={target!r} is not a column of {self.path}.", hint)
        unknown = [f for f in (self.features or []) + self.categorical if f not in columns]
        if unknown:
            raise PipelineError(f"dataset.features/categorical name column(s) {', '.join(unknown)} that {self.path} "
                                "does not have.", f"Its columns: {names(columns, 30)}.")
        self.features = self.features or [c for c in columns if c not in self.target_columns]
        listed = [t for t in self.target_columns if t in self.features]
        if listed:
            raise PipelineError(f"dataset.features lists the target column {listed[0]!r}.",
                                "Leave the target out of the features.")
        if not self.features:
            raise PipelineError(f"{self.path} has no column besides the target {self.target!r}.",
                                "Add feature columns, or name them with dataset.features=[...].")
        for column in [c for c in [*self.features, *self.target_columns] if c not in self.categorical]:
            check_number_notation(frame[column], self.path, column, self._read_as.get("decimal", "."),
                                  as_categories=f"list the column in dataset.categorical=[{column}]")
        self._text_columns = {c for c in self.features if c in self.categorical or _is_text(frame[c])}
        for column in self.features:
            if column not in self._text_columns:
                _check_numeric(frame[column], self.path, column)
        return frame[[*self.features, *self.target_columns]]

    def _task(self, target) -> str:
        if self.task != "auto":
            return self.task
        import pandas as pd

        if _is_text(target) or pd.api.types.is_bool_dtype(target):
            return "classification"
        values = pd.to_numeric(target, errors="coerce").dropna()
        integral = bool(np.all(np.mod(values.to_numpy(dtype=np.float64), 1) == 0)) if len(values) else False
        return "classification" if integral and values.nunique() <= MAX_CLASSES_FROM_INTEGERS else "regression"

    def _without_missing(self, frame):
        """The frame without missing cells, by ``dataset.missing``."""
        import pandas as pd

        gaps = frame.isna()
        if not gaps.to_numpy().any():
            return frame
        if self.missing == "error":
            column = next(c for c in frame.columns if gaps[c].any())
            raise PipelineError(f"Column {column!r} of {self.path} has {int(gaps[column].sum())} missing value(s): "
                                f"{lines(frame[column], gaps[column])}"
                                + (f" (and {int(gaps.any(axis=1).sum())} incomplete rows in all)"
                                   if gaps.to_numpy().sum() > gaps[column].sum() else "") + ".",
                                "Fill them in the file, or set dataset.missing=drop (leave those rows out) or "
                                "dataset.missing=interpolate (numeric columns: linear between neighbouring rows).")
        if self.missing == "interpolate":
            frame = frame.copy()
            for column in frame.columns:
                if column not in self._text_columns and column not in self.target_columns and gaps[column].any():
                    numbers = pd.to_numeric(frame[column], errors="coerce")
                    frame[column] = numbers.interpolate(method="linear", limit_area="inside")
        # interpolate: a missing category is the unknown one (id 0); drop: its row goes
        checked = [c for c in frame.columns if self.missing == "drop" or c not in self._text_columns]
        keep = frame[checked].notna().all(axis=1).to_numpy()
        if not keep.any():
            raise PipelineError(f"Every row of {self.path} has a missing cell: nothing is left with "
                                f"dataset.missing={self.missing}.", "Fill the missing cells in the file.")
        return frame[keep].reset_index(drop=True)

    def _several_task(self, targets) -> str:
        """Several target columns: all 0/1 (or true/false) flags make a multi-label classification, all numbers
        a regression with one output per column."""
        import pandas as pd

        flags = all(_flags(targets[c]) for c in targets.columns)
        numbers = all(pd.api.types.is_numeric_dtype(targets[c]) or pd.api.types.is_bool_dtype(targets[c])
                      for c in targets.columns)
        wanted = {"classification": flags, "regression": numbers, "auto": flags or numbers}[self.task]
        if not wanted:
            odd = next(c for c in targets.columns if not (_flags(targets[c]) if self.task == "classification" else
                                                          pd.api.types.is_numeric_dtype(targets[c])))
            raise PipelineError(f"The target columns {self.target} of {self.path} are neither all 0/1 flags (a "
                                f"multi-label classification) nor all numbers (one regression output each): "
                                f"{odd!r} is not" + (" 0/1." if self.task == "classification" else " numbers."),
                                "Name target columns of one kind in dataset.target=[...], or one column for a "
                                "classification with one class per row.")
        return "multi_label" if flags and self.task != "regression" else "regression"

    def _several_targets(self, targets, task: str):
        """[N, K] 0/1 int64 with the columns as class names, or [N, K] values (scaled in ``load``)."""
        if task == "multi_label":
            return targets.to_numpy(dtype=np.float64).astype(np.int64), list(self.target_columns), None
        values = targets.to_numpy(dtype=np.float64)
        infinite = ~np.isfinite(values)
        if infinite.any():
            column = self.target_columns[int(np.flatnonzero(infinite.any(axis=0))[0])]
            raise PipelineError(f"The target column {column!r} of {self.path} holds infinite values: "
                                f"{lines(targets[column], infinite[:, self.target_columns.index(column)], show=True)}.",
                                "Replace them.")
        return values, None, True

    def _targets(self, target, task: str):
        import pandas as pd

        if task == "classification":
            values = target.astype(str) if _is_text(target) else target
            classes = sorted(pd.unique(values), key=_class_order)
            if len(classes) < 2:
                raise PipelineError(f"The target column {self.target!r} of {self.path} has one value "
                                    f"({classes[0]!r}): a classifier needs at least two classes.",
                                    "Pick another dataset.target, or add rows of the other classes.")
            index = {value: i for i, value in enumerate(classes)}
            return np.array([index[v] for v in values], dtype=np.int64), [str(c) for c in classes], None
        numbers = pd.to_numeric(target, errors="coerce")
        text = numbers.isna() & target.notna()
        if text.any():
            raise PipelineError(f"The target column {self.target!r} of {self.path} holds text, so it cannot be a "
                                f"regression target: {lines(target, text, show=True)}.",
                                "Set dataset.task=classification, or fix those cells.")
        values = numbers.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise PipelineError(f"The target column {self.target!r} of {self.path} holds infinite values: "
                                f"{lines(target, ~np.isfinite(values), show=True)}.", "Replace them.")
        return values, None, True

    def _split_rows(self, count: int, labels: np.ndarray | None):
        """Seeded train/val/test rows; per class for a classification, so that every class is in train."""
        rng = np.random.default_rng(int(self.seed))
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if labels is not None \
            else [np.arange(count)]
        train, val, test = [], [], []
        for rows in groups:
            rows = rows[rng.permutation(len(rows))]
            n_test = int(round(len(rows) * self.test_fraction))
            n_val = int(round(len(rows) * self.val_fraction))
            test.append(rows[:n_test])
            val.append(rows[n_test:n_test + n_val])
            train.append(rows[n_test + n_val:])
        parts = [np.sort(np.concatenate(p)) for p in (train, val, test)]
        if len(parts[0]) == 0 or len(parts[2]) == 0:
            raise PipelineError(f"{self.path} has {count} usable rows: too few for a train and a test split at "
                                f"dataset.test_fraction={self.test_fraction}.", "Use a larger table.")
        return parts

    def _make_encoding(self, x_num, train, numeric: list[str], categories: dict) -> None:
        from pipeline.preprocessing import TableEncoding

        mean = x_num[train].mean(axis=0) if x_num is not None else np.zeros(0)
        std = x_num[train].std(axis=0) if x_num is not None else np.zeros(0)
        std = np.where(std > 1e-8, std, 1.0)  # a constant column is left unscaled (not divided by zero)
        self._encoding = TableEncoding([float(v) for v in mean], [float(v) for v in std],
                                       [len(v) for v in categories.values()])

    def _input_specs(self, numeric: list[str], x_num, categories: dict) -> list[InputSpec]:
        specs = []
        if numeric:
            low, high = float(np.nanmin(x_num)), float(np.nanmax(x_num))
            specs.append(InputSpec("input" if not categories else "numeric", [len(numeric)], "float32", layout="NC",
                                   value_range=[low, high], columns=numeric))
        if categories:
            specs.append(InputSpec("categorical", [len(categories)], "int64", layout="NC",
                                   columns=list(categories),
                                   categories={c: ["<unknown>", *values] for c, values in categories.items()}))
        return specs

    # --- what the stages ask ---
    def spec(self) -> DataSpec:
        self.splits  # noqa: B018 - the spec is known once the table is read
        return self._spec

    def preprocessing(self):
        self.splits  # noqa: B018
        return self._encoding

    def report(self) -> dict:
        self.splits  # noqa: B018
        scaling = {"target_scaling": self._target_scaling} if self._target_scaling else {}
        return {**scaling, **({"read_as": self._read_as} if self._read_as else {})}


def read_table(path: Path, text: TextFormat = TextFormat()):
    """A CSV/TSV (by extension; .gz and friends too) or Parquet file as a DataFrame, with clear errors, and
    how a delimited file was read: ``{"separator", "decimal", "encoding", "detected": [...]}`` ({} for
    Parquet)."""
    import pandas as pd

    suffixes = [s.lower() for s in path.suffixes]
    if any(s in (".parquet", ".pq") for s in suffixes):
        if not path.is_file():
            raise PipelineError(f"dataset.path={str(path)!r} does not exist.", "Point dataset.path at a table file.")
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a damaged file
            raise PipelineError(f"dataset.path={str(path)!r} is not a readable Parquet file ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200]}).", "Point dataset.path at a Parquet file.") \
                from None
        if frame.empty:
            raise PipelineError(f"dataset.path={str(path)!r} has no rows.", "Use a table with data.")
        return frame, {}
    return read_delimited(path, text, SEPARATORS)


def _warn_of_identifiers(categories: dict[str, list[str]], rows: int, path: Path) -> None:
    """One category per row teaches nothing a new row can use (its id is the unknown 0), and widens the
    network by as many inputs: named, so that the user can leave the column out."""
    for column, values in categories.items():
        if len(values) > MANY_CATEGORIES and len(values) > IDENTIFIER_SHARE * rows:
            log.warning("table: column %r of %s has %d distinct values in %d training rows: an identifier, a date or "
                        "free text? As categories it adds %d inputs that a new row cannot use; leave it out with "
                        "dataset.features=[...] (or derive numbers from it).", column, path.name, len(values), rows,
                        len(values))


def _is_text(column) -> bool:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return False
    present = column.dropna()
    return len(present) > 0 and pd.to_numeric(present, errors="coerce").isna().all()


def _check_numeric(column, path: Path, name: str) -> None:
    """A feature column of numbers (missing cells aside): numbers mixed with text are refused, named; so are
    dates and durations (a Parquet datetime column would otherwise be fed as float32 nanoseconds)."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(column) or pd.api.types.is_timedelta64_dtype(column) or \
            isinstance(column.dtype, pd.PeriodDtype):
        raise PipelineError(f"Column {name!r} of {path} holds dates or durations ({column.dtype}), which are not "
                            "features a network can take as they are.",
                            f"Derive numbers from it in the file (days since a date, day of week ...) and leave it "
                            f"out with dataset.features=[...], or read it as categories with "
                            f"dataset.categorical=[{name}].")
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        numbers = pd.to_numeric(column, errors="coerce")
        text = column.notna() & numbers.isna()
        if text.any():
            raise PipelineError(f"Column {name!r} of {path} mixes numbers and text: {lines(column, text, show=True)}.",
                                f"Fix those cells, or treat the whole column as categories with "
                                f"dataset.categorical=[{name}].")
        values = numbers.to_numpy(dtype=np.float64)
    infinite = np.isinf(values)
    if infinite.any():
        raise PipelineError(f"Column {name!r} of {path} holds infinite values: {lines(column, infinite, show=True)}.",
                            "Replace them with real values.")


def _ids(column, values: list[str]) -> np.ndarray:
    """Category ids: 1..K by the sorted training values, 0 for a value training never saw (or a missing one)."""
    index = {value: i + 1 for i, value in enumerate(values)}
    return np.array([0 if v is None or v != v else index.get(str(v), 0) for v in column], dtype=np.int64)


def _class_order(value):
    """Numbers numerically, text alphabetically."""
    return (0, float(value), "") if isinstance(value, int | float | np.integer | np.floating) else (1, 0.0, str(value))


def _unscale(mean: float, std: float):
    return lambda v: np.asarray(v) * std + mean


def _unscale_columns(mean: np.ndarray, std: np.ndarray):
    """Per column of [N, K] values, also when they come flattened row by row."""
    return lambda v: (np.asarray(v).reshape(-1, len(mean)) * std + mean).reshape(np.shape(v))


def _target_columns(target) -> list[str]:
    """dataset.target as a list of column names: one, or several (a list)."""
    several = list(target) if isinstance(target, Sequence) and not isinstance(target, str) else None  # ListConfig
    names_given = [str(t) for t in several] if several is not None else \
        ([] if target is None or not str(target).strip() else [str(target)])
    if not names_given or any(not n.strip() for n in names_given):
        raise PipelineError("dataset=table needs dataset.target: the column to predict (or a list of them).",
                            "Set dataset.target=<column name>, or dataset.target=[a,b,c] for several.")
    if len(set(names_given)) != len(names_given):
        raise PipelineError(f"dataset.target names a column twice: {names_given}.", "Name each target column once.")
    return names_given


def _flags(column) -> bool:
    """0/1 or true/false in every present cell."""
    import pandas as pd

    present = column.dropna()
    if pd.api.types.is_bool_dtype(column):
        return True
    return bool(pd.api.types.is_numeric_dtype(column) and len(present) and present.isin([0, 1]).all())
