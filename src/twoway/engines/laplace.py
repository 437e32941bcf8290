"""The ``laplace`` engine: the few variance parameters by nested Laplace + importance sampling.

For the ``sparse`` path (crossed random effects on a large sparse table) the
effects are integrated out exactly through a sparse Cholesky factor, which
leaves a handful of variance parameters theta (``row_effect_sd``,
``col_effect_sd``, ``sigma``). This engine

1. finds the mode of the exact log marginal posterior of theta on the log
   scale (priors in force from the plan and the log-Jacobian included),
   with central-difference gradients;
2. takes its curvature there (a central-difference Hessian);
3. draws proposals from a multivariate t (7 degrees of freedom) centred at the
   mode with the inverse curvature as scale, and weights each by the EXACT
   log posterior minus the proposal's log-density; each proposal's effects
   are drawn with its own factor (exact draws from ``z | y, theta``);
4. smooths the weights (Pareto-smoothed importance sampling: the k-hat
   diagnostic) and resamples (theta, effects) pairs into ``chains x draws``
   (systematic resampling, shuffled).

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

__all__ = ["LaplaceEngine", "log_prior", "DEFAULT_PROPOSALS", "PROPOSAL_DOF"]

#: Importance proposals drawn at most (each one factorisation); the posterior has chains x draws resampled draws.
DEFAULT_PROPOSALS = 1000
PROPOSAL_DOF = 7.0
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
            us, log_q = _t_proposals(rng, mode, scale, M)
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
        if khat > 0.7:
            warnings.warn(f"The importance weights of the laplace engine are unreliable (Pareto k = {khat:.2f} > 0.7); "
                          "the posterior of the variance parameters is far from the Laplace proposal.",
                          TwowayWarning, stacklevel=3)
        info = {"method": "laplace-importance", "likelihood_path": plan.path, "processes": processes, "importance_ess": ess, "importance_ess_raw": ess_raw,
                "pareto_k": float(khat), "factorisations": int(ev.count), "proposals": M,
                "laplace_mode": {n: float(math.exp(v)) for n, v in zip(names, mode)},
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
