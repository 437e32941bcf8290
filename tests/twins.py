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
