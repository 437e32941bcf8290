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

from twoway.errors import FitError

__all__ = ["START_POINTS", "check_start", "start_failure", "extreme_priors"]

START_POINTS = 20    # points drawn from the priors before giving up
EXTREME = 1e8        # a prior scale (or mean offset) this many data spreads away is extreme


def _draw_point(plan, priors: dict, rng: np.random.Generator) -> dict | None:
    """One parameter point drawn from ``priors`` (None for plans not checked here: Kronecker structures)."""
    spec, data = plan.spec, plan.data
    if not plan.integrated and spec.residual != "independent":
        return None
    point = {k: float(v) for k, v in plan.constants.items()}
    with np.errstate(all="ignore"):
        for name in spec.parameter_names():
            if name in ("row_effect", "col_effect") or name not in priors:
                continue
            if name == "intercept" and plan.integrated:
                continue
            point[name] = float(priors[name].sample(rng))
        if spec.residual == "kronecker":  # the structures' parameters, and the factors they make
            for side, unit in (("row", False), ("col", True)):
                st = plan.parts[side]
                drawn = st.draw(rng, plan.structure_priors(side), unit_scale=unit)
                names = st.parameter_names(unit_scale=unit)
                point.update(drawn)
                point[f"_{side}_cov"] = st.matrix({n: drawn[n] for n in names}, unit_scale=unit)
        if not plan.integrated:  # sampled effects: drawn too
            for side, kind, n in (("row", spec.row_effect, data.n_rows), ("col", spec.col_effect, data.n_cols)):
                if kind == "random":
                    point[f"{side}_effect"] = point[f"{side}_effect_sd"] * rng.standard_normal(n)
                elif kind == "fixed":
                    raw = priors[f"{side}_effect"].sample(rng, n)
                    point[f"{side}_effect"] = raw - raw.mean()
        for side, n in (("row", data.n_rows), ("col", data.n_cols)):
            if getattr(spec, f"{side}_scale") == "hetero":
                loc, scale = point.pop(f"{side}_log_sd_loc"), point.pop(f"{side}_log_sd_scale")
                point[f"{side}_sd"] = np.exp(loc + scale * rng.standard_normal(n))
            elif getattr(spec, f"{side}_scale") == "homo":
                point[f"{side}_sd"] = np.asarray(point[f"{side}_sd"])
    return point


def _sampled_log_density(plan, point: dict) -> float:
    """Log-likelihood of independent cells given drawn effects and scales (a plan with sampled effects)."""
    from twoway.likelihood.diagonal import diagonal_logp, residual_sd

    spec, data = plan.spec, plan.data
    rr, ii, jj = data.observed_index()
    mu = np.full(ii.size, point.get("intercept", 0.0))
    if "row_effect" in point:
        mu = mu + point["row_effect"][ii]
    if "col_effect" in point:
        mu = mu + point["col_effect"][jj]
    scales = []
    for side, idx in (("row", ii), ("col", jj)):
        kind = getattr(spec, f"{side}_scale")
        value = point.get(f"{side}_sd")
        scales.append(None if kind == "none" else np.asarray(value)[idx] if kind == "hetero" else value)
    sd = residual_sd(data.se_or_zero()[rr, ii, jj], *scales, point.get("sigma") if spec.sigma else None,
                     combine=spec.combine)
    return float(np.sum(diagonal_logp(data.observed_values(), mu, sd)))


def _log_density(plan, point: dict) -> float:
    from twoway.likelihood.backend import NUMPY
    from twoway.likelihood.paths import marginal_logp

    try:
        with np.errstate(all="ignore"):
            if not plan.integrated:
                return _sampled_log_density(plan, point)
            value = marginal_logp(NUMPY, plan.spec, plan.layout, plan.design, point, plan.path)
        return float(np.asarray(value).reshape(-1)[0])
    except (np.linalg.LinAlgError, FloatingPointError, ValueError, ZeroDivisionError, OverflowError):
        return float("nan")


def _finite_somewhere(plan, priors: dict, seed) -> bool | None:
    """Whether the log-density is finite at one of :data:`START_POINTS` prior draws (None: not checked here)."""
    rng = np.random.default_rng([0 if seed is None else int(seed), 0x5747])
    for _ in range(START_POINTS):
        point = _draw_point(plan, priors, rng)
        if point is None:
            return None
        if math.isfinite(_log_density(plan, point)):
            return True
    return False


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
    from twoway.plan import resolve
    from twoway.priors import resolve_priors

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
        if _finite_somewhere(other, other.priors, seed):
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


def check_start(plan, *, seed=None) -> None:
    """Raise :class:`FitError` when the log-density is -inf or NaN at every one of a few prior draws.

    Plans whose parameters are not drawn here (none: sampled effects go with
    the independent residual only) would pass unchecked; an engine's own
    start-up error goes through :func:`start_failure`.
    """
    if _finite_somewhere(plan, plan.priors, seed) is False:
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
