"""The log-density of a plan in JAX, on an unconstrained parameter space.

:func:`describe` walks a plan once, the way the PyMC model is built, and
returns a :class:`JaxModel`: the parameter sites (name and shape on the real
line), ``log_density(theta, args)`` and ``public(theta, args)`` (the values a
user sees, deterministics included). Every number that comes from the table
(the residual grid or the balanced sums of squares, the observed values,
the priors' numbers, the data's location and spread) is in ``args``, a pytree
of arrays, so one compiled program serves every table of the same layout.

The integrated likelihood is :func:`twoway.likelihood.paths.marginal_logp` evaluated
against the JAX ops: the same algebra the PyMC engines compile, so the same
dense-twin tests cover it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from twoway.engines.jax.priors import constrain, log_density, prior_arrays
from twoway.plan import MAX_STORED_COV, Plan, anova_vector

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
        """Log posterior density (up to a constant) at unconstrained ``theta``."""
        return self._run(theta, args)[0]

    def public(self, theta, args) -> dict:
        """The public values at unconstrained ``theta``."""
        values = self._run(theta, args)[1]
        return {k: values[k] for k in self.names}


def model_args(plan: Plan) -> dict[str, Any]:
    """The numbers the compiled program takes for ``plan``'s table (a pytree of float arrays)."""
    data = plan.data
    args: dict[str, Any] = {"priors": prior_arrays(plan.priors),
                            "location": float(data.location()), "spread": float(data.spread())}
    if plan.integrated:
        args["constants"] = {k: float(v) for k, v in plan.constants.items()}
        if plan.path == "anova":
            args["anova_ss"] = anova_vector(plan.layout.anova)
        else:
            args["residual_grid"] = np.asarray(plan.layout.r, dtype=float)
    else:
        args["y"] = np.asarray(data.observed_values(), dtype=float)
    return args


class _Builder:
    """Walks the model once: in discovery mode it records sites, otherwise it reads theta."""

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

    def _u(self, name, shape):
        self.sites[name] = tuple(shape)
        if self.theta is None:
            return self.jnp.zeros(shape)
        return self.theta[name]

    def _keep(self, name, value, dims):
        self.values[name] = value
        if not name.startswith("_"):
            self.dims[name] = tuple(dims)
        return value

    def prior(self, name, shape=(), dims=(), *, prior_name=None, site=None):
        """A parameter with the plan's prior ``prior_name`` (default ``name``)."""
        p = self.plan.priors[prior_name or name]
        nums = self.args["priors"][prior_name or name]
        u = self._u(site or name, shape)
        x, logj = constrain(p.dist, nums, u)
        self.logp = self.logp + self.jnp.sum(log_density(p.dist, nums, x) + logj)
        return self._keep(name, x, dims)

    def std_normal(self, name, shape):
        u = self._u(name, shape)
        self.logp = self.logp - 0.5 * self.jnp.sum(u * u)
        return u

    def normal(self, name, shape, sigma):
        """``N(0, sigma^2)`` elementwise, sampled as ``sigma u``."""
        return sigma * self.std_normal(name, shape)

    def half_normal(self, name, shape, sigma):
        """Half-normal with scale sigma, sampled as ``sigma exp(u)``."""
        u = self._u(name, shape)
        x = sigma * self.jnp.exp(u)
        self.logp = self.logp + self.jnp.sum(-0.5 * self.jnp.exp(2.0 * u) + u)
        return x

    def zero_sum(self, name, n, sigma):
        """A zero-sum normal vector of length n with scale sigma (n - 1 free coordinates)."""
        from scipy.linalg import helmert

        basis = helmert(n, full=False).T          # (n, n-1), orthonormal, columns sum to 0
        z = self.std_normal(name, (n - 1,))
        return sigma * (self.jnp.asarray(basis) @ z)

    def flat(self, name, loc, scale):
        """A flat parameter, sampled as ``loc + scale u`` (constant Jacobian)."""
        return loc + scale * self._u(name, ())

    def lkj_cholesky(self, name, n, eta):
        """The Cholesky factor of an LKJ(eta) correlation matrix."""
        from numpyro.distributions import LKJCholesky
        from numpyro.distributions.transforms import CorrCholeskyTransform

        u = self._u(name, (n * (n - 1) // 2,))
        t = CorrCholeskyTransform()
        L = t(u)
        self.logp = self.logp + LKJCholesky(n, eta).log_prob(L) + t.log_abs_det_jacobian(u, L)
        return L

    def deterministic(self, name, value, dims=()):
        return self._keep(name, value, dims)

    def potential(self, value):
        self.logp = self.logp + value


def describe(plan: Plan) -> JaxModel:
    """The JAX model of ``plan`` (sites discovered by tracing once, without compiling)."""
    import jax

    from twoway.engines.jax import enable_x64

    enable_x64()
    args = model_args(plan)
    found = {}

    def discover(a):
        b = _Builder(None, a, plan)
        _walk(b, plan)
        found["sites"], found["dims"] = dict(b.sites), dict(b.dims)
        return b.logp

    jax.eval_shape(discover, args)

    def run(theta, a):
        b = _Builder(theta, a, plan)
        _walk(b, plan)
        return b.logp, b.values

    names = [n for n in _public_order(plan) if n in found["dims"]]
    names += [n for n in found["dims"] if n not in names]
    return JaxModel(sites=found["sites"], dims={n: found["dims"][n] for n in names}, coords=_coords(plan),
                    names=names, _run=run)


def _public_order(plan: Plan) -> list[str]:
    from twoway.plan import public_names

    out = public_names(plan.spec)
    return out + [n for n in plan.var_names if n not in out]


def _coords(plan: Plan) -> dict:
    d = plan.data
    coords = {"row": list(d.row_labels), "col": list(d.col_labels)}
    for side in ("row", "col"):
        st = plan.parts.get(side)
        if st is not None:
            coords.update(st.coords())
            coords[f"{side}_other"] = list(st.labels)
    return coords


def _walk(b: _Builder, plan: Plan) -> None:
    if plan.integrated:
        _integrated(b, plan)
    else:
        _sampled(b, plan)


def _scales(b: _Builder, spec) -> dict:
    """Residual scales: homogeneous, or hierarchical log-normal per level."""
    out = {}
    data = b.plan.data
    for side, kind, n in (("row", spec.row_scale, data.n_rows), ("col", spec.col_scale, data.n_cols)):
        if kind == "homo":
            out[f"{side}_sd"] = b.prior(f"{side}_sd")
        elif kind == "hetero":
            loc = b.prior(f"{side}_log_sd_loc")
            scale = b.prior(f"{side}_log_sd_scale")
            z = b.std_normal(f"_{side}_sd_z", (n,))
            out[f"{side}_sd"] = b.deterministic(f"{side}_sd", b.jnp.exp(loc + scale * z), (side,))
    if spec.sigma:
        out["sigma"] = b.prior("sigma")
    return out


def _integrated(b: _Builder, plan: Plan) -> None:
    from twoway.likelihood.backend import JAX
    from twoway.likelihood.paths import marginal_logp

    spec, lay, a = plan.spec, plan.layout, b.args
    params = dict(a["constants"])
    for side, kind in (("row", spec.row_effect), ("col", spec.col_effect)):
        if kind == "random":
            params[f"{side}_effect_sd"] = b.prior(f"{side}_effect_sd")
    params.update(_scales(b, spec))
    if spec.cell_effect == "random":
        params["cell_sd"] = b.prior("cell_sd")
    if spec.residual == "full":
        for name in plan.parts["full"].parameters:
            params[name] = b.prior(name)
    if spec.residual == "kronecker":
        for side, unit in (("row", False), ("col", True)):
            st = plan.parts[side]
            cov, st_params = _structure(b, st, unit)
            params.update(st_params)
            params[f"_{side}_cov"] = cov
            if st.n <= MAX_STORED_COV:
                b.deterministic(f"{side}_cov", cov, (side, f"{side}_other"))
    if plan.path == "anova":
        ss = a["anova_ss"]
        sym = dataclasses.replace(lay, anova=dataclasses.replace(
            lay.anova, ss_grand=ss[0], ss_row=ss[1], ss_col=ss[2], ss_inter=ss[3], ss_within=ss[4]))
    else:
        sym = dataclasses.replace(lay, r=a["residual_grid"])
    b.potential(marginal_logp(JAX, spec, sym, plan.design, params, plan.path))


def _sampled(b: _Builder, plan: Plan) -> None:
    """Effects sampled (non-centred), independent residual: the diagonal path."""
    from jax.scipy import stats

    from twoway.likelihood.diagonal import residual_sd

    spec, data, jnp = plan.spec, plan.data, b.jnp
    rr, ii, jj = data.observed_index()
    se = data.se_or_zero()[rr, ii, jj]
    effects, centred = {}, {}
    for side, kind, n in (("row", spec.row_effect, data.n_rows), ("col", spec.col_effect, data.n_cols)):
        if kind == "random":
            sd = b.prior(f"{side}_effect_sd")
            z = b.std_normal(f"_{side}_effect_z", (n,))
            effects[side] = b.deterministic(f"{side}_effect", sd * z, (side,))
            centred[side] = sd * (z - z.mean())
        elif kind == "fixed":
            sigma = b.args["priors"][f"{side}_effect"]["sigma"]
            effects[side] = centred[side] = b.deterministic(
                f"{side}_effect", b.zero_sum(f"_{side}_effect_zs", n, sigma), (side,))
    random_sides = [s for s, k in (("row", spec.row_effect), ("col", spec.col_effect)) if k == "random"]
    if spec.intercept and random_sides:
        # the grand mean is sampled; the intercept keeps its prior as a potential (see the PyMC twin)
        grand = b.flat("_grand_mean", b.args["location"], b.args["spread"])
        intercept = grand - sum(effects[s].mean() for s in random_sides)
        b.deterministic("intercept", intercept)
        nums = b.args["priors"]["intercept"]
        b.potential(log_density(plan.priors["intercept"].dist, nums, intercept))
        mu = grand
    else:
        mu = b.prior("intercept") if spec.intercept else 0.0
        centred = effects
    if "row" in centred:
        mu = mu + centred["row"][ii]
    if "col" in centred:
        mu = mu + centred["col"][jj]
    sc = _scales(b, spec)
    row = sc.get("row_sd")
    col = sc.get("col_sd")
    if row is not None and spec.row_scale == "hetero":
        row = row[ii]
    if col is not None and spec.col_scale == "hetero":
        col = col[jj]
    sd = residual_sd(se, row, col, sc.get("sigma"), combine=spec.combine)
    b.potential(jnp.sum(stats.norm.logpdf(b.args["y"], mu, sd)))


def _structure(b: _Builder, st, unit: bool):
    """A Kronecker factor (n, n) and its public parameters, as in the PyMC build."""
    from twoway.likelihood.structured import ar1_matrix, cs_matrix, fa_identify, fa_matrix

    jnp, side, n, nm, kind = b.jnp, st.side, st.n, st._name, st.kind
    params: dict[str, Any] = {}

    def scalar_sd2():
        if unit:
            return jnp.asarray(1.0)
        sd = b.prior(nm("sd"))
        params[nm("sd")] = sd
        return sd * sd

    def unit_sd():
        sigma = b.args["priors"][nm("log_sd_centred")]["sigma"]
        w = b.zero_sum(f"_{nm('log_sd_centred')}", n, sigma)
        return b.deterministic(nm("sd"), jnp.sqrt(n * _softmax(jnp, 2.0 * w)), (side,))

    if kind in ("iid", "known"):
        sd2 = scalar_sd2()
        base = np.eye(n) if kind == "iid" else st._known_unit() if unit else st.known
        cov = sd2 * jnp.asarray(base)
    elif kind == "diag":
        sd = unit_sd() if unit else b.prior(nm("sd"), (n,), (side,))
        params[nm("sd")] = sd
        cov = jnp.diag(sd * sd)
    elif kind in ("ar1", "cs"):
        rho = b.prior(nm("rho"))
        params[nm("rho")] = rho
        sd2 = scalar_sd2()
        cov = ar1_matrix(rho, sd2, n) if kind == "ar1" else cs_matrix(rho, sd2, n)
    elif kind == "fa":
        # hierarchical scales; raw loadings without constraint (their law and lam lam' are unchanged by
        # rotations), reported in the identified form; see twoway.structures
        hide = "_" if unit else ""
        tau_l = b.prior(f"{hide}{nm('loadings_scale')}", prior_name=nm("loadings_scale"))
        tau_p = 1.0 if unit else b.prior(nm("psi_scale"))
        lam = tau_l * b.std_normal(f"_{nm('loadings')}_z", (n, st.k))
        psi = tau_p * b.half_normal(f"_{nm('psi')}_z", (n,), 1.0)
        if unit:
            m = ((lam * lam).sum() + psi.sum()) / n
            lam, psi = lam / jnp.sqrt(m), psi / m
        b.deterministic(nm("psi"), psi, (side,))
        loadings = b.deterministic(nm("loadings"), fa_identify(lam), (side, f"{side}_factor"))
        params.update({nm("loadings"): loadings, nm("psi"): psi})
        if not unit:
            params.update({nm("loadings_scale"): tau_l, nm("psi_scale"): tau_p})
        cov = fa_matrix(lam, psi)
    else:  # unstructured
        L = b.lkj_cholesky(f"_{nm('corr')}_chol", n, st.eta)
        corr = b.deterministic(nm("corr"), L @ L.T, (side, f"{side}_other"))
        sd = unit_sd() if unit else b.prior(nm("sd"), (n,), (side,))
        params = {nm("corr"): corr, nm("sd"): sd}
        cov = sd[:, None] * corr * sd[None, :]
    return cov, params


def _softmax(jnp, x):
    e = jnp.exp(x - x.max())
    return e / e.sum()
