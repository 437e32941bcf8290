"""The log-density of a plan in JAX, on an unconstrained parameter space.

:func:`describe` walks a plan once (:func:`twoway.engines.walk.walk`, the walk
the PyMC model is built by) with a JAX builder and returns a
:class:`JaxModel`: the parameter sites (name and shape on the real line),
``log_density(theta, args)`` and ``public(theta, args)`` (the values a user
sees, deterministics included). Every number that comes from the table (the
residual grid or the balanced sums of squares, the observed values, the
priors' numbers, the data's location and spread) is in ``args``, a pytree of
arrays, so one compiled program serves every table of the same layout.

Each parameter lives on the real line: a prior's parameter through its
family's bijection (:func:`twoway.engines.jax.priors.constrain`), a
half-normal device as ``sigma exp(u)``, a zero-sum vector through an
orthonormal basis of the zero-sum plane, an LKJ Cholesky factor through
NumPyro's ``CorrCholeskyTransform``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from twoway.engines.jax import enable_x64
from twoway.engines.jax.priors import constrain, log_density, prior_arrays
from twoway.engines.walk import coords, tables, walk
from twoway.linalg.ops import JAX
from twoway.plan import Plan
from twoway.spec.names import public_names

# Deferred imports: jax, numpyro, scipy (heavy to import) are imported inside the functions that use them,
# so importing this module stays light.

__all__ = ["JaxModel", "describe", "model_args"]


@dataclass(frozen=True)
class JaxModel:
    """A plan's log-density over unconstrained parameters.

    Attributes
    ----------
    sites : dict of str to tuple
        Each unconstrained parameter's shape.
    dims : dict of str to tuple of str
        Dims of each public value (``()`` for a scalar).
    coords : dict of str to list
        Coordinates of the dims the public values use.
    names : list of str
        The public values, in the order they are stored.
    """

    sites: dict
    dims: dict
    coords: dict
    names: list
    _run: Callable = dataclasses.field(repr=False)

    def log_density(self, theta, args):
        """Log posterior density (up to a constant) at unconstrained ``theta`` (a dict of site arrays)."""
        return self._run(theta, args)[0]

    def public(self, theta, args) -> dict:
        """The public values at unconstrained ``theta``, shaped as :attr:`dims` says."""
        values = self._run(theta, args)[1]
        return {k: values[k] for k in self.names}


def model_args(plan: Plan) -> dict[str, Any]:
    """The numbers the compiled program takes for ``plan``'s table (a pytree of float arrays).

    ``priors`` (every prior's numbers), ``location`` and ``spread`` of the data,
    and the table's numbers (:func:`twoway.engines.walk.tables`).
    """
    data = plan.data
    return {"priors": prior_arrays(plan.priors), "location": float(data.location()),
            "spread": float(data.spread()), **tables(plan)}


class _Builder:
    """The JAX builder of the walk: in discovery mode (``theta`` None) it records sites, otherwise reads theta.

    Every value is kept in :attr:`values` under its name, devices included;
    :attr:`dims` holds the public ones.
    """

    ops = JAX

    def __init__(self, theta, args, plan: Plan):
        import jax.numpy as jnp

        self.jnp = jnp
        self.theta = theta
        self.args = args
        self.plan = plan
        self.logp = 0.0
        self.values: dict[str, Any] = {}
        self.sites: dict[str, tuple] = {}
        self.dims: dict[str, tuple] = {}

    def _u(self, site, shape):
        self.sites[site] = tuple(shape)
        if self.theta is None:
            return self.jnp.zeros(shape)
        return self.theta[site]

    def _keep(self, name, value, dims=()):
        self.values[name] = value
        if not name.startswith("_"):
            self.dims[name] = tuple(dims)
        return value

    def prior(self, name, shape=(), dims=(), *, prior_name=None):
        p = self.plan.priors[prior_name or name]
        nums = self.args["priors"][prior_name or name]
        x, logj = constrain(p.dist, nums, self._u(name, shape))
        self.logp = self.logp + self.jnp.sum(log_density(p.dist, nums, x) + logj)
        return self._keep(name, x, dims)

    def std_normal(self, name, shape, dims=()):
        u = self._u(name, shape)
        self.logp = self.logp - 0.5 * self.jnp.sum(u * u)
        return self._keep(name, u)

    def half_normal(self, name, shape, sigma):
        """Sampled as ``sigma exp(u)``."""
        u = self._u(name, shape)
        self.logp = self.logp + self.jnp.sum(-0.5 * self.jnp.exp(2.0 * u) + u)
        return self._keep(name, sigma * self.jnp.exp(u))

    def zero_sum(self, name, n, sigma, dims=()):
        """``sigma B z`` with B (n, n-1) an orthonormal basis of the zero-sum plane and z standard normal;
        a public vector's z is the site ``_{name}_zs``."""
        from scipy.linalg import helmert  # scipy is heavy: only when a model has a zero-sum vector

        basis = helmert(n, full=False).T          # (n, n-1), orthonormal, columns sum to 0
        u = self._u(name if name.startswith("_") else f"_{name}_zs", (n - 1,))
        self.logp = self.logp - 0.5 * self.jnp.sum(u * u)
        return self._keep(name, sigma * (self.jnp.asarray(basis) @ u), dims)

    def flat(self, name):
        """Sampled as ``location + spread u`` (a constant Jacobian)."""
        return self._keep(name, self.args["location"] + self.args["spread"] * self._u(name, ()))

    def lkj_cholesky(self, name, n, eta):
        from numpyro.distributions import LKJCholesky
        from numpyro.distributions.transforms import CorrCholeskyTransform

        u = self._u(name, (n * (n - 1) // 2,))
        t = CorrCholeskyTransform()
        L = t(u)
        self.logp = self.logp + LKJCholesky(n, eta).log_prob(L) + t.log_abs_det_jacobian(u, L)
        return self._keep(name, L)

    def deterministic(self, name, value, dims=()):
        return self._keep(name, value, dims)

    def potential(self, name, value):
        self.logp = self.logp + value

    def prior_logp(self, name, value):
        return self.jnp.sum(log_density(self.plan.priors[name].dist, self.args["priors"][name], value))

    def prior_number(self, name, key):
        return self.args["priors"][name][key]

    def table(self, name):
        return self.args[name]

    def observe_normal(self, mu, sd):
        from jax.scipy import stats

        self.potential("_loglik", self.jnp.sum(stats.norm.logpdf(self.args["y_observed"], mu, sd)))


def describe(plan: Plan) -> JaxModel:
    """The JAX model of ``plan`` (sites discovered by tracing once, without compiling)."""
    import jax


    enable_x64()
    args = model_args(plan)
    found = {}

    def discover(a):
        b = _Builder(None, a, plan)
        walk(b, plan)
        found["sites"], found["dims"] = dict(b.sites), dict(b.dims)
        return b.logp

    jax.eval_shape(discover, args)

    def run(theta, a):
        b = _Builder(theta, a, plan)
        walk(b, plan)
        return b.logp, b.values

    order = public_names(plan.spec)
    order += [n for n in plan.var_names if n not in order]
    names = [n for n in order if n in found["dims"]]
    names += [n for n in found["dims"] if n not in names]
    return JaxModel(sites=found["sites"], dims={n: found["dims"][n] for n in names}, coords=coords(plan),
                    names=names, _run=run)
