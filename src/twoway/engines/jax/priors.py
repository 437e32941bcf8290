"""The JAX mapping of twoway's priors: log-densities and transforms to the real line.

A :class:`~twoway.spec.priors.Prior` is data (a family and its numbers); this
module maps a family to what the JAX engine needs: the log-density, and a
bijection from an unconstrained value ``u`` to the prior's support with its
log-Jacobian. The prior's numbers are *arguments* (arrays that may be traced),
so one compiled program serves tables whose default priors differ.

The bijections are scaled by the prior, so that ``u`` near 0 is a typical
value of the parameter whatever the data's units:

=============  ==============================================  =============================
family         x(u)                                            log |dx/du|
=============  ==============================================  =============================
normal         mu + sigma u                                    log sigma
positive       c exp(u), c the prior's scale                   log c + u
uniform, beta  lower + (upper - lower) sigmoid(u)              log(upper - lower) + log s(u) + log s(-u)
=============  ==============================================  =============================
"""

from __future__ import annotations

import math

# Deferred imports: jax (heavy to import) are imported inside the functions that use them, so importing this
# module stays light.

__all__ = ["prior_arrays", "log_density", "constrain", "POSITIVE_FAMILIES"]

POSITIVE_FAMILIES = ("halfnormal", "halfstudentt", "exponential", "lognormal")
LOG2 = math.log(2.0)


def prior_arrays(priors) -> dict[str, dict[str, float]]:
    """The numbers of every prior, as a pytree of floats (the program's argument)."""
    return {name: {k: float(v) for k, v in p.params} for name, p in priors.items()}


def log_density(dist: str, p: dict, x):
    """Elementwise log-density of the family ``dist`` with numbers ``p`` at ``x``."""
    import jax.numpy as jnp
    from jax.scipy import special, stats

    if dist == "normal":
        return stats.norm.logpdf(x, p["mu"], p["sigma"])
    if dist == "halfnormal":
        return LOG2 + stats.norm.logpdf(x, 0.0, p["sigma"])
    if dist == "halfstudentt":
        return LOG2 + stats.t.logpdf(x, p["nu"], 0.0, p["sigma"])
    if dist == "exponential":
        return -jnp.log(p["scale"]) - x / p["scale"]
    if dist == "lognormal":
        return stats.norm.logpdf(jnp.log(x), p["mu"], p["sigma"]) - jnp.log(x)
    if dist == "uniform":
        return jnp.zeros_like(x) - jnp.log(p["upper"] - p["lower"])
    if dist == "beta":
        a, b = p["alpha"], p["beta"]
        return (a - 1.0) * jnp.log(x) + (b - 1.0) * jnp.log1p(-x) - special.betaln(a, b)
    raise AssertionError(dist)  # pragma: no cover - families are validated by Prior


def _positive_scale(dist: str, p: dict):
    import jax.numpy as jnp

    if dist in ("halfnormal", "halfstudentt"):
        return p["sigma"]
    if dist == "exponential":
        return p["scale"]
    return jnp.exp(p["mu"])  # lognormal


def constrain(dist: str, p: dict, u):
    """``(x, log|dx/du|)`` elementwise: the support of ``dist`` from the real line."""
    import jax
    import jax.numpy as jnp

    if dist == "normal":
        return p["mu"] + p["sigma"] * u, jnp.log(p["sigma"]) + jnp.zeros_like(u)
    if dist in POSITIVE_FAMILIES:
        c = _positive_scale(dist, p)
        return c * jnp.exp(u), jnp.log(c) + u
    if dist in ("uniform", "beta"):
        lo, hi = (p["lower"], p["upper"]) if dist == "uniform" else (0.0, 1.0)
        s = jax.nn.sigmoid(u)
        x = lo + (hi - lo) * s
        return x, jnp.log(hi - lo) + jax.nn.log_sigmoid(u) + jax.nn.log_sigmoid(-u)
    raise AssertionError(dist)  # pragma: no cover
