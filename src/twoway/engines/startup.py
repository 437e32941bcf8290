"""Start-up checks: before any sampler starts, the log-density must be finite where the priors put mass.

A sampler that finds no finite starting point fails in its own way: the JAX
engine after its restarts, PyMC with a ``SamplingError`` and a table of
initial values, nutpie with a Rust error and backtrace (and, in some
versions, a crash of the process). :func:`check_start` evaluates the plan's
exact log-density (NumPy) at a few points drawn from the priors before any
engine runs and raises one :class:`~twoway.errors.FitError` naming the likely
cause; :func:`start_failure` turns an engine's own start-up exception into
the same error.
"""

from __future__ import annotations

import math

import numpy as np

from twoway.engines.walk import tables, walk
from twoway.errors import DataError, FitError
from twoway.likelihood.diagonal import diagonal_logp
from twoway.linalg.ops import NUMPY
from twoway.plan import resolve
from twoway.spec.priors import resolve_priors
from twoway.spec.structures import lkj_corr_cholesky

__all__ = ["START_POINTS", "NOISE_FREE", "check_table", "additive_residuals", "check_start", "start_failure",
           "extreme_priors"]

START_POINTS = 20    # points drawn from the priors before giving up
EXTREME = 1e8        # a prior scale (or mean offset) this many data spreads away is extreme
NOISE_FREE = 1e-9    # additive residuals this small, relative to the values' sd, are no noise at all
SWEEPS = 100         # at most this many back-fitting sweeps to find the additive residuals


class _PriorDraws:
    """The NumPy builder of the walk (:mod:`twoway.engines.walk`): each parameter drawn from its prior.

    Devices are drawn from their own laws, a flat parameter starts at the
    data's location, and :attr:`logp` sums the potentials: the
    log-likelihood at the draw (and the intercept's prior where the walk
    keeps it as a potential).
    """

    ops = NUMPY

    def __init__(self, plan, rng: np.random.Generator):
        self.plan, self.rng = plan, rng
        self.tables = tables(plan)
        self.logp = 0.0

    def prior(self, name, shape=(), dims=(), *, prior_name=None):
        return self.plan.priors[prior_name or name].sample(self.rng, tuple(shape) or None)

    def std_normal(self, name, shape, dims=()):
        return self.rng.standard_normal(shape)

    def half_normal(self, name, shape, sigma):
        return sigma * np.abs(self.rng.standard_normal(shape))

    def zero_sum(self, name, n, sigma, dims=()):
        x = self.rng.normal(0.0, sigma, n)
        return x - x.mean()

    def flat(self, name):
        return float(self.plan.data.location())

    def lkj_cholesky(self, name, n, eta):
        return lkj_corr_cholesky(self.rng, n, eta)

    def deterministic(self, name, value, dims=()):
        return value

    def potential(self, name, value):
        self.logp = self.logp + value

    def prior_logp(self, name, value):
        return np.sum(self.plan.priors[name].logpdf(value))

    def prior_number(self, name, key):
        return self.plan.priors[name].kwargs[key]

    def table(self, name):
        return self.tables[name]

    def observe_normal(self, mu, sd):
        self.potential("_loglik", np.sum(diagonal_logp(self.tables["y_observed"], mu, sd)))


def _log_density_at_a_draw(plan, rng: np.random.Generator) -> float:
    """The plan's log-likelihood at one draw of its parameters from the priors (NaN where it fails)."""
    b = _PriorDraws(plan, rng)
    try:
        with np.errstate(all="ignore"):
            walk(b, plan)
        return float(np.asarray(b.logp).reshape(-1)[0])
    except (np.linalg.LinAlgError, FloatingPointError, ValueError, ZeroDivisionError, OverflowError):
        return float("nan")


def _finite_somewhere(plan, seed) -> bool:
    """Whether the log-density is finite at one of :data:`START_POINTS` prior draws."""
    rng = np.random.default_rng([0 if seed is None else int(seed), 0x5747])
    return any(math.isfinite(_log_density_at_a_draw(plan, rng)) for _ in range(START_POINTS))


def extreme_priors(plan) -> list[str]:
    """The priors in force whose scale, or whose mean's distance from the data, is extreme for the data."""
    data = plan.data
    loc, spread = float(data.location()), float(data.spread())
    out = []
    for name, p in plan.priors.items():
        kw = p.kwargs
        scale = kw.get("sigma", kw.get("scale"))
        if p.dist == "uniform":
            scale = kw["upper"] - kw["lower"]
        bad = scale is not None and not (spread / EXTREME < scale < spread * EXTREME)
        if p.dist == "normal" and abs(kw["mu"] - (loc if name == "intercept" else 0.0)) > spread * EXTREME:
            bad = True
        if p.dist == "lognormal" and abs(kw["mu"] - math.log(spread)) > math.log(EXTREME):
            bad = True
        if bad:
            out.append(name)
    return out


def _culprit(plan, seed) -> str | None:
    """The one prior that, set back to its default, makes the log-density finite (None if no single one)."""

    spec, data = plan.spec, plan.data
    names = [n for n in spec.parameter_names() if n in plan.priors]
    defaults = resolve_priors(tuple(names), data.location(), data.spread())
    for name in names:
        if plan.priors[name] == defaults.get(name, plan.priors[name]):
            continue
        try:
            other = resolve(spec, data, priors={**plan.priors, name: defaults[name]})
        except Exception:  # a default the integrated paths cannot take: not this one
            continue
        if _finite_somewhere(other, seed):
            return name
    return None


def _cause(plan, seed) -> str:
    data = plan.data
    where = f"data of location {data.location():.4g} and spread {data.spread():.4g}"
    name = _culprit(plan, seed)
    if name is not None:
        return (f"the likely cause is the prior for {name!r}, {plan.priors[name]}: with its default prior the "
                f"log-density is finite; set it on the scale of {where}.")
    extreme = extreme_priors(plan)
    if extreme:
        listed = ", ".join(f"{n!r} ({plan.priors[n]})" for n in extreme)
        return f"the likely cause is an extreme prior for {where}: {listed}."
    if plan.spec.needs_se():
        return ("the likely cause is the known se: the model has no unknown scale, so every cell's variance is its "
                "se squared.")
    return ("no prior looks extreme; check the data for extreme values and the model for a variance that can be "
            "zero (a cell with no se and no unknown scale).")


def additive_residuals(data, *, tol: float = 0.0) -> np.ndarray:
    """The observed values less their additive least-squares fit (grand mean + row + column).

    Back-fitting: row and column means of the residuals are taken out in turn, at most
    :data:`SWEEPS` times (a complete table needs one sweep). Each sweep lowers the
    residuals' norm towards the least-squares one, so a small result is never smaller
    than the least-squares residuals.

    Parameters
    ----------
    data : TwoWayData
        The table; replicate tables share the row and column effects.
    tol : float
        Stop once the residuals' root mean square is at most ``tol``.

    Returns
    -------
    numpy.ndarray, shape (n_observed,)
    """
    _, i, j = data.observed_index()
    res = data.observed_values() - data.location()
    n_i = np.bincount(i, minlength=data.n_rows)
    n_j = np.bincount(j, minlength=data.n_cols)
    for _ in range(SWEEPS):
        before = float(np.sqrt(np.mean(res ** 2)))
        res = res - (np.bincount(i, res, minlength=data.n_rows) / n_i)[i]
        res = res - (np.bincount(j, res, minlength=data.n_cols) / n_j)[j]
        after = float(np.sqrt(np.mean(res ** 2)))
        if after <= tol or after >= before * (1 - 1e-12):
            break
    return res


def check_table(data) -> None:
    """Raise :class:`~twoway.errors.DataError` for a table with no noise and a cell with no known se.

    A constant table, or one whose values are exactly a grand mean plus row and column
    effects, leaves every unknown scale's posterior piling up at 0 (the density is
    unbounded there): samplers fail, and the draw-back of the effects meets a singular
    covariance. A cell with a known standard error keeps its variance positive, so a
    table whose every observed cell has one is not refused.

    Parameters
    ----------
    data : TwoWayData
    """
    if data.has_se and np.all(data.se_or_zero()[data.mask] > 0):
        return
    y = data.observed_values()
    sd = float(np.std(y))
    if sd == 0.0:
        raise DataError(f"The table must vary to fit a scale; got the same value, {y[0]:.6g}, in all {y.size} observed "
                        "cells (spread 0). Check the value column; give known standard errors (--se) if "
                        "the values are exact.")
    res = additive_residuals(data, tol=NOISE_FREE * sd)
    rms = float(np.sqrt(np.mean(res ** 2)))
    if rms <= NOISE_FREE * sd:
        raise DataError("The table must have some noise to fit a scale; got values that are exactly a grand mean "
                        f"plus row and column effects (residuals {rms:.2g} against a spread of {sd:.4g}), so every "
                        "unknown scale would be 0. Fit it with known standard errors (--se), or check that the "
                        "value column holds the measurements.")


def check_start(plan, *, seed=None) -> None:
    """Raise :class:`FitError` when the log-density is -inf or NaN at every one of a few prior draws.

    First the table itself (:func:`check_table`: a constant or noise-free table is a
    :class:`~twoway.errors.DataError`). The draws walk the plan's model (:func:`twoway.engines.walk.walk`) with a
    NumPy builder that draws every parameter from its prior; an engine's own
    start-up error goes through :func:`start_failure`.
    """
    check_table(plan.data)
    if not _finite_somewhere(plan, seed):
        raise FitError(f"The sampler cannot start: the log-density is -inf or NaN at all {START_POINTS} starting "
                       f"points drawn from the priors; {_cause(plan, seed)}")


_START_MESSAGES = ("initialization", "initial evaluation", "starting point", "initial point")


def start_failure(plan, exc: BaseException, *, engine: str, seed=None) -> FitError | None:
    """The :class:`FitError` for an engine's start-up failure ``exc``, or None when ``exc`` is something else."""
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    kind = type(exc).__name__
    if kind != "SamplingError" and not any(m in text.lower() for m in _START_MESSAGES):
        return None
    return FitError(f"The {engine} sampler could not start ({first.rstrip('.')}): it found no starting point with a "
                    f"finite log-density; {_cause(plan, seed)}")
