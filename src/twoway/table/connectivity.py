"""Is a table's design connected? Rows and columns linked through observed cells.

Two levels (rows or columns) are *connected* when a path of observed cells
joins them: row i to column j when cell (i, j) is observed in any replicate,
and on from there. In a connected design every row (column) effect is compared
with every other through the data; in a disconnected one (studies comparing A
with B and others C with D, and nothing linking the two pairs) a contrast
between levels of different parts comes from the priors alone.

The parts are the connected components of the bipartite graph whose nodes are
the rows and the columns and whose edges are the observed cells
(minimum-label propagation with pointer jumping, in NumPy: no SciPy on the summary's path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


__all__ = ["Components", "components"]


@dataclass(frozen=True)
class Components:
    """The connected parts of a table's design.

    Attributes
    ----------
    n : int
        How many parts (1: a connected design).
    row : tuple of int, length N
        The part of each row, numbered 0, 1, ... in order of first appearance
        (row 0 is in part 0).
    col : tuple of int, length K
        The part of each column.
    row_labels, col_labels : tuple of str
        The table's labels, for messages.
    """

    n: int
    row: tuple[int, ...]
    col: tuple[int, ...]
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]

    @property
    def connected(self) -> bool:
        """True when every row and column is linked to every other."""
        return self.n <= 1

    def of(self, side: str) -> tuple[int, ...]:
        """The part of each level of ``side`` (``"row"`` or ``"col"``)."""
        return self.row if side == "row" else self.col

    def describe(self, limit: int = 4) -> str:
        """The parts in words: ``part 1: rows 's1', 's2' with columns 'A', 'B'; part 2: ...``.

        Parameters
        ----------
        limit : int
            How many labels of each side to name per part.
        """
        parts = []
        for c in range(self.n):
            rows = [lab for lab, p in zip(self.row_labels, self.row) if p == c]
            cols = [lab for lab, p in zip(self.col_labels, self.col) if p == c]
            parts.append(f"part {c + 1}: rows {_few(rows, limit)} with columns {_few(cols, limit)}")
        return "; ".join(parts)


def components(mask: np.ndarray, row_labels: Sequence[str] = (), col_labels: Sequence[str] = ()) -> Components:
    """The connected parts of the design whose observed cells are ``mask``.

    Parameters
    ----------
    mask : numpy.ndarray, bool, shape (N, K) or (R, N, K)
        True where a cell is observed (in any replicate, for a 3-D mask).
    row_labels, col_labels : sequence of str, optional
        Labels, for :meth:`Components.describe` (default: ``0..N-1``, ``0..K-1``).

    Returns
    -------
    Components
    """
    observed = np.asarray(mask, dtype=bool)
    if observed.ndim == 3:
        observed = observed.any(axis=0)
    n_row, n_col = observed.shape
    i, j = np.nonzero(observed)
    raw = _labels(n_row + n_col, i, n_row + j)
    # number the parts in order of first appearance (rows first, then columns)
    order: dict[int, int] = {}
    for c in raw:
        order.setdefault(int(c), len(order))
    parts = [order[int(c)] for c in raw]
    return Components(
        n=len(order),
        row=tuple(parts[:n_row]),
        col=tuple(parts[n_row:]),
        row_labels=tuple(str(x) for x in row_labels) or tuple(str(k) for k in range(n_row)),
        col_labels=tuple(str(x) for x in col_labels) or tuple(str(k) for k in range(n_col)),
    )


def _few(labels: Sequence[str], k: int) -> str:
    shown = ", ".join(f"'{x}'" for x in labels[:k])
    return shown + (f" and {len(labels) - k} more" if len(labels) > k else "")


def _labels(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Connected-component labels (the smallest node of each component) of an undirected graph.

    Parameters
    ----------
    n : int
        Number of nodes.
    u, v : numpy.ndarray of int, shape (E,)
        The edges' ends.

    Returns
    -------
    numpy.ndarray of int, shape (n,)
    """
    label = np.arange(n)
    while True:
        low = np.minimum(label[u], label[v])
        new = label.copy()
        np.minimum.at(new, u, low)
        np.minimum.at(new, v, low)
        np.minimum.at(new, label, new)       # hook each root to the smallest label its members reached
        while True:                          # pointer jumping: every node straight to its root
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            return label
        label = new
