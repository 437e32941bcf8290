"""The ``laplace`` engine: the few variance parameters by nested Laplace + importance sampling.

For the ``sparse`` path (crossed random effects on a large sparse table) the
effects are integrated out exactly through a sparse Cholesky factor, which
leaves a handful of variance parameters theta (``row_effect_sd``,
``col_effect_sd``, ``sigma``). This engine

1. finds the mode of the exact log marginal posterior of theta on the log
   scale (priors in force from the plan and the log-Jacobian included),
   with central-difference gradients;
2. takes its curvature there (a central-difference Hessian);
3. probes the lower tail of each variance parameter (the parameter at a tenth
   and a hundredth of its mode, the others at the mode): where the exact
   posterior falls towards zero more slowly than the t proposal below, the
   parameter's posterior has mass near zero that the Laplace curvature does not
   see (a weakly identified variance), and the proposal becomes a defensive
   mixture (:func:`_mixture_logpdf`) with a boundary component for it: the
   parameter half-normal on its own scale (not its log), so that the
   proposal's density near zero behaves as the posterior's does;
4. draws proposals from a multivariate t (7 degrees of freedom) centred at the
   mode with the inverse curvature as scale (and the boundary components, if
   any), and weights each by the EXACT log posterior minus the mixture's
   log-density; each proposal's effects are drawn with its own factor (exact
   draws from ``z | y, theta``);
5. smooths the weights (Pareto-smoothed importance sampling: the k-hat
   diagnostic) and resamples (theta, effects) pairs into ``chains x draws``
   (systematic resampling, shuffled); warns (``TwowayWarning``, recommending
   ``--engine jax``) when Pareto k passes its sample-size threshold
   (:func:`pareto_k_threshold`), or when a variance parameter's posterior mass
   near zero (:func:`near_zero`) is covered markedly worse than the bulk or
   missed by the proposals (:func:`importance_warnings`). ``fit.info`` keeps
   ``boundary_share`` and ``near_zero`` per parameter.

Each evaluation is one numerical CHOLMOD refactorisation; the evaluations are
independent: the mode's in this process, the proposals of a large system split
over processes (:func:`_processes` says why not threads), each proposal with
its own seeded stream, so the draws do not depend on how many. The
method, the importance ESS, Pareto k and the number of factorisations are
returned in the raw tree's attributes and end up in ``fit.info``.

NUTS on the same path would need a factorisation plus a selected inverse for
every gradient: thousands of trajectories x several leapfrog steps, against a
few hundred factorisations here (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from twoway.engines.description import LAPLACE
from twoway.errors import FitError, TwowayWarning

# Deferred imports: arviz_stats, scipy, xarray (heavy to import) are imported inside the functions that use
# them, so importing this module stays light.

__all__ = ["BOUNDARY_SHARE", "DEFAULT_PROPOSALS", "NEAR_ZERO", "PROPOSAL_DOF", "LaplaceEngine", "importance_warnings",
           "log_prior", "near_zero", "pareto_k_threshold"]

#: Importance proposals drawn at most (each one factorisation); the posterior has chains x draws resampled draws.
DEFAULT_PROPOSALS = 1000
PROPOSAL_DOF = 7.0
#: Share of the proposals for a variance parameter's boundary component, once its probes ask for one
#: (:func:`_probe`, :func:`_boundary_shares`): BOUNDARY_PER_MASS times the posterior mass near zero they
#: estimate, within [BOUNDARY_MIN, BOUNDARY_SHARE]; all boundary components together at most BOUNDARY_TOTAL,
#: the t at the mode the rest. (The half-normal component puts 8% of its draws below a tenth of its scale:
#: 12 x the mass would match the posterior there. Measured on crossed 300 x 100 tables with row sds of 0.05-0.15:
#: a share of 0.2 cost no importance ESS where the estimated mass was 0.1%, and lowered Pareto k.)
BOUNDARY_PER_MASS = 10.0
BOUNDARY_MIN = 0.2
BOUNDARY_SHARE = 0.5
BOUNDARY_TOTAL = 0.6
#: Probes of each variance parameter's lower tail, as fractions of its value at the mode (the first is NEAR_ZERO).
PROBE_FRACTIONS = (0.1, 0.01)
#: A parameter gets a boundary component when the exact posterior at a probe, relative to the mode, exceeds the
#: t proposal's relative density there by PROBE_EXCESS, and its estimated mass near zero is at least PROBE_MASS.
PROBE_EXCESS = 2.0
PROBE_MASS = 1e-4
#: "Near zero": below this fraction of a parameter's value at the mode. Where the posterior mass there is at
#: least NEAR_ZERO_MASS (by the proposals or by the probes), the fit warns when the proposals cover it markedly
#: worse than the bulk (Monte Carlo error above NEAR_ZERO_ERROR times that of ``importance ESS`` independent
#: draws) or miss it (they find less than NEAR_ZERO_MISSED of the mass the probes estimate).
NEAR_ZERO = 0.1
NEAR_ZERO_MASS = 0.01
NEAR_ZERO_ERROR = 2.0
NEAR_ZERO_MISSED = 0.2
_FD_STEP = 2e-3  # central differences on the log scale
#: Threads evaluating proposals. Measured (2-core machine, scikit-sparse 0.4.16): a refactorisation does not
#: release the GIL, so two threads were slower than one; BLAS threads help only for a large dense supernode.
EVALUATION_THREADS = 1
_SMALL_SYSTEM = 3000  # below this many effects, one BLAS thread (threads cost more than they give)
PROCESS_MIN_SYSTEM = 2000  # from this many effects, proposals are split over processes (see _processes)


def log_prior(prior, x: float) -> float:
    """Log-density of ``prior`` (a :class:`~twoway.spec.priors.Prior`) at the positive value ``x``.

    A normal prior on a scale is truncated at 0: only its shape matters here, so it is the normal's.
    """
    return float(prior.logpdf(x))


class _Evaluator:
    """The exact log posterior of theta on the log scale, one CHOLMOD factor per thread."""

    def __init__(self, system, priors: dict, constants: dict, names: list[str]):
        self.system, self.names = system, names
        self.priors = [priors[n] for n in names]
        self.constants = {k: v for k, v in constants.items() if k in system.var_params}
        self._local = threading.local()
        self._lock = threading.Lock()
        self.count = 0

    def factor(self):
        f = getattr(self._local, "factor", None)
        if f is None:
            f = self._local.factor = self.system.analyse()
        return f

    def params(self, u) -> dict:
        return {**self.constants, **{n: math.exp(v) for n, v in zip(self.names, u)}}

    def __call__(self, u, rng=None):
        """``(log posterior at u, effects draw or None)``; the draw only when ``rng`` is given."""
        u = np.asarray(u, dtype=float)
        if not np.all(np.isfinite(u)) or np.any(np.abs(u) > 700):
            return -math.inf, None
        params = self.params(u)
        lp = sum(log_prior(p, params[n]) for p, n in zip(self.priors, self.names)) + float(np.sum(u))
        if not math.isfinite(lp):
            return -math.inf, None
        factor = self.factor()
        ll, mean = self.system.evaluate(factor, params)
        with self._lock:
            self.count += 1
        if mean is None:
            return -math.inf, None
        draw = self.system.draw(factor, mean, rng, 1)[0] if rng is not None else None
        return lp + ll, draw


class LaplaceEngine:
    """Nested Laplace + importance sampling over the sparse path's variance parameters."""

    name = "laplace"
    reuses_priors = True
    min_tune = 0
    description = LAPLACE

    def compile(self, plan, *, progress):
        _check_sparse(plan)
        system = plan.design.system(plan.spec, plan.layout)
        system.analyse()  # fail early (scikit-sparse missing, a pattern CHOLMOD refuses)
        return {"system": system}

    def compile_seconds_in_sample(self, compiled) -> float:
        return 0.0

    def sample(self, compiled, plan, *, chains, draws, tune, seed, progress, cores, report=None,
               proposals: int | None = None):

        t0 = time.perf_counter()
        _check_sparse(plan)  # another table of the compiled layout is planned with the compiled likelihood option
        system = plan.design.system(plan.spec, plan.layout)
        names = [vp for vp in system.var_params if vp not in plan.constants]  # not the coef block: fixed prior
        if plan.spec.sigma:
            names.append("sigma")
        ev = _Evaluator(system, plan.priors, plan.constants, names)
        workers = max(1, min(EVALUATION_THREADS, int(cores or os.cpu_count() or 1)))
        blas = 1 if (workers > 1 or system.m < _SMALL_SYSTEM) else None
        n_out = int(chains) * int(draws)
        M = int(proposals or min(DEFAULT_PROPOSALS, max(n_out, 200)))
        say = (lambda msg: print(f"twoway: {msg}", file=sys.stderr, flush=True)) if progress else (lambda msg: None)
        with ThreadPoolExecutor(workers) as pool, threadpool_limits(blas):
            mode, H, lp_mode = _mode_and_curvature(ev, pool, _start(plan, names), say)
            t_mode = time.perf_counter() - t0
            say(f"mode found ({ev.count} factorisations, {t_mode:.1f} s); {M} importance draws ...")
            rng = np.random.default_rng([0 if seed is None else int(seed), 0x1A7])
            if seed is None:
                rng = np.random.default_rng()
            scale = np.linalg.inv(H)
            excess, probe_mass = _probe(ev, pool, mode, scale, lp_mode)
            shares = _boundary_shares(excess, probe_mass)
            if shares.any():
                flagged = ", ".join(n for n, a in zip(names, shares) if a > 0)
                say(f"posterior mass near zero for {flagged}: proposals from a mixture with boundary components")
            us, log_q, shares = _mixture_draws(rng, mode, scale, shares, M)
            base = int(rng.integers(2**62))
            processes = _processes(cores, system, M)
            if processes > 1:
                results, count = _in_processes(processes, system, plan, names, us, base)
                ev.count += count
            else:
                results = list(pool.map(lambda k: ev(us[k], np.random.default_rng([base, k])), range(M)))
        lp = np.array([r[0] for r in results])
        ok = np.isfinite(lp)
        if not ok.any():
            raise FitError("No importance proposal had a finite posterior density; the Laplace step failed.")
        log_w = np.where(ok, lp - log_q, -np.inf)
        smoothed, khat = _psis(log_w[ok])
        w = np.zeros(M)
        w[ok] = np.exp(smoothed - smoothed.max())
        w /= w.sum()
        ess = float(1.0 / np.sum(w * w))
        raw_w = np.exp(log_w - log_w[ok].max())
        raw_w /= raw_w.sum()
        ess_raw = float(1.0 / np.sum(raw_w * raw_w))
        idx = _systematic(rng, w, n_out)
        effects = np.stack([results[k][1] for k in range(M) if ok[k]]) if ok.all() else None
        if effects is None:
            keep = np.flatnonzero(ok)
            pos = np.full(M, -1)
            pos[keep] = np.arange(keep.size)
            effects = np.stack([results[k][1] for k in keep])
            chosen = effects[pos[idx]]
        else:
            chosen = effects[idx]
        zero = near_zero(us, w, mode)
        for message in importance_warnings(names, khat, M, zero, ess=ess, probe_mass=probe_mass):
            warnings.warn(message, TwowayWarning, stacklevel=3)
        info = {"method": "laplace-importance", "likelihood_path": plan.path, "processes": processes, "importance_ess": ess, "importance_ess_raw": ess_raw,
                "pareto_k": float(khat), "pareto_k_threshold": pareto_k_threshold(M), "factorisations": int(ev.count),
                "proposals": M, "laplace_mode": {n: float(math.exp(v)) for n, v in zip(names, mode)},
                "boundary_share": {n: float(a) for n, a in zip(names, shares)},
                "near_zero": {n: {"below": b, "mass": m, "mc_error": e, "probe_mass": float(p)}
                              for n, (b, m, e), p in zip(names, zero, probe_mass)},
                "laplace_seconds": float(t_mode), "threads": workers}
        say(f"importance ESS {ess:.0f} of {M}, Pareto k {khat:.2f}, {ev.count} factorisations")
        return _raw_tree(plan, system, names, us[idx], chosen, lp[idx], log_w[idx], idx, chains, draws, info)


def _check_sparse(plan) -> None:
    """Raise :class:`FitError` unless ``plan`` is on the sparse path (its engine is chosen by
    :func:`twoway.engines.choose.choose`, which resolves with ``likelihood="sparse"`` for this engine)."""
    if plan.path != "sparse":
        raise FitError(f"The laplace engine fits plans on the sparse likelihood path; this plan's path is "
                       f"{plan.path!r} (use a NUTS engine: jax, nutpie or pymc).")


def _processes(cores, system, M: int) -> int:
    """Worker processes for the proposals: one per core (at most ``cores``) on large systems, else 1.

    Measured on 2 cores (2,972 x 1,128 levels): one refactorisation takes 0.030 s with one BLAS
    thread and 0.032-0.044 s with two, and two threads evaluate no faster than one (the interpreter
    lock is held), so the proposals are split over processes, each with one BLAS thread.
    """
    n = int(cores or os.cpu_count() or 1)
    if system.m < PROCESS_MIN_SYSTEM or M < 8 * n:
        return 1
    return max(1, min(n, os.cpu_count() or 1))


def _chunk(args):
    """Evaluate proposals ``ks`` in a worker process: ``([(log posterior, effects draw)], factorisations)``."""

    system, priors, constants, names, us, base, ks = args
    ev = _Evaluator(system, priors, constants, names)
    with threadpool_limits(1):
        out = [ev(us[k], np.random.default_rng([base, int(k)])) for k in ks]
    return out, ev.count


def _in_processes(n: int, system, plan, names, us, base: int):
    """All proposals evaluated by ``n`` processes (this one included); the same numbers as in one process."""

    M = us.shape[0]
    parts = np.array_split(np.arange(M), n)
    priors = {k: plan.priors[k] for k in names}
    jobs = [(system, priors, dict(plan.constants), names, us, base, ks) for ks in parts]
    with ProcessPoolExecutor(n - 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_chunk, job) for job in jobs[1:]]
        with threadpool_limits(1):
            done = [_chunk(jobs[0])] + [f.result() for f in futures]
    results = [r for part, _ in done for r in part]
    return results, sum(c for _, c in done)


def _start(plan, names) -> np.ndarray:
    """A start on the log scale: each variance part a share of the observed spread."""
    spread = float(plan.data.spread()) or 1.0
    return np.full(len(names), math.log(0.5 * spread))


def _derivatives(values, u, h=_FD_STEP):
    """``(F, gradient, Hessian)`` of F = -log p at ``u`` by central differences (1 + 2 d^2 evaluations)."""
    d = u.size
    eye = np.eye(d)
    pts = [u]
    for i in range(d):
        pts += [u + h * eye[i], u - h * eye[i]]
    pairs = [(i, j) for i in range(d) for j in range(i + 1, d)]
    for i, j in pairs:
        pts += [u + h * (eye[i] + eye[j]), u + h * (eye[i] - eye[j]),
                u - h * (eye[i] - eye[j]), u - h * (eye[i] + eye[j])]
    v = -values(pts)
    f0 = v[0]
    g = (v[1:1 + 2 * d:2] - v[2:2 + 2 * d:2]) / (2 * h)
    H = np.empty((d, d))
    for i in range(d):
        H[i, i] = (v[1 + 2 * i] - 2 * f0 + v[2 + 2 * i]) / h**2
    base = 1 + 2 * d
    for k, (i, j) in enumerate(pairs):
        pp, pm, mp, mm = v[base + 4 * k: base + 4 * k + 4]
        H[i, j] = H[j, i] = (pp - pm - mp + mm) / (4 * h * h)
    return f0, g, H


def _positive(H):
    """H with its eigenvalues made positive (absolute values, at least 1e-6): a usable curvature."""
    vals, vecs = np.linalg.eigh(np.nan_to_num(H, nan=0.0, posinf=0.0, neginf=0.0))
    if vals.min() > 0:
        return H, True
    vals = np.maximum(np.abs(vals), 1e-6)
    return (vecs * vals) @ vecs.T, False


def _mode_and_curvature(ev, pool, u0, say):
    """The mode of the log posterior and the Hessian of -log p there: damped Newton, central differences.

    Each Newton step is capped at 1 on the log scale and halved until -log p
    decreases; the search stops when a step moves less than 0.01 posterior sd
    (measured with the local curvature).
    """
    def values(points):
        return np.array([v for v, _ in pool.map(ev, points)])

    u = np.asarray(u0, dtype=float)
    f, g, H = _derivatives(values, u)
    if not np.isfinite(f):
        raise FitError("The log posterior of the variance parameters is not finite at the start; check the priors.")
    for _ in range(50):
        C, _ok = _positive(H)
        step = -np.linalg.solve(C, g)
        if float(np.sqrt(step @ C @ step)) < 0.01:  # the Newton step is under 0.01 posterior sd: at the mode
            break
        step *= min(1.0, 1.0 / max(np.max(np.abs(step)), 1e-300))
        t = 1.0
        while True:
            cand = u + t * step
            fc, gc, Hc = _derivatives(values, cand)
            if (np.isfinite(fc) and fc <= f) or t < 1e-3:
                break
            t *= 0.5
        if not (np.isfinite(fc) and fc <= f):
            break
        u, f, g, H = cand, fc, gc, Hc
    H, ok = _positive(H)
    if not ok:
        say("the curvature at the mode is not positive definite; using its absolute eigenvalues")
    return u, H, -f


def _t_proposals(rng, mode, scale, M):
    """M draws from a multivariate t (PROPOSAL_DOF) centred at ``mode``; and their log-densities."""
    from scipy.stats import multivariate_t

    dist = multivariate_t(loc=mode, shape=scale, df=PROPOSAL_DOF)
    us = np.atleast_2d(dist.rvs(size=M, random_state=rng)).reshape(M, mode.size)
    return us, np.atleast_1d(dist.logpdf(us))


def _probe(ev, pool, mode, scale, lp_mode) -> tuple[np.ndarray, np.ndarray]:
    """How much heavier than the t proposal each variance parameter's lower tail is, and its mass near zero.

    Parameters
    ----------
    ev : callable
        ``u -> (log posterior, None)``.
    mode, scale : arrays (d,), (d, d)
        The t proposal's centre and scale matrix (log scale).
    lp_mode : float
        The log posterior at ``mode``.

    Returns
    -------
    excess : array (d,)
        For parameter j, the largest over the probes u = mode + log(f) e_j (f in PROBE_FRACTIONS, the
        others at the mode) of ``[log p(u) - log p(mode)] - [log t(u) - log t(mode)]``.
    mass : array (d,)
        The posterior mass of parameter j below ``PROBE_FRACTIONS[0]`` times its mode, estimated from the
        first probe: a scale's posterior on the log scale falls as ``c exp(u)`` towards zero, so the mass
        below u is about its density there, ``p(u) / p(mode)`` times the Laplace marginal density at the
        mode, ``1 / sqrt(2 pi scale_jj)``.
    """
    d = mode.size
    steps = np.log(np.asarray(PROBE_FRACTIONS, dtype=float))
    points = [mode + step * np.eye(d)[j] for j in range(d) for step in steps]
    lp = (np.array([v for v, _ in pool.map(ev, points)], dtype=float) - lp_mode).reshape(d, steps.size)
    log_t = _t_relative(np.array(points), mode, scale).reshape(d, steps.size)
    with np.errstate(invalid="ignore"):
        excess = np.nan_to_num(lp - log_t, nan=-np.inf).max(axis=1)
    mass = np.exp(np.minimum(lp[:, 0], 0.0)) / np.sqrt(2.0 * math.pi * np.diag(scale))
    return excess, np.minimum(mass, 1.0)


def _t_relative(us, mode, scale) -> np.ndarray:
    """log t(u) - log t(mode) of the proposal's t at the rows of ``us`` (M, d): shape (M,)."""
    delta = np.atleast_2d(us) - mode
    quad = np.einsum("md,de,me->m", delta, np.linalg.inv(scale), delta)
    return -0.5 * (PROPOSAL_DOF + mode.size) * np.log1p(quad / PROPOSAL_DOF)


def _boundary_shares(excess, mass) -> np.ndarray:
    """The share of the proposals for each parameter's boundary component, from :func:`_probe` (d,), (d,).

    A parameter whose lower tail is more than PROBE_EXCESS times the t's, with an estimated mass near zero of
    at least PROBE_MASS, gets BOUNDARY_PER_MASS times that mass, within [BOUNDARY_MIN, BOUNDARY_SHARE]; the
    others none. The shares are scaled down together to at most BOUNDARY_TOTAL.
    """
    mass = np.asarray(mass, dtype=float)
    flagged = (np.asarray(excess, dtype=float) > math.log(PROBE_EXCESS)) & (mass >= PROBE_MASS)
    shares = np.where(flagged, np.clip(BOUNDARY_PER_MASS * mass, BOUNDARY_MIN, BOUNDARY_SHARE), 0.0)
    total = float(shares.sum())
    return shares * (BOUNDARY_TOTAL / total) if total > BOUNDARY_TOTAL else shares


def _mixture_draws(rng, mode, scale, shares, M):
    """M proposals from the defensive mixture of :func:`_mixture_logpdf`, by component counts.

    Parameters
    ----------
    rng : numpy.random.Generator
    mode, scale : arrays (d,), (d, d)
        The t component's centre and scale matrix (log scale).
    shares : array (d,)
        Wanted share of each parameter's boundary component (0: none).
    M : int

    Returns
    -------
    us : array (M, d)
        The proposals (log scale): the t's first, then each boundary component's.
    log_q : array (M,)
        The mixture's log-density at each, with the shares actually drawn (``floor(M * share) / M``):
        importance weights against the deterministic mixture, exact for any split.
    shares : array (d,)
        The shares drawn.
    """
    counts = np.floor(M * np.asarray(shares, dtype=float)).astype(int)
    if not counts.any():  # no boundary component: the t alone, the same draws as without the mixture
        us, log_q = _t_proposals(rng, mode, scale, M)
        return us, log_q, np.zeros(mode.size)
    from scipy.stats import multivariate_t

    d = mode.size
    parts = [_t_proposals(rng, mode, scale, M - int(counts.sum()))[0]]
    for j in np.flatnonzero(counts):
        u = np.empty((counts[j], d))
        sd = math.exp(mode[j]) * np.abs(rng.standard_normal(counts[j]))
        u[:, j] = np.log(np.maximum(sd, 1e-300))
        others = np.arange(d) != j
        if d > 1:
            marginal = multivariate_t(loc=mode[others], shape=scale[np.ix_(others, others)], df=PROPOSAL_DOF)
            u[:, others] = np.asarray(marginal.rvs(size=counts[j], random_state=rng)).reshape(counts[j], d - 1)
        parts.append(u)
    us = np.concatenate(parts)
    drawn = counts / M
    return us, _mixture_logpdf(us, mode, scale, drawn), drawn


def _mixture_logpdf(us, mode, scale, shares) -> np.ndarray:
    """Log-density (log scale of the parameters) of the defensive mixture proposal at the rows of ``us``.

    The mixture is ``(1 - sum(shares)) t(mode, scale) + sum_j shares[j] b_j``: the multivariate t
    (PROPOSAL_DOF degrees of freedom) at the Laplace mode, and for each parameter j with a share a
    boundary component ``b_j``: the parameter's own value ``exp(u_j)`` half-normal with scale
    ``exp(mode_j)``, the others from the t's marginal. On the log scale b_j's density is
    ``exp(u_j) halfnormal(exp(u_j))``, which falls towards u_j -> -inf as a variance parameter's posterior
    does (the posterior density of a scale is finite and positive at zero), so the weights stay bounded
    near the boundary.

    Parameters
    ----------
    us : array (M, d)
    mode, scale : arrays (d,), (d, d)
    shares : array (d,)
        Each boundary component's weight; ``sum(shares) < 1``.

    Returns
    -------
    array (M,)
    """
    from scipy.special import logsumexp
    from scipy.stats import multivariate_t

    us = np.atleast_2d(np.asarray(us, dtype=float))
    M, d = us.shape
    shares = np.asarray(shares, dtype=float)
    comps = [math.log1p(-float(shares.sum())) + np.atleast_1d(
        multivariate_t(loc=mode, shape=scale, df=PROPOSAL_DOF).logpdf(us)).reshape(M)]
    for j in np.flatnonzero(shares > 0):
        s = math.exp(mode[j])
        x = np.exp(us[:, j]) / s
        log_b = 0.5 * math.log(2.0 / math.pi) - math.log(s) - 0.5 * x * x + us[:, j]
        others = np.arange(d) != j
        if d > 1:
            marginal = multivariate_t(loc=mode[others], shape=scale[np.ix_(others, others)], df=PROPOSAL_DOF)
            log_b = log_b + np.atleast_1d(marginal.logpdf(us[:, others])).reshape(M)
        comps.append(math.log(shares[j]) + log_b)
    return logsumexp(np.stack(comps), axis=0)


def pareto_k_threshold(n: int) -> float:
    """The Pareto k above which ``n`` importance draws are unreliable: ``min(1 - 1 / log10(n), 0.7)``.

    (Vehtari, Simpson, Gelman, Yao and Gabry, *Pareto smoothed importance sampling*, JMLR 2024: the
    sample-size-dependent threshold; 0.67 for 1,000 draws.)
    """
    n = max(int(n), 11)
    return float(min(1.0 - 1.0 / math.log10(n), 0.7))


def importance_warnings(names, khat: float, M: int, zero, *, ess: float, probe_mass) -> list[str]:
    """What the fit must say about its importance weights: one message per problem (none when sound).

    Parameters
    ----------
    names : list of str (d,)
        The variance parameters.
    khat : float
        Pareto k of the weights of the ``M`` proposals; too high above :func:`pareto_k_threshold`.
    zero : list of d tuples
        :func:`near_zero`'s ``(below, mass, mc_error)``.
    ess : float
        The importance ESS.
    probe_mass : array (d,)
        The mass near zero that :func:`_probe` estimates.

    Returns
    -------
    list of str
        Pareto k above its threshold; for each parameter whose mass near zero (by the proposals or the
        probes) is at least NEAR_ZERO_MASS: proposals that cover it markedly worse than the bulk (a Monte
        Carlo error above NEAR_ZERO_ERROR times ``sqrt(mass (1 - mass) / ess)``), or that miss it (less than
        NEAR_ZERO_MISSED of the probes' estimate).
    """
    out = []
    threshold = pareto_k_threshold(M)
    if khat > threshold:
        out.append(f"The importance weights of the laplace engine are unreliable (Pareto k = {khat:.2f} > "
                   f"{threshold:.2f} for {M} proposals): the posterior of the variance parameters is far from the "
                   "Laplace proposal; fit with --engine jax (NUTS) to check.")
    for n, (below, mass, se), probed in zip(names, zero, np.asarray(probe_mass, dtype=float)):
        bulk = math.sqrt(mass * (1.0 - mass) / max(float(ess), 1.0))
        if mass >= NEAR_ZERO_MASS and se > NEAR_ZERO_ERROR * bulk:
            out.append(f"The posterior of {n} has mass near zero ({mass:.1%} below {below:.3g}, Monte Carlo error "
                       f"{se:.1%}) that the laplace engine's {M} proposals cover thinly; fit with --engine jax "
                       "(NUTS).")
        elif probed >= NEAR_ZERO_MASS and mass < NEAR_ZERO_MISSED * probed:
            out.append(f"The posterior of {n} has about {probed:.0%} of its mass near zero (below {below:.3g}) but "
                       f"the laplace engine's proposals found {mass:.1%} there; fit with --engine jax (NUTS).")
    return out


def near_zero(us, w, mode, *, fraction: float = NEAR_ZERO) -> list[tuple[float, float, float]]:
    """Each variance parameter's weighted posterior mass near zero and its Monte Carlo error.

    Parameters
    ----------
    us : array (M, d)
        The proposals on the log scale.
    w : array (M,)
        Their normalised (smoothed) importance weights, 0 where the density was not finite.
    mode : array (d,)
        The Laplace mode (log scale): "near zero" is below ``fraction * exp(mode_j)``.

    Returns
    -------
    list of d tuples ``(below, mass, mc_error)``
        The bound, the estimated posterior mass below it and the Monte Carlo standard error of that
        estimate (self-normalised importance sampling: ``sqrt(sum w^2 (1[below] - mass)^2)``).
    """
    us = np.atleast_2d(us)
    w = np.asarray(w, dtype=float)
    out = []
    for j in range(us.shape[1]):
        below = float(fraction * math.exp(mode[j]))
        hit = (us[:, j] < math.log(below)).astype(float)
        mass = float(np.sum(w * hit))
        out.append((below, mass, float(math.sqrt(np.sum(w * w * (hit - mass) ** 2)))))
    return out


def _systematic(rng, w, n):
    """n indices drawn by systematic resampling with weights ``w`` (fewer repeats than multinomial), shuffled."""
    edges = np.cumsum(w)
    idx = np.minimum(np.searchsorted(edges, (rng.random() + np.arange(n)) / n), w.size - 1)
    rng.shuffle(idx)
    return idx


def _psis(log_w):
    """Pareto-smoothed log weights (normalised) and k-hat."""
    from arviz_stats.base import array_stats

    # arviz-stats smooths log-likelihood ratios (LOO's convention): it takes the negated log weights
    smoothed, khat = array_stats.psislw(-np.asarray(log_w, dtype=float))
    return np.asarray(smoothed), float(khat)


def _raw_tree(plan, system, names, us, effects, lp, log_w, idx, chains, draws, info):
    """The resampled draws as the NUTS engines' raw DataTree (effects included; covariates' ``coef``
    with dims (chain, draw, term))."""
    import xarray as xr

    shape = (int(chains), int(draws))
    post = {}
    for k, n in enumerate(names):
        post[n] = (("chain", "draw"), np.exp(us[:, k]).reshape(shape))
    rows, cols, _ = plan.labels
    for name, _, start, stop in system.blocks:
        block = effects[:, start:stop]
        if name == "intercept":
            post["intercept"] = (("chain", "draw"), (plan.layout.m0 + block[:, 0]).reshape(shape))
        elif name == "coef":
            post["coef"] = (("chain", "draw", "term"), block.reshape(shape + (stop - start,)))
        else:
            dim = name.split("_")[0]
            post[name] = (("chain", "draw", dim), block.reshape(shape + (stop - start,)))
    coords = {}
    if "row_effect" in post:
        coords["row"] = list(rows)
    if "col_effect" in post:
        coords["col"] = list(cols)
    if "coef" in post:
        covariates = getattr(plan, "covariates", None)
        coords["term"] = (list(covariates.terms) if covariates is not None
                          else [f"x{k + 1}" for k in range(post["coef"][1].shape[-1])])
    posterior = xr.Dataset(post, coords=coords)
    stats = xr.Dataset({
        "lp": (("chain", "draw"), lp.reshape(shape)),
        "log_weight": (("chain", "draw"), log_w.reshape(shape)),
        "proposal": (("chain", "draw"), idx.reshape(shape).astype(np.int64)),
    })
    tree = xr.DataTree.from_dict({"posterior": posterior, "sample_stats": stats})
    tree.attrs["engine_info"] = info
    return tree
