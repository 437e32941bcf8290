"""Memory guards: how much memory is available, and what the dense likelihood paths, the draws and the
checks after a fit would hold.

A path that would need more memory than is available is refused before it is
built (:func:`twoway.plan.resolve`, :meth:`twoway.likelihood.sparse.SparseDesign.dense`),
and draws before any compiling or sampling (:func:`check_draws`), rather than after
a long silent run or a killed process. The checks after a fit (leave-one-out,
predictive checks, predictions) are sized by the small functions at the end
(:func:`pointwise_bytes`, :func:`dense_check_bytes`, :func:`dense_check_flops`,
:func:`cells_check_flops`, :func:`law_flops`), so that the command line can say how big the work is
before it starts and refuse what will not fit. Call these through the module
(``memory.available_memory()``) so that tests can stand in a smaller machine.
"""

from __future__ import annotations

import os

from twoway.errors import FitError
from twoway.spec.model import degrees_of_freedom

__all__ = ["available_memory", "dense_path_bytes", "dense_design_bytes", "draws_values", "draws_bytes",
           "draws_values_shape", "draws_bytes_shape", "check_draws", "DRAWS_FLOOR", "gib", "size_text",
           "pointwise_bytes", "dense_check_bytes", "dense_check_flops", "cells_check_flops", "work_seconds",
           "fits", "LARGE_BYTES", "LARGE_FLOPS", "integrated_coordinates", "law_flops", "unit_blocks_flops"]

SAMPLE_STATS = 16  # values an engine stores per draw besides the parameters (step size, energy, tree depth ...)
DRAWS_FLOOR = 256 * 2**20  # draws needing less are never refused: available memory is only a rough figure
COPIES = 2        # the engine's draws and the fit's copy of them exist together while a fit is assembled


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


def _coordinates(spec, data, n_cov: int = 0) -> tuple[int, int]:
    """(m, blocks): the integrated coordinates and their blocks (intercept, row and column effects, and the
    covariates' ``n_cov`` coefficients)."""
    m = integrated_coordinates(spec, data.values.shape, n_cov=n_cov)
    n_blocks = int(spec.intercept) + (spec.row_effect != "none") + (spec.col_effect != "none")
    return m, n_blocks + int(n_cov > 0)


def dense_design_bytes(spec, data, *, n_cov: int = 0) -> int:
    """Bytes of the dense effects' design of ``spec`` on ``data``: 2 m x m blocks per effect, the (N + K + p, m) map.

    m is the number of integrated coordinates (see
    :class:`twoway.likelihood.marginal.EffectsDesign`), ``n_cov`` (p) the covariates'
    coefficients integrated with them.
    """
    _, N, K = data.values.shape
    m, n_blocks = _coordinates(spec, data, n_cov)
    return int(8 * (2 * n_blocks * m * m + (N + K + n_cov) * m))


def dense_path_bytes(spec, data, *, n_cov: int = 0) -> int:
    """A lower estimate of the bytes a dense (NUTS) path holds for ``spec`` on ``data``.

    The effects' design (:func:`dense_design_bytes`), then a few m x m working arrays
    under the gradient and a few (R, N, K) grids (with p = ``n_cov`` covariates, a few
    (R, N, K, p) grids too).
    """
    R, N, K = data.values.shape
    m, _ = _coordinates(spec, data, n_cov)
    return int(dense_design_bytes(spec, data, n_cov=n_cov) + 8 * (4 * m * m + 8 * R * N * K * (1 + n_cov)))


def draws_values(spec, data, *, stored_cov: int = 30) -> int:
    """The values a fit of ``spec`` on ``data`` stores per draw (an upper estimate).

    The parameters sampled or drawn back (:func:`twoway.spec.model.degrees_of_freedom`,
    fixed effects counted in full), the derived row and column means, the stored
    Kronecker covariances (levels up to ``stored_cov``) and the sampler's statistics.
    See :func:`draws_values_shape`, which needs only the table's shape.
    """
    return draws_values_shape(spec, data.values.shape, stored_cov=stored_cov)


def draws_values_shape(spec, shape: tuple[int, int, int], *, n_cov: int = 0, stored_cov: int = 30) -> int:
    """The values a fit of ``spec`` on a table of ``shape`` (R, N, K) stores per draw (an upper estimate).

    As :func:`draws_values`, plus the covariates' ``n_cov`` coefficients; every cell counted
    as observed (the parameters do not depend on which are).
    """
    R, N, K = (int(v) for v in shape)
    count = degrees_of_freedom(spec, N, K, R).n_parameters
    count += 2 + 2 * (N + K) + SAMPLE_STATS  # fixed effects in full, an intercept, row_mean and col_mean
    if spec.residual == "kronecker":
        count += sum(n * n for n in (N, K) if n <= stored_cov)
    return int(count + int(n_cov))


def draws_bytes(spec, data, chains: int, draws: int, *, stored_cov: int = 30) -> int:
    """Bytes of the draws a fit holds: chains x draws x :func:`draws_values` x 8, for each of :data:`COPIES`."""
    return int(COPIES * 8 * int(chains) * int(draws) * draws_values(spec, data, stored_cov=stored_cov))


def draws_bytes_shape(spec, shape: tuple[int, int, int], chains: int, draws: int, *, n_cov: int = 0,
                      stored_cov: int = 30) -> int:
    """As :func:`draws_bytes` for a table of ``shape`` (R, N, K), with ``n_cov`` covariate coefficients."""
    values = draws_values_shape(spec, shape, n_cov=n_cov, stored_cov=stored_cov)
    return int(COPIES * 8 * int(chains) * int(draws) * values)


def check_draws(spec, shape: tuple[int, int, int], chains: int, draws: int, *, n_cov: int = 0,
                stored_cov: int = 30, fits_at_once: int = 1) -> None:
    """Raise :class:`~twoway.errors.FitError` when the draws would not fit in the memory available.

    Called before any compiling or sampling: it needs only the model, the table's shape and
    the sampling options.

    Parameters
    ----------
    spec : ModelSpec
    shape : (int, int, int)
        The table's (R, N, K).
    chains, draws : int
        Chains, and kept draws per chain.
    n_cov : int
        The covariates' coefficients.
    stored_cov : int
        Kronecker factors up to this many levels store their covariance per draw.
    fits_at_once : int
        Fits held at the same time (workers of a batch on this machine).

    Raises
    ------
    FitError
        When ``fits_at_once`` x :func:`draws_bytes_shape` exceeds both
        :func:`available_memory` and :data:`DRAWS_FLOOR`; the message says what it
        needs, what is available and how many draws would fit.
    """
    at_once = max(1, int(fits_at_once))
    need = at_once * draws_bytes_shape(spec, shape, chains, draws, n_cov=n_cov, stored_cov=stored_cov)
    available = available_memory()
    if need > max(available, DRAWS_FLOOR):
        values = draws_values_shape(spec, shape, n_cov=n_cov, stored_cov=stored_cov)
        fitting = max(1, int(int(draws) * available / need))
        workers = f"{at_once} fits at once x " if at_once > 1 else ""
        fewer = ", fewer chains or fewer workers" if at_once > 1 else " or fewer chains"
        raise FitError(f"The draws must fit in memory; got {workers}{chains} chains x {draws} draws x {values} "
                       f"stored values, about {gib(need)}, and {gib(available)} is available: ask for fewer "
                       f"draws (at most about {fitting} per chain with {chains} chains){fewer}.")


def gib(n_bytes: float) -> str:
    """``n_bytes`` in GiB, as the refusals write it (``1.5 GiB``)."""
    return f"{n_bytes / 2**30:.1f} GiB"


def size_text(n_bytes: float) -> str:
    """``512 bytes``, ``7.7 KiB``, ``12.0 MiB``, ``1.5 GiB``: a size as the estimates write it."""
    n = float(n_bytes)
    if n < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


# -- the checks after a fit: leave-one-out, predictive checks, predictions ------------------------------------
#: Work is said before it starts (an estimate line) when it holds more than this many bytes at once ...
LARGE_BYTES = 2**30
#: ... or needs more than this many floating-point operations (a few seconds).
LARGE_FLOPS = 1e10
#: A rough rate of NumPy and LAPACK work, to turn operations into seconds in the estimates (operations a second).
FLOPS_PER_SECOND = 5e9
#: Copies of a (draws, units) pointwise log-likelihood alive at once (the values, the tree's copy, PSIS's weights).
POINTWISE_COPIES = 3
#: (n, n) matrices alive at once in a dense check of one draw (the covariance, its factor, the inverse, a product).
DENSE_COPIES = 4
#: Operations of a dense check of one draw, in units of n^3 (a Cholesky factor, a triangular inverse, a product).
DENSE_FLOPS = 3.0
#: Operations per draw and cell of the checks that hold no dense matrix (a cell's mean, variance, density).
CELL_FLOPS = 50.0
#: Operations (or their equivalent in sparse assembly) per cell of one predictive law's precision.
LAW_CELL_FLOPS = 4000.0


def pointwise_bytes(n_draws: int, n_units: int, *, copies: int = POINTWISE_COPIES) -> int:
    """Bytes of a (draws, units) array of float64 and its working copies (a pointwise log-likelihood).

    Parameters
    ----------
    n_draws : int
        Posterior draws (all chains).
    n_units : int
        Cells, rows or columns left out one at a time (or cells of a replicated table).
    copies : int
        Arrays of that shape alive at once.
    """
    return int(8 * int(n_draws) * int(n_units) * int(copies))


def dense_check_bytes(n_obs: int) -> int:
    """Bytes of the dense (n_obs, n_obs) matrices a check holds for one draw (:data:`DENSE_COPIES` of them)."""
    return int(8 * DENSE_COPIES * int(n_obs) ** 2)


def dense_check_flops(n_draws: int, n_obs: int) -> float:
    """Operations of a check that factors a dense (n_obs, n_obs) covariance for each of ``n_draws`` draws."""
    return float(DENSE_FLOPS * float(n_draws) * float(n_obs) ** 3)


def cells_check_flops(n_draws: int, n_cells: int, *, per_cell: float = CELL_FLOPS) -> float:
    """Operations of a check that works cell by cell (no dense matrix): ``n_draws x n_cells x per_cell``."""
    return float(per_cell * float(n_draws) * float(n_cells))


def integrated_coordinates(spec, shape: tuple[int, int, int], *, n_cov: int = 0) -> int:
    """The coordinates integrated out with the effects (intercept, row and column effects, ``n_cov`` coefficients)
    of ``spec`` on a table of ``shape`` (R, N, K)."""
    R, N, K = (int(v) for v in shape)
    m = int(spec.intercept) + (N if spec.row_effect != "none" else 0) + (K if spec.col_effect != "none" else 0)
    return m + int(n_cov)


#: LAPACK's dense factors and inverses run this many times faster than :data:`FLOPS_PER_SECOND`.
LAPACK_SPEEDUP = 4.0


#: Leaving out whole rows or columns: each unit's block of a law's precision is assembled and factored on its
#: own, at about this many element-wise equivalents per block plus :data:`UNIT_BLOCK_PAIR_FLOPS` per pair of
#: its cells (measured: 0.35 ms a row of 25 cells, 0.9 ms a column of 65, on the 73,421-cell crossed table).
UNIT_BLOCK_FLOPS = 1.5e6
UNIT_BLOCK_PAIR_FLOPS = 600.0


def unit_blocks_flops(sizes) -> float:
    """Operations of one law's blocks when whole rows or columns are left out (``sizes``: cells per unit)."""
    import numpy as np

    sizes = np.asarray(sizes, dtype=float)
    return float(np.sum(UNIT_BLOCK_FLOPS + UNIT_BLOCK_PAIR_FLOPS * sizes * sizes))


def law_flops(n_obs: int, h: int) -> float:
    """Operations of one predictive law's precision: a dense (h, h) inverse of the effects' coordinates left
    after elimination (h^3, at LAPACK's pace) and the sparse passes over the ``n_obs`` cells and the pairs of
    their effects (in element-wise equivalents)."""
    return float(float(h) ** 3 / LAPACK_SPEEDUP + LAW_CELL_FLOPS * float(n_obs))


def work_seconds(flops: float) -> float:
    """A rough time for ``flops`` operations at :data:`FLOPS_PER_SECOND`."""
    return float(flops) / FLOPS_PER_SECOND


def fits(n_bytes: int) -> bool:
    """Whether ``n_bytes`` fit in the memory available (work under :data:`DRAWS_FLOOR` always does)."""
    return int(n_bytes) <= max(available_memory(), DRAWS_FLOOR)
