"""Simulation-based calibration (SBC): does the fit recover the prior it was given?

If parameters are drawn from the prior, a table is drawn from the model given
those parameters, and the model is fitted to that table, then the true value
is a draw from the posterior, so its rank among independent posterior draws is
uniformly distributed. Ranks that are not uniform reveal a wrong model, a wrong
likelihood or a sampler that does not explore the posterior (Talts, Betancourt,
Simpson, Vehtari and Gelman, 2018, "Validating Bayesian inference algorithms
with simulation-based calibration").

How twoway runs it (:func:`sbc`):

* **Fixed priors.** twoway's default priors are scaled to the data, which would
  make the prior depend on the simulated table. SBC therefore first fixes every
  prior at the value the defaults take for location 0 and spread 1 (the spec's
  own overrides kept), then simulates from that spec and fits that same spec.
* **Covariates.** A model with covariates (``ModelSpec.covariates``) is
  calibrated conditionally on their values: one set of values (given, or drawn
  once from the run's seed by :func:`twoway.simulate.draw_covariates`) serves
  every replication and is part of the configuration; each replication draws
  ``coef`` from its fixed prior (sigma 2.5 per one sd of each term) and the
  ranks cover every term (``coef[x]``, ``coef[C(g)[T.b]]``).
* **One compile.** Each process compiles the model once for the layout of the
  first table it gets and re-runs it on every other table (nutpie's ``with_data``).
* **Thinning.** The chains are concatenated (chain after chain) and every k-th
  draw is kept, k = S // L for S draws in all and L = ``min(n_thin, S)``
  (default 100), so that the L kept draws are roughly independent. (They are
  when the bulk ESS is near L or above; each replication records its
  ``min_ess_bulk``. Autocorrelated draws pile ranks up at both ends.) The rank
  of a true value is the number of kept draws below it, from 0 to L.
* **Uniformity tests.** Per scalar parameter that has a true value (vectors
  expanded per level, as ``row_sd[row1]``; the derived ``row_mean`` and
  ``col_mean`` left out, as they repeat the effects), two exact tests of the
  S ranks' normal scores g (:func:`rank_tests`): their sum (a posterior
  biased up or down: a *shift*) and the sum of their squares (a posterior
  too wide crowds the ranks in the middle, one too narrow or draws too
  autocorrelated pile them at both ends: the *width*), each against its
  exact distribution under uniform ranks. The parameter's p-value is twice
  the smaller of the two. A 10-bin chi-square of the rank histogram
  (:func:`uniformity_pvalues`, kept for reading a histogram) spends its
  degrees of freedom on every shape at once: with 40 replications and a
  per-parameter level of 1.7e-5 it caught a posterior off by 0.5 sd about
  3% of the time, the shift test 9%; the shift test reaches 80% with 55
  replications at a level of 0.005 and 123 at 2e-6.
* **Pass/fail.** :meth:`SBCResult.passes` rejects when any p-value is below
  ``alpha / P`` (Bonferroni over the P parameters), so a correct setup fails
  with probability at most ``alpha``; the tests are exact, so this holds
  with no large-sample approximation.
* **Power, stated.** :meth:`SBCResult.power` is the exact probability
  (:func:`rank_test_power`: the ranks of the truth among draws of a normal
  posterior off by 0.5 of its sd, convolved S times) that a parameter whose
  posterior is off by 0.5 sd fails at that level; :meth:`SBCResult.format`
  prints it with the replications that give 80% (:func:`sims_for_power`).
* **A wrong prior on purpose.** ``fit_priors`` fits a model whose priors
  differ from the simulating ones, to see that the ranks reveal it.
* **Resumable.** With an ``out`` folder, each finished replication is written
  at once to ``out/sim_00012.json`` (through a temporary name and an atomic
  rename, so a killed run never leaves half a file) and the configuration to
  ``out/config.json``. Called again with the same folder and configuration, it
  reads the finished replications and runs only the missing ones; a different
  configuration is refused. The number of replications is not part of the
  configuration: replication i depends only on the seed and on i, so a run can
  be extended by asking for more. Each replication file carries a digest of
  the configuration and is checked against the folder's.
* **Many workers, one folder.** The replications run through
  :func:`twoway.runs.batch.run_jobs`: here, or on Dask workers (``workers``,
  ``scheduler``), each process compiling the model once. The folder is locked
  for the whole run, so a second run on it (same settings or not) fails at
  once instead of mixing its replications in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from twoway._version import __version__
from twoway.engines.choose import DEFAULT_ENGINE, engine_name
from twoway.errors import FitError
from twoway.fit import check_sampling_options, compile_model
from twoway.plan import residual_parts
from twoway.runs.batch import BatchProgress, check_record, config_digest, fit_diagnostics, prepare_folder, run_jobs
from twoway.runs.common import check_count, json_normal, read_json_object
from twoway.simulate import draw_covariates, simulate
from twoway.spec.model import load_model
from twoway.spec.priors import resolve_priors
from twoway.table.io.outputs import folder_lock, remove_stale_temporaries, write_json_atomic

# Deferred imports: scipy (heavy to import) are imported inside the functions that use them, so importing
# this module stays light.

__all__ = ["SBCResult", "sbc", "sbc_spec", "rank_statistics", "rank_tests", "rank_test_power",
           "sims_for_power", "shifted_rank_distribution", "sum_distribution", "rank_scores", "uniformity_pvalues",
           "default_bins", "load_sbc", "POWER_SHIFT"]

#: Kept posterior draws per replication (the ranks run from 0 to this number).
N_THIN = 100
CONFIG_NAME = "config.json"
#: Posterior variables computed from others, left out of the ranks (they would repeat them).
DERIVED = ("row_mean", "col_mean")
SIM_PATTERN = "sim_{:05d}.json"
#: The departure whose power is stated: a posterior off by this many of its sds in one parameter.
POWER_SHIFT = 0.5


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------


def rank_statistics(draws: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Rank of each true value among the posterior draws.

    Parameters
    ----------
    draws : array (S, L, P)
        L kept posterior draws of P scalar parameters, for each of S replications.
    truth : array (S, P)
        The true values.

    Returns
    -------
    array of int (S, P)
        The number of draws below the true value, from 0 to L.
    """
    draws = np.asarray(draws, dtype=float)
    truth = np.asarray(truth, dtype=float)
    if draws.ndim != 3 or truth.shape != (draws.shape[0], draws.shape[2]):
        raise FitError(f"The draws must be (S, L, P) and the truth (S, P); got {draws.shape} and {truth.shape}.")
    return (draws < truth[:, None, :]).sum(axis=1).astype(int)


def default_bins(n_sims: int) -> int:
    """Bins for the histogram's chi-square test: 10, fewer when needed for 5 expected per bin (at least 2)."""
    return int(min(10, max(2, n_sims // 5)))


def uniformity_pvalues(ranks: pd.DataFrame, n_draws: int, n_bins: int | None = None) -> pd.Series:
    """Chi-square test that each column of ranks is uniform on 0..n_draws (the rank histogram's test).

    Not the test :class:`SBCResult` decides with (:func:`rank_tests` is: it
    catches a shift or a wrong width with far fewer simulations); kept for
    reading a rank histogram. The L + 1 possible rank values are split into
    ``n_bins`` groups of consecutive values, as equal as they can be, and the
    observed counts are compared with the counts expected under the discrete
    uniform distribution (``n_bins - 1`` degrees of freedom).

    Parameters
    ----------
    ranks : DataFrame (S, P)
        Ranks, one column per parameter.
    n_draws : int
        L, the number of kept draws (the largest possible rank).
    n_bins : int, optional
        Number of bins (default: :func:`default_bins` of S).

    Returns
    -------
    pandas.Series
        One p-value per parameter.
    """
    from scipy import stats

    n_sims = len(ranks)
    if n_sims < 2:
        raise FitError(f"The uniformity test needs at least 2 replications; got {n_sims}.")
    n_values = int(n_draws) + 1
    bins = default_bins(n_sims) if n_bins is None else int(n_bins)
    bins = min(bins, n_values)
    if bins < 2:
        raise FitError(f"The uniformity test needs at least 2 bins; got {bins}.")
    # bin b holds the rank values r with r * bins // n_values == b
    values = np.arange(n_values)
    width = np.bincount(values * bins // n_values, minlength=bins)
    expected = n_sims * width / n_values
    out = {}
    for name in ranks.columns:
        r = _checked_ranks(ranks[name], n_draws, name)
        counts = np.bincount(r * bins // n_values, minlength=bins)
        out[name] = float(stats.chisquare(counts, expected).pvalue)
    return pd.Series(out, name="p_value", dtype=float)


def _checked_ranks(column, n_draws: int, name: str) -> np.ndarray:
    r = np.asarray(column, dtype=int)
    if r.size and (r.min() < 0 or r.max() > n_draws):
        raise FitError(f"The ranks of {name!r} must lie between 0 and {n_draws}; got {r.min()} to {r.max()}.")
    return r


#: Normal scores are rounded to this many steps per unit, so that their sums live on an integer lattice
#: and have an exact distribution (the rounding changes a score by at most 0.005).
SCORE_STEPS = 100


def rank_scores(n_draws: int) -> tuple[np.ndarray, np.ndarray]:
    """The two tests' integer scores of each rank r = 0..L.

    ``g(r) = Phi^-1((r + 1/2) / (L + 1))`` is the rank's normal score (the
    truth's place in the posterior, in posterior sds, when the posterior is
    normal). The shift score is ``round(100 g) - round(100 g(0))`` (0 upward),
    the width score ``round(100 g^2)``.

    Returns
    -------
    shift, width : arrays of int (L + 1,)
    """
    from scipy import stats

    g = stats.norm.ppf((np.arange(int(n_draws) + 1) + 0.5) / (int(n_draws) + 1))
    shift = np.rint(SCORE_STEPS * g).astype(np.int64)
    return shift - shift.min(), np.rint(SCORE_STEPS * g * g).astype(np.int64)


def sum_distribution(pmf: np.ndarray, n: int) -> np.ndarray:
    """Distribution of the sum of ``n`` independent copies of an integer variable on 0..m.

    Parameters
    ----------
    pmf : array (m + 1,)
        Probabilities of the values 0..m.
    n : int
        Number of copies.

    Returns
    -------
    array (n * m + 1,)
        Probabilities of the sums 0..n*m (one FFT raised to the power n; exact up to rounding,
        about 1e-15 absolute, so tail probabilities are exact well below the levels tested).
    """
    from scipy import fft

    pmf = np.asarray(pmf, dtype=float)
    size = int(n) * (pmf.size - 1) + 1
    length = fft.next_fast_len(size, real=True)
    out = fft.irfft(fft.rfft(pmf, length) ** int(n), length)[:size]
    return np.clip(out, 0.0, None)


def _two_sided(pmf: np.ndarray) -> np.ndarray:
    """Two-sided p-value of each value of a discrete statistic: min(1, 2 min(P(T <= t), P(T >= t)))."""
    below = np.cumsum(pmf)
    above = np.cumsum(pmf[::-1])[::-1]
    return np.minimum(1.0, 2.0 * np.minimum(below, above))


def _score_pmf(scores: np.ndarray, rank_pmf: np.ndarray) -> np.ndarray:
    """Distribution of one replication's score when its rank has the distribution ``rank_pmf``."""
    return np.bincount(scores, weights=rank_pmf, minlength=int(scores.max()) + 1)


def _null_pvalues(n_sims: int, n_draws: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided p-value of every possible sum of the shift scores and of the width scores, ranks uniform."""
    uniform = np.full(int(n_draws) + 1, 1.0 / (int(n_draws) + 1))
    return tuple(_two_sided(sum_distribution(_score_pmf(sc, uniform), n_sims)) for sc in rank_scores(n_draws))


def rank_tests(ranks: pd.DataFrame, n_draws: int) -> pd.DataFrame:
    """Exact tests that each column of ranks is uniform on 0..n_draws: one for a shift, one for a wrong width.

    With ``g`` the normal score of a rank (:func:`rank_scores`; where the
    truth lies in the posterior, in posterior sds, for a normal posterior):

    * **shift** (a posterior biased up or down: ranks pile to one side): the
      sum of ``g`` over the S replications (the normal-scores test, the most
      powerful rank test against a shifted normal);
    * **width** (a posterior too wide crowds the ranks in the middle; one too
      narrow, or draws too autocorrelated, piles them at both ends): the sum
      of ``g^2``.

    Each sum (of the scores rounded to 1/100) is tested two-sided against its
    exact distribution under uniform ranks (the S-fold convolution of one
    rank's; :func:`sum_distribution`), so there is no large-sample
    approximation. A parameter's p-value is ``min(1, 2 min(p_shift,
    p_width))`` (Bonferroni over its two tests), valid whatever the
    dependence of the two. Against the departure it targets each test is far
    more powerful than a rank histogram's chi-square (:func:`uniformity_pvalues`).

    Parameters
    ----------
    ranks : DataFrame (S, P)
        Ranks, one column per parameter; S >= 2.
    n_draws : int
        L, the number of kept draws (the largest possible rank).

    Returns
    -------
    pandas.DataFrame (P, 5)
        Index ``parameter``; columns ``mean_rank`` (mean of r / L, 0.5
        expected: above, the truth tends to lie above the draws), ``spread``
        (mean of ``g^2`` over its expected value, 1 expected: below, the
        posterior is too wide; above, too narrow), ``p_shift``, ``p_width``
        and ``p_value``.
    """
    n_sims = len(ranks)
    if n_sims < 2:
        raise FitError(f"The rank tests need at least 2 replications; got {n_sims}.")
    n_draws = int(n_draws)
    if n_draws < 1:
        raise FitError(f"The rank tests need at least 1 kept draw; got {n_draws}.")
    p_shift_of, p_width_of = _null_pvalues(n_sims, n_draws)
    shift_scores, width_scores = rank_scores(n_draws)
    expected_width = width_scores.mean()
    rows = []
    for name in ranks.columns:
        r = _checked_ranks(ranks[name], n_draws, name)
        width = int(width_scores[r].sum())
        p_shift, p_width = float(p_shift_of[int(shift_scores[r].sum())]), float(p_width_of[width])
        rows.append({"parameter": name, "mean_rank": float(r.mean()) / n_draws,
                     "spread": width / (n_sims * expected_width), "p_shift": p_shift, "p_width": p_width,
                     "p_value": min(1.0, 2.0 * min(p_shift, p_width))})
    columns = ["mean_rank", "spread", "p_shift", "p_width", "p_value"]
    return pd.DataFrame(rows, columns=["parameter"] + columns).set_index("parameter")


def shifted_rank_distribution(n_draws: int, *, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Distribution of a true value's rank among L draws from a shifted or rescaled posterior.

    The truth is a draw from a normal posterior (mean 0, sd 1 after
    standardising); the L draws come from a normal of mean ``shift`` and sd
    ``scale`` instead (``shift`` 0.5: a posterior off by half its sd; ``scale``
    2: twice too wide). The rank is binomial (L, Phi((theta - shift) / scale))
    given the truth theta, integrated over theta on a fine grid (spacing at
    most 0.1 / sqrt(L) posterior sds, so exact to rounding; ``shift`` 0 and
    ``scale`` 1 give the uniform distribution).

    Returns
    -------
    array (L + 1,)
        Probabilities of the ranks 0..L.
    """
    from scipy import stats

    n_draws = int(n_draws)
    if not (math.isfinite(shift) and math.isfinite(scale) and scale > 0):
        raise FitError(f"The shift must be finite and the scale positive; got {shift!r} and {scale!r}.")
    step = min(0.01, 0.1 / math.sqrt(n_draws), 0.1 * scale)
    theta = np.arange(-12.0, 12.0 + step / 2, step)
    weight = stats.norm.pdf(theta) * step
    p = stats.norm.cdf((theta - shift) / scale)
    pmf = stats.binom.pmf(np.arange(n_draws + 1)[:, None], n_draws, p[None, :]) @ weight
    return pmf / pmf.sum()


def rank_test_power(n_sims: int, n_draws: int, level: float, *, shift: float = POWER_SHIFT, scale: float = 1.0,
                    test: str = "shift") -> float:
    """Probability that one of :func:`rank_tests`' tests rejects a miscalibrated parameter.

    Exact (no simulation): the ranks' distribution under the alternative
    (:func:`shifted_rank_distribution`) is convolved S times, and its mass
    on the test's rejection region at two-sided ``level`` is summed.

    Parameters
    ----------
    n_sims : int
        S, the replications.
    n_draws : int
        L, the kept draws.
    level : float
        The level of the one test (a parameter's p-value is twice the smaller
        of its two tests', so a parameter compared with ``t`` tests each at ``t / 2``).
    shift, scale : float
        The alternative: draws from a posterior off by ``shift`` of its sds and ``scale`` times as wide.
    test : {"shift", "width"}
        The test whose power is computed.

    Returns
    -------
    float
        The power (a lower bound on the probability that the parameter fails,
        which either test may cause).
    """
    alt = _alternative(n_draws, level, shift, scale, test)
    return _power(int(n_sims), int(n_draws), level, alt, test)


def _alternative(n_draws: int, level: float, shift: float, scale: float, test: str) -> np.ndarray:
    """The tested score's per-replication distribution under the alternative."""
    if test not in ("shift", "width"):
        raise FitError(f"The rank test must be 'shift' or 'width'; got {test!r}.")
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise FitError(f"The level must be between 0 and 1; got {level!r}.")
    scores = rank_scores(n_draws)[0 if test == "shift" else 1]
    return _score_pmf(scores, shifted_rank_distribution(int(n_draws), shift=shift, scale=scale))


def _power(n_sims: int, n_draws: int, level: float, alt: np.ndarray, test: str) -> float:
    p_null = _null_pvalues(n_sims, n_draws)[0 if test == "shift" else 1]
    return float(min(1.0, sum_distribution(alt, n_sims)[p_null <= level].sum()))


def sims_for_power(n_draws: int, level: float, *, power: float = 0.8, shift: float = POWER_SHIFT,
                   scale: float = 1.0, test: str = "shift", most: int = 100_000) -> int:
    """The fewest replications S whose :func:`rank_test_power` reaches ``power`` (and stays there after).

    Raises
    ------
    FitError
        When even ``most`` replications do not reach it.
    """
    if not 0 < power < 1:
        raise FitError(f"The power must be between 0 and 1; got {power!r}.")
    alt = _alternative(n_draws, level, shift, scale, test)

    def reaches(n: int) -> bool:
        return _power(n, int(n_draws), level, alt, test) >= power

    high = 2
    while not reaches(high):
        if high >= most:
            raise FitError(f"Even {most} replications do not reach power {power:g}; test a larger departure.")
        high = min(most, 2 * high)
    low = high // 2  # below 'high'; the lattice makes power slightly non-monotone: check the neighbours
    while high - low > 1:
        mid = (low + high) // 2
        if reaches(mid):
            high = mid
        else:
            low = mid
    while not all(reaches(high + k) for k in (1, 2, 3)):
        high += 1
    return high


# ---------------------------------------------------------------------------
# the result
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SBCResult:
    """Ranks of the true values and their uniformity tests.

    Attributes
    ----------
    ranks : pandas.DataFrame (S, P)
        Index ``sim`` (the replication number), one column per scalar
        parameter (``intercept``, ``row_sd[row1]``, ...); values 0..``n_draws``.
    truth : pandas.DataFrame (S, P)
        The true values, laid out as ``ranks``.
    draws : numpy.ndarray (S, L, P)
        The kept (thinned) posterior draws.
    n_draws : int
        L, the number of kept draws per replication.
    diagnostics : pandas.DataFrame (S, 4)
        Per replication: ``divergences``, ``max_r_hat`` and ``min_ess_bulk``
        (of the ranked parameters), ``seconds``.
    config : dict
        What determines a replication (model with its fixed priors, table
        shape, sampler settings, seed, thinning).
    reused : tuple of int
        Replications read back from ``out`` instead of being run again.
    n_bins : int, optional
        Bins of the rank histogram's chi-square (:meth:`histogram_pvalues`; not the verdict's test).
    """

    ranks: pd.DataFrame
    truth: pd.DataFrame
    draws: np.ndarray
    n_draws: int
    diagnostics: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    reused: tuple[int, ...] = ()
    n_bins: int | None = None

    @property
    def n_sims(self) -> int:
        return int(len(self.ranks))

    @property
    def parameters(self) -> list[str]:
        return list(self.ranks.columns)

    @property
    def bins(self) -> int:
        """The number of bins of the rank histogram's chi-square."""
        return min(default_bins(self.n_sims) if self.n_bins is None else int(self.n_bins), self.n_draws + 1)

    @property
    def tests(self) -> pd.DataFrame:
        """Per parameter: the exact shift and width tests of :func:`rank_tests` (P rows)."""
        return rank_tests(self.ranks, self.n_draws)

    @property
    def pvalues(self) -> pd.Series:
        """One p-value per parameter: twice the smaller of its shift and width tests' (:func:`rank_tests`)."""
        return self.tests["p_value"]

    def histogram_pvalues(self) -> pd.Series:
        """The rank histogram's chi-square p-values (:func:`uniformity_pvalues`; weaker, not the verdict's)."""
        return uniformity_pvalues(self.ranks, self.n_draws, self.bins)

    def threshold(self, alpha: float = 0.01) -> float:
        """The per-parameter level, ``alpha / P`` (Bonferroni)."""
        _check_alpha(alpha)
        return alpha / max(1, len(self.parameters))

    def failing(self, alpha: float = 0.01) -> list[str]:
        """Parameters whose ranks are not uniform at family-wise level ``alpha``."""
        p = self.pvalues
        return p.index[p < self.threshold(alpha)].tolist()

    def passes(self, alpha: float = 0.01) -> bool:
        """True when no parameter's ranks reject uniformity at family-wise level ``alpha``.

        Each parameter's p-value is compared with ``alpha / P`` (Bonferroni over
        the P parameters; Holm's step-down rule gives the same verdict), so a
        correctly calibrated setup fails with probability at most ``alpha``
        (the false-alarm rate), whatever the dependence between parameters:
        the tests are exact for independent draws (thinned draws that are
        still autocorrelated make ranks pile at both ends, which the width test sees).
        """
        return not self.failing(alpha)

    def power(self, alpha: float = 0.01, *, shift: float = POWER_SHIFT, scale: float = 1.0,
              families: int = 1) -> float:
        """Probability that a parameter whose posterior is off by ``shift`` posterior sds fails.

        Exact for these S and L (:func:`rank_test_power`): the shift test alone
        at its level ``alpha / (2 P families)``, so a lower bound (the width
        test may reject too). ``families`` > 1 when this run is one of several
        judged together with Bonferroni (a calibration table of many cases).
        With ``shift`` 0 and ``scale`` 2 (or 0.5): the width test's power
        against a posterior twice too wide (narrow).
        """
        _check_alpha(alpha)
        level = self.threshold(alpha) / (2 * max(1, int(families)))
        test = "shift" if shift != 0 else "width"
        return rank_test_power(self.n_sims, self.n_draws, level, shift=shift, scale=scale, test=test)

    def table(self, alpha: float = 0.01) -> pd.DataFrame:
        """Per parameter: the tests of :func:`rank_tests` and whether the parameter rejects."""
        tab = self.tests.copy()
        tab["reject"] = tab["p_value"] < self.threshold(alpha)
        return tab

    def with_truth(self, truth: "pd.DataFrame | np.ndarray") -> "SBCResult":
        """The same draws ranked against other true values (for example a deliberately wrong truth)."""
        values = np.asarray(truth, dtype=float)
        ranks = rank_statistics(self.draws, values)
        return SBCResult(ranks=pd.DataFrame(ranks, index=self.ranks.index, columns=self.ranks.columns),
                         truth=pd.DataFrame(values, index=self.truth.index, columns=self.truth.columns),
                         draws=self.draws, n_draws=self.n_draws, diagnostics=self.diagnostics,
                         config=self.config, reused=self.reused, n_bins=self.n_bins)

    def to_dict(self, alpha: float = 0.01) -> dict[str, Any]:
        tab = self.table(alpha)
        return {
            "n_sims": self.n_sims,
            "n_draws": self.n_draws,
            "test": "exact normal-scores tests per parameter: sum (shift) and sum of squares (width)",
            "alpha": alpha,
            "threshold": self.threshold(alpha),
            "passes": self.passes(alpha),
            "failing": self.failing(alpha),
            "p_values": {k: float(v) for k, v in tab["p_value"].items()},
            "p_shift": {k: float(v) for k, v in tab["p_shift"].items()},
            "p_width": {k: float(v) for k, v in tab["p_width"].items()},
            "power_shift": {"shift_sd": POWER_SHIFT, "power": self.power(alpha)},
            "divergences": int(self.diagnostics["divergences"].sum()),
            "reused": len(self.reused),
        }

    def format(self, alpha: float = 0.01) -> str:
        """The per-parameter tests, the verdict and the power, as text."""
        tab = self.table(alpha)
        lines = [f"simulation-based calibration: {self.n_sims} replications, ranks among {self.n_draws} "
                 f"kept draws; per parameter exact tests of the ranks' normal scores: their sum (shift: mean_rank "
                 f"0.5 expected) and their squares' sum (width: spread 1 expected, below for a posterior too "
                 f"wide, above for one too narrow)",
                 "", tab.to_string(float_format=lambda v: f"{v:.4g}"), ""]
        div = int(self.diagnostics["divergences"].sum())
        if div:
            n_bad = int((self.diagnostics["divergences"] > 0).sum())
            lines.append(f"divergent transitions: {div} in {n_bad} of {self.n_sims} replications")
        verdict = "PASS" if self.passes(alpha) else "FAIL"
        lines.append(f"{verdict}: family-wise alpha {alpha:g} (Bonferroni: each p-value against "
                     f"{self.threshold(alpha):.2g}); a calibrated model fails with probability at most {alpha:g}.")
        lines.append(f"power: a posterior off by {POWER_SHIFT:g} sd in one parameter fails with probability at "
                     f"least {self.power(alpha):.0%} ({self.n_sims} replications; {self._sims_for(alpha)} give 80%).")
        bad = self.failing(alpha)
        if bad:
            lines.append("not uniform: " + ", ".join(bad))
        return "\n".join(lines)

    def _sims_for(self, alpha: float) -> str:
        most = 10_000
        try:
            return str(sims_for_power(self.n_draws, self.threshold(alpha) / 2, power=0.8, most=most))
        except FitError:
            return f"more than {most}"


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise FitError(f"The significance level alpha must be between 0 and 1; got {alpha!r}.")


# ---------------------------------------------------------------------------
# running it
# ---------------------------------------------------------------------------


def sbc_spec(model, n_rows: int | None = None, n_cols: int | None = None) -> "Any":
    """``model`` with every prior fixed at the defaults for location 0 and spread 1 (overrides kept).

    Every parameter named by ``spec.parameter_names()`` gets an explicit
    prior, so neither the simulated table nor the fitted one can move it. A
    Kronecker model's structure priors are fixed the same way (they depend on
    the table's shape, hence ``n_rows`` and ``n_cols``).

    Returns
    -------
    ModelSpec
    """

    spec = load_model(model)
    fixed = resolve_priors(spec.parameter_names(), 0.0, 1.0, spec.model_prior_overrides)
    if spec.residual == "kronecker" and n_rows is not None and n_cols is not None:

        parts = residual_parts(spec, tuple(f"row{i + 1}" for i in range(n_rows)),
                               tuple(f"col{j + 1}" for j in range(n_cols)))
        for side, unit in (("row", False), ("col", True)):
            st = parts[side]
            defaults = st.default_priors(1.0, unit_scale=unit)
            fixed.update(st.check_priors({k: spec.prior_overrides.get(k, v) for k, v in defaults.items()},
                                         unit_scale=unit))
    return spec.with_priors(**fixed)


def _replication_seed(seed: int, index: int) -> int:
    """The seed of replication ``index``: independent streams from one seed."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def _components(da, name: str) -> tuple[list[str], np.ndarray]:
    """Names and flat positions of the scalar components of one posterior variable.

    Vectors give ``name[label]``; matrices ``name[label1,label2]``, and square
    matrices named ``*_cov`` or ``*_corr`` keep their lower triangle only
    (``*_corr`` without the diagonal, which is 1 by construction).
    """
    dims = [d for d in da.dims if d not in ("chain", "draw")]
    shape = tuple(da.sizes[d] for d in dims)
    if not dims:
        return [name], np.array([0])
    labels = [[str(v) for v in da[d].values] if d in da.coords else [str(v) for v in range(da.sizes[d])]
              for d in dims]
    index = np.arange(int(np.prod(shape))).reshape(shape)
    keep = np.ones(shape, dtype=bool)
    if len(shape) == 2 and shape[0] == shape[1] and name.endswith(("_cov", "_corr")):
        keep = np.tril(keep, k=-1 if name.endswith("_corr") else 0)
    names = []
    for pos in zip(*np.nonzero(keep)):
        names.append(f"{name}[{','.join(labels[a][p] for a, p in enumerate(pos))}]")
    return names, index[keep]


def _flatten(fit, truth: Mapping[str, Any], n_thin: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The fit's scalar parameters that have a true value: names (P,), truth (P,), kept draws (L, P), and
    every draw by chain (chains, draws, P).

    Components that every draw and the truth hold at one value (fixed by
    construction, such as the diagonal of a unit-scale correlation-type
    factor) are left out: their rank says nothing.

    Draws are kept by concatenating the chains and taking every k-th draw,
    k = S // L, for S draws in all and L = ``min(n_thin, S)``.
    """
    post = fit.posterior
    names, values, cols = [], [], []
    for name in post.data_vars:
        if name not in truth or name in DERIVED:
            continue
        da = post[name]
        x = da.values
        per_draw = x.reshape(x.shape[0] * x.shape[1], -1)
        t = np.asarray(truth[name], dtype=float).reshape(-1)
        if t.size != per_draw.shape[1]:
            continue  # the truth is laid out differently (not comparable component by component)
        comp_names, idx = _components(da, name)
        d, tv = per_draw[:, idx], t[idx]
        # components fixed by construction (a unit-scale factor's diagonal) rank nothing: left out
        fixed = (np.ptp(d, axis=0) <= 1e-10 * (1.0 + np.abs(tv))) & np.isclose(d[0], tv, rtol=1e-8, atol=1e-10)
        names += [n for n, f in zip(comp_names, fixed) if not f]
        values.append(tv[~fixed])
        cols.append(d[:, ~fixed])
    if not names:
        raise FitError("The model's posterior has no parameter with a simulated true value to rank.")
    flat = np.concatenate(cols, axis=1)
    total = flat.shape[0]
    keep = min(n_thin, total)
    step = total // keep
    shape = post.sizes["chain"], post.sizes["draw"], flat.shape[1]
    return names, np.concatenate(values), flat[::step][:keep], flat.reshape(shape)


def _diagnostics(fit, by_chain: np.ndarray) -> dict[str, float]:
    """Divergences, largest R-hat and smallest bulk ESS of the *ranked* parameters, by the fit's own rules.

    ``by_chain`` (chains, draws, P) holds the ranked parameters' draws; their R-hat and
    ESS are computed on that array (no summary table of every variable), and
    :func:`twoway.results.summary.overall_diagnostics` reads them as it reads any fit's
    (R-hat NaN where chains compare nothing, the importance ESS bounding the bulk ESS).
    """
    from twoway.results.diagnostics import ess_bulk, rhat
    from twoway.results.summary import overall_diagnostics
    from twoway.runs.batch import ENGINE_DIAGNOSTICS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            checked = pd.DataFrame({"r_hat": np.atleast_1d(rhat(by_chain)),
                                    "ess_bulk": np.atleast_1d(ess_bulk(by_chain))})
            d = overall_diagnostics(fit, checked)
        except Exception:  # diagnostics are informative only; never stop a run for them
            return fit_diagnostics(fit)
    keep = ("divergences", "max_r_hat", "min_ess_bulk") + ENGINE_DIAGNOSTICS
    return {k: d[k] for k in keep if k in d}


_RERUN = "delete it to run that replication again"
_NEW_FOLDER = "use a new folder"
#: Keys of config.json that do not change what a replication is.
_NOT_CONFIG = ("n_sims", "twoway_version")

#: What a process compiled for SBC, by configuration digest (one entry): a worker compiles once.
_COMPILED: dict[str, Any] = {}


def _replication(spec, config: Mapping[str, Any], key: str, index: int, cores: int | None,
                 fit_spec=None) -> dict[str, Any]:
    """Simulate (from ``spec``), fit (``fit_spec``, default ``spec``) and rank replication ``index``.

    Runs on a worker; compiles once per process.
    """

    rseed = _replication_seed(config["seed"], index)
    values = config.get("covariate_values")
    shape = (config["n_replicates"], config["n_rows"], config["n_cols"])
    covariates = None if values is None else {k: np.asarray(v).reshape(shape) for k, v in values.items()}
    sim = simulate(spec, config["n_rows"], config["n_cols"], config["n_replicates"], seed=rseed, se=config["se"],
                   covariates=covariates)
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = compile_model(spec if fit_spec is None else fit_spec, sim.data, engine=config["engine"],
                                 progress=False)
        _COMPILED.clear()
        _COMPILED[key] = compiled
    t0 = time.perf_counter()
    fit = compiled.sample(sim.data, chains=config["chains"], draws=config["draws"], tune=config["tune"],
                          seed=rseed, progress=False, cores=cores)
    flat, truth, kept, by_chain = _flatten(fit, sim.truth, config["n_thin"])
    ranks = (kept < truth[None, :]).sum(axis=0)
    return {
        "index": index, "seed": rseed, "parameters": flat,
        "truth": truth.tolist(), "ranks": ranks.astype(int).tolist(),
        "draws": kept.tolist(), "n_draws": int(kept.shape[0]),
        **_diagnostics(fit, by_chain), "seconds": time.perf_counter() - t0,
    }


def _read_replication(path: Path, index: int, digest: str) -> dict[str, Any]:
    rec = read_json_object(path, "replication file", _RERUN)
    if rec.get("index") != index or "ranks" not in rec or "draws" not in rec:
        raise FitError(f"The replication file {str(path)!r} is not complete; "
                       "delete it to run that replication again.")
    check_record(rec, digest, path)
    return rec


def sbc(
    model,
    n_rows: int,
    n_cols: int,
    n_sims: int,
    *,
    n_replicates: int = 1,
    chains: int = 2,
    draws: int = 500,
    tune: int = 500,
    seed: int = 0,
    out: "str | os.PathLike[str] | None" = None,
    progress: bool | None = None,
    se: float | None = None,
    n_thin: int = N_THIN,
    on_replication: Callable[[int], None] | None = None,
    engine: str | None = None,
    backend: str | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    covariates: str | None = None,
    covariate_values: Mapping[str, Any] | None = None,
    fit_priors: Mapping[str, Any] | None = None,
) -> SBCResult:
    """Simulation-based calibration of ``model`` on (n_replicates, n_rows, n_cols) tables.

    For each replication i: draw the parameters and a table from the model
    (its priors fixed as described in the module docstring), fit the model,
    keep L = ``min(n_thin, chains * draws)`` thinned draws (every k-th draw
    of the concatenated chains, k = chains * draws // L) and rank each true
    value among them. The replications run through :func:`twoway.runs.batch.run_jobs`.

    Parameters
    ----------
    model : ModelSpec or str
        A spec, a preset name or a TOML model file.
    n_rows, n_cols : int
        Table shape (at least 2 x 2).
    n_sims : int
        Number of replications (simulate, fit, rank), at least 2.
    n_replicates : int
        Replicate tables per simulated data set.
    chains, draws, tune : int
        Sampler settings for every fit.
    seed : int
        Replication i is simulated and sampled with seeds derived from
        (``seed``, i), so results depend neither on the order they are run in
        nor on the number of workers.
    out : path, optional
        Folder for ``config.json`` and one ``sim_NNNNN.json`` per finished
        replication; a run with the same folder and configuration resumes. The
        folder is locked for the whole run: a second run on it fails at once.
    progress : bool, optional
        Counts of done, failed and running replications on stderr (default:
        when stderr is a terminal).
    se : float, optional
        A known standard error given to every cell.
    n_thin : int
        Kept draws per replication (L at most).
    on_replication : callable, optional
        Called with i after replication i has been fitted (not for reused ones).
    engine : {"jax", "nutpie", "pymc"}, optional
        The engine of every fit (default ``jax``; ``backend`` is another name for it).
        Each process compiles the model once and runs every simulated table it gets through it.
    workers : int
        1: the replications run here, one after another; N > 1: on a local
        Dask cluster of N worker processes (one thread each).
    scheduler : str, optional
        Address of a running Dask scheduler instead.
    covariates : str, optional
        A covariate formula's right-hand side; it replaces the model's ``covariates``.
    covariate_values : mapping, optional
        With covariates: each of the formula's variables on the grid, values
        broadcastable to (n_replicates, n_rows, n_cols) (numbers, or text for a factor).
        Default: drawn once from ``seed`` (:func:`twoway.simulate.draw_covariates`). Every
        replication uses them (the calibration is conditional on them); they are part of
        the configuration.
    fit_priors : mapping, optional
        Priors of the *fitted* model that differ from the simulating ones, by
        parameter name (a :class:`~twoway.Prior` or a mapping such as
        ``{"dist": "normal", "mu": 0, "sigma": 5}``): a deliberately wrong
        prior, to see that the ranks reveal it. Part of the configuration.

    Returns
    -------
    SBCResult

    Raises
    ------
    FitError
        For bad options, an ``out`` folder holding another configuration, or a
        replication that failed (the others are kept in ``out``).
    TwowayError
        When another run holds the ``out`` folder.
    """

    engine = engine_name(engine, backend) or DEFAULT_ENGINE

    n_rows = check_count("n_rows", n_rows, 2)
    n_cols = check_count("n_cols", n_cols, 2)
    n_sims = check_count("n_sims", n_sims, 2)
    n_replicates = check_count("n_replicates", n_replicates, 1)
    n_thin = check_count("n_thin", n_thin, 1)
    seed = check_count("seed", seed, 0)
    workers = check_count("workers", workers, 1)
    check_sampling_options(chains, draws, tune, seed, engine)
    if se is not None and not (isinstance(se, (int, float)) and not isinstance(se, bool)
                               and math.isfinite(se) and se > 0):
        raise FitError(f"The known standard error must be a positive number; got {se!r}.")
    spec = load_model(model)
    if covariates is not None:
        if not isinstance(covariates, str):
            raise FitError(f"The covariates must be a formula's right-hand side as text; got {covariates!r}.")
        spec = dataclasses.replace(spec, covariates=covariates)
    spec = sbc_spec(spec, n_rows, n_cols)
    fit_spec = None if fit_priors is None else _fit_spec(spec, fit_priors)
    config = {
        "model": spec.to_dict(), "n_rows": n_rows, "n_cols": n_cols, "n_replicates": n_replicates,
        "chains": int(chains), "draws": int(draws), "tune": int(tune), "seed": seed,
        "se": None if se is None else float(se), "n_thin": n_thin, "engine": engine,
    }
    if spec.covariates:  # only then: the configurations (and digests) of runs without covariates stay as they were
        config["covariate_values"] = _covariate_values(spec.covariates, covariate_values,
                                                       (n_replicates, n_rows, n_cols), seed)
    elif covariate_values is not None:
        raise FitError("Covariate values were given for a model without covariates; give the formula too "
                       "(covariates=...).")
    if fit_spec is not None:  # only then, as for covariates: other runs' digests stay as they were
        config["fit_priors"] = {k: v.to_dict() for k, v in fit_spec.prior_overrides.items()
                                if spec.prior_overrides.get(k) != v}
    config = json_normal(config)
    digest = config_digest(config)
    out_path = None if out is None else Path(out)
    if out_path is not None:
        if out_path.exists() and not out_path.is_dir():
            raise FitError(f"The SBC output {str(out_path)!r} must be a folder; it is a file.")
        if not out_path.parent.exists():
            raise FitError(f"The folder {str(out_path.parent)!r} for the SBC output does not exist.")
        out_path.mkdir(exist_ok=True)
    lock = folder_lock(out_path, what="SBC folder") if out_path is not None else contextlib.nullcontext()
    with lock:
        records: dict[int, dict[str, Any]] = {}
        if out_path is not None:

            prepare_folder(out_path, config, what="SBC", results_glob="sim_*.json", ignore=_NOT_CONFIG)
            remove_stale_temporaries(out_path)  # left by a killed run
            write_json_atomic(out_path / CONFIG_NAME, {**config, "n_sims": n_sims, "twoway_version": __version__})
            for i in range(n_sims):
                path = out_path / SIM_PATTERN.format(i)
                if path.exists():
                    records[i] = _read_replication(path, i, digest)
        reused = tuple(sorted(records))
        todo = [i for i in range(n_sims) if i not in records]

        if progress is None:
            progress = sys.stderr.isatty()
        bar = BatchProgress(len(todo), "sbc replications", enabled=bool(progress), reused=len(reused))
        cores = None if workers == 1 and scheduler is None else 1
        jobs = [(f"sim_{i:05d}", (spec, config, digest, i, cores, fit_spec)) for i in todo]
        failures = []
        for outcome in run_jobs(_replication, jobs, workers=workers, scheduler=scheduler, progress=bar):
            if not outcome.ok:
                failures.append(f"{outcome.name}: {outcome.error}")
                continue
            rec = {**outcome.value, "config_digest": digest}
            i = int(rec["index"])
            if out_path is not None:
                write_json_atomic(out_path / SIM_PATTERN.format(i), rec)
            records[i] = rec
            if on_replication is not None:
                on_replication(i)
        if failures:
            kept = f"; the {len(records)} finished ones are kept in {str(out_path)!r}" if out_path is not None else ""
            raise FitError(f"{len(failures)} of {n_sims} SBC replications failed ({failures[0]}"
                           f"{' and others' if len(failures) > 1 else ''}){kept}.")
    return _assemble(records, config, reused)


def _fit_spec(spec, fit_priors: Mapping[str, Any]):
    """``spec`` with the priors of ``fit_priors`` in place of its own (every name must be one of its priors)."""
    from twoway.spec.priors import Prior

    if not isinstance(fit_priors, Mapping) or not fit_priors:
        raise FitError(f"The fitted model's priors must be a non-empty mapping of parameter name to prior; "
                       f"got {fit_priors!r}.")
    known = spec.prior_overrides
    priors = {}
    for name, value in fit_priors.items():
        if name not in known:
            raise FitError(f"The fitted model has no prior named {name!r}; use one of {', '.join(sorted(known))}.")
        prior = value if isinstance(value, Prior) else Prior.from_mapping(str(name), value)
        priors[str(name)] = prior
    return spec.with_priors(**priors)


def _covariate_values(formula: str, given: Mapping[str, Any] | None, shape: tuple[int, int, int],
                      seed: int) -> dict[str, list]:
    """The covariates' values of an SBC run, flattened in C order over (replicate, row, col), as JSON lists."""
    if given is None:
        grids = draw_covariates(formula, shape, np.random.default_rng([int(seed), 0xC0F, 0x5BC]))
    else:
        if not isinstance(given, Mapping):
            raise FitError(f"The covariate values must be a mapping of column name to values; got {type(given).__name__}.")
        grids = {}
        for name, value in given.items():
            arr = np.asarray(value)
            try:
                arr = np.broadcast_to(arr, shape)
            except ValueError:
                raise FitError(f"The covariate {name!r} must have values broadcastable to (replicates, rows, cols) = "
                               f"{shape}; got shape {arr.shape}.") from None
            grids[str(name)] = arr
    out = {}
    for name, arr in grids.items():
        arr = np.asarray(arr)
        out[name] = ([float(v) for v in arr.reshape(-1)] if arr.dtype.kind in "iuf"
                     else [str(v) for v in arr.reshape(-1)])
    return out


def _assemble(records: Mapping[int, Mapping[str, Any]], config: dict[str, Any],
              reused: tuple[int, ...] = ()) -> SBCResult:
    index = sorted(records)
    first = records[index[0]]
    params = list(first["parameters"])
    n_draws = int(first["n_draws"])
    for i in index:
        if list(records[i]["parameters"]) != params or int(records[i]["n_draws"]) != n_draws:
            raise FitError(f"The replication {i} has other parameters or draws than replication "
                           f"{index[0]}; the SBC folder mixes runs.")
    idx = pd.Index(index, name="sim")
    ranks = pd.DataFrame([records[i]["ranks"] for i in index], index=idx, columns=params)
    truth = pd.DataFrame([records[i]["truth"] for i in index], index=idx, columns=params)
    draws = np.array([records[i]["draws"] for i in index], dtype=float)
    diag = pd.DataFrame([{k: records[i].get(k, float("nan"))
                          for k in ("divergences", "max_r_hat", "min_ess_bulk", "seconds")} for i in index],
                        index=idx)
    return SBCResult(ranks=ranks, truth=truth, draws=draws, n_draws=n_draws, diagnostics=diag,
                     config=dict(config), reused=tuple(reused))


def load_sbc(out: "str | os.PathLike[str]") -> SBCResult:
    """Read every finished replication in an SBC folder (without running anything).

    Raises
    ------
    FitError
        When the folder has no configuration or no finished replication.
    """
    out = Path(out)
    cfg_path = out / CONFIG_NAME
    if not cfg_path.is_file():
        raise FitError(f"The folder {str(out)!r} holds no SBC run (no {CONFIG_NAME}).")

    config = read_json_object(cfg_path, "SBC configuration", _NEW_FOLDER)
    config = {k: v for k, v in config.items() if k not in _NOT_CONFIG}
    digest = config_digest(config)
    records = {}
    for path in sorted(out.glob("sim_*.json")):
        rec = read_json_object(path, "replication file", _RERUN)
        check_record(rec, digest, path)
        records[int(rec["index"])] = rec
    if not records:
        raise FitError(f"The folder {str(out)!r} holds no finished replication.")
    return _assemble(records, config, tuple(sorted(records)))
