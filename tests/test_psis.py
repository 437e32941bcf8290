"""The vectorised PSIS-LOO (src/twoway/results/psis.py) against ArviZ's, unit by unit.

ArviZ's ``loo`` is the reference implementation of the estimator; twoway's must give the same elpd_i,
Pareto k and p_loo_i to rounding (1e-10), for light and heavy tails, with draws given as distinct rows
and an index (an engine's repeated draws), with r_eff below 1 and with few draws (tail of S / 5).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from twoway.errors import FitError
from twoway.results.psis import good_k, psis_loo, tail_length

TOL = 1e-10


def _arviz(loglik: np.ndarray, r_eff: float, chains: int = 4):
    import arviz_stats

    S, n = loglik.shape
    post = xr.Dataset({"mu": (("chain", "draw"), np.zeros((chains, S // chains)))})
    ll = xr.Dataset({"y": (("chain", "draw", "obs"), loglik.reshape(chains, S // chains, n))})
    tree = xr.DataTree.from_dict({"posterior": post, "log_likelihood": ll})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return arviz_stats.loo(tree, pointwise=True, var_name="y", reff=r_eff)


def _loglik(rng, S: int, n: int) -> np.ndarray:
    scale = rng.uniform(0.05, 3.0, n)
    out = -0.5 * (rng.standard_normal((S, n)) * scale) ** 2 - rng.uniform(0.0, 2.0, n)
    out[:, : n // 4] += rng.standard_t(1.5, (S, n // 4))                  # heavy tails: large Pareto k
    return out


@pytest.mark.parametrize("S, r_eff", [(1000, 1.0), (400, 0.6), (100, 1.0), (60, 1.0)])
def test_equals_arviz_unit_by_unit(S, r_eff):
    rng = np.random.default_rng(S)
    ll = _loglik(rng, S, 120)
    ref = _arviz(ll, r_eff)
    elpd, k, p = psis_loo(ll, r_eff=r_eff)
    np.testing.assert_allclose(elpd, ref.elpd_i.values, rtol=0, atol=TOL)
    np.testing.assert_allclose(k, ref.pareto_k.values, rtol=0, atol=TOL)
    assert abs(p.sum() - ref.p) < TOL * ll.shape[1]
    assert np.any(k > good_k(S))                                            # the heavy tails were seen


def test_distinct_rows_and_an_index_give_the_expanded_result():
    rng = np.random.default_rng(7)
    rows = _loglik(rng, 150, 90)
    index = rng.integers(0, 150, 2000)                                    # repeats, and rows never drawn
    index[index == 3] = 4
    ref = _arviz(rows[index], 0.8)
    elpd, k, p = psis_loo(rows, index, r_eff=0.8)
    np.testing.assert_allclose(elpd, ref.elpd_i.values, rtol=0, atol=TOL)
    np.testing.assert_allclose(k, ref.pareto_k.values, rtol=0, atol=TOL)
    assert abs(p.sum() - ref.p) < TOL * rows.shape[1]


def test_chunks_do_not_change_the_result(monkeypatch):
    from twoway.results import psis

    rng = np.random.default_rng(3)
    ll = _loglik(rng, 400, 50)
    whole = psis_loo(ll)
    monkeypatch.setattr(psis, "CHUNK_BYTES", 8 * 400 * 7)                   # 7 units per chunk
    seen = []
    parts = psis_loo(ll, progress=seen.append)
    for a, b in zip(whole, parts):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)   # the same sums, vectorised differently
    assert seen[-1] == 50 and len(seen) == 8


def test_worker_processes_give_the_same_result(monkeypatch):
    from twoway.results import psis
    from twoway.results.workers import can_fork

    if not can_fork():
        pytest.skip("no fork on this system")
    rng = np.random.default_rng(4)
    rows = _loglik(rng, 300, 64)
    index = rng.integers(0, 300, 1000)
    whole = psis_loo(rows, index)
    monkeypatch.setattr(psis, "CHUNK_BYTES", 8 * 1000 * 5)                  # 5 units per chunk: 13 chunks
    parts = psis_loo(rows, index, workers=2)
    for a, b in zip(whole, parts):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)


def test_a_constant_unit_has_no_importance_error():
    rng = np.random.default_rng(5)
    ll = _loglik(rng, 400, 4)
    ll[:, 2] = -1.25                                                       # the same density at every draw
    elpd, k, p = psis_loo(ll)
    assert elpd[2] == pytest.approx(-1.25, abs=1e-12) and k[2] == 0.0 and abs(p[2]) < 1e-12


def test_bad_input_is_refused():
    with pytest.raises(FitError, match="at least 5 tail draws"):
        psis_loo(np.zeros((20, 3)))
    with pytest.raises(FitError, match="outside"):
        psis_loo(np.zeros((10, 3)), np.array([0, 10]))
    with pytest.raises(FitError, match="draws, units"):
        psis_loo(np.zeros(10))
    assert tail_length(4000) == 189 and tail_length(100) == 20
