"""Memory guards: how much memory is available, and what the dense likelihood paths would hold.

A path that would need more memory than is available is refused before it is
built (:func:`twoway.plan.resolve`, :meth:`twoway.likelihood.sparse.SparseDesign.dense`),
rather than after a long silent run or a killed process. Call these through the
module (``memory.available_memory()``) so that tests can stand in a smaller machine.
"""

from __future__ import annotations

import os

__all__ = ["available_memory", "dense_path_bytes", "dense_design_bytes", "gib"]


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable in /proc/meminfo, else free pages)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no way to know
        return 1 << 62


def _coordinates(spec, data) -> tuple[int, int]:
    """(m, blocks): the integrated coordinates and their blocks (intercept, row and column effects)."""
    _, N, K = data.values.shape
    m = int(spec.intercept) + (N if spec.row_effect != "none" else 0) + (K if spec.col_effect != "none" else 0)
    n_blocks = int(spec.intercept) + (spec.row_effect != "none") + (spec.col_effect != "none")
    return m, n_blocks


def dense_design_bytes(spec, data) -> int:
    """Bytes of the dense effects' design of ``spec`` on ``data``: 2 m x m blocks per effect, the (N + K, m) map.

    m is the number of integrated coordinates (see
    :class:`twoway.likelihood.marginal.EffectsDesign`).
    """
    _, N, K = data.values.shape
    m, n_blocks = _coordinates(spec, data)
    return int(8 * (2 * n_blocks * m * m + (N + K) * m))


def dense_path_bytes(spec, data) -> int:
    """A lower estimate of the bytes a dense (NUTS) path holds for ``spec`` on ``data``.

    The effects' design (:func:`dense_design_bytes`), then a few m x m working arrays
    under the gradient and a few (R, N, K) grids.
    """
    R, N, K = data.values.shape
    m, _ = _coordinates(spec, data)
    return int(dense_design_bytes(spec, data) + 8 * (4 * m * m + 8 * R * N * K))


def gib(n_bytes: float) -> str:
    """``n_bytes`` in GiB, as the refusals write it (``1.5 GiB``)."""
    return f"{n_bytes / 2**30:.1f} GiB"
