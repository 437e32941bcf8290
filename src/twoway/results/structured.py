"""Structured Gaussian laws of the observed cells: variances, draws, and the precision's pieces that LOO needs.

For one parameter point the observed cells (n of them, in the order of
:meth:`TwoWayData.observed_index`) are Gaussian, ``y ~ N(mean, C)`` with

    C = B + Z G Z'

where B is the residual covariance (block diagonal over replicate tables, and
over cells for a random cell effect) and ``Z G Z'`` the integrated effects
(intercept, row and column effects, covariates' coefficients; ``Z = A E`` with
``A`` the augmented indicators ``[rows | cols | X]``). Exact leave-one-out needs,
per parameter point, only pieces of the precision ``Q = C^-1``: its diagonal,
``Q r`` for residuals r, and its principal blocks ``Q_BB`` (a row or a column
of the table); :class:`Precision` gives them without ever forming an n x n
matrix (Woodbury: ``Q = B^-1 - V H V'`` with ``V = B^-1 Z`` and
``H = (G^-1 + Z' B^-1 Z)^-1``):

=====================  ========================================================
residual B             ``B^-1`` from
=====================  ========================================================
independent            its diagonal (:class:`DiagonalBase`)
cell effect            per cell, Sherman-Morrison over replicates (:class:`CellBase`)
latent                 per replicate, Woodbury over its row and column shocks
                       (:class:`LatentBase`)
kronecker, complete    the factors' eigenbases: ``U (x) V + s^2 I`` is
                       ``(Qu (x) Qv) diag(lam mu' + s^2) (Qu (x) Qv)'`` (:class:`KronBase`)
kronecker with gaps    one dense Cholesky per replicate table, as the
or se; full            ``dense-table`` path (:class:`DenseBlocksBase`)
=====================  ========================================================

The effects enter through ``V`` and ``H``. With a residual whose inverse keeps
rows sparse (independent, cell effect), ``V`` is a :class:`SparseRows` (a few
unit entries per cell plus the covariates), and ``Z' B^-1 Z``, the diagonal and
the blocks of ``V H V'`` are gathers of H's entries: O(n c^2) for c entries per
row, never n x n. ``H`` is ``E M^-1 E'`` in the indicators' space (a dense
(N+K+p)^2 matrix, :class:`DenseH`) for ordinary tables; for large ones, and
for the ``sparse`` path, it stays in the effects' coordinates and one side's iid
random effects are eliminated through their diagonal block (:class:`SchurH`:
a dense Schur complement over the other coordinates only, the same algebra as
the ``woodbury-schur`` path). Other residuals give a dense ``V`` (n x (N+K+p)),
which is what their own likelihood paths cost.

:func:`iter_laws` walks a fit's draws, groups them by the parameters the
covariance depends on (the ``laplace`` engine repeats its proposals), and
yields each group's :class:`GaussianLaw` with the means of its draws. When
(nearly) every draw has parameters of its own (NUTS), the common structures
(a diagonal or complete-Kronecker residual with a dense H) are computed for a
batch of draws at once (:class:`BatchPrecision`): a few batched products per
batch instead of a few dozen small ones per draw. Many small products run on
one BLAS thread (:func:`single_blas`); only a large dense block gets threads.

Cost per distinct parameter point, n observed cells, h = N + K + p:
diagonal and cell-effect residuals O(n c^2 + h^2 m + m^3) with dense H (m
effects' coordinates), O(n c^2 + n_a m_o + m_o^3) with one iid side of n_a
levels eliminated (m_o the rest); latent O(n m_s^2 + n h m_s) per replicate
(m_s shocks); complete Kronecker O(n (N + K) h + n h^2); a dense table
O(n_r^3) per replicate table of n_r cells, as its likelihood path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from twoway.errors import FitError
from twoway.results.pair_sums import cell_quadratic, complement_pairs, pattern_pairs

# Deferred imports: scipy (heavy to import) is imported inside the functions that use it, so importing this
# module stays light.

__all__ = [
    "MEAN_NAMES",
    "SCHUR_MIN_COORDS",
    "THREADED_BLOCK",
    "BatchPrecision",
    "CellBase",
    "CoordinateEffects",
    "DenseBlocksBase",
    "DenseH",
    "DiagonalBase",
    "FitDraws",
    "GaussianLaw",
    "IndicatorEffects",
    "KronBase",
    "LatentBase",
    "LawChunk",
    "Precision",
    "SchurH",
    "SparseRows",
    "all_draws",
    "blas_threads_help",
    "covariance_names",
    "draw_groups",
    "integrated_law",
    "iter_laws",
    "residual_base",
    "sampled_law",
    "single_blas",
]

#: With at least this many effects' coordinates (and an iid random side to eliminate, rows kept sparse),
#: H stays in the coordinates and the iid side is eliminated (:class:`SchurH`); below, a dense H.
SCHUR_MIN_COORDS = 400

#: Steps of iterative refinement of ``Q r`` against C (see :meth:`Precision.apply`).
REFINEMENT_STEPS = 2
#: A refinement step smaller than this, relative to the largest entry, ends the refinement: each step shrinks the
#: error by a factor of 30 or more, so what is left is far below the 1e-8 the leave-one-out densities need.
REFINED = 1e-10

#: Posterior variables that enter the mean of the cells, not their covariance (drawn effects, derived means).
MEAN_NAMES = frozenset({"intercept", "row_effect", "col_effect", "coef", "row_shock", "col_shock", "cell_effect",
                        "row_mean", "col_mean"})

_NOT_PD = ("The predictive covariance of the observed cells is not positive definite, so leave-one-out "
           "densities cannot be computed for this draw.")


def single_blas():
    """A context in which BLAS runs on one thread: many small products (a batch of draws) run faster
    without threads, and busy-waiting threads cost a loaded machine dearly."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


#: A dense block of at least this size (a Schur complement, a replicate table's covariance) is worth BLAS threads.
THREADED_BLOCK = 3000


def blas_threads_help(fit) -> bool:
    """Whether a fit's laws hold a dense block large enough for BLAS threads (:data:`THREADED_BLOCK`)."""
    spec = fit.model
    if spec.effects != "integrate":
        return False
    plan = fit.plan
    design, lay = plan.design, plan.layout
    from twoway.likelihood import kronecker as kr
    from twoway.likelihood.sparse import SparseDesign

    if isinstance(design, SparseDesign):
        block = _iid_block(spec, design)
        return design.m - (0 if block is None else block[1] - block[0]) >= THREADED_BLOCK
    if spec.residual == "full" or (spec.residual == "kronecker" and kr.kronecker_path(spec, lay) == "dense-table"):
        return max(flat.size for flat in lay.obs_flat) >= THREADED_BLOCK
    return design is not None and design.m >= THREADED_BLOCK


def _cholesky(a: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        raise FitError(_NOT_PD) from None


def _spd_inverse(a: np.ndarray, *, upper: bool = False, overwrite: bool = False) -> np.ndarray:
    """The inverse of a symmetric positive definite matrix (..., k, k), exactly symmetric.

    With ``upper`` (a 2-d matrix), only the upper triangle of ``a`` is read (the lower one may hold
    anything); with ``overwrite`` as well, ``a`` may be overwritten (no copy for LAPACK).
    """
    a = np.asarray(a, dtype=float)
    if a.shape[-1] == 0:
        return a.copy()
    if a.ndim == 2:                                   # LAPACK potrf + potri: a third of a general inverse
        from scipy.linalg.lapack import dpotrf, dpotri

        lower = not upper
        if upper and a.flags.c_contiguous:            # its transpose is column-major: LAPACK reads it in place
            a, lower = a.T, True
        c, info = dpotrf(a, lower=lower, clean=True, overwrite_a=overwrite)   # the other triangle zeroed
        if info != 0:
            raise FitError(_NOT_PD)
        inv, info = dpotri(c, lower=lower, overwrite_c=True)
        if info != 0:  # pragma: no cover - potrf succeeded
            raise FitError(_NOT_PD)
        out = inv + inv.T
        out.flat[::out.shape[0] + 1] *= 0.5
        return out
    L = _cholesky(a)
    Li = np.linalg.solve(L, np.broadcast_to(np.eye(a.shape[-1]), a.shape))
    return np.swapaxes(Li, -1, -2) @ Li


def _as_2d(x: np.ndarray) -> tuple[np.ndarray, bool]:
    x = np.asarray(x, dtype=float)
    return (x[:, None], True) if x.ndim == 1 else (x, False)


# ---------------------------------------------------------------------------------------------------------
# rows with a few entries each
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SparseRows:
    """An (n, h) matrix whose rows have at most c entries: ``row i = sum_u w[i, u] e_{cols[i, u]}'``.

    Attributes
    ----------
    cols : int array (n, c)
        Column of each entry, -1 where a row has fewer entries.
    w : array (n, c)
        The entries' values (0 where ``cols`` is -1).
    h : int
        Number of columns.
    """

    cols: np.ndarray
    w: np.ndarray
    h: int

    @property
    def n(self) -> int:
        return int(self.cols.shape[0])

    @cached_property
    def csr(self):
        """The matrix as :class:`scipy.sparse.csr_matrix` (n, h)."""
        import scipy.sparse as sps

        ok = self.cols >= 0
        rows = np.broadcast_to(np.arange(self.n)[:, None], self.cols.shape)[ok]
        return sps.csr_matrix((self.w[ok], (rows, self.cols[ok])), shape=(self.n, self.h))

    @classmethod
    def from_csr(cls, matrix) -> SparseRows:
        """The rows of a scipy sparse matrix (explicit zeros dropped), padded to the longest row."""
        m = matrix.tocsr().copy()
        m.eliminate_zeros()
        m.sort_indices()
        counts = np.diff(m.indptr)
        n, c = m.shape[0], int(counts.max()) if counts.size else 0
        cols = np.full((n, c), -1, dtype=np.int64)
        w = np.zeros((n, c))
        slot = np.arange(m.nnz) - np.repeat(m.indptr[:-1], counts)
        rows = np.repeat(np.arange(n), counts)
        cols[rows, slot] = m.indices
        w[rows, slot] = m.data
        return cls(cols=cols, w=w, h=int(m.shape[1]))

    def scaled(self, s: np.ndarray) -> SparseRows:
        """``diag(s) @ self``."""
        return SparseRows(cols=self.cols, w=self.w * np.asarray(s, dtype=float)[:, None], h=self.h)

    def dense(self, idx=None) -> np.ndarray:
        """The rows ``idx`` (default all) as a dense (k, h) array."""
        idx = np.arange(self.n) if idx is None else np.asarray(idx)
        out = np.zeros((idx.size, self.h))
        cols, w = self.cols[idx], self.w[idx]
        ok = cols >= 0
        np.add.at(out, (np.broadcast_to(np.arange(idx.size)[:, None], cols.shape)[ok], cols[ok]), w[ok])
        return out


def indicator_rows(lay) -> SparseRows:
    """The augmented indicators ``[rows | cols | X]`` of the observed cells, (n, N+K+p)."""
    _, N, K = lay.shape
    _, ii, jj = lay.obs
    p = lay.n_cov
    cols = [ii.astype(np.int64), N + jj.astype(np.int64)]
    w = [np.ones(ii.size), np.ones(ii.size)]
    for t in range(p):
        cols.append(np.full(ii.size, N + K + t, dtype=np.int64))
        w.append(np.asarray(lay.x[:, t], dtype=float))
    return SparseRows(cols=np.stack(cols, axis=1), w=np.stack(w, axis=1), h=N + K + p)


# ---------------------------------------------------------------------------------------------------------
# H: the effects' part of the precision, (G^-1 + Z' B^-1 Z)^-1 seen through some columns
# ---------------------------------------------------------------------------------------------------------
class DenseH:
    """H as a dense symmetric (h, h) matrix."""

    def __init__(self, H: np.ndarray):
        self.H = np.asarray(H, dtype=float)

    def entries(self, p, q) -> np.ndarray:
        """``H[p, q]`` elementwise (p and q broadcast)."""
        return self.H[p, q]

    def block(self, p, q) -> np.ndarray:
        """``H[p][:, q]``, (len p, len q)."""
        return self.H[np.ix_(np.asarray(p), np.asarray(q))]

    def matvec(self, y: np.ndarray) -> np.ndarray:
        return self.H @ y


class SchurPlan:
    """Where the pieces of a Schur split sit in the values of M, for one pattern of M.

    The pattern of ``M = G^-1 + Z' B^-1 Z`` is the same at every parameter point,
    so the bookkeeping (the eliminated block's diagonal, the ``M_ao`` entries as a
    CSR pattern, the ``M_oo`` entries, and each eliminated row's pairs of ``M_ao``
    entries, which give ``M_oa D^-1 M_ao`` and ``diag(F S^-1 F')`` by gathers) is
    done once.

    Parameters
    ----------
    M : scipy sparse (m, m)
        Any matrix with M's pattern (values unused).
    a : (start, stop) or None
        The coordinates eliminated; their block of M must be diagonal.
    """

    def __init__(self, M, a: tuple[int, int] | None):
        import scipy.sparse as sps

        M = sps.csr_matrix(M)
        M.sort_indices()
        m = M.shape[0]
        self.m = m
        self.indptr, self.indices = M.indptr.copy(), M.indices.copy()
        self.a_idx = np.arange(*a) if a is not None else np.arange(0)
        self.is_a = np.zeros(m, dtype=bool)
        self.is_a[self.a_idx] = True
        self.o_idx = np.flatnonzero(~self.is_a)
        self.loc = np.empty(m, dtype=np.int64)
        self.loc[self.a_idx] = np.arange(self.a_idx.size)
        self.loc[self.o_idx] = np.arange(self.o_idx.size)
        n_a, n_o = self.a_idx.size, self.o_idx.size
        rows = np.repeat(np.arange(m), np.diff(M.indptr))
        cols = M.indices
        ra, ca = self.is_a[rows], self.is_a[cols]
        if np.any(ra & ca & (rows != cols)):
            raise FitError("The eliminated effects' block of the precision is not diagonal; "
                           "use method=\"dense\".")   # pragma: no cover - guarded by the callers
        diag = np.flatnonzero(ra & ca)
        self.diag_pos = np.empty(n_a, dtype=np.int64)
        self.diag_pos[self.loc[rows[diag]]] = diag
        if diag.size != n_a:   # pragma: no cover - every effect has a prior
            raise FitError(_NOT_PD)
        ao = np.flatnonzero(ra & ~ca)                          # row-major already: sorted by (row, col)
        self.ao_pos = ao
        self.ao_row, self.ao_col = self.loc[rows[ao]], self.loc[cols[ao]]
        self.f_indptr = np.concatenate([[0], np.cumsum(np.bincount(self.ao_row, minlength=n_a))])
        oo = np.flatnonzero(~ra & ~ca)
        self.oo_pos, self.oo_flat = oo, self.loc[rows[oo]] * n_o + self.loc[cols[oo]]
        counts = np.diff(self.f_indptr)                        # each eliminated row's pairs p <= q of M_ao entries
        pair_row = np.repeat(np.arange(n_a), counts * counts)
        first = np.repeat(self.f_indptr[:-1], counts * counts)
        within = np.arange(pair_row.size) - np.repeat(np.concatenate([[0], np.cumsum(counts * counts)[:-1]]),
                                                      counts * counts)
        width = np.maximum(np.repeat(counts, counts * counts), 1)
        keep = within // width <= within % width
        self.pair_row = pair_row[keep]
        self.pair_p = (first + within // width)[keep]
        self.pair_q = (first + within % width)[keep]
        self.pair_same = self.pair_p == self.pair_q
        self.pair_flat = self.ao_col[self.pair_p] * n_o + self.ao_col[self.pair_q]   # upper triangle of S
        # in the order of their place in S: the reads of S^-1 and the sums into S go through memory in order
        order = np.argsort(self.pair_flat, kind="stable")
        self.pair_row, self.pair_p, self.pair_q = self.pair_row[order], self.pair_p[order], self.pair_q[order]
        self.pair_same, self.pair_flat = self.pair_same[order], self.pair_flat[order]
        self.pair_offdiagonal = (~self.pair_same).astype(float)      # 1 for a pair of two entries, 0 for one twice
        # runs of pairs at one place of S: their sum goes there once
        self.pair_runs = np.flatnonzero(np.r_[True, np.diff(self.pair_flat) != 0]) if self.pair_flat.size \
            else np.zeros(0, dtype=np.int64)
        self.pair_unique = self.pair_flat[self.pair_runs]
        self._expansion = None

    def same_pattern(self, M) -> bool:
        return (M.shape[0] == self.m and M.indptr.size == self.indptr.size and M.indices.size == self.indices.size
                and np.array_equal(M.indptr, self.indptr) and np.array_equal(M.indices, self.indices))

    def expansion(self, cols: np.ndarray):
        """For rows with entries in the coordinates ``cols`` (n, c): each row's eliminated entry (slot, or
        -1), which entries are not eliminated, their positions in S, and the positions of ``(a, o)`` in F's
        pattern (-1 where absent); None when a row has several eliminated entries. Kept for the last
        ``cols`` array (the same at every parameter point)."""
        hit = self._expansion
        if hit is not None and hit[0] is cols:
            return hit[1]
        valid = cols >= 0
        safe = np.where(valid, cols, 0)
        in_a = valid & self.is_a[safe]
        if np.any(in_a.sum(axis=1) > 1):
            out = None
        else:
            slot = np.where(in_a.any(axis=1), np.argmax(in_a, axis=1), -1)
            o_mask = valid & ~in_a
            lo = np.where(o_mask, self.loc[safe], 0)
            n_o = self.o_idx.size
            la = np.where(slot >= 0, self.loc[safe[np.arange(cols.shape[0]), np.maximum(slot, 0)]], 0)
            keys = self.ao_row * n_o + self.ao_col                                   # sorted (row-major)
            want = la[:, None] * n_o + lo
            pos = np.searchsorted(keys, want)
            found = (pos < keys.size) & (keys[np.minimum(pos, keys.size - 1)] == want) & o_mask & (slot >= 0)[:, None]
            out = (slot, o_mask, lo, np.where(found, pos, -1))
        self._expansion = (cols, out)
        return out


    def prepared(self, cols: np.ndarray):
        """:meth:`expansion` turned into the gathers :meth:`SchurH.quad_diag` makes for rows ``cols``
        (kept for the last ``cols``): masks, positions in the flattened ``S^-1`` of each pair of
        o-entries, the rows with an eliminated entry and where their ``F S^-1`` entries are."""
        hit = getattr(self, "_prepared", None)
        if hit is not None and hit[0] is cols:
            return hit[1]
        exp = self.expansion(cols)
        if exp is None:
            out = None
        else:
            slot, o_mask, lo, tf_pos = exp
            n_o = self.o_idx.size
            c = lo.shape[1]
            rows = np.flatnonzero(slot >= 0)
            tf_rows = tf_pos[rows]
            missing = (tf_rows < 0) & o_mask[rows]
            out = {
                "valid": cols >= 0, "o_mask": o_mask, "lo": lo,
                "oo_flat": {(u, v): lo[:, u] * n_o + lo[:, v] for u in range(c) for v in range(u, c)},
                "rows": rows, "slot_rows": slot[rows], "la": self.loc[cols[rows, slot[rows]]],
                "tf_idx": np.maximum(tf_rows, 0), "tf_ok": (tf_rows >= 0).astype(float),
                "missing": np.nonzero(missing) if missing.any() else None,
            }
        self._prepared = (cols, out)
        return out


class SchurH:
    """``H = M^-1`` for a sparse SPD M whose block on the coordinates ``a`` is diagonal.

    With ``M = [[D, M_ao], [M_oa, M_oo]]`` (D diagonal: one side's iid random
    effects), ``F = D^-1 M_ao`` and the Schur complement ``S = M_oo - M_oa F``::

        M^-1 = [[D^-1 + F S^-1 F', -F S^-1], [-S^-1 F', S^-1]]

    Only S (the other coordinates: the other side, intercept, coefficients) is
    dense and inverted; the diagonal of ``V M^-1 V'`` is a sum of gathers
    (:meth:`quad_diag`), and ``F S^-1`` (n_a, n_o) is formed only for blocks.

    Parameters
    ----------
    M : scipy sparse (m, m)
    a : (start, stop) or None
        The coordinates eliminated (their block of M must be diagonal); None: none (S = M).
    plan : SchurPlan, optional
        The bookkeeping of M's pattern (made here when not given or not M's).
    """

    def __init__(self, M, a: tuple[int, int] | None, plan: SchurPlan | None = None):
        import scipy.sparse as sps

        M = sps.csr_matrix(M)
        M.sort_indices()
        if plan is None or not plan.same_pattern(M):
            plan = SchurPlan(M, a)
        self.plan = plan
        self.m, self.a_idx, self.o_idx, self.is_a, self.loc = plan.m, plan.a_idx, plan.o_idx, plan.is_a, plan.loc
        n_a, n_o = plan.a_idx.size, plan.o_idx.size
        data = M.data
        d = data[plan.diag_pos]
        if np.any(~(d > 0)):
            raise FitError(_NOT_PD)
        self.d_inv = 1.0 / d
        m_ao = data[plan.ao_pos]
        self.f_data = m_ao * self.d_inv[plan.ao_row]
        self.F = sps.csr_matrix((self.f_data, plan.ao_col, plan.f_indptr), shape=(n_a, n_o))
        S = np.zeros(n_o * n_o)
        S[plan.oo_flat] = data[plan.oo_pos]                    # M's entries: one each
        complement_pairs(S, plan, m_ao, self.f_data)           # M_oa D^-1 M_ao, its upper triangle
        S = S.reshape(n_o, n_o)
        self.S_inv = _spd_inverse(S, upper=True, overwrite=True)   # S's upper triangle is all that is read
        # S^-1 at each eliminated row's pairs of entries gives F S^-1 on F's pattern, (G_a f_a) for row a's
        # block G_a of S^-1; then diag(F S^-1 F')_a = f_a . (G_a f_a)
        self.tf_pattern = pattern_pairs(self.S_inv.ravel(), plan, self.f_data, plan.ao_pos.size)
        self.fsf = np.zeros(n_a)
        if plan.ao_pos.size:
            starts = plan.f_indptr[:-1]
            present = np.flatnonzero(np.diff(plan.f_indptr) > 0)
            self.fsf[present] = np.add.reduceat(self.f_data * self.tf_pattern, starts[present])

    @cached_property
    def TF(self) -> np.ndarray:
        """``F S^-1``, (n_a, n_o)."""
        return np.asarray(self.F @ self.S_inv)

    def quad_diag(self, V: SparseRows) -> np.ndarray | None:
        """``diag(V M^-1 V')`` by gathers, for rows with at most one eliminated entry (else None)."""
        prep = self.plan.prepared(V.cols)
        if prep is None:
            return None
        w = np.where(prep["valid"], V.w, 0.0)
        if prep["missing"] is None:
            out = cell_quadratic(w, prep, self.o_idx.size, self.S_inv.ravel(), self.d_inv, self.fsf,
                                 self.tf_pattern)
            if out is not None:
                return out
        o_w = np.where(prep["o_mask"], w, 0.0)                 # the o-entries' weights
        out = np.zeros(V.n)
        flat_inv = self.S_inv.ravel()
        for (u, v), flat in prep["oo_flat"].items():          # o-o: S^-1 entries
            out += (1.0 if u == v else 2.0) * o_w[:, u] * o_w[:, v] * flat_inv[flat]
        rows = prep["rows"]
        if rows.size:
            wa = w[rows, prep["slot_rows"]]
            la = prep["la"]
            out[rows] += wa * wa * (self.d_inv[la] + self.fsf[la])
            # a-o: -(F S^-1)[a, o], read on F's pattern (an o-entry of a row is in its eliminated row's pattern)
            tf = self.tf_pattern[prep["tf_idx"]] * prep["tf_ok"]                  # (rows, c)
            if prep["missing"] is not None:  # pragma: no cover - entries absent from M's pattern
                r_, u_ = prep["missing"]
                keep = w[rows[r_], u_] != 0
                r_, u_ = r_[keep], u_[keep]
                tf[r_, u_] = self.TF[self.loc[V.cols[rows[r_], prep["slot_rows"][r_]]], prep["lo"][rows[r_], u_]]
            out[rows] -= 2.0 * wa * (o_w[rows] * tf).sum(axis=1)
        return out

    def entries(self, p, q) -> np.ndarray:
        """``H[p, q]`` elementwise (p and q broadcast)."""
        P, Q = np.broadcast_arrays(np.asarray(p), np.asarray(q))
        out = np.empty(P.shape)
        ap, aq = self.is_a[P], self.is_a[Q]
        lp, lq = self.loc[P], self.loc[Q]
        oo = ~ap & ~aq
        out[oo] = self.S_inv[lp[oo], lq[oo]]
        ao = ap & ~aq
        oa = ~ap & aq
        if ao.any() or oa.any():
            out[ao] = -self.TF[lp[ao], lq[ao]]
            out[oa] = -self.TF[lq[oa], lp[oa]]
        aa = ap & aq
        if aa.any():
            same = aa & (P == Q)
            out[same] = self.d_inv[lp[same]] + self.fsf[lp[same]]
            diff = aa & (P != Q)
            if diff.any():   # rare: (F S^-1 F')[p, q] one pair at a time
                rows_p, rows_q = lp[diff], lq[diff]
                out[diff] = np.asarray(self.F[rows_q].multiply(self.TF[rows_p]).sum(axis=1)).ravel()
        return out

    def block(self, p, q) -> np.ndarray:
        """``H[p][:, q]``, (len p, len q)."""
        p, q = np.asarray(p), np.asarray(q)
        out = np.zeros((p.size, q.size))
        ap, aq = self.is_a[p], self.is_a[q]
        ip_a, ip_o = np.flatnonzero(ap), np.flatnonzero(~ap)
        iq_a, iq_o = np.flatnonzero(aq), np.flatnonzero(~aq)
        lp, lq = self.loc[p], self.loc[q]
        out[np.ix_(ip_o, iq_o)] = self.S_inv[np.ix_(lp[ip_o], lq[iq_o])]
        out[np.ix_(ip_a, iq_o)] = -self.TF[np.ix_(lp[ip_a], lq[iq_o])]
        out[np.ix_(ip_o, iq_a)] = -self.TF[np.ix_(lq[iq_a], lp[ip_o])].T
        if ip_a.size and iq_a.size:
            la_p, la_q = lp[ip_a], lq[iq_a]
            aa = np.asarray((self.F[la_q] @ self.TF[la_p].T).T)
            aa = aa + (la_p[:, None] == la_q[None, :]) * self.d_inv[la_p][:, None]
            out[np.ix_(ip_a, iq_a)] = aa
        return out

    def matvec(self, y: np.ndarray) -> np.ndarray:
        """``M^-1 y`` for y (m,) or (m, s)."""
        y = np.asarray(y, dtype=float)
        ya, yo = y[self.a_idx], y[self.o_idx]
        uo = self.S_inv @ (yo - self.F.T @ ya) if self.a_idx.size else self.S_inv @ yo
        out = np.empty_like(y)
        out[self.o_idx] = uo
        if self.a_idx.size:
            da = self.d_inv if y.ndim == 1 else self.d_inv[:, None]
            out[self.a_idx] = da * ya - self.F @ uo
        return out


class _SparseEntries:
    """Entries of a scipy sparse matrix, looked up elementwise (the interface :func:`_quad_diag` reads)."""

    def __init__(self, matrix):
        import scipy.sparse as sps

        self.matrix = sps.csr_matrix(matrix)

    def entries(self, p, q) -> np.ndarray:
        P, Q = np.broadcast_arrays(np.asarray(p), np.asarray(q))
        return np.asarray(self.matrix[P.ravel(), Q.ravel()]).reshape(P.shape)


def _quad_diag(V, H) -> np.ndarray:
    """``diag(V H V')``, (n,), for V a :class:`SparseRows` (gathers) or a dense (n, h) array."""
    if not isinstance(V, SparseRows):
        return np.einsum("nh,nh->n", V @ H.H, V)
    fast = H.quad_diag(V) if hasattr(H, "quad_diag") else None
    if fast is not None:
        return fast
    cols = np.where(V.cols >= 0, V.cols, 0)
    w = np.where(V.cols >= 0, V.w, 0.0)
    out = np.zeros(V.n)
    c = cols.shape[1]
    for u in range(c):
        out += w[:, u] * w[:, u] * H.entries(cols[:, u], cols[:, u])
        for v in range(u + 1, c):
            out += 2.0 * w[:, u] * w[:, v] * H.entries(cols[:, u], cols[:, v])
    return out


def _quad_block(V, H, idx: np.ndarray) -> np.ndarray:
    """``V_B H V_B'`` for the rows ``idx`` of V, (k, k)."""
    if not isinstance(V, SparseRows):
        Vb = V[idx]
        return Vb @ H.H @ Vb.T
    cols = V.cols[idx]
    used = np.unique(cols[cols >= 0])
    Vc = np.zeros((idx.size, used.size))
    ok = cols >= 0
    rows = np.broadcast_to(np.arange(idx.size)[:, None], cols.shape)[ok]
    np.add.at(Vc, (rows, np.searchsorted(used, cols[ok])), V.w[idx][ok])
    return Vc @ H.block(used, used) @ Vc.T


def _rows_t(V, x: np.ndarray) -> np.ndarray:
    return V.csr.T @ x if isinstance(V, SparseRows) else V.T @ x


def _rows(V, y: np.ndarray) -> np.ndarray:
    return V.csr @ y if isinstance(V, SparseRows) else V @ y


# ---------------------------------------------------------------------------------------------------------
# residual covariances B
# ---------------------------------------------------------------------------------------------------------
class DiagonalBase:
    """Independent cells: ``B = diag(var)``."""

    sparse_rows = True

    def __init__(self, var: np.ndarray):
        self.var = np.asarray(var, dtype=float)
        if np.any(~(self.var > 0)):
            raise FitError(_NOT_PD)

    @property
    def n(self) -> int:
        return int(self.var.size)

    def diag(self) -> np.ndarray:
        return self.var

    def inv_diag(self) -> np.ndarray:
        return 1.0 / self.var

    def solve(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return x / (self.var if x.ndim == 1 else self.var[:, None])

    def inv_block(self, idx: np.ndarray) -> np.ndarray:
        return np.diag(1.0 / self.var[idx])

    def inv_rows(self, A: SparseRows) -> SparseRows:
        return A.scaled(1.0 / self.var)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.sqrt(self.var) * rng.standard_normal((size, self.n))

    def cov_apply(self, x: np.ndarray) -> np.ndarray:
        """``B x`` for x (n,) or (n, s)."""
        x = np.asarray(x, dtype=float)
        return x * (self.var if x.ndim == 1 else self.var[:, None])

    def dense(self) -> np.ndarray:
        return np.diag(self.var)


class CellBase:
    """Independent cells plus a random cell effect shared by a cell's replicates: ``B = D + v C C'``.

    ``C`` (n, n_cells) marks each observation's cell. Per cell (Sherman-Morrison),
    ``B^-1 = D^-1 - D^-1 C diag(f) C' D^-1`` with ``f = v / (1 + v W)``, ``W`` the
    cell's precisions summed over replicates.
    """

    sparse_rows = True

    def __init__(self, var: np.ndarray, cell: np.ndarray, cell_var: float):
        self.var = np.asarray(var, dtype=float)
        if np.any(~(self.var > 0)) or not cell_var >= 0:
            raise FitError(_NOT_PD)
        _, self.cell = np.unique(np.asarray(cell), return_inverse=True)
        self.cell = self.cell.ravel()
        self.v = float(cell_var)
        W = np.bincount(self.cell, weights=1.0 / self.var)
        self.f = self.v / (1.0 + self.v * W)

    @property
    def n(self) -> int:
        return int(self.var.size)

    def diag(self) -> np.ndarray:
        return self.var + self.v

    def inv_diag(self) -> np.ndarray:
        return 1.0 / self.var - self.f[self.cell] / self.var**2

    def solve(self, x: np.ndarray) -> np.ndarray:
        x2, flat = _as_2d(x)
        y = x2 / self.var[:, None]
        sums = np.zeros((self.f.size, y.shape[1]))
        np.add.at(sums, self.cell, y)
        out = y - (self.f[:, None] * sums)[self.cell] / self.var[:, None]
        return out[:, 0] if flat else out

    def inv_block(self, idx: np.ndarray) -> np.ndarray:
        d, c = 1.0 / self.var[idx], self.cell[idx]
        return np.diag(d) - (c[:, None] == c[None, :]) * np.outer(d, d) * self.f[c][:, None]

    def inv_rows(self, A: SparseRows) -> SparseRows:
        """``B^-1 A``: a row keeps the entries of its cell's rows (sparse, through scipy)."""
        import scipy.sparse as sps

        d = 1.0 / self.var
        cells = sps.csr_matrix((np.ones(self.n), (np.arange(self.n), self.cell)), shape=(self.n, self.f.size))
        DA = sps.diags(d) @ A.csr
        V = DA - sps.diags(d * self.f[self.cell]) @ (cells @ (cells.T @ DA))
        return SparseRows.from_csr(V)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        e = np.sqrt(self.var) * rng.standard_normal((size, self.n))
        return e + math.sqrt(self.v) * rng.standard_normal((size, self.f.size))[:, self.cell]

    def cov_apply(self, x: np.ndarray) -> np.ndarray:
        x2, flat = _as_2d(x)
        sums = np.zeros((self.f.size, x2.shape[1]))
        np.add.at(sums, self.cell, x2)
        out = x2 * self.var[:, None] + self.v * sums[self.cell]
        return out[:, 0] if flat else out

    def dense(self) -> np.ndarray:
        return np.diag(self.var) + self.v * (self.cell[:, None] == self.cell[None, :])


class LatentBase:
    """Per-replicate row and column shocks plus independent noise: ``B = D + sum_r S_r diag(s) S_r'``.

    Per replicate (Woodbury), ``B_r^-1 = D_r^-1 - D_r^-1 S_r K_r^-1 S_r' D_r^-1`` with
    ``K_r = diag(1/s) + S_r' D_r^-1 S_r`` (m_s x m_s, m_s the shocks of one table).

    Parameters
    ----------
    var : array (n,)
        The noise variance of each cell.
    rep : int array (n,)
        Each cell's replicate.
    units : int array (n, c)
        Each cell's shocks (positions in ``shock_var``; -1 where none).
    shock_var : array (m_s,)
    n_rep : int
    """

    sparse_rows = False

    def __init__(self, var, rep, units, shock_var, n_rep: int):
        import scipy.sparse as sps

        self.var = np.asarray(var, dtype=float)
        self.shock_var = np.asarray(shock_var, dtype=float)
        if np.any(~(self.var > 0)) or np.any(~(self.shock_var > 0)):
            raise FitError(_NOT_PD)
        self.rep, self.units, self.R = np.asarray(rep), np.asarray(units), int(n_rep)
        m_s = self.shock_var.size
        ok = self.units >= 0
        rows = np.broadcast_to(np.arange(self.n)[:, None], self.units.shape)[ok]
        flat = (self.rep[:, None] * m_s + self.units)[ok]
        self.S = sps.csr_matrix((np.ones(rows.size), (rows, flat)), shape=(self.n, self.R * m_s))
        SD = self.S.T @ sps.diags(1.0 / self.var) @ self.S                      # block diagonal, (R m_s)^2
        K = np.zeros((self.R, m_s, m_s))
        coo = SD.tocoo()
        K[coo.row // m_s, coo.row % m_s, coo.col % m_s] += coo.data
        K += np.diag(1.0 / self.shock_var)[None]
        self.K_inv = _spd_inverse(K)                                             # (R, m_s, m_s)
        self._units0 = np.where(ok, self.units, 0)
        self._ok = ok

    @property
    def n(self) -> int:
        return int(self.var.size)

    def diag(self) -> np.ndarray:
        return self.var + np.where(self._ok, self.shock_var[self._units0], 0.0).sum(axis=1)

    def _k_entries(self, i, k) -> np.ndarray:
        """``s_i' K^-1 s_k`` for cells i and k of the same replicate (broadcast)."""
        out = 0.0
        c = self.units.shape[1]
        for u in range(c):
            for v in range(c):
                val = self.K_inv[self.rep[i], self._units0[i, u], self._units0[k, v]]
                out = out + np.where(self._ok[i, u] & self._ok[k, v], val, 0.0)
        return out

    def inv_diag(self) -> np.ndarray:
        i = np.arange(self.n)
        return 1.0 / self.var - self._k_entries(i, i) / self.var**2

    def solve(self, x: np.ndarray) -> np.ndarray:
        x2, flat = _as_2d(x)
        y = x2 / self.var[:, None]
        t = (self.S.T @ y).reshape(self.R, -1, y.shape[1])
        back = self.S @ (self.K_inv @ t).reshape(-1, y.shape[1])
        out = y - back / self.var[:, None]
        return out[:, 0] if flat else out

    def inv_block(self, idx: np.ndarray) -> np.ndarray:
        d = 1.0 / self.var[idx]
        i, k = idx[:, None], idx[None, :]
        same = self.rep[i] == self.rep[k]
        return np.diag(d) - np.where(same, self._k_entries(i, k), 0.0) * np.outer(d, d)

    def inv_rows(self, A: SparseRows) -> np.ndarray:
        return self.solve(A.dense())

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        e = np.sqrt(self.var) * rng.standard_normal((size, self.n))
        shocks = np.tile(np.sqrt(self.shock_var), self.R) * rng.standard_normal((size, self.S.shape[1]))
        return e + (self.S @ shocks.T).T

    def cov_apply(self, x: np.ndarray) -> np.ndarray:
        x2, flat = _as_2d(x)
        t = (self.S.T @ x2) * np.tile(self.shock_var, self.R)[:, None]
        out = x2 * self.var[:, None] + self.S @ t
        return out[:, 0] if flat else out

    def dense(self) -> np.ndarray:
        Sd = self.S.toarray()
        return np.diag(self.var) + (Sd * np.tile(self.shock_var, self.R)) @ Sd.T


class KronBase:
    """Complete Kronecker tables: ``B = I_R (x) (U (x) V) + s^2 I`` through the factors' eigenbases.

    With ``U = Qu diag(lam) Qu'`` and ``V = Qv diag(mu) Qv'`` each replicate table's
    covariance is ``(Qu (x) Qv) diag(lam mu' + s^2) (Qu (x) Qv)'``: its inverse, diagonal
    and blocks cost N x N and K x K algebra. The cells are the whole grid in C order.

    Parameters
    ----------
    U : array (N, N)
    V : array (K, K)
    nugget : float
        ``s^2`` (0 without one).
    n_rep : int
    row_structure, col_structure : Structure, optional
        Give fixed eigenvectors where the structure has them (iid, diag, cs, known).
    """

    sparse_rows = False

    def __init__(self, U, V, nugget: float, n_rep: int, row_structure=None, col_structure=None):
        from twoway.likelihood.kronecker import factor_eigh
        from twoway.linalg.ops import NUMPY

        self.U, self.V = np.asarray(U, dtype=float), np.asarray(V, dtype=float)
        self.R, self.N, self.K = int(n_rep), self.U.shape[0], self.V.shape[0]
        self.nugget = float(nugget)
        lam, self.qu = (np.asarray(a, dtype=float) for a in factor_eigh(NUMPY, self.U, row_structure))
        mu, self.qv = (np.asarray(a, dtype=float) for a in factor_eigh(NUMPY, self.V, col_structure))
        self.lam, self.mu = lam, mu
        ev = lam[:, None] * mu[None, :] + self.nugget
        if np.any(~(ev > 0)):
            raise FitError(_NOT_PD)
        self.om = 1.0 / ev                                            # (N, K)

    @property
    def n(self) -> int:
        return self.R * self.N * self.K

    def diag(self) -> np.ndarray:
        one = np.outer(np.diag(self.U), np.diag(self.V)).ravel() + self.nugget
        return np.tile(one, self.R)

    def inv_diag(self) -> np.ndarray:
        return np.tile(((self.qu**2) @ self.om @ (self.qv**2).T).ravel(), self.R)

    def solve(self, x: np.ndarray) -> np.ndarray:
        x2, flat = _as_2d(x)
        s = x2.shape[1]
        X = np.moveaxis(x2.reshape(self.R, self.N, self.K, s), -1, 0)    # (s, R, N, K)
        T = self.om * (self.qu.T @ X @ self.qv)
        Y = self.qu @ T @ self.qv.T
        out = np.moveaxis(Y, 0, -1).reshape(self.n, s)
        return out[:, 0] if flat else out

    def inv_block(self, idx: np.ndarray) -> np.ndarray:
        r, rest = np.divmod(idx, self.N * self.K)
        i, j = np.divmod(rest, self.K)
        W = (self.qu[i][:, :, None] * self.qv[j][:, None, :]).reshape(idx.size, -1)
        out = (W * self.om.ravel()) @ W.T
        return out * (r[:, None] == r[None, :])

    def inv_rows(self, A: SparseRows) -> np.ndarray:
        return self.solve(A.dense())

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        a = self.qu * np.sqrt(np.clip(self.lam, 0.0, None))
        b = self.qv * np.sqrt(np.clip(self.mu, 0.0, None))
        z = rng.standard_normal((size, self.R, self.N, self.K))
        out = (a @ z @ b.T).reshape(size, self.n)
        if self.nugget:
            out = out + math.sqrt(self.nugget) * rng.standard_normal((size, self.n))
        return out

    def cov_apply(self, x: np.ndarray) -> np.ndarray:
        x2, flat = _as_2d(x)
        s = x2.shape[1]
        X = np.moveaxis(x2.reshape(self.R, self.N, self.K, s), -1, 0)      # (s, R, N, K)
        out = np.moveaxis(self.U @ X @ self.V, 0, -1).reshape(self.n, s) + self.nugget * x2
        return out[:, 0] if flat else out

    def dense(self) -> np.ndarray:
        return np.kron(np.eye(self.R), np.kron(self.U, self.V)) + self.nugget * np.eye(self.n)


class DenseBlocksBase:
    """One dense covariance per replicate table's observed cells (contiguous runs of the cells).

    Parameters
    ----------
    blocks : list of (start, stop, cov (n_r, n_r))
    """

    sparse_rows = False

    def __init__(self, blocks):
        self.blocks = [(int(a), int(b), np.asarray(c, dtype=float)) for a, b, c in blocks]
        self._n = self.blocks[-1][1] if self.blocks else 0
        self.which = np.empty(self._n, dtype=np.int64)
        for k, (a, b, _) in enumerate(self.blocks):
            self.which[a:b] = k

    @property
    def n(self) -> int:
        return self._n

    @cached_property
    def _chol(self) -> list[np.ndarray]:
        return [_cholesky(c) for _, _, c in self.blocks]

    @cached_property
    def _inv(self) -> list[np.ndarray]:
        return [_spd_inverse(c) for _, _, c in self.blocks]

    def diag(self) -> np.ndarray:
        return np.concatenate([np.diag(c) for _, _, c in self.blocks]) if self.blocks else np.zeros(0)

    def inv_diag(self) -> np.ndarray:
        return np.concatenate([np.diag(q) for q in self._inv]) if self.blocks else np.zeros(0)

    def solve(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        out = np.empty_like(x)
        for (a, b, _), q in zip(self.blocks, self._inv):
            out[a:b] = q @ x[a:b]
        return out

    def inv_block(self, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((idx.size, idx.size))
        which = self.which[idx]
        for k in np.unique(which):
            sel = np.flatnonzero(which == k)
            local = idx[sel] - self.blocks[k][0]
            out[np.ix_(sel, sel)] = self._inv[k][np.ix_(local, local)]
        return out

    def inv_rows(self, A: SparseRows) -> np.ndarray:
        return self.solve(A.dense())

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        out = np.empty((size, self.n))
        for (a, b, _), L in zip(self.blocks, self._chol):
            out[:, a:b] = rng.standard_normal((size, b - a)) @ L.T
        return out

    def cov_apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        out = np.empty_like(x)
        for a, b, c in self.blocks:
            out[a:b] = c @ x[a:b]
        return out

    def dense(self) -> np.ndarray:
        from scipy.linalg import block_diag

        return block_diag(*[c for _, _, c in self.blocks]) if self.blocks else np.zeros((0, 0))


# ---------------------------------------------------------------------------------------------------------
# the effects Z G Z'
# ---------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class IndicatorEffects:
    """Effects ``Z = A E`` with coordinates ``u ~ N(0, G)``, A the augmented indicators.

    Attributes
    ----------
    A : SparseRows (n, h)
    E : array (h, m)
    G, G_inv : arrays (m, m)
    eliminate : (start, stop) or None
        Coordinates of iid random effects of one side that :class:`SchurH` may eliminate.
    cache : dict, optional
        Kept across parameter points: the coordinates' rows and the :class:`SchurPlan`.
    """

    A: SparseRows
    E: np.ndarray
    G: np.ndarray
    G_inv: np.ndarray
    eliminate: tuple[int, int] | None = None
    cache: dict | None = None

    def var_part(self) -> np.ndarray:
        return _quad_diag(self.A, DenseH(self.E @ self.G @ self.E.T))

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        L = _cholesky(self.G) if self.G.shape[0] else self.G
        u = rng.standard_normal((size, self.G.shape[0])) @ L.T            # (size, m)
        return (self.A.csr @ (self.E @ u.T)).T

    def cov_apply(self, x: np.ndarray) -> np.ndarray:
        """``Z G Z' x``."""
        return self.A.csr @ (self.E @ (self.G @ (self.E.T @ (self.A.csr.T @ x))))

    def dense_part(self) -> np.ndarray:
        Z = self.A.dense() @ self.E
        return Z @ self.G @ Z.T

    def coordinates(self) -> CoordinateEffects:
        """The same effects in their own coordinates (sparse rows ``A E``)."""
        import scipy.sparse as sps

        cache = self.cache if self.cache is not None else {}
        Z = cache.get("coordinates")
        if Z is None:
            Z = cache["coordinates"] = SparseRows.from_csr(self.A.csr @ sps.csr_matrix(self.E))
        return CoordinateEffects(Z=Z, G=sps.csr_matrix(self.G), G_inv=sps.csr_matrix(self.G_inv),
                                 eliminate=self.eliminate, cache=cache)

    def precision(self, base, *, method: str = "auto") -> Precision:
        m = self.E.shape[1]
        schur = (method == "schur" or (method == "auto" and m >= SCHUR_MIN_COORDS)) and self.eliminate is not None
        if schur and base.sparse_rows:
            return self.coordinates().precision(base, method=method)
        V = base.inv_rows(self.A)
        P = self.A.csr.T @ (V.csr if isinstance(V, SparseRows) else V)
        P = P.toarray() if hasattr(P, "toarray") else np.asarray(P)
        EtPE = self.E.T @ P @ self.E
        M = self.G_inv + 0.5 * (EtPE + EtPE.T)
        from scipy.linalg import solve_triangular

        L = _cholesky(M)
        Y = solve_triangular(L, self.E.T, lower=True)                      # (m, h)
        return Precision(base, V, DenseH(Y.T @ Y))


def _assembled_precision(Z: SparseRows, inv_var: np.ndarray, G_inv, cache: dict):
    """``M = G^-1 + Z' diag(inv_var) Z`` (m, m) in CSR, its values summed into a pattern found once.

    The pattern (every pair of a row's entries of Z, and G^-1's entries) and where each product and
    each entry of G^-1 lands in it are kept in ``cache``; each call is then two weighted sums. M is
    exactly symmetric (a pair's product is the same number both ways round).
    """
    import scipy.sparse as sps

    G_inv = sps.csr_matrix(G_inv)
    if not G_inv.has_sorted_indices:
        G_inv = G_inv.sorted_indices()
    key = cache.get("assembly")
    if key is None or not (key["g_indptr"].size == G_inv.indptr.size and np.array_equal(key["g_indptr"], G_inv.indptr)
                           and np.array_equal(key["g_indices"], G_inv.indices)):
        m = Z.h
        ok = (Z.cols[:, :, None] >= 0) & (Z.cols[:, None, :] >= 0)                      # (n, c, c)
        p = np.broadcast_to(Z.cols[:, :, None], ok.shape)[ok]
        q = np.broadcast_to(Z.cols[:, None, :], ok.shape)[ok]
        g_coo = G_inv.tocoo()
        rows = np.concatenate([p, g_coo.row.astype(np.int64)])
        cols = np.concatenate([q, g_coo.col.astype(np.int64)])
        pattern = sps.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(m, m))
        pattern.sum_duplicates()
        pattern.sort_indices()
        keys = np.repeat(np.arange(m, dtype=np.int64), np.diff(pattern.indptr)) * m + pattern.indices
        key = cache["assembly"] = {
            "ok": ok, "products": (Z.w[:, :, None] * Z.w[:, None, :])[ok],
            "pair_pos": np.searchsorted(keys, p * m + q),
            "g_pos": np.searchsorted(keys, g_coo.row.astype(np.int64) * m + g_coo.col),   # G^-1's CSR order
            "g_indptr": G_inv.indptr.copy(), "g_indices": G_inv.indices.copy(),
            "indptr": pattern.indptr, "indices": pattern.indices, "nnz": pattern.nnz, "m": m,
        }
    inv_var = np.asarray(inv_var, dtype=float)
    weights = key["products"] * np.broadcast_to(inv_var[:, None, None], key["ok"].shape)[key["ok"]]
    data = np.bincount(key["pair_pos"], weights=weights, minlength=key["nnz"])
    data += np.bincount(key["g_pos"], weights=G_inv.data, minlength=key["nnz"])
    M = sps.csr_matrix((data, key["indices"], key["indptr"]), shape=(key["m"], key["m"]))
    M.has_sorted_indices = True
    return M


@dataclass(eq=False)
class CoordinateEffects:
    """Effects in their own coordinates: ``Z`` sparse rows (n, m), ``u ~ N(0, G)``, G and G^-1 sparse.

    Attributes
    ----------
    Z : SparseRows (n, m)
    G, G_inv : scipy sparse (m, m)
    eliminate : (start, stop) or None
        Coordinates of iid random effects of one side (diagonal in ``G^-1 + Z' B^-1 Z``).
    cache : dict, optional
        Kept across parameter points (a fit's draws): the :class:`SchurPlan` of M's pattern.
    """

    Z: SparseRows
    G: object
    G_inv: object
    eliminate: tuple[int, int] | None = None
    cache: dict | None = None

    def var_part(self) -> np.ndarray:
        return _quad_diag(self.Z, _SparseEntries(self.G))

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Draws of ``Z u`` through G's diagonal blocks (connected components of its pattern)."""
        import scipy.sparse as sps
        from scipy.sparse.csgraph import connected_components

        G = sps.csr_matrix(self.G)
        m = G.shape[0]
        _, label = connected_components(G != 0, directed=False)
        sizes = np.bincount(label)
        u = rng.standard_normal((m, size))
        single = sizes[label] == 1                        # iid coordinates: their own sd
        u[single] *= np.sqrt(np.clip(G.diagonal()[single], 0.0, None))[:, None]
        for k in np.flatnonzero(sizes > 1):               # a known relationship matrix: its Cholesky factor
            idx = np.flatnonzero(label == k)
            u[idx] = _cholesky(G[idx][:, idx].toarray()) @ u[idx]
        return (self.Z.csr @ u).T

    def cov_apply(self, x: np.ndarray) -> np.ndarray:
        """``Z G Z' x``."""
        return self.Z.csr @ (self.G @ (self.Z.csr.T @ x))

    def dense_part(self) -> np.ndarray:
        Z = self.Z.dense()
        return Z @ np.asarray(self.G.toarray()) @ Z.T

    def precision(self, base, *, method: str = "auto") -> Precision:
        import scipy.sparse as sps

        V = base.inv_rows(self.Z)
        cache = self.cache if self.cache is not None else {}
        if isinstance(base, DiagonalBase):
            M = _assembled_precision(self.Z, base.inv_diag(), self.G_inv, cache)
        else:
            P = self.Z.csr.T @ (V.csr if isinstance(V, SparseRows) else sps.csr_matrix(V))
            M = sps.csr_matrix(self.G_inv) + sps.csr_matrix(P)
            M = sps.csr_matrix(0.5 * (M + M.T))
            M.sort_indices()
        eliminate = self.eliminate if method != "dense" else None
        plan = cache.get(("schur", eliminate))
        if plan is None or not plan.same_pattern(M):
            plan = cache[("schur", eliminate)] = SchurPlan(M, eliminate)
        return Precision(base, V, SchurH(M, eliminate, plan))


# ---------------------------------------------------------------------------------------------------------
# the law and its precision
# ---------------------------------------------------------------------------------------------------------
class Precision:
    """``Q = C^-1`` of the observed cells, ``Q = B^-1 - V H V'``: its diagonal, products and blocks.

    Parameters
    ----------
    base : a residual base (B)
    V : SparseRows or array (n, h) or None
        ``B^-1 Z`` in H's columns (None: no effects).
    H : DenseH or SchurH or None
    cov_apply : callable, optional
        ``x -> C x`` through the structure; with it :meth:`apply` is refined against C.
    """

    def __init__(self, base, V=None, H=None, cov_apply=None):
        self.base, self.V, self.H = base, V, H
        self.cov_apply = cov_apply
        self._factors: dict = {}

    @property
    def n(self) -> int:
        return self.base.n

    @cached_property
    def diag(self) -> np.ndarray:
        """``diag(Q)``, (n,)."""
        d = self.base.inv_diag()
        return d if self.V is None else d - _quad_diag(self.V, self.H)

    def _apply(self, x: np.ndarray) -> np.ndarray:
        out = self.base.solve(x)
        if self.V is None:
            return out
        return out - _rows(self.V, self.H.matvec(_rows_t(self.V, np.asarray(x, dtype=float))))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``Q x`` for x (n,) or (n, s), refined against the covariance itself.

        Woodbury subtracts two large terms where the effects are much better known than the
        residual or confounded with each other (an intercept next to row and column effects makes
        ``G^-1 + Z' B^-1 Z`` ill-conditioned); :data:`REFINEMENT_STEPS` steps of iterative
        refinement, ``x1 = x0 + Q (r - C x0)`` with C applied through its structure, restore the
        digits (on a 61 x 12 Kronecker fit: relative error 5e-7 before, 5e-10 after two steps).
        The diagonal of Q keeps a relative error of about ``eps * cond``, 1e-9 there.
        """
        out = self._apply(x)
        if self.V is None or self.cov_apply is None:
            return out
        x = np.asarray(x, dtype=float)
        for _ in range(REFINEMENT_STEPS):
            step = self._apply(x - self.cov_apply(out))
            out = out + step
            if np.max(np.abs(step)) <= REFINED * np.max(np.abs(out)):     # converged: another step changes nothing
                break
        return out

    def block(self, idx) -> np.ndarray:
        """``Q[idx][:, idx]``, (k, k)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        out = self.base.inv_block(idx)
        if self.V is not None:
            out = out - _quad_block(self.V, self.H, idx)
        return 0.5 * (out + out.T)

    def block_factor(self, idx) -> tuple[np.ndarray, float]:
        """The Cholesky factor of ``Q_BB`` and ``log|Q_BB|``, computed once per block (the chunks of a group
        share them)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        key = idx.tobytes()
        if key not in self._factors:
            q = self.block(idx)
            try:
                L = np.linalg.cholesky(q)
            except np.linalg.LinAlgError:  # pragma: no cover - a principal block of an SPD matrix is SPD
                raise FitError("A block of the predictive precision is not positive definite.") from None
            self._factors[key] = (L, 2.0 * float(np.log(np.diag(L)).sum()))
        return self._factors[key]


class GaussianLaw:
    """``N(., B + Z G Z')`` of the observed cells at one parameter point (the mean is kept apart).

    Parameters
    ----------
    base : DiagonalBase, CellBase, LatentBase, KronBase or DenseBlocksBase
    effects : IndicatorEffects or CoordinateEffects, optional
    method : {"auto", "dense", "schur"}
        How :meth:`precision` treats the effects (see :data:`SCHUR_MIN_COORDS`).
    """

    def __init__(self, base, effects=None, *, method: str = "auto"):
        self.base, self.effects, self.method = base, effects, method

    @property
    def n(self) -> int:
        return self.base.n

    @property
    def is_diagonal(self) -> bool:
        """Independent cells: the covariance is ``diag(var)``."""
        return isinstance(self.base, DiagonalBase) and self.effects is None

    @cached_property
    def var(self) -> np.ndarray:
        """The diagonal of the covariance, (n,)."""
        v = np.array(self.base.diag(), dtype=float)
        return v if self.effects is None else v + self.effects.var_part()

    def sample(self, rng: np.random.Generator, size: int = 1) -> np.ndarray:
        """Zero-mean draws (size, n)."""
        out = self.base.sample(rng, size)
        return out if self.effects is None else out + self.effects.sample(rng, size)

    def dense(self) -> np.ndarray:
        """The covariance as a dense (n, n) matrix (small tables only)."""
        out = self.base.dense()
        return out if self.effects is None else out + self.effects.dense_part()

    def cov_apply(self, x: np.ndarray) -> np.ndarray:
        """``C x`` for x (n,) or (n, s), through the structure."""
        out = self.base.cov_apply(x)
        return out if self.effects is None else out + self.effects.cov_apply(x)

    @cached_property
    def precision(self) -> Precision:
        if self.effects is None:
            return Precision(self.base)
        prec = self.effects.precision(self.base, method=self.method)
        prec.cov_apply = _covariance_apply(self.base, self.effects)   # not the bound method: no cycle law <-> precision
        return prec


# ---------------------------------------------------------------------------------------------------------
# laws of a plan at parameter values
# ---------------------------------------------------------------------------------------------------------
def _noise_batched(spec, lay, params) -> np.ndarray:
    """The variance of each observed cell's independent part at S parameter points, (S, n)
    (``noise_variance`` at the cells); ``params`` hold arrays with a leading S."""
    from twoway.likelihood.diagonal import residual_sd

    _, ii, jj = lay.obs
    se = lay.se[lay.obs]
    sigma = np.asarray(params["sigma"], dtype=float)[:, None] if spec.sigma and "sigma" in params else None
    if spec.residual == "independent":
        parts = []
        for side, idx in (("row", ii), ("col", jj)):
            kind = getattr(spec, f"{side}_scale")
            if kind == "none":
                parts.append(None)
                continue
            value = np.asarray(params[f"{side}_sd"], dtype=float)
            parts.append(value[:, idx] if kind == "hetero" else value.reshape(-1, 1))
        sd = residual_sd(se[None], parts[0], parts[1], sigma, combine=spec.combine)
        var = np.asarray(sd * sd, dtype=float)
    else:
        var = (se * se)[None] if sigma is None else (se * se)[None] + sigma * sigma
    S = next(iter(params.values())).shape[0] if params else 1
    return np.broadcast_to(var, (S, ii.size)).astype(float)


def _noise_at_obs(spec, lay, params) -> np.ndarray:
    """The variance of each observed cell's independent part, (n,) (as ``noise_variance`` at the cells)."""
    return _noise_batched(spec, lay, {k: np.asarray(v)[None] for k, v in params.items()})[0]


def residual_base(spec, lay, params):
    """The residual covariance B of the observed cells at one parameter point (NumPy ``params``)."""
    from twoway.likelihood import kronecker as kr
    from twoway.likelihood.marginal import (
        _shock_variances,
        cell_variance,
        table_covariance,
    )
    from twoway.linalg.ops import NUMPY

    rr, ii, jj = lay.obs
    R, N, K = lay.shape
    var = _noise_at_obs(spec, lay, params)
    if spec.residual == "independent":
        if getattr(spec, "cell_effect", "none") == "random":
            return CellBase(var, ii.astype(np.int64) * K + jj, float(cell_variance(params)))
        return DiagonalBase(var)
    if spec.residual == "latent":
        shock_var, index = _shock_variances(NUMPY, spec, lay, params)
        pos = np.full(N + K, -1, dtype=np.int64)
        pos[np.asarray(index)] = np.arange(len(index))
        units = np.stack([pos[ii], pos[N + jj]], axis=1)
        units = units[:, [u for u in range(2) if np.any(units[:, u] >= 0)]]
        return LatentBase(var, rr, units, np.asarray(shock_var, dtype=float).reshape(-1), R)
    if spec.residual == "kronecker" and kr.kronecker_path(spec, lay) != "dense-table":
        nugget = float(params["sigma"]) ** 2 if spec.sigma else 0.0
        return KronBase(params["_row_cov"], params["_col_cov"], nugget, R, lay.parts.get("row"),
                        lay.parts.get("col"))
    if spec.residual in ("kronecker", "full"):
        table = np.asarray(table_covariance(NUMPY, spec, lay, params), dtype=float)
        blocks, start = [], 0
        for flat in lay.obs_flat:
            stop = start + flat.size
            blocks.append((start, stop, table[np.ix_(flat, flat)] + np.diag(var[start:stop])))
            start = stop
        return DenseBlocksBase(blocks)
    raise FitError(f"No predictive law for the {spec.residual!r} residual.")  # pragma: no cover


def _iid_block(spec, design) -> tuple[int, int] | None:
    """The coordinates of the iid random effects Schur may eliminate: the side with more levels."""
    best = None
    for k, (name, _, start, stop) in enumerate(design.blocks):
        if name not in ("row_effect", "col_effect"):
            continue
        side = name.split("_")[0]
        if getattr(spec, f"{side}_effect") != "random":
            continue
        if hasattr(design, "base_cov"):
            if not np.array_equal(design.base_cov[k][start:stop, start:stop], np.eye(stop - start)):
                continue
        elif side in getattr(design, "known", {}):
            continue
        if best is None or stop - start > best[1] - best[0]:
            best = (start, stop)
    return best


def _sparse_effects(spec, lay, design, params, cache: dict) -> CoordinateEffects:
    """The ``sparse`` path's effects in their own coordinates (intercept, rows, cols, coef), never dense."""
    import scipy.sparse as sps

    _, ii, jj = lay.obs
    n = ii.size
    cols, w = [], []
    G_parts, G_inv_parts = [], []
    for name, var_param, start, stop in design.blocks:
        side = name.split("_")[0]
        k = stop - start
        if name == "intercept":
            cols.append(np.full(n, start, dtype=np.int64))
            w.append(np.ones(n))
        elif name in ("row_effect", "col_effect"):
            cols.append(start + (ii if side == "row" else jj).astype(np.int64))
            w.append(np.ones(n))
        elif name == "coef":
            for t in range(k):
                cols.append(np.full(n, start + t, dtype=np.int64))
                w.append(np.asarray(lay.x[:, t], dtype=float))
        known = design.known.get(side) if name in ("row_effect", "col_effect") else None
        if name == "coef":
            var = design.coef_sd ** 2
            G_parts.append(sps.diags(var))
            G_inv_parts.append(sps.diags(1.0 / var))
        elif known is None:                                   # iid: sd^2 I, kept sparse
            sd2 = float(params[var_param]) ** 2
            G_parts.append(sps.identity(k, format="csr") * sd2)
            G_inv_parts.append(sps.identity(k, format="csr") / sd2)
        else:
            sd2 = float(params[var_param]) ** 2
            known = np.asarray(known, dtype=float)
            G_parts.append(sps.csr_matrix(sd2 * known))
            G_inv_parts.append(sps.csr_matrix(_spd_inverse(known) / sd2))
    G = sps.block_diag(G_parts, format="csr")
    G_inv = sps.block_diag(G_inv_parts, format="csr")
    Z = cache.get("sparse_rows")
    if Z is None:
        Z = cache["sparse_rows"] = SparseRows(cols=np.stack(cols, axis=1), w=np.stack(w, axis=1), h=design.m)
    return CoordinateEffects(Z=Z, G=G, G_inv=G_inv, eliminate=_iid_block(spec, design), cache=cache)


def integrated_law(spec, lay, design, params, *, conditional: bool, method: str = "auto",
                   cache: dict | None = None) -> GaussianLaw:
    """The law of the observed cells of an integrated model at one parameter point.

    Parameters
    ----------
    spec : ModelSpec
    lay : Layout
    design : EffectsDesign or SparseDesign
    params : dict
        NumPy values at one draw (with the Kronecker factors ``_row_cov``/``_col_cov`` where the
        residual is Kronecker; see :func:`twoway.likelihood.marginal.point_parameters`).
    conditional : bool
        True: the residual law given the effects (B alone); False: the effects integrated out.
    method : {"auto", "dense", "schur"}
    cache : dict, optional
        Kept across the parameter points of one plan (what does not depend on them: the effects'
        rows, the Schur bookkeeping); a fit's draws share one (:class:`FitDraws`).

    Returns
    -------
    GaussianLaw
    """
    from twoway.likelihood.marginal import effects_map
    from twoway.likelihood.sparse import SparseDesign
    from twoway.linalg.ops import NUMPY

    cache = {} if cache is None else cache
    base = residual_base(spec, lay, params)
    if conditional or design is None or design.m == 0:
        return GaussianLaw(base, method=method)
    if isinstance(design, SparseDesign):
        return GaussianLaw(base, _sparse_effects(spec, lay, design, params, cache), method=method)
    E = effects_map(lay, design)
    G = np.asarray(design.covariance(NUMPY, params), dtype=float)
    G_inv = np.asarray(design.prior(NUMPY, params)[0], dtype=float)
    # fixed effects map onto a dense sum-to-zero basis: their coordinates are not sparse, keep H dense
    eliminate = _iid_block(spec, design) if "fixed" not in (spec.row_effect, spec.col_effect) else None
    A = cache.get("indicators")
    if A is None:
        A = cache["indicators"] = indicator_rows(lay)
    return GaussianLaw(base, IndicatorEffects(A, E, G, G_inv, eliminate, cache), method=method)


def sampled_law(spec, data, values: dict, *, conditional: bool, method: str = "auto") -> GaussianLaw:
    """The law of the observed cells of a model whose effects were sampled, at one draw.

    Parameters
    ----------
    spec : ModelSpec
    data : TwoWayData
    values : dict
        ``row_sd``, ``col_sd``, ``sigma``, ``row_effect_sd``, ``col_effect_sd`` at one draw (those the
        model has).
    conditional : bool
        True: given the drawn effects (independent cells); False: the random effects integrated out.
    """
    from twoway.likelihood.diagonal import residual_sd

    rr, ii, jj = data.observed_index()
    se = data.se_or_zero()[rr, ii, jj]
    rs, cs = values.get("row_sd"), values.get("col_sd")
    rs = None if rs is None else (rs[ii] if np.ndim(rs) else rs)
    cs = None if cs is None else (cs[jj] if np.ndim(cs) else cs)
    var = np.broadcast_to(residual_sd(se, rs, cs, values.get("sigma"), combine=spec.combine) ** 2,
                          ii.shape).astype(float)
    base = DiagonalBase(var)
    if conditional:
        return GaussianLaw(base, method=method)
    N, K = data.n_rows, data.n_cols
    picks, taus = [], []
    if spec.row_effect == "random" and "row_effect_sd" in values:
        picks.append(np.arange(N))
        taus.append(np.full(N, float(values["row_effect_sd"])))
    if spec.col_effect == "random" and "col_effect_sd" in values:
        picks.append(N + np.arange(K))
        taus.append(np.full(K, float(values["col_effect_sd"])))
    if not picks:
        return GaussianLaw(base, method=method)
    pick, tau = np.concatenate(picks), np.concatenate(taus)
    E = np.zeros((N + K, pick.size))
    E[pick, np.arange(pick.size)] = 1.0
    A = SparseRows(cols=np.stack([ii, N + jj], axis=1).astype(np.int64), w=np.ones((ii.size, 2)), h=N + K)
    G = np.diag(tau * tau)
    return GaussianLaw(base, IndicatorEffects(A, E, G, np.diag(1.0 / (tau * tau))), method=method)


# ---------------------------------------------------------------------------------------------------------
# many parameter points at once: diagonal or complete-Kronecker residual, indicator effects with a dense H
# ---------------------------------------------------------------------------------------------------------
class BatchPrecision:
    """The precisions ``Q_s = C_s^-1`` of S parameter points at once (every array with a leading S).

    The residual is diagonal (``var``) or a complete Kronecker table (``kron``); the effects, when
    given, are indicator effects ``Z = A E`` with ``G_s^-1`` (a dense H, as :class:`IndicatorEffects`
    computes for one point). NUTS draws are all distinct: this costs a few batched array operations
    per batch of draws instead of a few dozen small ones per draw.

    Parameters
    ----------
    var : array (S, n), optional
        Independent cells' variances.
    kron : tuple (U (S, N, N), V (S, K, K), nugget (S,), n_rep, row_structure, col_structure), optional
    A : SparseRows (n, h), optional
    E : array (h, m), optional
    G_inv : array (S, m, m), optional
    G : array (S, m, m), optional
        The effects' prior covariance: with it, ``apply`` is refined once against ``C_s`` itself.
    """

    def __init__(self, *, var=None, kron=None, A=None, E=None, G_inv=None, G=None):
        from twoway.likelihood.kronecker import factor_eigh
        from twoway.linalg.ops import NUMPY

        self.kron = kron is not None
        self.G = None if G is None else np.asarray(G, dtype=float)
        if self.kron:
            U, V, nugget, R, row_st, col_st = kron
            U, V = np.asarray(U, dtype=float), np.asarray(V, dtype=float)
            self.U, self.V_factor, self.nugget = U, V, np.asarray(nugget, dtype=float)
            self.S, self.N, self.K, self.R = U.shape[0], U.shape[1], V.shape[1], int(R)
            lam, qu = factor_eigh(NUMPY, U, row_st)
            mu, qv = factor_eigh(NUMPY, V, col_st)
            self.qu = np.broadcast_to(np.asarray(qu, dtype=float), U.shape)
            self.qv = np.broadcast_to(np.asarray(qv, dtype=float), V.shape)
            # iid and diag factors have the identity as eigenvectors: their products are skipped
            self.u_eye, self.v_eye = (st is not None and st.kind in ("iid", "diag") for st in (row_st, col_st))
            ev = np.asarray(lam)[:, :, None] * np.asarray(mu)[:, None, :] + np.asarray(nugget, float)[:, None, None]
            if np.any(~(ev > 0)):
                raise FitError(_NOT_PD)
            self.om = 1.0 / ev                                               # (S, N, K)
            self.n = self.R * self.N * self.K
        else:
            var = np.asarray(var, dtype=float)
            if np.any(~(var > 0)):
                raise FitError(_NOT_PD)
            self.S, self.n = var.shape
            self.var = var
            self.d_inv = 1.0 / var
        self.A, self.E = A, E
        self.is_diagonal = not self.kron and E is None
        if E is None:
            return
        if self.kron:
            self.Ad = A.dense()
            self.V = self._solve(np.broadcast_to(self.Ad, (self.S,) + self.Ad.shape))        # (S, n, h)
            P = self.Ad.T @ self.V
        else:
            P = (_pair_matrix(A).T @ self.d_inv.T).T.reshape(self.S, A.h, A.h)
        import scipy.sparse as sps

        E_sp = sps.csr_matrix(E)                         # mostly unit columns: products by E cost little
        EtPE = _left(E_sp.T, _right(P, E_sp))
        M = np.asarray(G_inv, dtype=float) + 0.5 * (EtPE + np.swapaxes(EtPE, -1, -2))
        M_inv = _spd_inverse(M)                          # through Cholesky factors (more accurate than LU here)
        H = _left(E_sp, _right(M_inv, E_sp.T))
        self.H = H                                                                         # (S, h, h)

    def _solve(self, x: np.ndarray) -> np.ndarray:
        """``B_s^-1 x_s`` for a Kronecker residual, x (S, n, t), in the cells' own layout (no transposes)."""
        S, _, t = x.shape
        R, N, K = self.R, self.N, self.K
        X = x.reshape(S, R, N, K, t)
        qu, qv = self.qu[:, None], self.qv[:, None, None]

        def rows(q, X):                                       # q @ X over N
            return (q @ X.reshape(S, R, N, K * t)).reshape(S, R, N, K, t)

        if not self.v_eye:
            X = np.swapaxes(qv, -1, -2) @ X
        if not self.u_eye:
            X = rows(np.swapaxes(qu, -1, -2), X)
        X = X * self.om[:, None, :, :, None]
        if not self.u_eye:
            X = rows(qu, X)
        if not self.v_eye:
            X = qv @ X
        return X.reshape(S, self.n, t)

    @cached_property
    def diag(self) -> np.ndarray:
        """``diag(Q_s)``, (S, n)."""
        if self.kron:
            d = np.tile(((self.qu**2) @ self.om @ np.swapaxes(self.qv**2, -1, -2)).reshape(self.S, -1),
                        (1, self.R))
            return d if self.E is None else d - np.einsum("snh,snh->sn", self.V @ self.H, self.V)
        if self.E is None:
            return self.d_inv
        cols = np.where(self.A.cols >= 0, self.A.cols, 0)
        w = np.where(self.A.cols >= 0, self.A.w, 0.0)
        s = np.arange(self.S)[:, None]
        quad = np.zeros((self.S, self.n))
        for u in range(cols.shape[1]):
            for v in range(cols.shape[1]):
                quad += (w[:, u] * w[:, v])[None] * self.H[s, cols[None, :, u], cols[None, :, v]]
        return self.d_inv - self.d_inv**2 * quad

    def cov_apply(self, x: np.ndarray) -> np.ndarray:
        """``C_s x_s`` for x (S, n), through the structure."""
        x = np.asarray(x, dtype=float)
        if self.kron:
            X = x.reshape(self.S, self.R, self.N, self.K)
            out = (self.U[:, None] @ X @ self.V_factor[:, None]).reshape(self.S, self.n) + self.nugget[:, None] * x
        else:
            out = x * self.var
        if self.E is None:
            return out
        t = (self.A.csr.T @ x.T).T @ self.E                                               # (S, m)
        u = np.einsum("smk,sk->sm", self.G, t) @ self.E.T                                   # (S, h)
        return out + (self.A.csr @ u.T).T

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``Q_s x_s`` for x (S, n), refined once against ``C_s`` (see :meth:`Precision.apply`)."""
        x = np.asarray(x, dtype=float)
        out = self._apply(x)
        if self.E is None or self.G is None:
            return out
        for _ in range(REFINEMENT_STEPS):
            out = out + self._apply(x - self.cov_apply(out))
        return out

    def _apply(self, x: np.ndarray) -> np.ndarray:
        if self.kron:
            y = self._solve(x[:, :, None])[:, :, 0]
            if self.E is None:
                return y
            t = np.einsum("snh,sn->sh", self.V, x)
            return y - np.einsum("snh,sh->sn", self.V, np.einsum("shk,sk->sh", self.H, t))
        y = x * self.d_inv
        if self.E is None:
            return y
        t = (self.A.csr.T @ y.T).T                                                         # (S, h)
        back = (self.A.csr @ np.einsum("shk,sk->sh", self.H, t).T).T
        return y - back * self.d_inv

    def block(self, idx) -> np.ndarray:
        """``Q_s[idx][:, idx]``, (S, k, k)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if self.kron:
            r, rest = np.divmod(idx, self.N * self.K)
            i, j = np.divmod(rest, self.K)
            W = (self.qu[:, i][:, :, :, None] * self.qv[:, j][:, :, None, :]).reshape(self.S, idx.size, -1)
            out = ((W * self.om.reshape(self.S, 1, -1)) @ np.swapaxes(W, -1, -2)) * (r[:, None] == r[None, :])
            if self.E is not None:
                Vb = self.V[:, idx]
                out = out - Vb @ self.H @ np.swapaxes(Vb, -1, -2)
        else:
            out = self.d_inv[:, idx][:, :, None] * np.eye(idx.size)
            if self.E is not None:
                cols = self.A.cols[idx]
                used = np.unique(cols[cols >= 0])
                Vc = np.zeros((idx.size, used.size))
                ok = cols >= 0
                rows = np.broadcast_to(np.arange(idx.size)[:, None], cols.shape)[ok]
                np.add.at(Vc, (rows, np.searchsorted(used, cols[ok])), self.A.w[idx][ok])
                Vs = Vc[None] * self.d_inv[:, idx][:, :, None]
                out = out - Vs @ self.H[:, used][:, :, used] @ np.swapaxes(Vs, -1, -2)
        return 0.5 * (out + np.swapaxes(out, -1, -2))


def _right(X: np.ndarray, B) -> np.ndarray:
    """``X_s @ B`` for X (S, k, h) and a scipy sparse B (h, m): (S, k, m)."""
    S, k, h = X.shape
    return np.asarray(B.T @ X.reshape(S * k, h).T).T.reshape(S, k, B.shape[1])


def _left(B, X: np.ndarray) -> np.ndarray:
    """``B @ X_s`` for a scipy sparse B (m, h) and X (S, h, k): (S, m, k)."""
    S, h, k = X.shape
    Y = np.asarray(B @ np.moveaxis(X, 0, 1).reshape(h, S * k))
    return np.moveaxis(Y.reshape(B.shape[0], S, k), 1, 0)


def _pair_matrix(A: SparseRows):
    """(n, h*h) sparse: row i holds ``w_u w_v`` at ``c_u h + c_v`` for every pair of its entries, so that
    ``A' diag(d) A`` is ``d @`` this, reshaped (h, h). Built once per A."""
    import scipy.sparse as sps

    if "_pairs" in A.__dict__:
        return A.__dict__["_pairs"]
    n, c = A.cols.shape
    rows, cols, vals = [], [], []
    for u in range(c):
        for v in range(c):
            ok = (A.cols[:, u] >= 0) & (A.cols[:, v] >= 0)
            rows.append(np.flatnonzero(ok))
            cols.append(A.cols[ok, u] * A.h + A.cols[ok, v])
            vals.append(A.w[ok, u] * A.w[ok, v])
    out = sps.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n, A.h * A.h))
    A.__dict__["_pairs"] = out
    return out


# ---------------------------------------------------------------------------------------------------------
# a fit's draws, grouped by the covariance's parameters
# ---------------------------------------------------------------------------------------------------------
def _batched_prior_covariance(design, params: dict, S: int) -> np.ndarray:
    """The effects' prior covariance G at S parameter points, (S, m, m) (``design.covariance``, batched)."""
    g = np.zeros((S, design.m, design.m))
    for (_, var_param, _, _), cov in zip(design.blocks, design.base_cov):
        if var_param is None:
            g += cov
        else:
            sd = np.asarray(params[var_param], dtype=float).reshape(S)
            g += (sd * sd)[:, None, None] * cov
    return g


def _sampled_batch(spec, data, values: dict, S: int, *, conditional: bool) -> BatchPrecision:
    """:func:`sampled_law` for S draws at once (``values``: arrays with a leading S)."""
    from twoway.likelihood.diagonal import residual_sd

    rr, ii, jj = data.observed_index()
    se = data.se_or_zero()[rr, ii, jj]
    parts = []
    for side, idx in (("row", ii), ("col", jj)):
        v = values.get(f"{side}_sd")
        parts.append(None if v is None else (v[:, idx] if np.ndim(v) == 2 else np.asarray(v).reshape(-1, 1)))
    sigma = values.get("sigma")
    sigma = None if sigma is None else np.asarray(sigma).reshape(-1, 1)
    var = np.broadcast_to(residual_sd(se[None], parts[0], parts[1], sigma, combine=spec.combine) ** 2,
                          (S, ii.size)).astype(float)
    N, K = data.n_rows, data.n_cols
    picks, taus = [], []
    if not conditional:
        for side, n, offset in (("row", N, 0), ("col", K, N)):
            if getattr(spec, f"{side}_effect") == "random" and f"{side}_effect_sd" in values:
                picks.append(offset + np.arange(n))
                taus.append(np.repeat(np.asarray(values[f"{side}_effect_sd"], dtype=float).reshape(-1, 1), n, 1))
    if not picks:
        return BatchPrecision(var=var)
    pick, tau = np.concatenate(picks), np.concatenate(taus, axis=1)          # (m,), (S, m)
    E = np.zeros((N + K, pick.size))
    E[pick, np.arange(pick.size)] = 1.0
    A = SparseRows(cols=np.stack([ii, N + jj], axis=1).astype(np.int64), w=np.ones((ii.size, 2)), h=N + K)
    eye = np.eye(pick.size)
    return BatchPrecision(var=var, A=A, E=E, G_inv=(1.0 / (tau * tau))[:, :, None] * eye,
                          G=(tau * tau)[:, :, None] * eye)


@dataclass(frozen=True, eq=False)
class LawChunk:
    """Draws that share one law of the observed cells.

    Attributes
    ----------
    pairs : list of (chain, draw)
    mean : array (s, n), or (1, n) when every draw of the chunk has the same mean
    law : GaussianLaw or None
        Shared by every chunk of a group (its precision is computed once); None for a batch.
    batch : BatchPrecision or None
        The precisions of the chunk's draws, one per draw (draws with distinct parameters, as
        NUTS gives, computed together); None when ``law`` serves every draw.
    """

    pairs: list
    mean: np.ndarray
    law: GaussianLaw | None
    batch: BatchPrecision | None = None


def covariance_names(fit) -> list[str]:
    """The posterior variables the covariance of the observed cells can depend on (all but the mean's)."""
    return [str(name) for name in fit.posterior.data_vars if str(name) not in MEAN_NAMES]


class _DrawArrays(Mapping):
    """A posterior's variables as (chain, draw, ...) arrays, each read when first asked for.

    The laws of a model with its effects integrated out need only the covariance's
    parameters; the effects' draws (the largest variables) are then never copied.
    """

    def __init__(self, post):
        self._post = post
        self._names = [str(name) for name in post.data_vars]
        self._done: dict = {}

    def __getitem__(self, name: str) -> np.ndarray:
        hit = self._done.get(name)
        if hit is None:
            if name not in self._names:
                raise KeyError(name)
            da = self._post[name]
            other = [d for d in da.dims if d not in ("chain", "draw")]
            hit = self._done[name] = np.asarray(da.transpose("chain", "draw", *other).values)
        return hit

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name) -> bool:
        return name in self._names


def _covariance_apply(base, effects):
    """``x -> C x`` from the residual's base and the effects, holding no reference to their law (a reference
    cycle would keep each draw's precision alive until the garbage collector's next full pass)."""
    def apply(x: np.ndarray) -> np.ndarray:
        out = base.cov_apply(x)
        return out if effects is None else out + effects.cov_apply(x)
    return apply


@dataclass(eq=False)
class FitDraws:
    """A fit's posterior as arrays (chain, draw, ...): each draw's law (:meth:`law`), a batch of draws'
    precisions (:meth:`batch`), their means (:meth:`means`) and the keys that group them (:meth:`keys`).

    Parameters
    ----------
    fit : Fit
    conditional : bool
        See :func:`twoway.results.moments.iter_moments`.
    method : {"auto", "dense", "schur"}
    """

    fit: object
    conditional: bool
    method: str = "auto"
    arrays: Mapping = None
    cache: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.arrays is None:
            self.arrays = _DrawArrays(self.fit.posterior)
        self.spec = self.fit.model
        self.integrated = self.spec.effects == "integrate"
        data = self.fit.data
        self.data = data
        if self.integrated:
            plan = self.fit.plan
            self.lay, self.design, self.constants, self.m0 = plan.layout, plan.design, plan.constants, plan.m0
            self.obs = self.lay.obs
        else:
            self.obs = data.observed_index()
        self.X, self.coef = _covariates(self.fit) if (not self.integrated or self.conditional) else (None, None)
        self.names = covariance_names(self.fit)

    @property
    def n(self) -> int:
        return int(self.obs[0].size)

    def keys(self, pairs: np.ndarray) -> np.ndarray:
        """(S, k): the covariance's parameters of each draw, flattened."""
        c, d = pairs[:, 0], pairs[:, 1]
        cols = [self.arrays[name][c, d].reshape(len(pairs), -1) for name in self.names]
        return np.concatenate(cols, axis=1) if cols else np.zeros((len(pairs), 0))

    def values(self, c: int, d: int) -> dict:
        return {name: self.arrays[name][c, d] for name in self.names}

    @property
    def _law_names(self) -> list[str]:
        """The variables a law reads: the covariance's parameters (and, given the effects, every variable)."""
        return list(self.arrays) if self.conditional else self.names

    def law(self, c: int, d: int) -> GaussianLaw:
        if not self.integrated:
            return sampled_law(self.spec, self.data, self.values(c, d), conditional=self.conditional,
                               method=self.method)
        from twoway.likelihood.marginal import kronecker_factors

        params = {k: np.asarray(v) for k, v in self.constants.items()}
        params.update({name: self.arrays[name][c, d] for name in self._law_names})
        if self.spec.residual == "kronecker":
            batch = {k: np.asarray(v)[None] for k, v in params.items()}
            params.update({k: v[0] for k, v in kronecker_factors(self.spec, self.lay, batch).items()})
        return integrated_law(self.spec, self.lay, self.design, params, conditional=self.conditional,
                              method=self.method, cache=self.cache)

    @cached_property
    def batchable(self) -> bool:
        """Whether :class:`BatchPrecision` covers this fit's laws (diagonal or complete-Kronecker residual,
        indicator effects with a dense H)."""
        from twoway.likelihood import kronecker as kr
        from twoway.likelihood.sparse import SparseDesign

        spec = self.spec
        if not self.integrated:
            return True
        if spec.residual == "independent":
            if getattr(spec, "cell_effect", "none") == "random":
                return False
        elif spec.residual != "kronecker" or kr.kronecker_path(spec, self.lay) == "dense-table":
            return False
        if self.conditional or self.design is None or self.design.m == 0:
            return True
        if isinstance(self.design, SparseDesign):
            return False
        schur = (self.method == "schur" or self.design.m >= SCHUR_MIN_COORDS) and spec.residual == "independent" \
            and "fixed" not in (spec.row_effect, spec.col_effect) and _iid_block(spec, self.design) is not None
        return self.method != "schur" and not schur

    @cached_property
    def indicators(self) -> SparseRows:
        return indicator_rows(self.lay)

    def batch_width(self) -> int:
        """How many draws a batch holds (about 4 million values in its largest array)."""
        h = 0 if not self.integrated else self.lay.shape[1] + self.lay.shape[2] + self.lay.n_cov
        per = self.n * max(h, 1) if self.integrated and self.spec.residual == "kronecker" else self.n + h * h
        return int(max(1, min(256, (1 << 22) // max(per, 1))))

    def batch(self, pairs: np.ndarray) -> BatchPrecision:
        """The precisions of the draws ``pairs`` (S, 2) at once."""
        from twoway.likelihood.marginal import effects_map, kronecker_factors
        from twoway.linalg.ops import NUMPY

        c, d = pairs[:, 0], pairs[:, 1]
        S = len(pairs)
        if not self.integrated:
            values = {name: self.arrays[name][c, d] for name in self.names}
            return _sampled_batch(self.spec, self.data, values, S, conditional=self.conditional)
        params = {k: np.full(S, float(v)) if np.ndim(v) == 0 else np.broadcast_to(v, (S,) + np.shape(v))
                  for k, v in self.constants.items()}
        params.update({name: self.arrays[name][c, d] for name in self._law_names})
        spec, lay = self.spec, self.lay
        effects = {}
        if not self.conditional and self.design is not None and self.design.m:
            effects = {"A": self.indicators, "E": effects_map(lay, self.design),
                           "G_inv": np.asarray(self.design.prior(NUMPY, params)[0], dtype=float),
                           "G": _batched_prior_covariance(self.design, params, S)}
        if spec.residual == "kronecker":
            params.update(kronecker_factors(spec, lay, params))
            nugget = np.asarray(params["sigma"], dtype=float) ** 2 if spec.sigma else np.zeros(S)
            kron = (params["_row_cov"], params["_col_cov"], nugget, lay.shape[0], lay.parts.get("row"),
                    lay.parts.get("col"))
            return BatchPrecision(kron=kron, **effects)
        return BatchPrecision(var=_noise_batched(spec, lay, params), **effects)

    @property
    def shared_mean(self) -> bool:
        """Every draw has the same mean (the prior mean m0: effects and coefficients integrated out)."""
        return self.integrated and not self.conditional

    def means(self, pairs: np.ndarray) -> np.ndarray:
        """(s, n): the mean of the observed cells at each draw."""
        _, ii, jj = self.obs
        s = len(pairs)
        if self.shared_mean:
            return np.full((1, self.n), float(self.m0))
        c, d = pairs[:, 0], pairs[:, 1]
        a = self.arrays
        mean = np.zeros((s, self.n))
        if "intercept" in a:
            mean += a["intercept"][c, d].reshape(s, 1)
        if self.X is not None:
            mean += self.coef[c, d] @ self.X.T
        spec = self.spec
        if "row_effect" in a and (self.integrated or self.conditional or spec.row_effect != "random"):
            mean += a["row_effect"][c, d][:, ii]
        if "col_effect" in a and (self.integrated or self.conditional or spec.col_effect != "random"):
            mean += a["col_effect"][c, d][:, jj]
        return mean


def _covariates(fit) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The covariate design's X (n_obs, p) and the coefficients' draws (chains, draws, p); (None, None) without."""
    from twoway.results.covariates import coef_draws, fit_design

    design = fit_design(fit)
    coef = None if design is None else coef_draws(fit, design)
    if coef is None:
        return None, None
    return np.asarray(design.X, dtype=float), coef


def all_draws(fit) -> list[tuple[int, int]]:
    """Every (chain, draw) pair of a fit, chain by chain."""
    post = fit.posterior
    return [(c, d) for c in range(post.sizes["chain"]) for d in range(post.sizes["draw"])]


def _group_ids(state, pairs: np.ndarray) -> np.ndarray:
    keys = state.keys(pairs)
    if keys.shape[1] == 0:
        return np.zeros(len(pairs), dtype=np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse.ravel()]             # groups numbered by first appearance


def draw_groups(fit, pairs, *, conditional: bool, method: str = "auto") -> np.ndarray:
    """Which draws share one law (the groups :func:`iter_laws` computes once each).

    Parameters
    ----------
    fit : Fit
    pairs : sequence of (chain, draw)
    conditional : bool
    method : str

    Returns
    -------
    int array (len(pairs),)
        Group numbers 0, 1, ... in the order of each group's first draw in ``pairs``.
    """
    pairs = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2)
    if pairs.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return _group_ids(_CovarianceKeys(fit), pairs)


class _CovarianceKeys:
    """:meth:`FitDraws.keys` from the covariance's variables alone (no copy of the rest of the posterior)."""

    def __init__(self, fit):
        post = fit.posterior
        self.arrays = {}
        for name in covariance_names(fit):
            da = post[name]
            other = [d for d in da.dims if d not in ("chain", "draw")]
            self.arrays[name] = np.asarray(da.transpose("chain", "draw", *other).values)

    def keys(self, pairs: np.ndarray) -> np.ndarray:
        c, d = pairs[:, 0], pairs[:, 1]
        cols = [a[c, d].reshape(len(pairs), -1) for a in self.arrays.values()]
        return np.concatenate(cols, axis=1) if cols else np.zeros((len(pairs), 0))


def iter_laws(fit, pairs=None, *, conditional: bool, method: str = "auto", batch: bool | None = None,
              max_values: int = 1 << 22, cache: dict | None = None) -> Iterator[LawChunk]:
    """The laws of the observed cells over a fit's draws, one per distinct covariance.

    Draws whose covariance parameters are equal (the ``laplace`` engine resamples
    its proposals) share one :class:`GaussianLaw`: its precision is computed once.
    Chunks hold at most ``max_values`` mean values (draws x cells). Draws that all differ
    (NUTS) come in batches whose precisions are computed together (``batch``).

    Parameters
    ----------
    fit : Fit
    pairs : sequence of (chain, draw), optional
        Default: every draw.
    conditional : bool
        See :func:`twoway.results.moments.iter_moments`.
    method : {"auto", "dense", "schur"}
        How the effects' part of the precision is computed (see :class:`GaussianLaw`).
    batch : bool, optional
        Compute the precisions of many draws together (:class:`BatchPrecision`, where it covers the
        model and ``method`` is ``auto``), one per draw; default: when more than half the draws have
        parameters of their own (NUTS), rather than one per group (the laplace engine's repeats).
    max_values : int
    cache : dict, optional
        What the laws keep across parameter points (patterns, plans); pass the same dict to calls on
        one fit to build them once.

    Yields
    ------
    LawChunk
        Groups in the order of their first draw in ``pairs``.
    """
    state = FitDraws(fit, bool(conditional), method, cache={} if cache is None else cache)
    pairs = np.asarray(all_draws(fit) if pairs is None else list(pairs), dtype=np.int64).reshape(-1, 2)
    if pairs.shape[0] == 0:
        return
    inverse = _group_ids(state, pairs)
    n_groups = int(inverse.max()) + 1
    if batch is None:
        batch = n_groups > 1 and 2 * n_groups > len(pairs)
    if method == "auto" and batch and state.batchable:
        # (nearly) every draw has its own parameters: their precisions together, a batch at a time
        width = state.batch_width()
        for start in range(0, len(pairs), width):
            part = pairs[start:start + width]
            with single_blas():
                batch_ = state.batch(part)
            yield LawChunk([tuple(map(int, p)) for p in part], state.means(part), None, batch_)
        return
    per_chunk = max(1, int(max_values) // max(1, state.n))
    for g in range(n_groups):
        members = pairs[inverse == g]
        law = state.law(int(members[0, 0]), int(members[0, 1]))
        if state.shared_mean:
            yield LawChunk([tuple(map(int, p)) for p in members], state.means(members[:1]), law)
            continue
        for start in range(0, len(members), per_chunk):
            part = members[start:start + per_chunk]
            yield LawChunk([tuple(map(int, p)) for p in part], state.means(part), law)
