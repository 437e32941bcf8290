"""Two-way tables: values on a (replicate, row, col) grid with optional known errors.

:class:`TwoWayData` holds one quantity measured on a two-way table (rows x
columns), possibly repeated over replicate tables, with NaN for missing cells
and, optionally, a known standard error for every observed cell. It is built
from a long table (one line per cell), a CSV file in long form, a wide array
or an :class:`xarray.Dataset`, and every way in goes through the same checks in
``TwoWayData.__post_init__``. Every problem with the input raises
:class:`twoway.errors.DataError` with a one-sentence message that names the
column, the row of the table or the cell at fault.

Rows of a long table are referred to as "data row n": the n-th line of data,
counted from 1 with the header not counted; for a CSV file the line number in
the file is given as well.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np


def _pd():
    """pandas, imported on first use (``import twoway`` stays light)."""
    import pandas

    return pandas

from twoway.errors import DataError

__all__ = ["TwoWayData", "DEFAULT_NAMES"]

#: Source column names used when a table does not name its own.
DEFAULT_NAMES: dict[str, str | None] = {
    "row": "row",
    "col": "col",
    "value": "value",
    "se": None,
    "replicate": None,
}

_NAME_KEYS = ("row", "col", "value", "se", "replicate")

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
# small formatting helpers
# --------------------------------------------------------------------------


def _q(text: Any) -> str:
    """Quote ``text`` for a message: ``'text'``."""
    return f"'{text}'"


def _list_names(names: Sequence[Any], limit: int = 12) -> str:
    """Return ``'a', 'b', 'c'`` (shortened with a count after ``limit`` items)."""
    shown = ", ".join(_q(n) for n in list(names)[:limit])
    extra = len(names) - limit
    return shown + (f" and {extra} more" if extra > 0 else "")


def _number_text(x: float) -> str:
    """Format a float for a message (``-0.5``, ``inf``, ``nan``)."""
    return repr(float(x)) if np.isfinite(x) else str(float(x))


def _cell_text(
    r: int,
    i: int,
    j: int,
    replicate_labels: Sequence[str],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
) -> str:
    """Name the cell (r, i, j) by its labels, e.g. ``cell (row 'T1', col 'G2')``.

    The replicate is named only when there is more than one.
    """
    parts = [f"row {_q(row_labels[i])}", f"col {_q(col_labels[j])}"]
    if len(replicate_labels) > 1:
        parts.insert(0, f"replicate {_q(replicate_labels[r])}")
    return "cell (" + ", ".join(parts) + ")"


# --------------------------------------------------------------------------
# checks used by TwoWayData.__post_init__ (arrays and labels)
# --------------------------------------------------------------------------


def _as_float3(array: Any, what: str) -> np.ndarray:
    """Return a read-only float64 copy of a 3-D numeric array.

    Parameters
    ----------
    array : array_like, shape (R, N, K)
    what : str
        Name of the array for messages.

    Returns
    -------
    numpy.ndarray, shape (R, N, K), float64, not writeable
    """
    try:
        arr = np.asarray(array)
    except (ValueError, TypeError) as exc:
        raise DataError(f"The {what} must be a numeric array; got {exc}.") from None
    if arr.dtype.kind not in "iuf":
        raise DataError(f"The {what} must be a numeric array; got dtype {arr.dtype}.")
    if arr.ndim != 3:
        raise DataError(
            f"The {what} must be a 3-D array (replicate, row, col); "
            f"got {arr.ndim}-D with shape {arr.shape}."
        )
    out = np.array(arr, dtype=np.float64, copy=True)
    out.setflags(write=False)
    return out


def _check_labels(labels: Any, n: int, what: str, axis: str) -> tuple[str, ...]:
    """Return ``labels`` as a tuple of ``n`` unique non-empty strings.

    Parameters
    ----------
    labels : sequence
        Labels, converted with ``str``.
    n : int
        Required length (the size of the axis).
    what : str
        Name of the label set for messages (``"row_labels"``).
    axis : str
        Name of one item of the axis for messages (``"row"``).
    """
    if isinstance(labels, str) or not isinstance(labels, Sequence | np.ndarray | _pd().Index):
        raise DataError(f"The {what} must be a sequence of labels; got {type(labels).__name__}.")
    out = tuple(str(x) for x in labels)
    if len(out) != n:
        raise DataError(f"The {what} must have one label per {axis} ({n}); got {len(out)}.")
    seen: set[str] = set()
    for label in out:
        if label == "":
            raise DataError(f"The {what} must not be empty strings; got {_list_names(out)}.")
        if label in seen:
            raise DataError(f"The {what} must be unique; {_q(label)} appears more than once.")
        seen.add(label)
    return out


def _check_names(names: Any, has_se: bool) -> dict[str, str | None]:
    """Complete and check the source column names.

    Returns a new dict with exactly the keys ``row, col, value, se, replicate``;
    ``se`` is ``None`` exactly when there are no standard errors.
    """
    if names is None:
        names = {}
    if not isinstance(names, dict):
        raise DataError(f"The names must be a dict of column names; got {type(names).__name__}.")
    unknown = sorted(set(names) - set(_NAME_KEYS))
    if unknown:
        raise DataError(
            f"The names must only have the keys {_list_names(_NAME_KEYS)}; got {_list_names(unknown)}."
        )
    out = dict(DEFAULT_NAMES)
    out.update({k: v for k, v in names.items() if v is not None or k in ("se", "replicate")})
    if has_se and out["se"] is None:
        out["se"] = "se"
    if not has_se:
        out["se"] = None
    given = [v for v in out.values() if v is not None]
    for key, value in out.items():
        if value is not None and not isinstance(value, str | int):
            raise DataError(f"The names[{key!r}] must be a column name; got {value!r}.")
        if value is not None and given.count(value) > 1:
            raise DataError(
                f"The names must name different columns; {_q(value)} is used more than once."
            )
    return out


def _check_finite_values(values: np.ndarray, labels: tuple) -> None:
    """Raise DataError if ``values`` (R, N, K) holds +-inf."""
    bad = np.argwhere(np.isinf(values))
    if bad.size:
        r, i, j = bad[0]
        raise DataError(
            f"The values must be finite; {_cell_text(r, i, j, *labels)} "
            f"has {_number_text(values[r, i, j])}."
        )


def _check_se_array(se: np.ndarray, mask: np.ndarray, labels: tuple) -> None:
    """Raise DataError unless ``se`` (R, N, K) is finite and positive where ``mask``."""
    observed = se[mask]
    index = np.argwhere(mask)
    for test, rule in (
        (np.isnan(observed), "must be given for every observed cell"),
        (np.isinf(observed), "must be finite"),
        (~(observed > 0) & np.isfinite(observed), "must be positive"),
    ):
        if test.any():
            r, i, j = index[np.argmax(test)]
            raise DataError(
                f"The standard errors {rule}; {_cell_text(r, i, j, *labels)} "
                f"has {_number_text(se[r, i, j])}."
            )


def _label_ref(axis: str, label: str, column: str | int | None) -> str:
    """Name one label for messages: ``row 'T1'`` or ``'T1' in column 'treatment'``."""
    if column is None or column == axis:
        return f"{axis} {_q(label)}"
    return f"{_q(label)} in column {_q(column)}"


def _check_coverage(mask: np.ndarray, labels: tuple, names: dict) -> None:
    """Raise DataError unless the table has >= 2 rows and columns and no empty label.

    Parameters
    ----------
    mask : numpy.ndarray, shape (R, N, K), bool
        True where a cell is observed.
    labels : tuple
        ``(replicate_labels, row_labels, col_labels)``.
    names : dict
        Source column names, used to say which column a label came from.
    """
    replicate_labels, row_labels, col_labels = labels
    for axis, axis_labels in (("row", row_labels), ("col", col_labels)):
        if len(axis_labels) < 2:
            noun = "rows" if axis == "row" else "columns"
            listed = f" ({_list_names(axis_labels)})" if axis_labels else ""
            column = names[axis]
            got = (
                f"got {len(axis_labels)}"
                if column is None or column == axis
                else f"column {_q(column)} has {len(axis_labels)} distinct label"
                + ("" if len(axis_labels) == 1 else "s")
            )
            raise DataError(f"The table must have at least 2 {noun}; {got}{listed}.")
    for axis, axis_labels, other_axes in (
        ("replicate", replicate_labels, (1, 2)),
        ("row", row_labels, (0, 2)),
        ("col", col_labels, (0, 1)),
    ):
        seen = mask.any(axis=other_axes)
        if not seen.all():
            label = axis_labels[int(np.argmin(seen))]
            what = "replicate table" if axis == "replicate" else f"{axis} label"
            raise DataError(
                f"Every {what} must have at least one observed value; "
                f"{_label_ref(axis, label, names[axis])} has none."
            )


# --------------------------------------------------------------------------
# the data class
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class TwoWayData:
    """Values of a two-way table, stacked over replicate tables.

    Build one with :meth:`from_long`, :meth:`from_csv`, :meth:`from_array` or
    :meth:`from_dataset`; the constructor itself checks and normalises its
    arguments (copies, float64, read-only) and raises
    :class:`~twoway.errors.DataError` on bad input.

    Parameters
    ----------
    values : numpy.ndarray, shape (R, N, K)
        Measured values, float64, NaN where a cell is missing.
    se : numpy.ndarray, shape (R, N, K), or None
        Known standard errors, positive and finite for every observed cell;
        set to NaN wherever the value is missing. None when no errors are known.
    row_labels : tuple of str, length N
    col_labels : tuple of str, length K
    replicate_labels : tuple of str, length R
    names : dict, optional
        Source column names under the keys ``"row"``, ``"col"``, ``"value"``,
        ``"se"`` (None when there is no se) and ``"replicate"`` (None when the
        source had no replicate column). Missing keys take the defaults
        ``"row"``, ``"col"``, ``"value"``, ``"se"``/None, None.

    Notes
    -----
    The table must have at least 2 rows and 2 columns, and every row label,
    column label and replicate must have at least one observed cell.
    Instances compare by identity (``eq=False``).
    """

    values: np.ndarray
    se: np.ndarray | None
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]
    replicate_labels: tuple[str, ...]
    names: dict[str, str | None] | None = None

    def __post_init__(self) -> None:
        values = _as_float3(self.values, "values")
        se = None if self.se is None else _as_float3(self.se, "standard errors (se)")
        if se is not None and se.shape != values.shape:
            raise DataError(
                f"The standard errors (se) must have the shape of the values {values.shape}; "
                f"got {se.shape}."
            )
        n_rep, n_row, n_col = values.shape
        labels = (
            _check_labels(self.replicate_labels, n_rep, "replicate_labels", "replicate"),
            _check_labels(self.row_labels, n_row, "row_labels", "row"),
            _check_labels(self.col_labels, n_col, "col_labels", "column"),
        )
        names = _check_names(self.names, se is not None)
        _check_finite_values(values, labels)
        mask = ~np.isnan(values)
        if se is not None:
            _check_se_array(se, mask, labels)
            se = np.where(mask, se, np.nan)
            se.setflags(write=False)
        _check_coverage(mask, labels, names)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "se", se)
        object.__setattr__(self, "replicate_labels", labels[0])
        object.__setattr__(self, "row_labels", labels[1])
        object.__setattr__(self, "col_labels", labels[2])
        object.__setattr__(self, "names", names)

    def __repr__(self) -> str:
        return (
            f"TwoWayData(replicates={self.n_replicates}, rows={self.n_rows}, "
            f"cols={self.n_cols}, observed={self.n_observed}/{self.n_cells}, "
            f"se={'yes' if self.has_se else 'no'})"
        )

    # ---- sizes and masks -------------------------------------------------

    @property
    def mask(self) -> np.ndarray:
        """numpy.ndarray, shape (R, N, K), bool: True where a cell is observed."""
        return ~np.isnan(self.values)

    @property
    def n_replicates(self) -> int:
        """int: number of replicate tables R."""
        return int(self.values.shape[0])

    @property
    def n_rows(self) -> int:
        """int: number of rows N."""
        return int(self.values.shape[1])

    @property
    def n_cols(self) -> int:
        """int: number of columns K."""
        return int(self.values.shape[2])

    @property
    def n_cells(self) -> int:
        """int: number of cells R * N * K, observed or not."""
        return int(self.values.size)

    @property
    def n_observed(self) -> int:
        """int: number of observed cells."""
        return int(np.count_nonzero(self.mask))

    @property
    def has_se(self) -> bool:
        """bool: whether known standard errors were given."""
        return self.se is not None

    @property
    def is_complete(self) -> bool:
        """bool: whether every cell is observed."""
        return self.n_observed == self.n_cells

    def se_or_zero(self) -> np.ndarray:
        """Known standard errors with 0 where there is none.

        Returns
        -------
        numpy.ndarray, shape (R, N, K), float64
            ``se`` with 0 at missing cells, or all zeros when ``has_se`` is False.
        """
        if self.se is None:
            return np.zeros(self.values.shape)
        return np.where(self.mask, self.se, 0.0)

    def observed_values(self) -> np.ndarray:
        """Observed values in C order over (replicate, row, col).

        Returns
        -------
        numpy.ndarray, shape (n_observed,), float64
        """
        return self.values[self.mask]

    def observed_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indices of the observed cells, in the order of :meth:`observed_values`.

        Returns
        -------
        (r, i, j) : tuple of three numpy.ndarray, each shape (n_observed,), int64
        """
        r, i, j = np.nonzero(self.mask)
        return r.astype(np.int64), i.astype(np.int64), j.astype(np.int64)

    # ---- summaries -------------------------------------------------------

    def location(self) -> float:
        """Mean of the observed values; the centre used to scale default priors.

        Returns
        -------
        float
        """
        return float(np.mean(self.observed_values()))

    def spread(self) -> float:
        """A positive scale of the observed values, used to scale default priors.

        The sample standard deviation (ddof=1) of the observed values; if that
        is zero or not finite (one observation, or all values equal), the mean
        absolute value; if that is zero too, 1.0.

        Returns
        -------
        float
            Always finite and > 0.
        """
        y = self.observed_values()
        sd = float(np.std(y, ddof=1)) if y.size > 1 else float("nan")
        if np.isfinite(sd) and sd > 0:
            return sd
        mean_abs = float(np.mean(np.abs(y)))
        if np.isfinite(mean_abs) and mean_abs > 0:
            return mean_abs
        return 1.0

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable description of the table.

        Returns
        -------
        dict
            Keys ``n_replicates``, ``n_rows``, ``n_cols``, ``n_observed``,
            ``n_missing``, ``has_se``, ``location``, ``spread``,
            ``row_labels``, ``col_labels``, ``replicate_labels`` (lists of
            str) and ``names`` (dict).
        """
        return {
            "n_replicates": self.n_replicates,
            "n_rows": self.n_rows,
            "n_cols": self.n_cols,
            "n_observed": self.n_observed,
            "n_missing": self.n_cells - self.n_observed,
            "has_se": self.has_se,
            "location": self.location(),
            "spread": self.spread(),
            "row_labels": list(self.row_labels),
            "col_labels": list(self.col_labels),
            "replicate_labels": list(self.replicate_labels),
            "names": dict(self.names),
        }

    def with_values(self, values: Any) -> TwoWayData:
        """A copy with new values and the same labels, se and names.

        Parameters
        ----------
        values : array_like, shape (R, N, K)
            NaN marks a missing cell. Where ``has_se``, every non-NaN value
            needs a standard error, so values may only be given at cells
            observed in this table.

        Returns
        -------
        TwoWayData
        """
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise DataError(f"The new values must be a numeric array; got {exc}.") from None
        if arr.shape != self.values.shape:
            raise DataError(
                f"The new values must have shape (replicate, row, col) = "
                f"{self.values.shape}; got {arr.shape}."
            )
        return replace(self, values=arr)

    # ---- long tables and CSV ----------------------------------------------

    def _long_columns(self) -> dict[str, str | int]:
        """Map role -> output column name for :meth:`to_long`."""
        out: dict[str, str | int] = {}
        if self.n_replicates > 1 or self.names["replicate"] is not None:
            out["replicate"] = self.names["replicate"] or "replicate"
        out["row"] = self.names["row"]
        out["col"] = self.names["col"]
        out["value"] = self.names["value"]
        if self.has_se:
            out["se"] = self.names["se"]
        return out

    def to_long(self) -> _pd().DataFrame:
        """The observed cells as a long table, one line per cell.

        Returns
        -------
        pandas.DataFrame, n_observed lines
            Columns, named from ``names``: replicate (only when R > 1 or the
            source had a replicate column), row, col, value, se (only when
            ``has_se``); lines in (replicate, row, col) C order.
        """
        r, i, j = self.observed_index()
        columns = self._long_columns()
        data: dict[str | int, Any] = {}
        if "replicate" in columns:
            data[columns["replicate"]] = np.asarray(self.replicate_labels, dtype=object)[r]
        data[columns["row"]] = np.asarray(self.row_labels, dtype=object)[i]
        data[columns["col"]] = np.asarray(self.col_labels, dtype=object)[j]
        data[columns["value"]] = self.values[r, i, j]
        if self.se is not None:
            data[columns["se"]] = self.se[r, i, j]
        return _pd().DataFrame(data)

    def to_csv(self, path: str | Path) -> None:
        """Write :meth:`to_long` to a CSV file (no index column).

        Read it back with ``TwoWayData.from_csv(path, **options)`` where the
        options name the columns as in ``names``.
        """
        self.to_long().to_csv(path, index=False)

    def long_options(self) -> dict[str, str | int | None]:
        """Keyword options that make :meth:`from_long`/:meth:`from_csv` read :meth:`to_long`.

        Returns
        -------
        dict
            ``{"row": ..., "col": ..., "value": ..., "se": ..., "replicate": ...}``.
        """
        columns = self._long_columns()
        return {key: columns.get(key) for key in _NAME_KEYS}

    @classmethod
    def from_long(
        cls,
        df: _pd().DataFrame,
        *,
        row: str,
        col: str,
        value: str,
        se: str | None = None,
        replicate: str | None = None,
    ) -> TwoWayData:
        """Build a table from a long data frame, one line per cell.

        Parameters
        ----------
        df : pandas.DataFrame
            One line per (replicate, row, col) cell. A line with an empty or
            NA value is a missing cell; a (row, col) pair with no line is a
            missing cell too.
        row, col, value : str
            Names of the columns holding the row label, the column label and
            the measured value.
        se : str, optional
            Name of the column holding known standard errors (positive, given
            wherever the value is).
        replicate : str, optional
            Name of the column holding the replicate label, when ``df`` stacks
            several tables measured on the same rows and columns.

        Returns
        -------
        TwoWayData
            Labels are strings (stripped of surrounding spaces) in order of
            first appearance.

        Raises
        ------
        twoway.errors.DataError
            For a missing column, an empty label, a non-numeric, infinite or
            (for se) non-positive number, a missing se where the value is
            present, a duplicated cell, fewer than 2 rows or columns, or a
            label with no observed value.
        """
        if not isinstance(df, _pd().DataFrame):
            raise DataError(f"The table must be a pandas DataFrame; got {type(df).__name__}.")
        return _from_long_table(
            df,
            roles={"row": row, "col": col, "value": value, "se": se, "replicate": replicate},
            lines=None,
            source="the table",
        )

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        *,
        row: str,
        col: str,
        value: str,
        se: str | None = None,
        replicate: str | None = None,
    ) -> TwoWayData:
        """Read a long table from a comma-separated UTF-8 text file.

        The first non-blank line is the header; blank lines are skipped; a
        trailing empty field (trailing comma) is allowed. Columns are named as
        in :meth:`from_long`, which this calls; messages about a line of data
        also give its line number in the file.

        Parameters
        ----------
        path : str or pathlib.Path
        row, col, value, se, replicate : str
            See :meth:`from_long`.

        Returns
        -------
        TwoWayData

        Raises
        ------
        twoway.errors.DataError
            If the file does not exist, is empty, is not CSV text, has no data
            line, a line with too many fields, or any problem listed in
            :meth:`from_long`.
        """
        path = Path(path)
        text = _read_text(path)
        df, lines = _parse_csv(text, path)
        return _from_long_table(
            df,
            roles={"row": row, "col": col, "value": value, "se": se, "replicate": replicate},
            lines=lines,
            source=str(path),
        )

    # ---- arrays ------------------------------------------------------------

    @classmethod
    def from_array(
        cls,
        values: Any,
        *,
        se: Any = None,
        row_labels: Sequence[Any] | None = None,
        col_labels: Sequence[Any] | None = None,
        replicate_labels: Sequence[Any] | None = None,
    ) -> TwoWayData:
        """Build a table from a wide array.

        Parameters
        ----------
        values : array_like or pandas.DataFrame, shape (N, K) or (R, N, K)
            NaN (or None in a nested list) marks a missing cell. A DataFrame
            gives its index as row labels and its columns as column labels.
        se : array_like or pandas.DataFrame, optional
            Known standard errors, the same shape as ``values``. A DataFrame
            se with a DataFrame values is aligned on their labels.
        row_labels, col_labels, replicate_labels : sequence, optional
            Labels (converted to str); they override a DataFrame's labels.
            Defaults: ``"row1".."rowN"``, ``"col1".."colK"``, ``"0".."R-1"``.

        Returns
        -------
        TwoWayData
            ``names`` are the defaults (``"row"``, ``"col"``, ``"value"``,
            ``"se"`` or None, and None for the replicate).
        """
        frame_rows = frame_cols = None
        if isinstance(values, _pd().DataFrame):
            frame_rows = [str(x) for x in values.index]
            frame_cols = [str(x) for x in values.columns]
            if isinstance(se, _pd().DataFrame):
                se = _align_frame(se, values)
        arr = _numeric_array(values, "values")
        se_arr = None if se is None else _numeric_array(se, "standard errors (se)")
        if arr.ndim not in (2, 3):
            raise DataError(
                f"The values must be a 2-D (row, col) or 3-D (replicate, row, col) array; "
                f"got {arr.ndim}-D with shape {arr.shape}."
            )
        if se_arr is not None and se_arr.shape != arr.shape:
            raise DataError(
                f"The standard errors (se) must have the same shape as the values "
                f"{arr.shape}; got {se_arr.shape}."
            )
        if arr.ndim == 2:
            arr = arr[None]
            se_arr = None if se_arr is None else se_arr[None]
        n_rep, n_row, n_col = arr.shape
        if row_labels is None:
            row_labels = frame_rows or [f"row{k + 1}" for k in range(n_row)]
        if col_labels is None:
            col_labels = frame_cols or [f"col{k + 1}" for k in range(n_col)]
        if replicate_labels is None:
            replicate_labels = [str(k) for k in range(n_rep)]
        return cls(
            values=arr,
            se=se_arr,
            row_labels=row_labels,
            col_labels=col_labels,
            replicate_labels=replicate_labels,
            names=None,
        )

    # ---- xarray -----------------------------------------------------------

    def to_dataset(self) -> Any:
        """The table as an :class:`xarray.Dataset`.

        Returns
        -------
        xarray.Dataset
            Dims ``("replicate", "row", "col")`` with label coordinates;
            variables ``"y"`` and, when ``has_se``, ``"se"``; ``names`` as a
            JSON string in ``attrs["twoway_names"]``.
        """
        import xarray as xr

        dims = ("replicate", "row", "col")
        data_vars = {"y": (dims, np.array(self.values))}
        if self.se is not None:
            data_vars["se"] = (dims, np.array(self.se))
        coords = {
            "replicate": np.array(self.replicate_labels, dtype=str),
            "row": np.array(self.row_labels, dtype=str),
            "col": np.array(self.col_labels, dtype=str),
        }
        return xr.Dataset(
            data_vars, coords=coords, attrs={"twoway_names": json.dumps(self.names)}
        )

    @classmethod
    def from_dataset(cls, ds: Any) -> TwoWayData:
        """Inverse of :meth:`to_dataset`.

        Parameters
        ----------
        ds : xarray.Dataset
            With a variable ``"y"`` over dims ``replicate``, ``row``, ``col``
            (any order), optionally ``"se"`` over the same dims.

        Returns
        -------
        TwoWayData
        """
        dims = ("replicate", "row", "col")
        if not hasattr(ds, "data_vars") or "y" not in ds.data_vars:
            raise DataError("The dataset must have a data variable 'y'; it has none.")
        variables = {}
        for name in ("y", "se"):
            if name not in ds.data_vars:
                continue
            if set(ds[name].dims) != set(dims):
                raise DataError(
                    f"The dataset variable {_q(name)} must have dims {dims}; "
                    f"got {tuple(ds[name].dims)}."
                )
            variables[name] = ds[name].transpose(*dims).values
        labels = {d: [_decode(x) for x in np.asarray(ds[d].values)] for d in dims}
        names = _names_from_attrs(ds.attrs.get("twoway_names"))
        return cls(
            values=variables["y"],
            se=variables.get("se"),
            row_labels=labels["row"],
            col_labels=labels["col"],
            replicate_labels=labels["replicate"],
            names=names,
        )


# --------------------------------------------------------------------------
# helpers for from_array / from_dataset
# --------------------------------------------------------------------------


def _decode(x: Any) -> str:
    """Label as str, decoding bytes."""
    return x.decode() if isinstance(x, bytes) else str(x)


def _names_from_attrs(text: Any) -> dict | None:
    """Parse ``attrs["twoway_names"]``; None (defaults) when absent."""
    if text is None:
        return None
    try:
        names = json.loads(text)
    except (TypeError, ValueError):
        raise DataError(
            f"The dataset attribute 'twoway_names' must be a JSON object; got {text!r}."
        ) from None
    if not isinstance(names, dict):
        raise DataError(
            f"The dataset attribute 'twoway_names' must be a JSON object; got {text!r}."
        )
    return names


def _align_frame(se: _pd().DataFrame, values: _pd().DataFrame) -> _pd().DataFrame:
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


def _numeric_array(array: Any, what: str) -> np.ndarray:
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
            text = _decode(x).strip()
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


# --------------------------------------------------------------------------
# reading CSV files
# --------------------------------------------------------------------------


def csv_header(path: str | Path) -> list[str]:
    """The column names on the first non-blank line of a CSV file.

    Raises
    ------
    twoway.errors.DataError
        As :meth:`TwoWayData.from_csv` for a file that is missing, binary or empty.
    """
    import csv

    path = Path(path)
    for line in _read_text(path).splitlines():
        if line.strip():
            return [name.strip() for name in next(csv.reader([line]))]
    raise DataError(f"The file {_q(path)} is empty: it has no header line.")


def _read_text(path: Path) -> str:
    """Read a CSV file as UTF-8 text, refusing binary files.

    Returns
    -------
    str
        The text, without a byte-order mark.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"The file {_q(path)} does not exist.") from None
    except IsADirectoryError:
        raise DataError(f"The file {_q(path)} is a directory, not a CSV file.") from None
    except OSError as exc:
        raise DataError(f"The file {_q(path)} cannot be read: {exc.strerror or exc}.") from None
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


def _parse_csv(text: str, path: Path) -> tuple[_pd().DataFrame, np.ndarray]:
    """Split CSV text into a frame of strings and the file line of each record.

    Parameters
    ----------
    text : str
    path : pathlib.Path
        For messages.

    Returns
    -------
    df : pandas.DataFrame, n data lines, object (str) columns
    lines : numpy.ndarray, shape (n,), int
        1-based line in the file where each data record starts.
    """
    reader = csv.reader(text.splitlines(keepends=True), skipinitialspace=True, strict=True)
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


def _from_long_table(
    df: _pd().DataFrame, roles: dict, lines: np.ndarray | None, source: str
) -> TwoWayData:
    """Shared body of :meth:`TwoWayData.from_long` and :meth:`TwoWayData.from_csv`.

    Parameters
    ----------
    df : pandas.DataFrame, n lines
    roles : dict
        Role (``row``, ``col``, ``value``, ``se``, ``replicate``) -> column name or None.
    lines : numpy.ndarray or None, shape (n,)
        File line numbers, for messages.
    source : str
        ``"the table"`` or the file name, for messages.
    """
    _check_roles(roles)
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
    y = _parse_numbers(columns["value"], roles["value"], rows)
    _check_finite_long(y, roles["value"], rows, np.ones(y.shape, bool))
    se = None
    if "se" in columns:
        se = _parse_numbers(columns["se"], roles["se"], rows)
        _check_se_long(se, y, roles["se"], roles["value"], rows)
    rep = labels.get("replicate", np.full(len(df), "0", dtype=object))
    codes, uniques = zip(
        *(_pd().factorize(arr, sort=False) for arr in (rep, labels["row"], labels["col"]))
    )
    _check_duplicates(codes, [len(u) for u in uniques], roles, rows)
    shape = tuple(len(u) for u in uniques)
    values = _scatter(codes, y, shape)
    se_grid = None if se is None else _scatter(codes, np.where(np.isnan(y), np.nan, se), shape)
    return TwoWayData(
        values=values,
        se=se_grid,
        row_labels=tuple(uniques[1]),
        col_labels=tuple(uniques[2]),
        replicate_labels=tuple(uniques[0]),
        names=dict(roles),
    )


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


def _get_column(df: _pd().DataFrame, name: str, role: str, source: str) -> _pd().Series:
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


def _parse_labels(series: _pd().Series, column: str, rows: _Rows) -> np.ndarray:
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
    """True for None, NaN, _pd().NA, NaT."""
    if x is None or x is _pd().NA or x is _pd().NaT:
        return True
    return isinstance(x, float | np.floating) and np.isnan(x)


def _parse_numbers(series: _pd().Series, column: str, rows: _Rows) -> np.ndarray:
    """Numbers of a long-table column; NA text and empty fields become NaN.

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
    se: np.ndarray, y: np.ndarray, column: str, value_column: str, rows: _Rows
) -> None:
    """Check standard errors on the lines whose value is present.

    Raises DataError at the first se that is missing, infinite or not positive
    where the value is present; se on lines with a missing value is ignored.
    """
    present = ~np.isnan(y)
    _check_finite_long(se, column, rows, present)
    missing = np.isnan(se) & present
    if missing.any():
        pos = int(np.argmax(missing))
        raise DataError(
            f"The {_q(column)} column must have a standard error wherever {_q(value_column)} "
            f"has a value; {rows.at(pos)} has value {_number_text(y[pos])} but no standard error."
        )
    bad = present & ~(se > 0)
    if bad.any():
        pos = int(np.argmax(bad))
        raise DataError(
            f"The {_q(column)} column must be positive; {rows.at(pos)} has {_number_text(se[pos])}."
        )


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
