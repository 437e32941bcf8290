"""Sums over the pairs of a row's effects, for the Schur complement of the sparse path's precision.

:class:`twoway.results.structured.SchurH` eliminates one side's iid effects
(rows, say) and keeps the other side's as a dense Schur complement S. Two sums
run over the pairs (p, q) of entries that one eliminated row has in common
(about a million on a 73,421-cell crossed table), once per distinct draw:

* ``S[p, q] -= m_p f_q`` (the complement, its upper triangle), before S is inverted;
* ``t[q] += f_p S^-1[p, q]`` and, for two different entries, ``t[p] += f_q S^-1[p, q]``
  (F S^-1 on F's pattern), after;

and, per cell, the quadratic form of its few entries (:func:`cell_quadratic`).

In NumPy each is a few passes over the million pairs (gathers, products, a
scatter); compiled, it is one. Numba (installed with PyTensor) compiles them
when it can, once, cached beside this module; otherwise NumPy does the same
sums. Both give the same numbers to rounding (tests/test_loo_structured.py).
"""

from __future__ import annotations

import numpy as np

__all__ = ["cell_quadratic", "compiled", "complement_pairs", "pattern_pairs"]


def _complement_numpy(S_flat, pair_unique, pair_runs, pair_p, pair_q, m, f):
    if pair_p.size:
        S_flat[pair_unique] -= np.add.reduceat(m[pair_p] * f[pair_q], pair_runs)


def _pattern_numpy(out, S_inv_flat, pair_flat, pair_p, pair_q, offdiagonal, f):
    g = S_inv_flat[pair_flat]
    out += np.bincount(pair_q, weights=f[pair_p] * g, minlength=out.size)
    g *= offdiagonal
    out += np.bincount(pair_p, weights=f[pair_q] * g, minlength=out.size)


def _compile():
    """The compiled sums, or None when Numba is missing or cannot compile them here."""
    try:
        import numba
    except Exception:  # noqa: BLE001 - any failure to import: the NumPy sums
        return None

    @numba.njit(cache=True, nogil=True)
    def complement(S_flat, pair_flat, pair_p, pair_q, m, f):
        for i in range(pair_flat.size):
            S_flat[pair_flat[i]] -= m[pair_p[i]] * f[pair_q[i]]

    @numba.njit(cache=True, nogil=True)
    def pattern(out, S_inv_flat, pair_flat, pair_p, pair_q, offdiagonal, f):
        for i in range(pair_flat.size):
            g = S_inv_flat[pair_flat[i]]
            p = pair_p[i]
            q = pair_q[i]
            out[q] += f[p] * g
            if offdiagonal[i] != 0.0:
                out[p] += f[q] * g

    @numba.njit(cache=True, nogil=True)
    def cells(out, w, o_mask, lo, n_o, S_inv_flat, rows, slot_rows, la, tf_idx, tf_ok, d_inv, fsf, tf_pattern):
        n, c = w.shape
        for i in range(n):
            acc = 0.0
            for u in range(c):
                if not o_mask[i, u]:
                    continue
                wu = w[i, u]
                acc += wu * wu * S_inv_flat[lo[i, u] * n_o + lo[i, u]]
                for v in range(u + 1, c):
                    if o_mask[i, v]:
                        acc += 2.0 * wu * w[i, v] * S_inv_flat[lo[i, u] * n_o + lo[i, v]]
            out[i] = acc
        for k in range(rows.size):
            i = rows[k]
            wa = w[i, slot_rows[k]]
            a = la[k]
            acc = wa * wa * (d_inv[a] + fsf[a])
            cross = 0.0
            for u in range(c):
                if o_mask[i, u]:
                    cross += w[i, u] * tf_pattern[tf_idx[k, u]] * tf_ok[k, u]
            out[i] += acc - 2.0 * wa * cross

    try:                                             # compile (or load from the cache) now, on tiny arrays
        one = np.zeros(1, dtype=np.int64)
        complement(np.zeros(1), one, one, one, np.zeros(1), np.zeros(1))
        pattern(np.zeros(1), np.zeros(1), one, one, one, np.zeros(1), np.zeros(1))
        cells(np.zeros(1), np.zeros((1, 1)), np.zeros((1, 1), dtype=np.bool_), np.zeros((1, 1), dtype=np.int64), 1,
              np.zeros(1), one, one, one, np.zeros((1, 1), dtype=np.int64), np.zeros((1, 1)), np.zeros(1),
              np.zeros(1), np.zeros(1))
    except Exception:  # noqa: BLE001 - a Numba that cannot compile here: the NumPy sums
        return None
    return complement, pattern, cells


_KERNELS: dict = {}


def compiled() -> bool:
    """Whether the compiled sums are used (Numba importable and working); decided once per process."""
    if "sums" not in _KERNELS:
        _KERNELS["sums"] = _compile()
    return _KERNELS["sums"] is not None


def complement_pairs(S_flat: np.ndarray, plan, m: np.ndarray, f: np.ndarray) -> None:
    """``S[p, q] -= m_p f_q`` over the plan's pairs, in place (``S_flat``: S (n_o, n_o) flattened)."""
    if compiled():
        _KERNELS["sums"][0](S_flat, plan.pair_flat, plan.pair_p, plan.pair_q, m, f)
    else:
        _complement_numpy(S_flat, plan.pair_unique, plan.pair_runs, plan.pair_p, plan.pair_q, m, f)


def pattern_pairs(S_inv_flat: np.ndarray, plan, f: np.ndarray, size: int) -> np.ndarray:
    """``F S^-1`` on F's pattern (``size`` entries) from the plan's pairs."""
    out = np.zeros(size)
    if compiled():
        _KERNELS["sums"][1](out, S_inv_flat, plan.pair_flat, plan.pair_p, plan.pair_q, plan.pair_offdiagonal, f)
    else:
        _pattern_numpy(out, S_inv_flat, plan.pair_flat, plan.pair_p, plan.pair_q, plan.pair_offdiagonal, f)
    return out


def cell_quadratic(w: np.ndarray, prep: dict, n_o: int, S_inv_flat: np.ndarray, d_inv: np.ndarray,
                   fsf: np.ndarray, tf_pattern: np.ndarray) -> np.ndarray | None:
    """``diag(V M^-1 V')`` over the cells (the rows of V, weights ``w`` (n, c)), compiled; None without Numba.

    ``prep`` is :meth:`twoway.results.structured.SchurPlan.prepared`'s: the entries' places in ``S^-1``,
    the rows with an eliminated entry and where their ``F S^-1`` entries are on F's pattern.
    """
    if not compiled():
        return None
    out = np.empty(w.shape[0])
    _KERNELS["sums"][2](out, np.ascontiguousarray(w), prep["o_mask"], prep["lo"], int(n_o), S_inv_flat,
                        prep["rows"], prep["slot_rows"], prep["la"], prep["tf_idx"], prep["tf_ok"], d_inv, fsf,
                        tf_pattern)
    return out
