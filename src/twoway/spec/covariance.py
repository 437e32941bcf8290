"""User-given covariances of a whole table (the ``full`` residual).

The ``full`` residual takes the covariance of vec(table) (row-major: cell
(i, j) is entry ``i*K + j``) from the user, either

* a CSV file holding the (N K) x (N K) matrix (numbers only, or with a header
  row and first column of ``row:col`` labels, which must match the table's;
  read by :func:`twoway.table.io.matrices.read_labelled_matrix`), or
* ``module:function`` (or ``path/to/file.py:function``): a callable
  ``function(ops, **params)`` returning the matrix, where ``ops`` offers
  ``exp, log, sqrt, eye, outer, diag, kron`` that work on NumPy arrays and on
  PyTensor variables alike, and each keyword is a parameter of the model
  whose prior is given in the model file's ``[priors]`` table.

"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from twoway.errors import ModelError
from twoway.table.io.matrices import read_labelled_matrix

__all__ = ["FullCovariance", "load_full_covariance"]


@dataclass(frozen=True)
class FullCovariance:
    """The covariance of one table: a constant matrix or a callable of named parameters."""

    matrix: np.ndarray | None
    function: Callable | None
    parameters: tuple[str, ...]
    source: str

    def __call__(self, ops, params: dict[str, Any]):
        if self.function is None:
            return ops.asarray(self.matrix)
        return self.function(_CovOps(ops), **{k: params[k] for k in self.parameters})


class _CovOps:
    """The operations a covariance callable may use (NumPy or PyTensor underneath)."""

    def __init__(self, ops):
        self._ops = ops

    def __getattr__(self, name):
        return getattr(self._ops, name)

    def kron(self, a, b):
        return self._ops.kron(a, b)


def callable_parameters(source: str) -> tuple[str, ...]:
    """Names of the parameters a ``module:function`` covariance takes (after ``ops``)."""
    func = _load_callable(source)
    names = [p.name for p in inspect.signature(func).parameters.values()][1:]
    return tuple(names)


def is_callable_source(source: str) -> bool:
    return ":" in source and not source.lower().endswith(".csv") and not Path(source).is_file()


def _load_callable(source: str) -> Callable:
    mod_name, _, func_name = source.rpartition(":")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise ModelError(f"The covariance file {mod_name!r} does not exist; looked for "
                                 f"{str(path.absolute())!r}.")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"The covariance module {mod_name!r} cannot be imported ({type(exc).__name__}: {exc}).") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ModelError(f"The covariance {source!r} must name a function in {mod_name!r}; got no such function.")
    return func


def load_full_covariance(source: str, row_labels, col_labels, *, matrix=None) -> FullCovariance:
    """Read the ``full`` residual's covariance for a table with these labels.

    A ``module:function`` source is loaded as a callable; anything else is a
    CSV file read by :func:`twoway.table.io.matrices.read_labelled_matrix`, its
    labels the table's cells ``row:col`` (or numbers alone, in row-major order).
    A ``matrix`` given (shape (N K, N K), cells row-major: a saved fit's copy)
    is used instead of reading the file.
    """
    if matrix is not None and not is_callable_source(source):
        return FullCovariance(matrix=np.asarray(matrix, dtype=float), function=None, parameters=(), source=source)
    if is_callable_source(source):
        func = _load_callable(source)
        return FullCovariance(matrix=None, function=func, parameters=callable_parameters(source), source=source)
    cells = [f"{r}:{c}" for r in row_labels for c in col_labels]
    matrix = read_labelled_matrix(
        source, cells, what="covariance", numbers_only=True, unit="cell of the table, row-major",
        missing="lacks the cells {plain} (labels are 'row:col').",
        extra="has cells that are not in the table: {plain}.",
    )
    return FullCovariance(matrix=matrix, function=None, parameters=(), source=source)
