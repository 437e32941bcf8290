"""Two-way tables: values on a (replicate, row, col) grid with optional known errors.

:class:`TwoWayData` holds one quantity measured on a two-way table (rows x
columns), possibly repeated over replicate tables, with NaN for missing cells
and, optionally, a known standard error for every observed cell. It is built
from a long table (one line per cell), a CSV file in long form, a wide array
or an :class:`xarray.Dataset`, and every way in goes through the same checks in
``TwoWayData.__post_init__``. Every problem with the input raises
:class:`twoway.errors.DataError` with a one-sentence message that names the
column, the row of the table or the cell at fault.

A table may also carry covariate columns (for a formula in the mean, see
:mod:`twoway.table.covariates`): one value per observed cell, numeric or text.

Reading CSV files, long frames and wide arrays is done by
:mod:`twoway.table.io.tables`; this module holds the container and its checks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from twoway.errors import DataError
from twoway.table.io import tables
from twoway.table.io._common import list_names as _list_names
from twoway.table.io._common import number_text as _number_text
from twoway.table.io._common import quote as _q
from twoway.table.io.outputs import atomic_output
from twoway.table.io.tables import csv_header  # noqa: F401  (the command line reads a header through twoway.table.data)

# Deferred imports: pandas, xarray (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.


def _pd():
    """pandas, imported on first use (``import twoway`` stays light)."""
    import pandas

    return pandas


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

# --------------------------------------------------------------------------
# naming a cell in messages
# --------------------------------------------------------------------------


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


LARGEST_VALUE = 1e150  # beyond this, squares (variances, sums of squares) overflow double precision
SMALLEST_SPREAD = 1e-150  # below this, squares underflow to 0


def _check_scale(values: np.ndarray, se: np.ndarray | None, labels: tuple) -> None:
    """Raise DataError when the values (or se) are so large, or vary so little, that their squares leave double precision."""
    for what, arr in (("values", values), ("standard errors", se)):
        if arr is None:
            continue
        size = np.where(np.isfinite(arr), np.abs(arr), 0.0)  # NaN and inf: the finite checks' to report
        if size.size and size.max() > LARGEST_VALUE:
            r, i, j = np.unravel_index(np.argmax(size), size.shape)
            raise DataError(f"The table's {what} must be at most {LARGEST_VALUE:.0e} in size, or their squares "
                            f"overflow double precision; got {_number_text(arr[r, i, j])} at "
                            f"{_cell_text(r, i, j, *labels)}. Rescale them (divide by a power of ten) and fit again.")
    y = values[~np.isnan(values)]
    spread = float(np.max(y) - np.min(y)) if y.size else 0.0
    if 0.0 < spread < SMALLEST_SPREAD:
        raise DataError(f"The table's values must vary by more than {SMALLEST_SPREAD:.0e}, or their squares "
                        f"underflow double precision; got a range of {spread:.3g}. Rescale them (multiply by a "
                        "power of ten) and fit again.")


def _check_se_array(se: np.ndarray, mask: np.ndarray, labels: tuple) -> None:
    """Raise DataError unless ``se`` (R, N, K) is finite and >= 0 where ``mask`` (NaN or 0: no known error)."""
    observed = se[mask]
    index = np.argwhere(mask)
    for test, rule in (
        (np.isinf(observed), "must be finite"),
        (observed < 0, "must be positive"),
    ):
        if test.any():
            r, i, j = index[np.argmax(test)]
            hint = " (NaN marks a cell with no known error)" if rule == "must be positive" else ""
            raise DataError(
                f"The standard errors {rule}; {_cell_text(r, i, j, *labels)} "
                f"has {_number_text(se[r, i, j])}{hint}."
            )


def _check_zero_se(se: np.ndarray, values: np.ndarray, labels: tuple, zero_se: str) -> None:
    """Raise DataError at an se of exactly 0 on an observed cell unless ``zero_se == "none"``."""
    tables.check_zero_se(zero_se)
    zero = (se == 0) & ~np.isnan(values)
    if zero_se == "error" and zero.any():
        r, i, j = np.argwhere(zero)[0]
        raise DataError(f"The standard errors must be positive; {_cell_text(r, i, j, *labels)} has 0 "
                        "(NaN, or 0 with zero_se='none', marks a cell with no known error).")


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


def _long_names(names: dict, n_replicates: int) -> dict[str, str | int]:
    """Role -> column name that :meth:`TwoWayData.to_long` writes (replicate only when R > 1 or named)."""
    out: dict[str, str | int] = {}
    if n_replicates > 1 or names["replicate"] is not None:
        out["replicate"] = names["replicate"] or "replicate"
    out["row"] = names["row"]
    out["col"] = names["col"]
    out["value"] = names["value"]
    if names["se"] is not None:
        out["se"] = names["se"]
    return out


def _covariate_values(column: Any, name: str, index: tuple, labels: tuple) -> np.ndarray:
    """One covariate column checked and normalised.

    Parameters
    ----------
    column : array_like, shape (n_observed,)
        Values in observed-cell order; numbers, or text.
    name : str
        The covariate's name, for messages.
    index : tuple of three numpy.ndarray, each shape (n_observed,)
        (replicate, row, col) of each observed cell, to name cells in messages.
    labels : tuple
        ``(replicate_labels, row_labels, col_labels)``.

    Returns
    -------
    numpy.ndarray, shape (n_observed,), read-only
        float64 when every value is a number (numbers written as text included),
        else an object array of stripped str (booleans become ``"True"``/``"False"``).
    """
    n = len(index[0])
    try:
        arr = np.asarray(column)
    except (ValueError, TypeError) as exc:
        raise DataError(f"The covariate {_q(name)} must be a 1-D array of values; got {exc}.") from None
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(
            f"The covariate {_q(name)} must have one value per observed cell ({n}), in (replicate, row, col) "
            f"order; got shape {arr.shape}."
        )

    def cell(pos: int) -> str:
        return _cell_text(int(index[0][pos]), int(index[1][pos]), int(index[2][pos]), *labels)

    if arr.dtype.kind == "c":
        raise DataError(f"The covariate {_q(name)} must hold numbers or text; got complex numbers.")
    if arr.dtype.kind in "iuf":
        numbers = arr.astype(np.float64)
    else:
        # each distinct entry is read once (a text column has few distinct values)
        codes, uniques = _pd().factorize(np.asarray(arr, dtype=object).reshape(-1), use_na_sentinel=True)
        entries = [tables.decode(x) if isinstance(x, bytes) else x for x in uniques.tolist()]
        missing = codes < 0
        bad_unique = np.asarray([tables.is_missing_value(x) for x in entries] + [True], dtype=bool)
        missing |= bad_unique[codes]
        if missing.any():
            pos = int(np.argmax(missing))
            raise DataError(
                f"The covariate {_q(name)} must have a value at every observed cell; {cell(pos)} has none: "
                "fill it in or make that cell missing."
            )
        parsed = [None if isinstance(x, bool | np.bool_) else tables.parse_number(x) for x in entries]
        if any(v is None for v in parsed):
            texts = np.empty(len(entries), dtype=object)
            texts[:] = [str(x).strip() for x in entries]
            out = texts[codes]
            out.setflags(write=False)
            return out
        numbers = np.asarray(parsed, dtype=np.float64)[codes]
    if np.isnan(numbers).any():
        pos = int(np.argmax(np.isnan(numbers)))
        raise DataError(
            f"The covariate {_q(name)} must have a value at every observed cell; {cell(pos)} has none: "
            "fill it in or make that cell missing."
        )
    if np.isinf(numbers).any():
        pos = int(np.argmax(np.isinf(numbers)))
        raise DataError(
            f"The covariate {_q(name)} must be finite; {cell(pos)} has {_number_text(numbers[pos])}."
        )
    numbers = np.array(numbers, dtype=np.float64, copy=True)
    numbers.setflags(write=False)
    return numbers


def _check_covariates(covariates: Any, mask: np.ndarray, labels: tuple, names: dict) -> dict[str, np.ndarray] | None:
    """Check and normalise the covariate columns (None when there are none).

    Parameters
    ----------
    covariates : mapping of str -> array_like, each shape (n_observed,), or None
    mask : numpy.ndarray, shape (R, N, K), bool
    labels : tuple
        ``(replicate_labels, row_labels, col_labels)``.
    names : dict
        The source column names; a covariate may not share one.

    Returns
    -------
    dict of str -> numpy.ndarray, or None
    """
    if covariates is None:
        return None
    if not isinstance(covariates, Mapping):
        raise DataError(
            f"The covariates must be a dict of column name -> values; got {type(covariates).__name__}."
        )
    if not covariates:
        return None
    index = tuple(a.astype(np.int64) for a in np.nonzero(mask))
    taken = {str(column): role for role, column in _long_names(names, mask.shape[0]).items()}
    out: dict[str, np.ndarray] = {}
    for key, column in covariates.items():
        if not isinstance(key, str | int) or str(key).strip() == "":
            raise DataError(f"The covariates must be named by non-empty strings; got {key!r}.")
        name = str(key)
        if name in taken:
            raise DataError(
                f"The covariate {_q(name)} has the name of the table's {taken[name]} column; give it a name of "
                "its own."
            )
        out[name] = _covariate_values(column, name, index, labels)
    return out


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
        Known standard errors, finite and >= 0 for every observed cell; 0 (or
        NaN on input, stored as 0) where a cell has no known error; set to NaN
        wherever the value is missing. None when no errors are known at all.
    row_labels : tuple of str, length N
    col_labels : tuple of str, length K
    replicate_labels : tuple of str, length R
    names : dict, optional
        Source column names under the keys ``"row"``, ``"col"``, ``"value"``,
        ``"se"`` (None when there is no se) and ``"replicate"`` (None when the
        source had no replicate column). Missing keys take the defaults
        ``"row"``, ``"col"``, ``"value"``, ``"se"``/None, None.
    covariates : dict of str -> numpy.ndarray, optional
        Covariate columns (for a formula in the mean), each shape
        (n_observed,) in :meth:`observed_index` order (C order over
        (replicate, row, col)): float64 when every value is a number (numbers
        written as text included), else an object array of str. Every observed
        cell needs a value. None when the table has none.

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
    covariates: dict[str, np.ndarray] | None = None

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
        _check_scale(values, se, labels)
        mask = ~np.isnan(values)
        if se is not None:
            _check_se_array(se, mask, labels)
            # an observed cell without a known error (an empty se) has se 0: nothing known adds to its variance
            se = np.where(mask, np.nan_to_num(se, nan=0.0), np.nan)
            se.setflags(write=False)
        _check_coverage(mask, labels, names)
        covariates = _check_covariates(self.covariates, mask, labels, names)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "se", se)
        object.__setattr__(self, "replicate_labels", labels[0])
        object.__setattr__(self, "row_labels", labels[1])
        object.__setattr__(self, "col_labels", labels[2])
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "covariates", covariates)

    def __repr__(self) -> str:
        return (
            f"TwoWayData(replicates={self.n_replicates}, rows={self.n_rows}, "
            f"cols={self.n_cols}, observed={self.n_observed}/{self.n_cells}, "
            f"se={'yes' if self.has_se else 'no'}"
            + (f", covariates={len(self.covariates)}" if self.covariates else "")
            + ")"
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
            str) and ``names`` (dict); ``covariates`` (list of names) when the
            table has covariate columns.
        """
        out = {
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
        if self.covariates:
            out["covariates"] = list(self.covariates)
        return out

    def with_values(self, values: Any) -> TwoWayData:
        """A copy with new values and the same labels, se, names and covariates.

        Parameters
        ----------
        values : array_like, shape (R, N, K)
            NaN marks a missing cell. Where ``has_se``, every non-NaN value
            needs a standard error, so values may only be given at cells
            observed in this table. With covariates, the same holds: a cell
            made missing drops its covariate values; a cell not observed here
            has none, so it cannot be given a value.

        Returns
        -------
        TwoWayData

        Raises
        ------
        twoway.errors.DataError
            For a wrong shape, or a value at a cell this table does not observe
            when the table has covariates.
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
        covariates = self.covariates
        if covariates:
            new_mask = ~np.isnan(arr)
            added = new_mask & ~self.mask
            if added.any():
                r, i, j = np.argwhere(added)[0]
                raise DataError(
                    f"The new values must be missing where this table has no covariate values; "
                    f"{_cell_text(r, i, j, self.replicate_labels, self.row_labels, self.col_labels)} has a value "
                    "but no covariates (build a table with covariate values there instead)."
                )
            keep = new_mask[self.mask]
            if not keep.all():
                covariates = {name: column[keep] for name, column in covariates.items()}
        return replace(self, values=arr, covariates=covariates)

    # ---- long tables and CSV ----------------------------------------------

    def _long_columns(self) -> dict[str, str | int]:
        """Map role -> output column name for :meth:`to_long`."""
        return _long_names(self.names, self.n_replicates)

    def to_long(self) -> _pd().DataFrame:
        """The observed cells as a long table, one line per cell.

        Returns
        -------
        pandas.DataFrame, n_observed lines
            Columns, named from ``names``: replicate (only when R > 1 or the
            source had a replicate column), row, col, value, se (only when
            ``has_se``), then the covariate columns; lines in (replicate, row,
            col) C order.
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
        for name, column in (self.covariates or {}).items():
            data[name] = np.array(column)
        return _pd().DataFrame(data)

    def to_csv(self, path: str | Path) -> None:
        """Write :meth:`to_long` to a CSV file (no index column), atomically; gzip-compressed for ``.gz``.

        Read it back with ``TwoWayData.from_csv(path, **options)`` where the
        options name the columns as in ``names``.
        """

        gz = str(path).lower().endswith(".gz")
        with atomic_output(path) as tmp:
            self.to_long().to_csv(tmp, index=False, compression="gzip" if gz else None)

    def long_options(self) -> dict[str, str | int | None]:
        """Keyword options that make :meth:`from_long`/:meth:`from_csv` read :meth:`to_long`.

        Returns
        -------
        dict
            ``{"row": ..., "col": ..., "value": ..., "se": ..., "replicate": ...}``,
            and ``"covariates"`` (a tuple of names) when the table has covariates.
        """
        columns = self._long_columns()
        out: dict[str, Any] = {key: columns.get(key) for key in _NAME_KEYS}
        if self.covariates:
            out["covariates"] = tuple(self.covariates)
        return out

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
        zero_se: str = "error",
        covariates: Sequence[str] = (),
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
            Name of the column holding known standard errors (positive); an
            empty se on a line with a value means no known error for that
            cell (its variance is the model's unknown part alone).
        replicate : str, optional
            Name of the column holding the replicate label, when ``df`` stacks
            several tables measured on the same rows and columns.
        zero_se : {"error", "none"}
            What an se of exactly 0 means: a mistake (default) or, like an
            empty se, no known error for that cell.
        covariates : sequence of str
            Columns to keep as covariates (for a formula in the mean), one
            value per line with a value (lines with a missing value need
            none). A column whose values all read as numbers is numeric,
            otherwise text.

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
            present, a duplicated cell, fewer than 2 rows or columns, a
            label with no observed value, a covariate column that is not in
            the table (suggesting the closest name) or a missing covariate
            value on a line with a value (naming the line and the cell).
        """
        if not isinstance(df, _pd().DataFrame):
            raise DataError(f"The table must be a pandas DataFrame; got {type(df).__name__}.")
        roles = {"row": row, "col": col, "value": value, "se": se, "replicate": replicate}
        return cls(**tables.long_table(df, roles=roles, lines=None, source="the table", zero_se=zero_se,
                                       covariates=covariates))

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
        zero_se: str = "error",
        covariates: Sequence[str] = (),
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
        zero_se : {"error", "none"}
            See :meth:`from_long`.
        covariates : sequence of str
            See :meth:`from_long`; a missing covariate value is reported with
            its line number in the file.

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
        df, lines = tables.read_csv(path)
        roles = {"row": row, "col": col, "value": value, "se": se, "replicate": replicate}
        return cls(**tables.long_table(df, roles=roles, lines=lines, source=str(path), zero_se=zero_se,
                                       covariates=covariates))

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
        zero_se: str = "error",
        covariates: Mapping[str, Any] | None = None,
    ) -> TwoWayData:
        """Build a table from a wide array.

        Parameters
        ----------
        values : array_like or pandas.DataFrame, shape (N, K) or (R, N, K)
            NaN (or None in a nested list) marks a missing cell. A DataFrame
            gives its index as row labels and its columns as column labels.
        se : float, array_like or pandas.DataFrame, optional
            Known standard errors, the same shape as ``values``, or one number
            for every cell. A DataFrame se with a DataFrame values is aligned
            on their labels. NaN at an
            observed cell: no known error for that cell.
        row_labels, col_labels, replicate_labels : sequence, optional
            Labels (converted to str); they override a DataFrame's labels.
            Defaults: ``"row1".."rowN"``, ``"col1".."colK"``, ``"0".."R-1"``.
        zero_se : {"error", "none"}
            What an se of exactly 0 means: a mistake (default) or no known error.
        covariates : mapping of str -> array_like, optional
            Covariate columns, each either shaped like ``values`` (read at the
            observed cells; other cells are ignored) or 1-D with one value per
            observed cell in (replicate, row, col) C order.

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
                se = tables.align_frame(se, values)
        arr = tables.numeric_array(values, "values")
        se_arr = None if se is None else tables.numeric_array(se, "standard errors (se)")
        if se_arr is not None and se_arr.ndim == 0:  # one known se for every cell (NaN where no value)
            se_arr = np.where(np.isnan(arr), np.nan, np.broadcast_to(se_arr, arr.shape))
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
        if se_arr is not None:
            str_labels = ([str(x) for x in replicate_labels], [str(x) for x in row_labels],
                          [str(x) for x in col_labels])
            _check_zero_se(se_arr, arr, str_labels, zero_se)
            empty = ~np.isnan(arr) & np.isnan(se_arr)
            tables.warn_missing_se([_cell_text(r, i, j, *str_labels) for r, i, j in np.argwhere(empty)[:3]],
                                   int(empty.sum()), int((~np.isnan(arr)).sum()))
        return cls(
            values=arr,
            se=se_arr,
            row_labels=row_labels,
            col_labels=col_labels,
            replicate_labels=replicate_labels,
            names=None,
            covariates=_covariates_at_cells(covariates, ~np.isnan(arr)),
        )

    # ---- xarray -----------------------------------------------------------

    def to_dataset(self, *, layout: str = "grid") -> Any:
        """The table as an :class:`xarray.Dataset`.

        Parameters
        ----------
        layout : {"grid", "cells"}
            ``"grid"``: ``y`` (and ``se``) over the whole (replicate, row, col)
            grid, NaN at missing cells. ``"cells"``: the observed cells alone,
            one entry per cell on the dim ``"cell"`` (what a fit file stores: its
            size grows with the observed cells, not the grid).

        Returns
        -------
        xarray.Dataset
            Label coordinates ``replicate`` (R,), ``row`` (N,), ``col`` (K,);
            ``names`` as a JSON string in ``attrs["twoway_names"]``.
            ``"grid"``: variables ``"y"`` and, when ``has_se``, ``"se"``, dims
            ``("replicate", "row", "col")``. ``"cells"``: ``"y"`` and ``"se"``
            on the dim ``"cell"`` (n_observed,), in :meth:`observed_index`
            order, with the coordinates ``replicate_index``, ``row_index`` and
            ``col_index`` (cell,), int32 positions in the label coordinates.
            Either way, covariates, when there are any, are variables
            ``"covariate_0"``, ``"covariate_1"``, ... over the dim ``"cell"``
            (the observed cells, in :meth:`observed_index` order; text as
            strings), each named in its ``long_name`` attribute, with the names
            as a JSON list in ``attrs["twoway_covariates"]``.
        """
        import xarray as xr

        if layout not in _LAYOUTS:
            raise DataError(f"The dataset layout must be one of {_list_names(_LAYOUTS)}; got {layout!r}.")
        coords: dict[str, Any] = {
            "replicate": np.array(self.replicate_labels, dtype=str),
            "row": np.array(self.row_labels, dtype=str),
            "col": np.array(self.col_labels, dtype=str),
        }
        if layout == "grid":
            dims: tuple[str, ...] = ("replicate", "row", "col")
            data_vars = {"y": (dims, np.array(self.values))}
            if self.se is not None:
                data_vars["se"] = (dims, np.array(self.se))
        else:
            dims = ("cell",)
            index = self.observed_index()
            data_vars = {"y": (dims, self.values[index])}
            if self.se is not None:
                data_vars["se"] = (dims, self.se[index])
            for axis, positions in zip(_GRID_DIMS, index, strict=True):
                coords[f"{axis}{_INDEX_SUFFIX}"] = (dims, positions.astype(np.int32))
        attrs = {"twoway_names": json.dumps(self.names)}
        if self.covariates:
            for k, (name, column) in enumerate(self.covariates.items()):
                stored = column if column.dtype.kind == "f" else np.array([str(x) for x in column], dtype=str)
                data_vars[f"{_COVARIATE_PREFIX}{k}"] = (("cell",), np.array(stored), {"long_name": name})
            attrs["twoway_covariates"] = json.dumps(list(self.covariates))
        return xr.Dataset(data_vars, coords=coords, attrs=attrs)

    @classmethod
    def from_dataset(cls, ds: Any, *, covariates: Sequence[str] = ()) -> TwoWayData:
        """Inverse of :meth:`to_dataset`, for either layout.

        Parameters
        ----------
        ds : xarray.Dataset
            With label coordinates ``replicate``, ``row``, ``col`` and either
            (grid) a variable ``"y"`` over dims ``replicate``, ``row``, ``col``
            (any order), optionally ``"se"`` over the same dims, or (cells)
            ``"y"`` and optionally ``"se"`` over the dim ``"cell"`` with the
            coordinates ``replicate_index``, ``row_index``, ``col_index`` (cells
            in any order; a cell with a NaN ``y`` is missing); and the covariates
            :meth:`to_dataset` writes.
        covariates : sequence of str
            More covariates: names of data variables over the dims
            ``replicate``, ``row``, ``col`` (read at the observed cells) or,
            in the cells layout, over the dim ``"cell"``.

        Returns
        -------
        TwoWayData

        Raises
        ------
        twoway.errors.DataError
            For a missing ``y``, a variable on other dims, a cell index out of
            range or a cell given twice.
        """
        if not hasattr(ds, "data_vars") or "y" not in ds.data_vars:
            raise DataError("The dataset must have a data variable 'y'; it has none.")
        cells = tuple(ds["y"].dims) == ("cell",)
        labels = {d: [tables.decode(x) for x in np.asarray(ds[d].values)] for d in _GRID_DIMS}
        shape = tuple(len(labels[d]) for d in _GRID_DIMS)
        if isinstance(covariates, str):
            covariates = [covariates]
        read = _CellReader(ds, shape) if cells else _GridReader(ds)
        values = read("y")
        se = read("se") if "se" in ds.data_vars else None
        mask = ~np.isnan(values)
        stored = {name: read.covariate(column) for name, column in _covariates_from_dataset(ds).items()}
        for name in covariates:
            if name not in ds.data_vars:
                raise DataError(
                    f"The dataset must have a data variable {_q(name)} for that covariate; its variables are "
                    f"{_list_names([str(v) for v in ds.data_vars])}."
                )
            stored[str(name)] = read.extra(str(name), mask)
        return cls(
            values=values,
            se=se,
            row_labels=labels["row"],
            col_labels=labels["col"],
            replicate_labels=labels["replicate"],
            names=_names_from_attrs(ds.attrs.get("twoway_names")),
            covariates=stored or None,
        )


# --------------------------------------------------------------------------
# helpers for from_array and from_dataset
# --------------------------------------------------------------------------

_COVARIATE_PREFIX = "covariate_"
_GRID_DIMS = ("replicate", "row", "col")
_LAYOUTS = ("grid", "cells")
#: The cells layout's coordinates ``replicate_index``, ``row_index``, ``col_index``.
_INDEX_SUFFIX = "_index"


class _GridReader:
    """Variables of a grid-layout dataset as (R, N, K) arrays; covariates (cell,) as stored."""

    def __init__(self, ds: Any):
        self.ds = ds

    def __call__(self, name: str) -> np.ndarray:
        """The variable ``name`` over (replicate, row, col), float64 (R, N, K)."""
        var = self.ds[name]
        if set(var.dims) != set(_GRID_DIMS):
            raise DataError(f"The dataset variable {_q(name)} must have dims {_GRID_DIMS}; got {tuple(var.dims)}.")
        return np.asarray(var.transpose(*_GRID_DIMS).values, dtype=np.float64)

    def covariate(self, column: np.ndarray) -> np.ndarray:
        """A stored covariate (n_observed,): already in :meth:`TwoWayData.observed_index` order."""
        return column

    def extra(self, name: str, mask: np.ndarray) -> np.ndarray:
        """The grid variable ``name`` read at the observed cells ``mask`` (R, N, K): (n_observed,)."""
        var = self.ds[name]
        if set(var.dims) != set(_GRID_DIMS):
            raise DataError(
                f"The dataset variable {_q(name)} must have dims {_GRID_DIMS} to be a covariate; got {tuple(var.dims)}."
            )
        return var.transpose(*_GRID_DIMS).values[mask]


class _CellReader:
    """Variables of a cells-layout dataset put on the (R, N, K) grid; covariates in observed-cell order.

    Parameters
    ----------
    ds : xarray.Dataset
        ``y`` over ``cell`` with the coordinates ``replicate_index``, ``row_index``, ``col_index``.
    shape : tuple of int
        (R, N, K), the lengths of the label coordinates.
    """

    def __init__(self, ds: Any, shape: tuple[int, int, int]):
        self.ds, self.shape = ds, shape
        n = int(ds.sizes["cell"])
        index = []
        for axis, size in zip(_GRID_DIMS, shape, strict=True):
            key = f"{axis}{_INDEX_SUFFIX}"
            if key not in ds.variables or tuple(ds[key].dims) != ("cell",):
                raise DataError(f"The dataset must have the coordinate {_q(key)} on the dim 'cell' (the cells "
                                "layout); it has none.")
            positions = np.asarray(ds[key].values)
            if positions.dtype.kind not in "iu" or (n and (positions.min() < 0 or positions.max() >= size)):
                raise DataError(f"The dataset coordinate {_q(key)} must hold positions 0..{size - 1} of the "
                                f"{axis} labels; got values outside them.")
            index.append(positions.astype(np.int64))
        flat = np.ravel_multi_index(tuple(index), shape) if n else np.zeros(0, dtype=np.int64)
        y = self._column("y")
        self.keep = ~np.isnan(y)
        self.order = np.argsort(flat, kind="stable")
        ordered = flat[self.order]
        if ordered.size > 1 and (ordered[1:] == ordered[:-1]).any():
            r, i, j = np.unravel_index(ordered[1:][ordered[1:] == ordered[:-1]][0], shape)
            raise DataError(f"The dataset must give each cell once; the cell replicate {int(r)}, row {int(i)}, "
                            f"col {int(j)} is given twice.")
        self.flat = flat
        self.order = self.order[self.keep[self.order]]  # observed cells in (replicate, row, col) C order

    def _column(self, name: str) -> np.ndarray:
        var = self.ds[name]
        if tuple(var.dims) != ("cell",):
            raise DataError(f"The dataset variable {_q(name)} must have the dim 'cell' (as 'y' has); "
                            f"got {tuple(var.dims)}.")
        return np.asarray(var.values)

    def __call__(self, name: str) -> np.ndarray:
        """The variable ``name`` (cell,) on the grid, float64 (R, N, K), NaN at cells not given."""
        out = np.full(self.shape, np.nan)
        out.reshape(-1)[self.flat] = np.asarray(self._column(name), dtype=np.float64)
        return out

    def covariate(self, column: np.ndarray) -> np.ndarray:
        """A stored covariate (cell,) in :meth:`TwoWayData.observed_index` order (n_observed,)."""
        if column.shape != self.flat.shape:
            raise DataError(f"The dataset's covariates must have one value per cell ({self.flat.size}); "
                            f"got {column.shape[0]}.")
        return column[self.order]

    def extra(self, name: str, mask: np.ndarray) -> np.ndarray:
        """The variable ``name``, over ``cell`` or the grid, at the observed cells: (n_observed,)."""
        if tuple(self.ds[name].dims) == ("cell",):
            return self.covariate(self._column(name))
        return _GridReader(self.ds).extra(name, mask)



def _covariates_at_cells(covariates: Mapping[str, Any] | None, mask: np.ndarray) -> dict | None:
    """Covariates given on the grid of the values, read at the observed cells.

    Parameters
    ----------
    covariates : mapping of str -> array_like, or None
        Each shaped like the values as given ((N, K) or (R, N, K)), or 1-D with one
        value per observed cell.
    mask : numpy.ndarray, shape (R, N, K), bool

    Returns
    -------
    dict of str -> numpy.ndarray (n_observed,), or None
    """
    if covariates is None:
        return None
    if not isinstance(covariates, Mapping):
        raise DataError(
            f"The covariates must be a dict of column name -> values; got {type(covariates).__name__}."
        )
    out = {}
    for name, column in covariates.items():
        if isinstance(column, _pd().DataFrame):
            column = column.to_numpy(dtype=object)
        arr = np.asarray(column, dtype=object) if not isinstance(column, np.ndarray) else column
        if arr.ndim == 2 and arr.shape == mask.shape[1:] and mask.shape[0] == 1:
            arr = arr[None]
        if arr.ndim == 3:
            if arr.shape != mask.shape:
                raise DataError(
                    f"The covariate {_q(name)} must have the shape of the values {mask.shape}, or one value per "
                    f"observed cell; got {arr.shape}."
                )
            arr = arr[mask]
        out[name] = arr
    return out


def _covariates_from_dataset(ds: Any) -> dict[str, np.ndarray]:
    """The covariates :meth:`TwoWayData.to_dataset` stored (empty when none)."""
    text = ds.attrs.get("twoway_covariates")
    if text is None:
        return {}
    try:
        names = json.loads(text)
    except (TypeError, ValueError):
        names = None
    if not isinstance(names, list):
        raise DataError(f"The dataset attribute 'twoway_covariates' must be a JSON list of names; got {text!r}.")
    out = {}
    for k, name in enumerate(names):
        key = f"{_COVARIATE_PREFIX}{k}"
        if key not in ds.data_vars:
            raise DataError(f"The dataset must have the variable {_q(key)} for the covariate {_q(name)}; it has none.")
        values = np.asarray(ds[key].values)
        if values.dtype.kind in "USO":
            column = np.empty(values.shape, dtype=object)
            column[...] = [tables.decode(x) for x in values.reshape(-1).tolist()]
            values = column
        out[str(name)] = values
    return out


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


