"""Every fast likelihood equals its dense twin (full covariance, one Cholesky), value and gradient."""

import dataclasses

import numpy as np
import pytest

from twoway import ModelSpec, preset, simulate
from twoway.engines.pymc.model import build_pymc_model
from twoway.plan import resolve
from twins import logp_and_grad


def _random_points(model, rng, n=3):
    """Points in the unconstrained space, spread around the initial point."""
    ip = model.initial_point()
    return [{k: v + rng.normal(0, 0.7, size=np.shape(v)) for k, v in ip.items()} for _ in range(n)]


CASES = [
    # (spec, rows, cols, replicates, missing, se)
    (preset("additive"), 3, 4, 1, 0.0, None),
    pytest.param(*(preset("additive"), 6, 5, 2, 0.2, 0.3), marks=pytest.mark.slow),
    pytest.param(*(preset("additive-sd"), 4, 7, 1, 0.0, 0.5), marks=pytest.mark.slow),
    pytest.param(*(preset("additive-sd"), 9, 3, 3, 0.25, None), marks=pytest.mark.slow),
    pytest.param(*(ModelSpec(row_effect="fixed", col_effect="random", row_scale="homo", col_scale="none",
               sigma=True), 5, 6, 2, 0.1, 0.2), marks=pytest.mark.slow),
    pytest.param(*(ModelSpec(row_effect="none", col_effect="fixed", row_scale="none", col_scale="hetero",
               sigma=False, combine="sd"), 4, 4, 1, 0.0, 0.4), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("spec, n, k, r, missing, se", CASES)
def test_diagonal_path_equals_dense_twin(spec, n, k, r, missing, se):
    """With the effects sampled (not integrated), cells are independent given the parameters."""
    spec = dataclasses.replace(spec, effects="sample")
    data = simulate(spec, n, k, r, seed=n * 100 + k, missing=missing, se=se).data
    fast = build_pymc_model(resolve(spec, data))
    dense = build_pymc_model(resolve(spec, data, likelihood="dense"))
    assert fast.likelihood_path == "diagonal" and dense.likelihood_path == "dense"
    rng = np.random.default_rng(0)
    for point in _random_points(fast.model, rng):
        v_fast, g_fast = logp_and_grad(fast.model, point)
        v_dense, g_dense = logp_and_grad(dense.model, point)
        assert np.isfinite(v_fast)
        np.testing.assert_allclose(v_fast, v_dense, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(g_fast, g_dense, rtol=1e-9, atol=1e-9)


def test_numpy_pointwise_density_matches_scipy():
    from scipy import stats

    from twoway.likelihood import diagonal_logp

    rng = np.random.default_rng(3)
    y, mu, sd = rng.normal(size=20), rng.normal(size=20), rng.uniform(0.2, 3, size=20)
    np.testing.assert_allclose(diagonal_logp(y, mu, sd), stats.norm.logpdf(y, mu, sd), rtol=1e-12)


def test_sandwich_equals_the_dense_product():
    from twoway.linalg.ops import NUMPY
    from twoway.likelihood.woodbury import sandwich

    rng = np.random.default_rng(5)
    n = 9
    A = rng.normal(size=(3, n, n))
    P = A @ np.swapaxes(A, -1, -2)
    helmert = rng.normal(size=(4, 3))
    E = np.zeros((n, 1 + 5 + 3))
    E[:5, 0] = 1.0                       # an intercept column
    E[np.arange(5), 1 + np.arange(5)] = 1.0  # unit columns (random effects)
    E[5:, 6:] = helmert                  # a dense basis
    expected = np.swapaxes(E, 0, 1) @ P @ E
    np.testing.assert_allclose(sandwich(NUMPY, P, E), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sandwich(NUMPY, P, E[:, 1:6]), expected[:, 1:6, 1:6], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sandwich(NUMPY, P, E[:, 6:]), expected[:, 6:, 6:], rtol=1e-12, atol=1e-12)
