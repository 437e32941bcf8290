"""Prior distributions as data: one description serves every engine and the simulator.

A :class:`Prior` names a family and its parameters. Each engine maps it to
its own terms (:mod:`twoway.engines.pymc.priors` for PyMC,
:mod:`twoway.engines.jax.priors` for JAX), and the simulator draws the same
distribution with NumPy (:meth:`Prior.sample`), so that a table simulated
"from the prior" comes from exactly the prior that the fit uses; its NumPy
log-density is :meth:`Prior.logpdf`.

Default priors are weakly informative and scaled to the data: ``m`` is the
mean of the observed values and ``s`` a spread (their standard deviation); see
:func:`default_priors` for the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from twoway.errors import ModelError
from twoway.spec.names import POSITIVE_PARAMETERS

__all__ = ["Prior", "FAMILIES", "default_priors", "resolve_priors", "check_support", "check_coef_prior"]

# family -> (parameter names, positive support?)
FAMILIES: dict[str, tuple[tuple[str, ...], bool]] = {
    "normal": (("mu", "sigma"), False),
    "halfnormal": (("sigma",), True),
    "halfstudentt": (("nu", "sigma"), True),
    "exponential": (("scale",), True),
    "lognormal": (("mu", "sigma"), True),
    # bounded families: not "positive" families in the sense of check_support's list,
    # but Prior.positive is true when their support lies in (0, inf) (see there)
    "uniform": (("lower", "upper"), False),
    "beta": (("alpha", "beta"), False),
}


@dataclass(frozen=True)
class Prior:
    """A univariate prior family with fixed parameters.

    Parameters
    ----------
    dist : str
        One of ``normal``, ``halfnormal``, ``halfstudentt``, ``exponential``,
        ``lognormal``, ``uniform`` (``lower``, ``upper``), ``beta`` (``alpha``,
        ``beta``; support (0, 1)).
    params : tuple of (str, float)
        The family's parameters by name, for example ``(("mu", 0.0), ("sigma", 1.0))``.
    """

    dist: str
    params: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        if self.dist not in FAMILIES:
            raise ModelError(
                f"The prior family must be one of {sorted(FAMILIES)}; got {self.dist!r}."
            )
        names, _ = FAMILIES[self.dist]
        given = {k for k, _ in self.params}
        if given != set(names):
            raise ModelError(
                f"The {self.dist} prior needs parameters {list(names)}; got {sorted(given)}."
            )
        for k, v in self.params:
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ModelError(f"The prior parameter {k!r} must be a finite number; got {v!r}.")
            if k in ("sigma", "scale", "nu", "alpha", "beta") and v <= 0:
                raise ModelError(f"The prior parameter {k!r} must be positive; got {v!r}.")
        if self.dist == "uniform" and not self.kwargs["lower"] < self.kwargs["upper"]:
            raise ModelError(
                f"The uniform prior needs lower < upper; got lower={self.kwargs['lower']!r}, "
                f"upper={self.kwargs['upper']!r}."
            )

    @classmethod
    def make(cls, dist: str, **params: float) -> "Prior":
        """Build a prior from keyword parameters, in the family's parameter order."""
        names = FAMILIES.get(dist, ((),))[0]
        converted = {}
        for k, v in params.items():
            if isinstance(v, bool):
                raise ModelError(f"The prior parameter {k!r} must be a number; got {v!r}.")
            try:
                converted[k] = float(v)
            except (TypeError, ValueError):
                raise ModelError(f"The prior parameter {k!r} must be a number; got {v!r}.") from None
        ordered = tuple((k, converted[k]) for k in names if k in converted)
        extra = tuple((k, v) for k, v in converted.items() if k not in names)
        return cls(dist, ordered + extra)

    @classmethod
    def from_mapping(cls, name: str, spec: Mapping[str, Any]) -> "Prior":
        """Read a prior from a mapping such as ``{"dist": "normal", "mu": 0, "sigma": 2}``."""
        if not isinstance(spec, Mapping) or "dist" not in spec:
            raise ModelError(
                f"The prior for {name!r} must be a table with a 'dist' key and its parameters, "
                f"for example {{dist = \"halfnormal\", sigma = 1.0}}; got {spec!r}."
            )
        rest = {k: v for k, v in spec.items() if k != "dist"}
        return cls.make(str(spec["dist"]).lower(), **rest)

    @property
    def kwargs(self) -> dict[str, float]:
        return dict(self.params)

    @property
    def positive(self) -> bool:
        """True when the support lies in (0, inf): a positive family, a beta, or a uniform with lower >= 0."""
        if self.dist == "uniform":
            return self.kwargs["lower"] >= 0.0
        if self.dist == "beta":
            return True
        return FAMILIES[self.dist][1]

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v:.4g}" for k, v in self.params)
        return f"{self.dist}({inner})"

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.dist, **self.kwargs}

    def sample(self, rng: np.random.Generator, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        """Draw from the prior with NumPy; shape ``size`` (a float when ``size`` is None)."""
        p = self.kwargs
        if self.dist == "normal":
            return rng.normal(p["mu"], p["sigma"], size)
        if self.dist == "halfnormal":
            return np.abs(rng.normal(0.0, p["sigma"], size))
        if self.dist == "halfstudentt":
            return np.abs(p["sigma"] * rng.standard_t(p["nu"], size))
        if self.dist == "exponential":
            return rng.exponential(p["scale"], size)
        if self.dist == "lognormal":
            return rng.lognormal(p["mu"], p["sigma"], size)
        if self.dist == "uniform":
            return rng.uniform(p["lower"], p["upper"], size)
        if self.dist == "beta":
            return rng.beta(p["alpha"], p["beta"], size)
        raise AssertionError(self.dist)  # pragma: no cover

    def logpdf(self, x: Any) -> np.ndarray:
        """The log-density at ``x`` with NumPy, elementwise: -inf outside the support.

        Parameters
        ----------
        x : float or array_like, any shape

        Returns
        -------
        numpy.ndarray, the shape of ``x`` (0-d for a number)
        """
        p, d = self.kwargs, self.dist
        x = np.asarray(x, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            if d in ("normal", "halfnormal", "halfstudentt"):
                z = (x - p.get("mu", 0.0)) / p["sigma"]
                if d == "halfstudentt":
                    nu = p["nu"]
                    out = (math.lgamma((nu + 1.0) / 2.0) - math.lgamma(nu / 2.0) - 0.5 * math.log(nu * math.pi)
                           - math.log(p["sigma"]) - (nu + 1.0) / 2.0 * np.log1p(z * z / nu))
                else:
                    out = -0.5 * z * z - math.log(p["sigma"]) - 0.5 * math.log(2.0 * math.pi)
                if d == "normal":
                    return out
                return np.where(x >= 0.0, math.log(2.0) + out, -np.inf)
            if d == "exponential":
                return np.where(x >= 0.0, -math.log(p["scale"]) - x / p["scale"], -np.inf)
            if d == "lognormal":
                z = (np.log(x) - p["mu"]) / p["sigma"]
                out = -0.5 * z * z - math.log(p["sigma"]) - 0.5 * math.log(2.0 * math.pi) - np.log(x)
                return np.where(x > 0.0, out, -np.inf)
            if d == "uniform":
                inside = (x >= p["lower"]) & (x <= p["upper"])
                return np.where(inside, -math.log(p["upper"] - p["lower"]), -np.inf)
            if d == "beta":
                a, b = p["alpha"], p["beta"]
                log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
                out = (a - 1.0) * np.log(x) + (b - 1.0) * np.log1p(-x) - log_beta
                return np.where((x > 0.0) & (x < 1.0), out, -np.inf)
        raise AssertionError(d)  # pragma: no cover - families are validated by Prior


def default_priors(location: float, spread: float) -> dict[str, Prior]:
    """Weakly informative priors scaled to the data.

    With ``m`` the location and ``s`` the spread of the observed values:

    =====================  ==========================================
    parameter              prior
    =====================  ==========================================
    intercept              normal(mu=m, sigma=2.5 s)
    row_effect (fixed)     normal(mu=0, sigma=2.5 s), sum to zero
    coef                   normal(mu=0, sigma=2.5 s), per one sd of each term
    row_effect_sd          halfnormal(sigma=s)
    row_sd (homogeneous)   halfnormal(sigma=s)
    row_log_sd_loc         normal(mu=log(s/2), sigma=1)
    row_log_sd_scale       halfnormal(sigma=0.5)
    sigma                  halfnormal(sigma=s/2)
    cell_sd                halfnormal(sigma=s/2)
    =====================  ==========================================

    and the same for columns. Heterogeneous scales are hierarchical on the log
    scale: ``log row_sd[i] ~ normal(row_log_sd_loc, row_log_sd_scale)``.

    ``coef`` are the coefficients of a covariate formula's terms (``ModelSpec.covariates``).
    Its sigma is the prior sd of the effect of ONE STANDARD DEVIATION of each term: term j,
    whose column of the design has sd ``sd_j`` over the observed cells, has the prior
    ``coef[j] ~ normal(0, (sigma / sd_j)^2)`` (:attr:`twoway.plan.Plan.coef_sd`), so that the
    prior does not depend on the units of the covariates. It must be normal with mu = 0
    (:func:`check_coef_prior`).
    """
    m = float(location)
    s = float(spread)
    if not (math.isfinite(m) and math.isfinite(s) and s > 0):
        raise ModelError(f"The data location and spread must be finite with spread > 0; got {m!r}, {s!r}.")
    out = {"intercept": Prior.make("normal", mu=m, sigma=2.5 * s)}
    for side in ("row", "col"):
        out[f"{side}_effect"] = Prior.make("normal", mu=0.0, sigma=2.5 * s)
        out[f"{side}_effect_sd"] = Prior.make("halfnormal", sigma=s)
        out[f"{side}_sd"] = Prior.make("halfnormal", sigma=s)
        out[f"{side}_log_sd_loc"] = Prior.make("normal", mu=math.log(s / 2.0), sigma=1.0)
        out[f"{side}_log_sd_scale"] = Prior.make("halfnormal", sigma=0.5)
    out["coef"] = Prior.make("normal", mu=0.0, sigma=2.5 * s)
    out["sigma"] = Prior.make("halfnormal", sigma=s / 2.0)
    out["cell_sd"] = Prior.make("halfnormal", sigma=s / 2.0)
    return out


def resolve_priors(
    needed: tuple[str, ...],
    location: float,
    spread: float,
    overrides: Mapping[str, Prior] | None = None,
) -> dict[str, Prior]:
    """The priors for the parameters ``needed``: defaults scaled to the data, then overrides.

    Raises
    ------
    ModelError
        When an override names a parameter the model does not have, or gives a
        real-line family to a positive parameter.
    """
    defaults = default_priors(location, spread)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(needed))
    if unknown:
        raise ModelError(
            f"The priors must name parameters of this model ({', '.join(needed)}); got {', '.join(unknown)}."
        )
    out = {}
    for name in needed:
        if name not in overrides and name not in defaults:
            raise ModelError(f"The model needs a prior for {name!r}; give it in the model file's [priors] table, "
                             f"for example {name} = {{ dist = \"normal\", mu = 0, sigma = 1 }}.")
        prior = overrides.get(name, defaults.get(name))
        check_support(name, prior)
        if name == "coef":
            check_coef_prior(prior)
        out[name] = prior
    return out




def check_support(name: str, prior: Prior) -> None:
    """Raise :class:`ModelError` when a scale parameter is given a prior on the whole real line."""
    if name in POSITIVE_PARAMETERS and not prior.positive:
        raise ModelError(
            f"The prior for {name!r} must be a positive family (halfnormal, halfstudentt, "
            f"exponential, lognormal); got {prior.dist}."
        )


def check_coef_prior(prior: Prior) -> None:
    """Raise :class:`ModelError` unless ``prior``, the prior of ``coef``, is normal with mu = 0.

    The covariates' coefficients are Gaussian terms of the mean, integrated out (and drawn
    back) like the intercept; the prior's sigma is per one standard deviation of each term.
    """
    if prior.dist != "normal" or prior.kwargs["mu"] != 0.0:
        raise ModelError(f"The prior for 'coef' must be normal with mu = 0 (its sigma is per one standard deviation "
                         f"of each term), for example coef = {{ dist = \"normal\", mu = 0, sigma = 2.5 }}; got {prior}.")
