"""Memory guards: how much memory is available, and what the dense likelihood paths would hold.

A path that would need more memory than is available is refused before it is
built (:func:`twoway.plan.resolve`, :meth:`twoway.likelihood.sparse.SparseDesign.dense`),
rather than after a long silent run or a killed process. Call these through the
module (``memory.available_memory()``) so that tests can stand in a smaller machine.
"""

from __future__ import annotations

import os

from twoway.spec.model import degrees_of_freedom

__all__ = ["available_memory", "dense_path_bytes", "dense_design_bytes", "draws_values", "draws_bytes", "DRAWS_FLOOR", "gib"]

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
    _, N, K = data.values.shape
    m = int(spec.intercept) + (N if spec.row_effect != "none" else 0) + (K if spec.col_effect != "none" else 0)
    n_blocks = int(spec.intercept) + (spec.row_effect != "none") + (spec.col_effect != "none")
    return m + int(n_cov), n_blocks + int(n_cov > 0)


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
    """
    R, N, K = data.values.shape
    count = degrees_of_freedom(spec, N, K, R).n_parameters
    count += 2 + 2 * (N + K) + SAMPLE_STATS  # fixed effects in full, an intercept, row_mean and col_mean
    if spec.residual == "kronecker":
        count += sum(n * n for n in (N, K) if n <= stored_cov)
    return int(count)


def draws_bytes(spec, data, chains: int, draws: int, *, stored_cov: int = 30) -> int:
    """Bytes of the draws a fit holds: chains x draws x :func:`draws_values` x 8, for each of :data:`COPIES`."""
    return int(COPIES * 8 * int(chains) * int(draws) * draws_values(spec, data, stored_cov=stored_cov))


def gib(n_bytes: float) -> str:
    """``n_bytes`` in GiB, as the refusals write it (``1.5 GiB``)."""
    return f"{n_bytes / 2**30:.1f} GiB"
