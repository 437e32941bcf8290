"""Labelled square matrices in CSV files: the one reader.

Known relationship matrices (``known:FILE`` of a row/column structure or of a
random effect's covariance) and the full covariance of a table (the ``full``
residual's ``covariance = "FILE.csv"``) are read here, by
:func:`read_labelled_matrix`, with the same checks and the same messages.

The file has a header line whose first field is ignored (it may be empty) and
whose other fields are labels, then one line per label: the label, then the
numbers of its row. Header and first column name the same labels, in any
order; the matrix comes back in the order the caller asks for. A caller may
also accept a file of numbers alone (``numbers_only``), already in its order.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from twoway.errors import DataError
from twoway.table.io._common import list_names, quote, read_bytes

__all__ = ["read_labelled_matrix"]

#: Default wording of the two label complaints (``{names}``: quoted, ``{plain}``: as written).
MISSING = "must have a row and a column for every label; missing: {names}."
EXTRA = "must have only the labels of the table; extra: {names}."


def read_labelled_matrix(
    path: str | Path,
    labels: Sequence[str],
    *,
    what: str,
    numbers_only: bool = False,
    unit: str = "label",
    missing: str = MISSING,
    extra: str = EXTRA,
) -> np.ndarray:
    """Read a symmetric positive-definite matrix from a labelled CSV file.

    Parameters
    ----------
    path : str or pathlib.Path
        The CSV file.
    labels : sequence of str, length n
        The labels the matrix must cover (a table's row or column labels, or
        its cells as ``row:col``), in the order wanted.
    what : str
        What the matrix is for, for messages (``"row_structure"``,
        ``"covariance"``): they name "the file 'K.csv' for the 'row_structure'".
    numbers_only : bool
        Also accept a file of numbers alone (no header, no label column; a
        first field that is a number marks one), already in the order of
        ``labels``.
    unit : str
        What one row and column stand for, in the message about the size of
        a numbers-only file (``"cell of the table, row-major"``).
    missing, extra : str
        The complaint about labels of ``labels`` the file lacks, and about
        labels in the file that ``labels`` lacks, after "The file ... ";
        ``{names}`` is the quoted list, ``{plain}`` the first five as written.

    Returns
    -------
    numpy.ndarray, shape (n, n), float64
        The matrix, rows and columns in the order of ``labels``, made exactly
        symmetric.

    Raises
    ------
    twoway.errors.DataError
        If the file is missing or not CSV text; labels are empty, repeated,
        missing or extra; header and first column disagree; the matrix is not
        square (or, numbers only, not n x n); an entry is not a finite number;
        the matrix is not symmetric up to a relative 1e-8 or not positive
        definite. The message names the file, what it is for and the labels.
    """
    path = Path(path)
    source = f"file {quote(path)} for the {quote(what)}"
    labels = [str(x) for x in labels]
    records = _read_records(path, source)
    if not records:
        raise DataError(f"The {source} is empty.")
    if numbers_only and _is_number(records[0][1][0]):
        raw, row_names, col_names = _numbers(records, labels, source, unit)
    else:
        raw, row_names, col_names = _labelled(records, labels, source, missing, extra)
    row_at = {x: i for i, x in enumerate(row_names)}
    col_at = {x: j for j, x in enumerate(col_names)}
    matrix = raw[np.ix_([row_at[x] for x in labels], [col_at[x] for x in labels])]
    return _symmetric_positive_definite(matrix, labels, source)


# ---------------------------------------------------------------------------
# the file as records
# ---------------------------------------------------------------------------


def _read_records(path: Path, source: str) -> list[tuple[int, list[str]]]:
    """Non-blank CSV records of ``path`` with their line numbers, fields stripped."""
    if not path.exists():
        raise DataError(f"The {source} does not exist; looked for {quote(os.path.abspath(path))}"
                        f"{'' if path.is_absolute() else ' (relative to the working folder)'}.")
    raw = read_bytes(path, source)
    try:
        if b"\x00" in raw[:65536]:
            raise UnicodeDecodeError("utf-8", raw, 0, 1, "NUL byte")
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"The {source} is not a CSV text file in UTF-8; it holds binary data.") from None
    reader = csv.reader(text.splitlines(keepends=True), skipinitialspace=True, strict=True)
    out = []
    end = 0
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num
            fields = [f.strip() for f in fields]
            while len(fields) > 1 and fields[-1] == "":
                fields.pop()
            if any(fields):
                out.append((start, fields))
    except csv.Error as exc:
        raise DataError(f"The {source} is not valid CSV; line {reader.line_num}: {exc}.") from None
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------
# the two layouts: labelled, numbers only
# ---------------------------------------------------------------------------


def _labelled(
    records: list, labels: list[str], source: str, missing: str, extra: str
) -> tuple[np.ndarray, list[str], list[str]]:
    """The numbers of a labelled file, in its own order, with its row and column labels."""
    header_line, header = records[0]
    col_names = header[1:]
    if not col_names:
        raise DataError(f"The {source} must have a header line of labels; line {header_line} has none.")
    _check_unique(col_names, "the header", source)
    rows = records[1:]
    if not rows:
        raise DataError(f"The {source} has a header but no rows of numbers.")
    row_names = [fields[0] for _, fields in rows]
    _check_unique(row_names, "the first column", source)
    for line, fields in rows:
        if len(fields) - 1 != len(col_names):
            raise DataError(
                f"The {source} must hold a square matrix; line {line} (label {quote(fields[0])}) has "
                f"{len(fields) - 1} values, the header names {len(col_names)} labels."
            )
    if set(row_names) != set(col_names):
        only_h = [x for x in col_names if x not in set(row_names)]
        only_r = [x for x in row_names if x not in set(col_names)]
        parts = []
        if only_h:
            parts.append(f"only in the header: {_names(only_h)}")
        if only_r:
            parts.append(f"only in the first column: {_names(only_r)}")
        if len(row_names) != len(col_names):
            parts.insert(0, f"{len(col_names)} labels in the header, {len(row_names)} in the first column")
        raise DataError(
            f"The {source} must hold a square matrix with the same labels in its header "
            f"and its first column; {'; '.join(parts)}."
        )
    for template, names in (
        (missing, [x for x in labels if x not in set(col_names)]),
        (extra, [x for x in col_names if x not in set(labels)]),
    ):
        if names:
            plain = ", ".join(names[:5]) + (" and more" if len(names) > 5 else "")
            raise DataError(f"The {source} " + template.format(names=_names(names), plain=plain))
    body = [(line, fields[0], fields[1:]) for line, fields in rows]
    return _parse_numbers(body, col_names, source), row_names, col_names


def _numbers(
    records: list, labels: list[str], source: str, unit: str
) -> tuple[np.ndarray, list[str], list[str]]:
    """The numbers of a file without labels, which must be n x n in the order of ``labels``."""
    n = len(labels)
    widths = {len(fields) for _, fields in records}
    if len(records) != n or widths != {n}:
        got = f"{len(records)} x {widths.pop()}" if len(widths) == 1 else (
            f"{len(records)} lines of {min(widths)} to {max(widths)} values")
        raise DataError(
            f"The {source} must hold a {n} x {n} matrix (one row and one column per {unit}); got {got}."
        )
    body = [(line, labels[r], fields) for r, (line, fields) in enumerate(records)]
    return _parse_numbers(body, labels, source), labels, labels


def _check_unique(names: Sequence[str], where: str, source: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name == "":
            raise DataError(f"The {source} must name every row and column; {where} has an empty label.")
        if name in seen:
            raise DataError(f"The {source} must name each label once; {quote(name)} appears twice in {where}.")
        seen.add(name)


def _names(items: Sequence[str]) -> str:
    return list_names(items, limit=8)


def _parse_numbers(body: list, col_names: Sequence[str], source: str) -> np.ndarray:
    """An (n, n) array from ``(line, row label, fields)`` triples; DataError at the first bad entry."""
    raw = np.empty((len(body), len(col_names)))
    for r, (line, row_name, fields) in enumerate(body):
        for c, text in enumerate(fields):
            where = f"(row {quote(row_name)}, column {quote(col_names[c])}) on line {line}"
            try:
                value = float(text)
            except ValueError:
                shown = "empty" if text == "" else f"{text!r}, not a number"
                raise DataError(f"The {source} must hold numbers; the entry at {where} is {shown}.") from None
            if not math.isfinite(value):
                raise DataError(f"The {source} must hold finite numbers; the entry at {where} is {text!r}.")
            raw[r, c] = value
    return raw


# ---------------------------------------------------------------------------
# symmetric, positive definite
# ---------------------------------------------------------------------------


def _symmetric_positive_definite(matrix: np.ndarray, labels: list[str], source: str) -> np.ndarray:
    """``matrix`` made exactly symmetric; DataError unless nearly symmetric and positive definite."""
    asym = np.abs(matrix - matrix.T)
    scale = float(np.max(np.abs(matrix)))
    i, j = np.unravel_index(int(np.argmax(asym)), asym.shape)
    if asym[i, j] > 1e-8 * scale:
        raise DataError(
            f"The matrix in the {source} must be symmetric; the largest asymmetry is {asym[i, j]:.6g} "
            f"between (row {quote(labels[i])}, column {quote(labels[j])}) = {matrix[i, j]:.6g} and "
            f"(row {quote(labels[j])}, column {quote(labels[i])}) = {matrix[j, i]:.6g}."
        )
    matrix = 0.5 * (matrix + matrix.T)
    eig = np.linalg.eigvalsh(matrix)
    if not eig[0] > len(labels) * np.finfo(float).eps * max(float(eig[-1]), 0.0):
        raise DataError(
            f"The matrix in the {source} must be positive definite; its smallest eigenvalue is {eig[0]:.6g}."
        )
    return matrix
