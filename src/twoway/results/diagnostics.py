"""Convergence diagnostics of MCMC draws, in NumPy alone.

Rank-normalised split R-hat and bulk and tail effective sample sizes (Vehtari, Gelman,
Simpson, Carpenter and Bürkner 2021, "Rank-normalization, folding, and localization: an
improved R-hat for assessing convergence of MCMC", Bayesian Analysis 16(2)), computed the
way ArviZ (``arviz_stats`` 1.x) computes them, so the numbers agree with
``arviz_stats.rhat`` and ``arviz_stats.ess`` to rounding error; chains sitting in
different modes. Importing this module costs only NumPy (no SciPy, xarray or ArviZ).
The highest-density interval and the statistics tables built on these diagnostics are
in :mod:`twoway.results.stats`.

Every function takes draws of shape ``(chains, draws, *shape)`` and returns one value per
component (``shape``), vectorised over the components; a plain ``(chains, draws)`` array
gives a float.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import xarray

__all__ = ["rhat", "ess_bulk", "ess_tail", "ndtri", "component_labels",
           "chain_separation", "separated_chains", "TAIL_PROB", "MIN_DRAWS", "MODE_SDS"]

TAIL_PROB = (0.05, 0.95)
"""Quantiles whose indicator ESS is the tail ESS (the paper's 5% and 95%)."""
MIN_DRAWS = 4
"""Fewest draws per chain for which R-hat and ESS are computed (ArviZ's limit); fewer give nan."""

MODE_SDS = 3.0
"""Chain means further apart than this many within-chain sds mark chains in different modes."""

_BLOCK = 1 << 21  # components are processed in blocks of about this many draws (bounds FFT memory)
_RESOLUTION = float(np.finfo(float).resolution)

# ---------------------------------------------------------------------------------------------
# the standard normal quantile: Wichura's algorithm AS 241 (PPND16), relative error about 1e-16

_A = (3.3871328727963666080e0, 1.3314166789178437745e2, 1.9715909503065514427e3,
      1.3731693765509461125e4, 4.5921953931549871457e4, 6.7265770927008700853e4,
      3.3430575583588128105e4, 2.5090809287301226727e3)
_B = (1.0, 4.2313330701600911252e1, 6.8718700749205790830e2, 5.3941960214247511077e3,
      2.1213794301586595867e4, 3.9307895800092710610e4, 2.8729085735721942674e4,
      5.2264952788528545610e3)
_C = (1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0,
      3.64784832476320460504e0, 1.27045825245236838258e0, 2.41780725177450611770e-1,
      2.27238449892691845833e-2, 7.74545014278341407640e-4)
_D = (1.0, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
      1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4,
      1.05075007164441684324e-9)
_E = (6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0,
      2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
      2.71155556874348757815e-5, 2.01033439929228813265e-7)
_F = (1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
      7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7,
      2.04426310338993978564e-15)


def _poly(coef: Sequence[float], x: np.ndarray) -> np.ndarray:
    out = np.full_like(x, coef[-1])
    for c in coef[-2::-1]:
        out = out * x + c
    return out


def ndtri(p: Any) -> np.ndarray:
    """Quantile function of the standard normal distribution.

    Wichura's algorithm AS 241 (PPND16, Applied Statistics 37, 1988), accurate to about
    1e-16 relative; used instead of :func:`scipy.special.ndtri` so that no SciPy is imported.

    Parameters
    ----------
    p : array_like
        Probabilities; 0 and 1 give -inf and inf, values outside [0, 1] and nan give nan.

    Returns
    -------
    numpy.ndarray
        Array of ``p``'s shape.
    """
    p = np.asarray(p, dtype=float)
    q = p - 0.5
    out = np.empty_like(p)
    central = np.abs(q) <= 0.425
    if central.any():
        qc = q[central]
        r = 0.180625 - qc * qc
        out[central] = qc * _poly(_A, r) / _poly(_B, r)
    tail = ~central
    if tail.any():
        qt = q[tail]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.sqrt(-np.log(np.where(qt < 0, p[tail], 1.0 - p[tail])))
            z = np.where(r <= 5.0, _poly(_C, r - 1.6) / _poly(_D, r - 1.6),
                         _poly(_E, r - 5.0) / _poly(_F, r - 5.0))
        z[np.isinf(r)] = np.inf  # p is exactly 0 or 1
        out[tail] = np.where(qt < 0, -z, z)
    return out


# ---------------------------------------------------------------------------------------------
# array plumbing


def _as_3d(x: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """``x`` (chains, draws, *shape) as a C-contiguous float array (K, chains, draws), and ``shape``."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"The draws must have shape (chains, draws, ...); got shape {x.shape}.")
    shape = x.shape[2:]
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return np.ascontiguousarray(np.moveaxis(flat, 2, 0), dtype=float), shape


def _shaped(out: np.ndarray, shape: tuple[int, ...]) -> Any:
    return float(out[0]) if shape == () else out.reshape(shape)


def _blocks(x: np.ndarray) -> Iterable[slice]:
    """Slices of the first axis of ``x`` (K, chains, draws) with about ``_BLOCK`` draws each."""
    k = x.shape[0]
    step = max(1, _BLOCK // max(1, x.shape[1] * x.shape[2]))
    for start in range(0, k, step):
        yield slice(start, min(k, start + step))


def _usable(x: np.ndarray, min_chains: int) -> np.ndarray:
    """Components (K,) whose draws are usable: enough chains and draws, and no nan (ArviZ's check)."""
    k, chains, draws = x.shape
    if chains < min_chains or draws < MIN_DRAWS:
        return np.zeros(k, dtype=bool)
    return ~np.isnan(x).any(axis=(1, 2))


def _split(x: np.ndarray) -> np.ndarray:
    """Each chain cut in halves: (K, chains, draws) to (K, 2 chains, draws // 2); an odd middle draw is left out."""
    half = x.shape[2] // 2
    return np.concatenate((x[:, :, :half], x[:, :, x.shape[2] - half:]), axis=1)


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Rank normalisation of (K, M, n): normal scores of each component's pooled ranks.

    Ranks ``r`` run 1..S among the ``S = M n`` draws, ties taking their average rank (as
    ``scipy.stats.rankdata(method="average")``); the scores are ``Phi^-1((r - 3/8) / (S + 1/4))``
    (Blom's offset). Average ranks are multiples of 1/2, so the scores are looked up in a
    table of the ``2 S - 1`` possible values.
    """
    k, m, n = x.shape
    size = m * n
    flat = x.reshape(k, size)
    order = np.argsort(flat, axis=1)
    # twice the average rank, less 2: start + end of each draw's run of ties among the sorted draws
    twice = np.broadcast_to(2 * np.arange(size), (k, size))
    srt = np.take_along_axis(flat, order, axis=1)
    tied = srt[:, 1:] == srt[:, :-1]
    rows = tied.any(axis=1)
    if rows.any():
        twice = twice.copy()
        new = np.ones((int(rows.sum()), size), dtype=bool)
        new[:, 1:] = ~tied[rows]
        last = np.ones_like(new)
        last[:, :-1] = new[:, 1:]
        idx = np.arange(size)
        start = np.maximum.accumulate(np.where(new, idx, 0), axis=1)
        end = np.minimum.accumulate(np.where(last, idx, size - 1)[:, ::-1], axis=1)[:, ::-1]
        twice[rows] = start + end
    c = 3.0 / 8.0
    ranks = np.arange(2 * size - 1) / 2.0 + 1.0
    table = ndtri((ranks - c) / (size - 2 * c + 1))
    z = np.empty((k, size))
    np.put_along_axis(z, order, table[twice], axis=1)
    return z.reshape(k, m, n)


def _next_fast_len(target: int) -> int:
    """Smallest 2^a 3^b 5^c >= ``target`` (as :func:`scipy.fftpack.next_fast_len`)."""
    if target <= 6:
        return max(target, 1)
    best = 1 << (target - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            # the smallest power of two taking p35 to target or beyond
            quotient = -(-target // p35)
            p2 = 1 << (quotient - 1).bit_length()
            best = min(best, p2 * p35)
            p35 *= 3
        p5 *= 5
    return best


def _autocov(x: np.ndarray) -> np.ndarray:
    """Autocovariances (biased, divided by n) at every lag along the last axis of (K, M, n), by FFT."""
    n = x.shape[-1]
    m = _next_fast_len(2 * n)
    x = x - x.mean(axis=-1, keepdims=True)
    f = np.fft.rfft(x, n=m, axis=-1)
    f *= np.conjugate(f)
    return np.fft.irfft(f, n=m, axis=-1)[..., :n] / n


def _ess(x: np.ndarray) -> np.ndarray:
    """ESS of each component of (K, M chains, n draws): Geyer's initial monotone sequence.

    ArviZ's estimator term for term (``arviz_stats.base.diagnostics._DiagnosticsBase._ess``),
    vectorised over the components: the autocorrelations ``rho_t = 1 - (W - mean acov_t) / var+``
    are summed in pairs ``(rho_2j, rho_2j+1)`` while the pair sums stay positive, each pair
    sum capped by the one before (monotone), plus the even term of the pair that ends the
    sequence when it is positive; ``tau`` is floored at ``1 / log10(M n)``. Constant
    components get ``M n``.
    """
    k, m, n = x.shape
    size = m * n
    constant = (x.max(axis=(1, 2)) - x.min(axis=(1, 2))) < _RESOLUTION
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        acov = _autocov(x)
        mean_var = acov[:, :, 0].mean(axis=1) * n / (n - 1.0)
        var_plus = mean_var * (n - 1.0) / n
        if m > 1:
            var_plus = var_plus + x.mean(axis=2).var(axis=1, ddof=1)
        rho = 1.0 - (mean_var[:, None] - acov.mean(axis=1)) / var_plus[:, None]  # (K, n)
    rho[:, 0] = 1.0
    # pair j = (rho_2j, rho_2j+1); pair j >= 1 is looked at while 2j - 1 < n - 3 and all earlier sums > 0
    j_max = max(0, (n - 1) // 2 - 1)
    pairs = rho[:, 0:2 * j_max + 2:2] + rho[:, 1:2 * j_max + 2:2]  # (K, j_max + 1)
    failed = ~(pairs > 0)
    stop = np.where(failed.any(axis=1), failed.argmax(axis=1), j_max)
    stop = np.minimum(stop, j_max)  # pairs 0 .. stop-1 are summed; pair `stop` ends the sequence
    rows = np.arange(k)
    monotone = np.minimum.accumulate(pairs, axis=1)
    summed = np.where(np.arange(j_max + 1) < stop[:, None], monotone, 0.0).sum(axis=1)
    even = rho[rows, 2 * stop]
    tail = np.where((pairs[rows, stop] >= 0) | (even > 0), even, 0.0)
    tau = np.maximum(-1.0 + 2.0 * summed + tail, 1.0 / math.log10(size))
    out = size / tau
    out[np.isnan(rho[:, 1])] = np.nan
    out[constant] = size
    return out


def _rhat_split(x: np.ndarray) -> np.ndarray:
    """Gelman-Rubin R-hat of (K, M, n): sqrt((B/W + n - 1) / n), B = n var(chain means)."""
    n = x.shape[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = n * x.mean(axis=2).var(axis=1, ddof=1)
        within = x.var(axis=2, ddof=1).mean(axis=1)
        return np.sqrt((between / within + n - 1) / n)


def _rhat3(x: np.ndarray) -> np.ndarray:
    out = np.full(x.shape[0], np.nan)
    ok = _usable(x, min_chains=2)
    if ok.any():
        good = x[ok]
        vals = np.empty(good.shape[0])
        for b in _blocks(good):
            s = _split(good[b])
            bulk = _rhat_split(_z_scale(s))
            folded = np.abs(s - np.median(s, axis=(1, 2), keepdims=True))
            tails = _rhat_split(_z_scale(folded))
            vals[b] = np.where(tails > bulk, tails, bulk)  # Python's max(bulk, tails), nan as ArviZ has it
        out[ok] = vals
    return out


def _ess_bulk3(x: np.ndarray) -> np.ndarray:
    out = np.full(x.shape[0], np.nan)
    ok = _usable(x, min_chains=1)
    if ok.any():
        good = x[ok]
        vals = np.empty(good.shape[0])
        for b in _blocks(good):
            vals[b] = _ess(_z_scale(_split(good[b])))
        out[ok] = vals
    return out


def _ess_tail3(x: np.ndarray, prob: float | tuple[float, float]) -> np.ndarray:
    if isinstance(prob, Sequence):
        lo_p, hi_p = prob
    else:
        lo_p, hi_p = sorted((prob, 1 - prob))
    out = np.full(x.shape[0], np.nan)
    ok = _usable(x, min_chains=1)
    if ok.any():
        good = x[ok]
        vals = np.empty(good.shape[0])
        for b in _blocks(good):
            g = good[b]
            q = np.quantile(g, [lo_p, hi_p], axis=(1, 2))[:, :, None, None]
            lo = _ess(_split((g <= q[0]).astype(float)))
            hi = _ess(_split((g <= q[1]).astype(float)))
            vals[b] = np.where(hi < lo, hi, lo)  # Python's min(lo, hi)
        out[ok] = vals
    return out


# ---------------------------------------------------------------------------------------------
# public diagnostics


def rhat(x: Any) -> Any:
    """Rank-normalised split R-hat (Vehtari et al. 2021).

    The larger of the split R-hat of the rank-normalised draws (bulk) and of the
    rank-normalised draws folded about their median (tails), as ``arviz_stats.rhat``
    (``method="rank"``).

    Parameters
    ----------
    x : array_like, shape (chains, draws, *shape)

    Returns
    -------
    float or numpy.ndarray of shape ``shape``
        nan for a component with any nan draw, and everywhere with fewer than 2 chains or
        4 draws a chain; nan also for a constant component (its spread is zero).
    """
    x, shape = _as_3d(x)
    return _shaped(_rhat3(x), shape)


def ess_bulk(x: Any) -> Any:
    """Bulk effective sample size: the ESS of the rank-normalised split chains (Vehtari et al. 2021).

    As ``arviz_stats.ess(method="bulk")``.

    Parameters
    ----------
    x : array_like, shape (chains, draws, *shape)

    Returns
    -------
    float or numpy.ndarray of shape ``shape``
        nan for a component with any nan draw, and everywhere with fewer than 4 draws a
        chain; a constant component gets the number of draws used (``chains * 2 * (draws // 2)``).
    """
    x, shape = _as_3d(x)
    return _shaped(_ess_bulk3(x), shape)


def ess_tail(x: Any, prob: float | tuple[float, float] = TAIL_PROB) -> Any:
    """Tail effective sample size (Vehtari et al. 2021).

    The smaller of the split-chain ESS of the indicators ``x <= q_lo`` and ``x <= q_hi``,
    where ``q`` are the pooled draws' quantiles (NumPy's linear method) at ``prob``, as
    ``arviz_stats.ess(method="tail", prob=prob)``.

    Parameters
    ----------
    x : array_like, shape (chains, draws, *shape)
    prob : float or (float, float), default (0.05, 0.95)
        The two quantile levels; a single ``p`` means ``(min(p, 1 - p), max(p, 1 - p))``.

    Returns
    -------
    float or numpy.ndarray of shape ``shape``
        nan as for :func:`ess_bulk`.
    """
    x, shape = _as_3d(x)
    return _shaped(_ess_tail3(x, prob), shape)


# ---------------------------------------------------------------------------------------------
# labels of a variable's components


def component_labels(name: str, da: xarray.DataArray, sample_dims: Sequence[str] = ("chain", "draw")) -> list[str]:
    """ArviZ's flat labels of a variable's components, in C order of its other dimensions.

    ``name`` for a scalar, ``name[a]`` for one dimension, ``name[a, b]`` for two, with
    each dimension's coordinate values (positions when it has none), as
    ``arviz_base.labels.BaseLabeller.make_label_flat``.

    Parameters
    ----------
    name : str
    da : xarray.DataArray
        The variable, with dimensions ``sample_dims`` and any others.
    sample_dims : sequence of str

    Returns
    -------
    list of str
        One label per component.
    """
    dims = [d for d in da.dims if d not in sample_dims]
    if not dims:
        return [name]
    values = [da[d].values for d in dims]
    return [f"{name}[{', '.join(f'{v}' for v in combo)}]" for combo in itertools.product(*values)]


# ---------------------------------------------------------------------------------------------
# chains in different modes


def chain_separation(x: Any) -> tuple[Any, Any]:
    """How far apart the chains' means are, in within-chain sds, and whether they differ in sign.

    For each component: the largest distance between two chains' means divided by
    the root mean square of the chains' sds, and whether one chain's mean is
    above zero while another's is below it, each by more than its own sd. Chains
    that sample one posterior have means within a few Monte Carlo errors of each
    other (a small fraction of an sd); chains sitting in different modes (for
    example opposite-sign modes of factor loadings) are several sds apart.

    Parameters
    ----------
    x : array_like, shape (chains, draws, *shape)

    Returns
    -------
    separation : float or numpy.ndarray, shape ``shape``
        nan for one chain or fewer than two draws; inf for chains that are each
        constant at different values.
    opposite : bool or numpy.ndarray, shape ``shape``
    """
    x, shape = _as_3d(x)                                      # (components, chains, draws)
    k, c, n = x.shape
    if c < 2 or n < 2:
        sep, opposite = np.full(k, np.nan), np.zeros(k, bool)
    else:
        means = x.mean(axis=2)                                # (components, chains)
        sds = x.std(axis=2, ddof=1)
        spread = means.max(axis=1) - means.min(axis=1)
        within = np.sqrt(np.mean(sds * sds, axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            sep = np.where(spread == 0, 0.0, spread / within)
        opposite = np.any(means > sds, axis=1) & np.any(means < -sds, axis=1)
    if shape == ():
        return float(sep[0]), bool(opposite[0])
    return sep.reshape(shape), opposite.reshape(shape)


def separated_chains(posterior: xarray.Dataset, names: Sequence[str] | None = None,
                     sds: float = MODE_SDS) -> list[tuple[str, float, bool]]:
    """The components whose chains sit in different modes: chain means more than ``sds`` within-chain sds apart.

    Parameters
    ----------
    posterior : xarray.Dataset
        Variables with dimensions ``chain``, ``draw`` and any others.
    names : sequence of str, optional
        Variables to check (default: all whose names do not start with ``_``).
    sds : float
        The separation that counts (default :data:`MODE_SDS`).

    Returns
    -------
    list of (label, separation, opposite)
        ``label`` as :func:`component_labels`; ``opposite`` when the chain means
        are on opposite sides of zero. Largest separation first.
    """
    names = [n for n in posterior.data_vars if not str(n).startswith("_")] if names is None else list(names)
    out = []
    for name in names:
        da = posterior[name].transpose("chain", "draw", ...)
        sep, opp = chain_separation(da.values)
        sep, opp = np.ravel(sep), np.ravel(opp)
        hits = np.flatnonzero(sep > sds)
        if hits.size:
            labels = component_labels(str(name), da)
            out += [(labels[i], float(sep[i]), bool(opp[i])) for i in hits]
    return sorted(out, key=lambda t: -t[1])
