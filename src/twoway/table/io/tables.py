"""Reading tables: long tables from CSV text or pandas DataFrames, wide arrays and frames.

A long table file is CSV text in UTF-8, plain or gzip-compressed (``.csv.gz``, recognised
by its first bytes), separated by commas, or by semicolons with decimal commas
(``1,5`` for 1.5, as European spreadsheets save CSV), or by tabs; or a Parquet file
(read with pyarrow, if installed).

The functions here turn what a user gives into the fields of a
:class:`~twoway.table.data.TwoWayData` (values and se on the (replicate, row, col)
grid, labels, source column names); the container checks them in its
``__post_init__``. Every problem with the input raises
:class:`twoway.errors.DataError` with a one-sentence message that names the
column, the line of the table or the entry at fault.

Lines of a long table are referred to as "data row n": the n-th line of data,
counted from 1 with the header not counted; for a CSV file the line number in
the file is given as well.

pandas is imported on first use, never when this module is imported.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twoway.errors import DataError, TwowayWarning
from twoway.table.io._common import list_names as _list_names
from twoway.table.io._common import number_text as _number_text
from twoway.table.io._common import quote as _q
from twoway.table.io._common import read_bytes

# Deferred imports: pandas (heavy to import) are imported inside the functions that use them, so importing
# this module stays light.

if TYPE_CHECKING:
    import pandas

__all__ = ["csv_header", "read_csv", "long_table", "numeric_array", "align_frame", "decode", "covariate_column",
           "is_missing_value", "parse_number"]


def _pd():
    """pandas, imported on first use (``import twoway`` stays light)."""
    import pandas

    return pandas


# Text that stands for a missing number (pandas' default NA strings).
_NA_TOKENS = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)

_NUMBER = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?)", re.IGNORECASE
)

# A number written with a decimal comma: 1,5  -0,25  ,5  1,5e-3
_DECIMAL_COMMA = re.compile(r"[+-]?(?:\d+,\d*|,\d+)(?:[eE][+-]?\d+)?")

# Leading bytes of common non-CSV files, with how to name them.
_MAGIC = (
    (b"PK\x03\x04", "a zip archive (an .xlsx workbook is one)"),
    (b"PAR1", "a Parquet file"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"\xd0\xcf\x11\xe0", "an old Excel (.xls) workbook"),
    (b"%PDF", "a PDF document"),
    (b"\x89HDF", "an HDF5/netCDF file"),
    (b"CDF\x01", "a netCDF file"),
    (b"CDF\x02", "a netCDF file"),
)


# --------------------------------------------------------------------------
# reading CSV files
# --------------------------------------------------------------------------


def csv_header(path: str | Path) -> list[str]:
    """The column names on the first non-blank line of a CSV file (or of a Parquet file's schema).

    Raises
    ------
    twoway.errors.DataError
        As :meth:`twoway.table.data.TwoWayData.from_csv` for a file that is missing, binary or empty.
    """
    path = Path(path)
    raw = read_bytes(path, f"file {_q(path)}")
    if _is_parquet(path, raw):
        return [str(c) for c in _read_parquet(path).columns]
    text = _read_text(path, raw)
    delimiter = _delimiter(text)
    for line in text.splitlines():
        if line.strip():
            return [name.strip() for name in next(csv.reader([line], delimiter=delimiter))]
    raise DataError(f"The file {_q(path)} is empty: it has no header line.")


def _is_parquet(path: Path, raw: bytes) -> bool:
    return raw.startswith(b"PAR1") or path.suffix.lower() in (".parquet", ".pq")


def _read_parquet(path: Path) -> pandas.DataFrame:
    """A Parquet file as a frame (pyarrow); DataError naming the package when it is missing."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DataError(f"Reading the Parquet file {_q(path)} needs the package 'pyarrow', which is not "
                        "installed (pip install pyarrow); or save the table as CSV.") from None
    try:
        df = _pd().read_parquet(path, engine="pyarrow")
    except Exception as exc:  # any reader failure: not a usable Parquet file
        raise DataError(f"The file {_q(path)} is not a readable Parquet file ({type(exc).__name__}: {exc}).") from None
    if df.index.name is not None or not isinstance(df.index, _pd().RangeIndex):
        df = df.reset_index()
    return df


def _delimiter(text: str) -> str:
    """The field separator of CSV ``text``: the one of ``,``, ``;`` and tab that splits its header most."""
    for line in text.splitlines():
        if line.strip():
            widths = {d: len(next(csv.reader([line], delimiter=d))) for d in (",", ";", "\t")}
            best = max(widths.values())
            return "," if widths[","] == best else ";" if widths[";"] == best else "\t"
    return ","


def _read_text(path: Path, raw: bytes | None = None) -> str:
    """Read a CSV file (plain or gzip-compressed) as UTF-8 text, refusing binary files.

    Returns
    -------
    str
        The text, without a byte-order mark.
    """
    if raw is None:
        raw = read_bytes(path, f"file {_q(path)}")
    if raw.startswith(b"\x1f\x8b"):

        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"The file {_q(path)} is gzip-compressed but cannot be decompressed ({exc}).") from None
    for magic, kind in _MAGIC:
        if raw.startswith(magic):
            raise DataError(
                f"The file {_q(path)} is not a CSV text file; it looks like {kind}."
            )
    if b"\x00" in raw[:65536]:
        raise DataError(
            f"The file {_q(path)} is not a CSV text file; it holds binary data "
            "(NUL bytes; UTF-16 text is binary here, save it as UTF-8)."
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"The file {_q(path)} is not a CSV text file in UTF-8; "
            f"byte {exc.start} cannot be decoded."
        ) from None
    if not text.strip():
        raise DataError(f"The file {_q(path)} is empty.")
    return text


def read_csv(path: str | Path) -> tuple[pandas.DataFrame, np.ndarray | None]:
    """Read a long table file as a frame of strings, with the line of each record.

    The first non-blank line is the header; blank lines are skipped; a short
    record is padded with empty fields and empty trailing extra fields (a
    trailing comma) are dropped. The file may be gzip-compressed; its fields may
    be separated by commas, semicolons (then a decimal comma is read too: the
    frame's ``attrs["decimal"]`` is ``","``) or tabs. A Parquet file is read as
    it is (typed columns; ``lines`` is None).

    Parameters
    ----------
    path : str or pathlib.Path

    Returns
    -------
    df : pandas.DataFrame, n data lines, object (str) columns
    lines : numpy.ndarray, shape (n,), int
        1-based line in the file where each data record starts.

    Raises
    ------
    twoway.errors.DataError
        If the file does not exist, is empty, is not CSV text, has no data
        line or a line with more non-empty fields than its header.
    """
    path = Path(path)
    raw = read_bytes(path, f"file {_q(path)}")
    if _is_parquet(path, raw):
        df = _read_parquet(path)
        if len(df) == 0:
            raise DataError(f"The file {_q(path)} has a header but no data rows.")
        return df, None
    text = _read_text(path, raw)
    delimiter = _delimiter(text)
    reader = csv.reader(text.splitlines(keepends=True), skipinitialspace=True, strict=True, delimiter=delimiter)
    header: list[str] | None = None
    records: list[list[str]] = []
    lines: list[int] = []
    end = 0
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip() for f in fields]
                continue
            records.append(_fit_fields(fields, len(header), start, path))
            lines.append(start)
    except csv.Error as exc:
        raise DataError(
            f"The file {_q(path)} is not valid CSV; line {reader.line_num}: {exc}."
        ) from None
    if header is None:
        raise DataError(f"The file {_q(path)} is empty.")
    if not records:
        raise DataError(f"The file {_q(path)} has a header but no data rows.")
    df = _pd().DataFrame(records, columns=_pd().Index(header, dtype=object), dtype=object)
    df.attrs["decimal"] = "," if delimiter == ";" else "."
    return df, np.asarray(lines, dtype=np.int64)


def _fit_fields(fields: list[str], width: int, line: int, path: Path) -> list[str]:
    """Pad a short record with empty fields; drop empty trailing extra fields.

    Raises DataError when a record has more non-empty fields than the header.
    """
    if len(fields) <= width:
        return fields + [""] * (width - len(fields))
    if any(f.strip() for f in fields[width:]):
        raise DataError(
            f"The file {_q(path)} has a line with more fields than its header; "
            f"line {line} has {len(fields)} fields but the header has {width}."
        )
    return fields[:width]


# --------------------------------------------------------------------------
# long tables
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    """How to name a line of a long table in messages.

    Attributes
    ----------
    lines : numpy.ndarray or None, shape (n,)
        File line of each data row (None for a DataFrame).
    labels : dict
        Column name -> (n,) object array of parsed labels, for context.
    """

    lines: np.ndarray | None
    labels: dict

    def at(self, pos: int) -> str:
        """``data row 7 (line 8; treatment='T3', group='G2')``."""
        parts = [] if self.lines is None else [f"line {self.lines[pos]}"]
        context = ", ".join(f"{col}={_q(arr[pos])}" for col, arr in self.labels.items())
        if context:
            parts.append(context)
        return f"data row {pos + 1}" + (f" ({'; '.join(parts)})" if parts else "")

    def with_labels(self, labels: dict) -> _Rows:
        """A copy that also names the row by ``labels``."""
        return _Rows(self.lines, labels)


def long_table(
    df: pandas.DataFrame, *, roles: dict, lines: np.ndarray | None, source: str, zero_se: str = "error",
    covariates: Sequence[str] = (),
) -> dict[str, Any]:
    """The fields of a table read from a long frame, one line per cell.

    The body of :meth:`twoway.table.data.TwoWayData.from_long` and ``from_csv``.

    Parameters
    ----------
    df : pandas.DataFrame, n lines
    roles : dict
        Role (``row``, ``col``, ``value``, ``se``, ``replicate``) -> column name or None.
    lines : numpy.ndarray or None, shape (n,)
        File line numbers, for messages.
    source : str
        ``"the table"`` or the file name, for messages.
    zero_se : {"error", "none"}
        What an se of exactly 0 means: a mistake (``error``) or, like an
        empty se, no known error for that cell (``none``).
    covariates : sequence of str
        Columns to keep as covariates (for a formula in the mean). Every line
        with a value needs one in each; lines with a missing value need none.

    Returns
    -------
    dict
        Keyword arguments of :class:`~twoway.table.data.TwoWayData`: ``values`` and
        ``se`` (None without an se column), shape (R, N, K) with NaN where no
        line gives a value; ``row_labels``, ``col_labels``,
        ``replicate_labels`` in order of first appearance; ``names`` (the roles);
        ``covariates`` (None without covariates, else name -> (n_observed,) array
        in (replicate, row, col) C order over the observed cells: float64 when
        every value is a number, else object array of str).
    """
    _check_roles(roles)
    covariate_names = _check_covariate_names(covariates, roles)
    if len(df) == 0:
        where = "The table" if source == "the table" else f"The file {_q(source)}"
        raise DataError(f"{where} has no data rows.")
    columns = {
        role: _get_column(df, name, role, source)
        for role, name in roles.items()
        if name is not None
    }
    rows = _Rows(lines, {})
    label_roles = [r for r in ("replicate", "row", "col") if r in columns]
    labels = {role: _parse_labels(columns[role], roles[role], rows) for role in label_roles}
    rows = rows.with_labels({roles[role]: labels[role] for role in label_roles})
    decimal = df.attrs.get("decimal", ".")
    y = _parse_numbers(columns["value"], roles["value"], rows, decimal=decimal)
    _check_finite_long(y, roles["value"], rows, np.ones(y.shape, bool))
    se = None
    if "se" in columns:
        se = _parse_numbers(columns["se"], roles["se"], rows, decimal=decimal)
        _check_se_long(se, y, roles["se"], roles["value"], rows, zero_se=zero_se)
        warn_missing_se([rows.at(int(p)) for p in np.flatnonzero(~np.isnan(y) & np.isnan(se))[:_SHOWN]],
                        int((~np.isnan(y) & np.isnan(se)).sum()), int((~np.isnan(y)).sum()), roles["se"])
    rep = labels.get("replicate", np.full(len(df), "0", dtype=object))
    codes, uniques = zip(
        *(_pd().factorize(arr, sort=False) for arr in (rep, labels["row"], labels["col"]))
    )
    _check_duplicates(codes, [len(u) for u in uniques], roles, rows)
    shape = tuple(len(u) for u in uniques)
    values = _scatter(codes, y, shape)
    se_grid = None if se is None else _scatter(codes, np.where(np.isnan(y), np.nan, se), shape)
    covariate_columns = None
    if covariate_names:
        observed = np.flatnonzero(~np.isnan(y))
        flat = (codes[0][observed] * shape[1] + codes[1][observed]) * shape[2] + codes[2][observed]
        order = observed[np.argsort(flat, kind="stable")]  # the observed lines in (replicate, row, col) C order
        covariate_columns = {
            name: covariate_column(_get_column(df, name, "a covariate", source), name, rows, order, decimal=decimal)
            for name in covariate_names
        }
    return {
        "values": values,
        "se": se_grid,
        "row_labels": tuple(uniques[1]),
        "col_labels": tuple(uniques[2]),
        "replicate_labels": tuple(uniques[0]),
        "names": dict(roles),
        "covariates": covariate_columns,
    }


def _check_covariate_names(covariates: Any, roles: dict) -> tuple[str, ...]:
    """The covariate column names, checked: a sequence of names, none of them a role's column."""
    if isinstance(covariates, str):
        raise DataError(
            f"The covariates must be a list of column names; got the string {_q(covariates)} "
            "(for one column write [name]; twoway.table.covariates.required_variables(formula) lists a formula's)."
        )
    try:
        names = tuple(dict.fromkeys(covariates or ()))
    except TypeError:
        raise DataError(f"The covariates must be a list of column names; got {type(covariates).__name__}.") from None
    for name in names:
        if not isinstance(name, str | int) or name == "":
            raise DataError(f"The covariates must be column names; got {name!r}.")
        for role, column in roles.items():
            if column is not None and column == name:
                raise DataError(
                    f"The covariate column {_q(name)} is the {role} column; a covariate must be a column of its "
                    "own (copy it under another name to use it in the covariates formula)."
                )
    return names


def is_missing_value(x: Any) -> bool:
    """True for None, NaN, pandas.NA, NaT and text that stands for a missing value (``""``, ``NA``, ...)."""
    if isinstance(x, str):
        return x.strip() in _NA_TOKENS
    return _is_missing_scalar(x)


def parse_number(x: Any, *, decimal: str = ".") -> float | None:
    """A number from one entry of a table (NaN for NA); None when it is not one.

    With ``decimal=","`` text with a decimal comma (``-1,25``) is read too.
    """
    number = _parse_number(x)
    if number is None and decimal == "," and isinstance(x, str) and _DECIMAL_COMMA.fullmatch(x.strip()):
        number = float(x.strip().replace(",", "."))
    return number


def covariate_column(series: Any, column: str, rows: _Rows, order: np.ndarray, *, decimal: str = ".") -> np.ndarray:
    """One covariate column on the observed lines, in cell order.

    Parameters
    ----------
    series : pandas.Series, n lines
    column : str
        Its name, for messages.
    rows : _Rows
        How to name a line in messages.
    order : numpy.ndarray, shape (n_observed,), int
        The lines with a value, in (replicate, row, col) C order of their cells.
    decimal : {".", ","}
        The decimal mark of numbers written as text.

    Returns
    -------
    numpy.ndarray, shape (n_observed,)
        float64 when every value is a number (numbers written as text included), else
        an object array of str (stripped).

    Raises
    ------
    twoway.errors.DataError
        At the first line with a value but no covariate value (naming the line and its
        cell), or an infinite number.
    """
    # each distinct entry is read once (a covariate column has few distinct values, often)
    codes, uniques = _pd().factorize(series.to_numpy(dtype=object), use_na_sentinel=True)
    entries = uniques.tolist()
    bad_unique = np.asarray([is_missing_value(x) for x in entries] + [True], dtype=bool)
    missing = bad_unique[codes[order]]
    if missing.any():
        pos = int(np.min(order[missing]))  # the first such line in the file
        raise DataError(
            f"The covariate column {_q(column)} must have a value on every line with a value; "
            f"{rows.at(pos)} has none: fill it in or drop that line."
        )
    dtype = series.dtype
    numeric = _pd().api.types.is_numeric_dtype(dtype) and not _pd().api.types.is_bool_dtype(dtype)
    parsed = [None if isinstance(x, bool | np.bool_) else parse_number(x, decimal=decimal) for x in entries]
    if numeric or all(v is not None for v in parsed):
        try:
            numbers = np.asarray(parsed, dtype=np.float64)[codes[order]]
        except (TypeError, ValueError):  # e.g. complex numbers: text
            numbers = None
        if numbers is not None:
            bad = ~np.isfinite(numbers)
            if bad.any():
                pos = int(np.min(order[bad]))
                raise DataError(
                    f"The covariate column {_q(column)} must be finite; {rows.at(pos)} has "
                    f"{_number_text(numbers[int(np.argmax(order == pos))])}."
                )
            return numbers
    texts = np.empty(len(entries), dtype=object)
    texts[:] = [str(x).strip() for x in entries]
    return texts[codes[order]]


def _check_roles(roles: dict) -> None:
    """Raise DataError unless the column options are names and name different columns."""
    for role in ("row", "col", "value"):
        if roles[role] is None:
            raise DataError(f"The {role} column must be named; got None.")
    given = [(role, name) for role, name in roles.items() if name is not None]
    for role, name in given:
        if not isinstance(name, str | int):
            raise DataError(f"The {role} column must be named by a string; got {name!r}.")
    for k, (role_a, name_a) in enumerate(given):
        for role_b, name_b in given[k + 1 :]:
            if name_a == name_b:
                raise DataError(
                    f"The {role_a} and {role_b} columns must be different; "
                    f"both are {_q(name_a)}."
                )


def _get_column(df: pandas.DataFrame, name: str, role: str, source: str) -> pandas.Series:
    """Return the column ``name`` of ``df``, or raise DataError naming the columns there.

    The message suggests a close match (difflib) and hints at a wrong
    separator when the header is a single field.
    """
    available = [c for c in df.columns]
    hits = [c for c in available if c == name]
    if len(hits) > 1:
        where = source if source == "the table" else _q(source)
        raise DataError(
            f"The column {_q(name)} given for {role} must appear once in {where}; "
            f"it appears {len(hits)} times."
        )
    if hits:
        return df[name]
    text_names = [str(c) for c in available]
    close = difflib.get_close_matches(str(name), text_names, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in text_names}
        close = [lowered[str(name).lower()]] if str(name).lower() in lowered else []
    where = source if source == "the table" else _q(source)
    message = (
        f"The column {_q(name)} given for {role} is not in {where}; "
        f"its columns are {_list_names(text_names)}"
    )
    if len(text_names) == 1 and any(sep in text_names[0] for sep in (";", "\t", "|")):
        message += ", a single column, so the file may not be separated by commas."
    elif close:
        message += f"; did you mean {_q(close[0])}?"
    else:
        message += "."
    raise DataError(message)


def _parse_labels(series: pandas.Series, column: str, rows: _Rows) -> np.ndarray:
    """Labels as stripped strings; DataError at the first empty one.

    Returns
    -------
    numpy.ndarray, shape (n,), object (str)
    """
    out = np.empty(len(series), dtype=object)
    for pos, x in enumerate(series.tolist()):
        text = "" if _is_missing_scalar(x) else str(x).strip()
        if not text:
            raise DataError(
                f"The {_q(column)} column must have a label on every data row; "
                f"{rows.at(pos)} has none."
            )
        out[pos] = text
    return out


def _is_missing_scalar(x: Any) -> bool:
    """True for None, NaN, pandas.NA, NaT."""
    if x is None or x is _pd().NA or x is _pd().NaT:
        return True
    return isinstance(x, float | np.floating) and np.isnan(x)


def _parse_numbers(series: pandas.Series, column: str, rows: _Rows, *, decimal: str = ".") -> np.ndarray:
    """Numbers of a long-table column; NA text and empty fields become NaN.

    With ``decimal=","`` a number written with a decimal comma (``-1,25``) is read too.

    Returns
    -------
    numpy.ndarray, shape (n,), float64

    Raises
    ------
    DataError
        At the first entry that is neither a number nor an NA marker.
    """
    dtype = series.dtype
    if _pd().api.types.is_numeric_dtype(dtype) and not _pd().api.types.is_bool_dtype(dtype):
        try:
            return series.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            pass  # e.g. complex numbers: reported below, entry by entry
    out = np.empty(len(series), dtype=np.float64)
    for pos, x in enumerate(series.tolist()):
        number = _parse_number(x)
        if number is None and decimal == "," and isinstance(x, str) and _DECIMAL_COMMA.fullmatch(x.strip()):
            number = float(x.strip().replace(",", "."))
        if number is None:
            shown = _q(x) if isinstance(x, str) else repr(x)
            raise DataError(
                f"The {_q(column)} column must be numeric; {rows.at(pos)} has {shown}."
            )
        out[pos] = number
    return out


def _parse_number(x: Any) -> float | None:
    """A number from a cell of a long table (NaN for NA); None when it is not one."""
    if isinstance(x, str):
        text = x.strip()
        if text in _NA_TOKENS:
            return float("nan")
        return float(text) if _NUMBER.fullmatch(text) else None
    return _number_or_none(x)


def _check_finite_long(y: np.ndarray, column: str, rows: _Rows, where: np.ndarray) -> None:
    """Raise DataError at the first +-inf of ``y`` where ``where``."""
    bad = np.isinf(y) & where
    if bad.any():
        pos = int(np.argmax(bad))
        raise DataError(
            f"The {_q(column)} column must be finite; {rows.at(pos)} has {_number_text(y[pos])}."
        )


def _check_se_long(
    se: np.ndarray, y: np.ndarray, column: str, value_column: str, rows: _Rows, *, zero_se: str = "error"
) -> None:
    """Check standard errors on the lines whose value is present.

    An empty se means no known error for that cell (it is kept, with se 0).
    Raises DataError at the first se that is infinite, negative, or 0 unless
    ``zero_se == "none"``; se on lines with a missing value is ignored.
    """
    check_zero_se(zero_se)
    present = ~np.isnan(y)
    _check_finite_long(se, column, rows, present)
    bad = present & (se < 0) if zero_se == "none" else present & ~(se > 0) & ~np.isnan(se)
    if bad.any():
        pos = int(np.argmax(bad))
        hint = "" if zero_se == "none" else " (leave it empty, or say zero_se='none', for a cell with no known error)"
        raise DataError(
            f"The {_q(column)} column must be positive; {rows.at(pos)} has {_number_text(se[pos])}{hint}."
        )


ZERO_SE = ("error", "none")

#: How many cells without an se a warning names.
_SHOWN = 3


def warn_missing_se(shown: list[str], n_missing: int, n_observed: int, column: str | None = "se") -> None:
    """Warn (once per table) that some observed cells have an se and others have none.

    Parameters
    ----------
    shown : list of str
        The first few cells without an se, named for messages.
    n_missing : int
        How many observed cells have no se.
    n_observed : int
        How many cells are observed.
    column : str or None
        The se column's name, for messages.

    Notes
    -----
    Nothing is said when no observed cell lacks an se, or when none has one
    (a table without known errors).
    """
    if n_missing == 0 or n_missing == n_observed:
        return
    more = f" and {n_missing - len(shown)} more" if n_missing > len(shown) else ""
    name = _q(column or "se")
    warnings.warn(
        f"The {name} column is empty on {n_missing} of {n_observed} observed cells ({'; '.join(shown)}{more}), "
        "while the other cells have one: those cells' variance is the model's unknown part alone. "
        "If that is intended, write 0 there and pass zero_se='none' (--zero-se none).",
        TwowayWarning,
        stacklevel=2,
    )


def check_zero_se(zero_se: str) -> None:
    """Raise DataError unless ``zero_se`` is ``error`` or ``none``."""
    if zero_se not in ZERO_SE:
        raise DataError(f"The 'zero_se' option must be one of {', '.join(ZERO_SE)}; got {zero_se!r}.")


def _check_duplicates(codes: tuple, sizes: list[int], roles: dict, rows: _Rows) -> None:
    """Raise DataError at the first line whose (replicate, row, col) cell appeared before.

    Parameters
    ----------
    codes : tuple of three numpy.ndarray, each shape (n,)
        Replicate, row and column codes of each line.
    sizes : list of int
        Numbers of replicates, rows and columns.
    """
    flat = (codes[0] * sizes[1] + codes[1]) * sizes[2] + codes[2]
    repeated = _pd().Series(flat).duplicated(keep="first").to_numpy()
    if not repeated.any():
        return
    later = int(np.argmax(repeated))
    first = int(np.argmax(flat == flat[later]))
    rule = "Each (replicate, row, col) cell" if roles["replicate"] else "Each (row, col) cell"
    where = f"data rows {first + 1} and {later + 1}"
    if rows.lines is not None:
        where += f" (lines {rows.lines[first]} and {rows.lines[later]})"
    pairs = [f"{col}={_q(arr[later])}" for col, arr in rows.labels.items()]
    context = ", ".join(pairs[:-1]) + " and " + pairs[-1]
    message = f"{rule} must appear on one data row only; {where} both have {context}"
    if not roles["replicate"]:
        message += (
            "; if the table stacks replicate tables, name the replicate column "
            "(replicate= in Python, --replicate on the command line)"
        )
    raise DataError(message + ".")


def _scatter(codes: tuple, y: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Place line values on the (R, N, K) grid, NaN where no line gives a value.

    Returns
    -------
    numpy.ndarray, shape (R, N, K), float64
    """
    grid = np.full(shape, np.nan)
    grid[codes[0], codes[1], codes[2]] = y
    return grid


# --------------------------------------------------------------------------
# wide arrays and frames
# --------------------------------------------------------------------------


def decode(x: Any) -> str:
    """Label as str, decoding bytes."""
    return x.decode() if isinstance(x, bytes) else str(x)


def align_frame(se: pandas.DataFrame, values: pandas.DataFrame) -> pandas.DataFrame:
    """Reorder a wide se frame to the labels of the wide values frame."""
    if se.shape != values.shape:
        raise DataError(
            f"The standard errors (se) must have the same shape as the values "
            f"{values.shape}; got {se.shape}."
        )
    if set(se.index) != set(values.index) or set(se.columns) != set(values.columns):
        raise DataError(
            "The standard errors (se) table must have the same row and column labels "
            "as the values table; they differ."
        )
    return se.loc[values.index, values.columns]


def numeric_array(array: Any, what: str) -> np.ndarray:
    """Convert an array-like of numbers (None/NaN = missing) to float64.

    Parameters
    ----------
    array : array_like or pandas.DataFrame
    what : str
        Name for messages.

    Returns
    -------
    numpy.ndarray, float64, same shape
    """
    if isinstance(array, _pd().DataFrame):
        numeric = all(
            _pd().api.types.is_numeric_dtype(t) and not _pd().api.types.is_bool_dtype(t)
            for t in array.dtypes
        )
        if numeric:
            try:
                return array.to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError):
                pass  # e.g. complex numbers: reported below, entry by entry
        array = array.to_numpy(dtype=object)
    try:
        arr = np.asarray(array)
    except (ValueError, TypeError):
        raise DataError(
            f"The {what} must be a rectangular array of numbers; got a ragged nested sequence."
        ) from None
    if arr.dtype.kind in "iuf":
        return arr.astype(np.float64)
    if arr.dtype.kind in "US":
        for index, x in np.ndenumerate(arr):
            text = decode(x).strip()
            if not _NUMBER.fullmatch(text) and text not in _NA_TOKENS:
                raise DataError(f"The {what} must be numeric; entry {index} is {_q(text)}.")
    if arr.dtype.kind != "O":
        raise DataError(f"The {what} must be numeric; got an array of dtype {arr.dtype}.")
    out = np.empty(arr.shape, dtype=np.float64)
    for index, x in np.ndenumerate(arr):
        number = _number_or_none(x)
        if number is None:
            raise DataError(f"The {what} must be numeric; entry {index} is {x!r}.")
        out[index] = number
    return out


def _number_or_none(x: Any) -> float | None:
    """Return ``x`` as a float (NaN for a missing marker) or None if not a number."""
    if x is None or x is _pd().NA or x is _pd().NaT:
        return float("nan")
    if isinstance(x, bool | np.bool_):
        return None
    if isinstance(x, int | float | np.integer | np.floating):
        return float(x)
    return None
