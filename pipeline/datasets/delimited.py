"""Delimited text files (CSV, TSV, a spreadsheet's export) read as pandas frames, with errors that name the
file, its lines and the setting to change; shared by ``dataset=table`` and ``dataset=series``.

The separator follows the extension unless given; a file that would read as one column whose name holds
``;``, a tab or ``|`` is read with that separator (what Excel writes in locales with a decimal comma).
Columns whose every number has a decimal comma (``58,44``) are read as numbers when the separator is not
a comma; in a comma-separated file such a column is ambiguous (a thousands separator?) and refused by
``check_number_notation`` rather than taken for text.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import limits
from pipeline.errors import PipelineError

SHOWN_LINES = 5
# What dataset.separator may name besides a single character (a tab is hard to type on a command line).
SEPARATOR_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}
# Separators tried when a file read by its extension has one column whose name holds one of them.
OTHER_SEPARATORS = (";", "\t", "|")
DECIMALS = {".": ".", ",": ",", "point": ".", "dot": ".", "comma": ","}  # a ',' needs quoting for Hydra
FALLBACK_ENCODINGS = ("utf-8", "cp1252")  # tried in turn without dataset.encoding
COMPRESSED = (".gz", ".bz2", ".xz", ".zip", ".zst", ".tar")
# A number with digit groups: "1.234,5", "1,234.5", "1 234", "1'234" (no-break spaces as characters: pandas'
# Arrow-backed strings match with RE2, which has no \u escapes).
GROUPED_NUMBER = r"[+-]?\d{1,3}(?:[.,' " + "\u00a0\u202f" + r"]\d{3})+(?:[.,]\d+)?"


@dataclass(frozen=True)
class TextFormat:
    """How to read a delimited file, as ``dataset.separator``/``decimal``/``encoding`` say (None: found)."""

    separator: str | None = None
    decimal: str | None = None
    encoding: str | None = None

    @classmethod
    def from_config(cls, separator: str | None, decimal: str | None, encoding: str | None) -> "TextFormat":
        """Checked, with the names a command line can carry (tab, semicolon, comma ...) made characters."""
        return cls(parse_separator(separator), parse_decimal(decimal), parse_encoding(encoding))


class NotDecodable(PipelineError):
    """The file's bytes are not text in the encoding tried."""


def read_delimited(path: Path, text: TextFormat = TextFormat(), by_extension: dict[str, str] | None = None):
    """The file as a DataFrame and how it was read: ``{"separator", "decimal", "encoding", "detected": [...]}``.
    Without an encoding: UTF-16/32 by a byte-order mark, else UTF-8 (its mark skipped), else Windows-1252,
    what Excel writes in Western Europe and the Americas (a file in neither stops the run, naming
    ``dataset.encoding``)."""
    separator, decimal, encoding = text.separator, text.decimal, text.encoding
    chosen = encoding or _encoding_by_bom(path)
    candidates = [chosen] if chosen else list(FALLBACK_ENCODINGS)
    for candidate in candidates:
        try:
            frame, read_as = _read_with(path, separator, decimal, by_extension or {}, candidate)
        except NotDecodable:
            if candidate == candidates[-1]:
                raise
            continue
        if encoding is None and candidate != "utf-8":
            read_as["detected"].append("encoding")
        return frame, read_as


def check_not_one_column(frame, path: Path, read_as: dict, what: str) -> None:
    """A header that reads as one name holding another separator: the file was read with the wrong one
    (``dataset.separator`` set to another). ``what``: what the run was looking for, for the message."""
    header = str(frame.columns[0]) if len(frame.columns) == 1 else ""
    found = next((sep for sep in (";", "\t", "|", ",") if sep in header), None)
    if found:
        raise PipelineError(f"{what}: {path} reads as one column named {header[:80]!r}, its fields separated by "
                            f"{found!r}, not by {read_as.get('separator', ',')!r}.",
                            f"Set dataset.separator={spelled(found)} (or leave it unset: the separator is then "
                            "found from the header).")


def _encoding_by_bom(path: Path) -> str | None:
    """UTF-16 or UTF-32 by the byte-order mark (Excel's "Unicode text" is UTF-16): the Windows-1252 fallback
    would read their bytes as characters. Compressed files are left to pandas."""
    import codecs

    if path.suffix.lower() in COMPRESSED or not path.is_file():
        return None
    try:
        with path.open("rb") as file:
            head = file.read(4)
    except OSError:
        return None  # read_csv says why, with the path
    for bom, name in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                      (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if head.startswith(bom):
            return name
    return None


def _read_with(path: Path, separator: str | None, decimal: str | None, by_extension: dict[str, str], encoding: str):
    detected = []
    if separator is None:
        suffixes = [s.lower() for s in path.suffixes]
        separator = next((by_extension[s] for s in suffixes if s in by_extension), ",")
        found = _separator_in_header(path, separator, encoding)
        if found:  # "a;b;c" would read as one column: the file's own separator is in its header
            separator = found
            detected.append("separator")
    frame = read_csv(path, separator, decimal or ".", encoding)
    if decimal is None:
        decimal = "."
        if separator != "," and _decimal_comma_columns(frame):  # a comma cannot be both separator and decimal
            decimal, frame = ",", read_csv(path, separator, ",", encoding)
            detected.append("decimal")
    return frame, {"separator": separator, "decimal": decimal, "encoding": encoding, "detected": detected}


def _separator_in_header(path: Path, separator: str, encoding: str = "utf-8") -> str | None:
    """Another separator when the header read with ``separator`` is one name holding it, and the first rows
    split into as many fields with it (a one-column file named "price|usd" keeps its name)."""
    import pandas as pd

    try:
        columns = pd.read_csv(path, sep=separator, nrows=0, encoding=encoding).columns
        header = str(columns[0]) if len(columns) == 1 else ""
        found = next((sep for sep in OTHER_SEPARATORS if sep in header), None)
        if found is None:
            return None
        rows = pd.read_csv(path, sep=found, nrows=5, header=None, skiprows=1, encoding=encoding)
    except Exception:  # noqa: BLE001 - unreadable: read_csv says why, with the path
        return None
    return found if rows.shape[1] == header.count(found) + 1 else None


def _decimal_comma_columns(frame) -> list[str]:
    """Text columns whose every value is a number written with a decimal comma (at least one has one)."""
    return [str(c) for c in frame.columns if _has_decimal_commas(frame[c])]


def _text_values(column):
    """The present cells of a column pandas read as text, stripped; None for a numeric or bool column."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return None
    return column.dropna().astype(str).str.strip()


def _has_decimal_commas(column) -> bool:
    """Every present value a number, some written with a decimal comma (``58,44``), the others integers."""
    import pandas as pd

    present = _text_values(column)
    if present is None or present.empty or pd.to_numeric(present, errors="coerce").notna().all():
        return False
    commas = present.str.fullmatch(r"[+-]?\d*,\d+(?:[eE][+-]?\d+)?")
    return bool(commas.any() and (commas | present.str.fullmatch(r"[+-]?\d+")).all())


def check_number_notation(column, path: Path, name: str, decimal: str, as_categories: str | None = None) -> None:
    """Numbers that pandas read as text would silently become text (categories, a target with one class per
    value, or a series that is not numbers): refused, naming how to read them. A decimal comma read with a
    decimal point; numbers with thousands separators (``1.234,5``, ``1,234.5``, ``1 234``). ``as_categories``:
    how this dataset would keep the values as text. (Numbers with a decimal point read with a comma are text
    to pandas but numbers to ``pd.to_numeric``: they are read right.)"""
    keep = f"; to treat the values as categories, {as_categories}." if as_categories else "."
    if decimal != "," and _has_decimal_commas(column):
        example = str(column.dropna().iloc[0])
        raise PipelineError(f"Column {name!r} of {path} holds numbers written with a decimal comma ({example!r}), "
                            "but the file is read with a decimal point.",
                            f"Set dataset.decimal=comma if {example!r} is a decimal number; if the comma separates "
                            "thousands, write the numbers without it" + keep)
    example = _grouped_number(column)
    if example is not None:
        raise PipelineError(f"Column {name!r} of {path} holds numbers written with thousands separators "
                            f"({example!r}): they would be read as text.",
                            "Save the numbers without thousands separators (in a spreadsheet: a number format "
                            "without them)" + keep)


def _grouped_number(column) -> str | None:
    """A text column whose every value is a number with digit groups (``1.234,5``, ``1,234.5``, ``1 234``,
    ``1'234``): its first such value, else None."""
    present = _text_values(column)
    if present is None or present.empty:
        return None
    grouped = present.str.fullmatch(GROUPED_NUMBER)
    if not grouped.any() or not (grouped | present.str.fullmatch(r"[+-]?\d+(?:[.,]\d+)?")).all():
        return None
    return str(present[grouped].iloc[0])


def parse_separator(value: str | None) -> str | None:
    if value is None:
        return None
    text = SEPARATOR_NAMES.get(str(value).casefold(), str(value))
    if len(text) != 1 or text in "\"\r\n" or text.isalnum():
        raise PipelineError(f"dataset.separator={value!r} is not a field separator.",
                            "Use one character (',' ';' '|'), or tab, semicolon, comma, pipe or space; "
                            "null finds it from the file's extension and header.")
    return text


def parse_encoding(value: str | None) -> str | None:
    import codecs

    if value is None:
        return None
    try:
        return codecs.lookup(str(value)).name
    except LookupError:
        raise PipelineError(f"dataset.encoding={value!r} is not an encoding Python knows.",
                            "Use e.g. utf-8, utf-16, cp1252, latin-1 or shift_jis; null tries UTF-8, then "
                            "Windows-1252.") from None


def parse_decimal(value: str | None) -> str | None:
    if value is None:
        return None
    if str(value).casefold() in DECIMALS:
        return DECIMALS[str(value).casefold()]
    raise PipelineError(f"dataset.decimal={value!r} is not a decimal mark.",
                        "Use point or comma ('.' or ','); null reads a column whose every number has a decimal "
                        "comma as such when the separator is not a comma.")


def spelled(separator: str) -> str:
    return next((name for name, sep in SEPARATOR_NAMES.items() if sep == separator and name.isalpha()),
                repr(separator))


def read_csv(path: Path, separator: str = ",", decimal: str = ".", encoding: str = "utf-8"):
    import pandas as pd

    if path.is_dir():
        raise PipelineError(f"dataset.path={str(path)!r} is a directory, not a CSV file.",
                            "Point dataset.path at a CSV file.")
    if path.exists() and not path.is_file():
        raise PipelineError(f"dataset.path={str(path)!r} is not a regular file (a device, a pipe or a socket).",
                            "Point dataset.path at a CSV file.")
    if not path.is_file():
        raise PipelineError(f"dataset.path={str(path)!r} does not exist.", "Point dataset.path at a CSV file.")
    limits.check_file(path, "dataset.path")  # a gzip bomb is refused before pandas expands it
    try:
        # An empty cell of a one-column file is a blank line: kept (as missing), never silently skipped.
        frame = pd.read_csv(path, sep=separator, decimal=decimal, encoding=encoding, skip_blank_lines=False)
    except UnicodeDecodeError as exc:
        raise NotDecodable(f"dataset.path={str(path)!r} is not text in {encoding} ({exc.reason}).",
                           "Set dataset.encoding to the file's encoding (e.g. utf-16, latin-1, shift_jis), or save "
                           "it as UTF-8.") from None
    except pd.errors.EmptyDataError:
        raise PipelineError(f"dataset.path={str(path)!r} is empty.", "Point dataset.path at a CSV file with a "
                            "header line and one value per line.") from None
    except (pd.errors.ParserError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"dataset.path={str(path)!r} is not a readable CSV text file ({reason}).",
                            "Fix the file where the reader stopped (an unclosed quote, a row of another separator), "
                            "or point dataset.path at a delimited text file with a header line.") from None
    except OSError as exc:
        raise PipelineError(f"dataset.path={str(path)!r} cannot be read: {exc.strerror or exc}.",
                            "Check the file's permissions, or point dataset.path at another file.") from None
    if not isinstance(frame.index, pd.RangeIndex):  # pandas takes the extra leading fields as an index
        raise PipelineError(f"dataset.path={str(path)!r} has rows with more fields than its header has names "
                            f"({len(frame.columns)}: {names(frame.columns)}), so the values would shift columns.",
                            "Check the separator (commas) and quoting: a number written with a thousands separator "
                            "(1,000.5) must be quoted or written without it (1000.5).")
    filled = np.flatnonzero(frame.notna().any(axis=1).to_numpy())
    frame = frame.iloc[:filled[-1] + 1] if len(filled) else frame.iloc[:0]  # blank lines at the end of the file
    if frame.empty:
        raise PipelineError(f"dataset.path={str(path)!r} has a header but no rows.", "Add rows of values.")
    return frame


def names(columns, limit: int = 10) -> str:
    shown = [str(c)[:40] for c in list(columns)[:limit]]
    return ", ".join(shown) + (f" and {len(columns) - limit} more" if len(columns) > limit else "")


def lines(raw, mask, show: bool = False) -> str:
    """'line 5 ('abc'), line 9 ('x')' in the file's own line numbers (the header is line 1)."""
    rows = np.flatnonzero(np.asarray(mask))
    shown = [f"line {row + 2}" + (f" ({str(raw.iloc[row])!r})" if show else "") for row in rows[:SHOWN_LINES]]
    more = f" and {len(rows) - SHOWN_LINES} more" if len(rows) > SHOWN_LINES else ""
    return ", ".join(shown) + more
