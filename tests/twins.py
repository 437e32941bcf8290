"""Shared helper for the dense-twin tests: log-density and gradient of a PyMC model at a point."""

import numpy as np


def logp_and_grad(model, point):
    """(log-density, gradient) of ``model`` at ``point`` (a dict of unconstrained values).

    Compiled in FAST_COMPILE mode: the same graph, evaluated without a C or
    numba compile step, in float64 throughout.
    """
    fn = model.compile_fn([model.logp(), model.dlogp()], mode="FAST_COMPILE", point_fn=True)
    value, grad = fn(point)
    return float(value), np.asarray(grad)


def assert_equals_dense_twin(fast, dense, *, points: int, seed: int, jitter: float):
    """The fast model's log-density and gradient equal the dense twin's at ``points`` random points
    (the initial point plus normal jitter of sd ``jitter``), to float64 rounding."""
    rng = np.random.default_rng(seed)
    ip = fast.initial_point()
    for _ in range(points):
        point = {key: v + rng.normal(0, jitter, size=np.shape(v)) for key, v in ip.items()}
        v_fast, g_fast = logp_and_grad(fast, point)
        v_dense, g_dense = logp_and_grad(dense, point)
        assert np.isfinite(v_fast)
        np.testing.assert_allclose(v_fast, v_dense, rtol=1e-10, atol=1e-8)
        np.testing.assert_allclose(g_fast, g_dense, rtol=1e-8, atol=1e-8)
