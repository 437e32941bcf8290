"""Power and false-alarm rate of simulation-based calibration's rank tests (src/twoway/runs/sbc.py).

The pure tests check the exact tests against brute-force enumeration and Monte Carlo (tolerances of
four Monte Carlo standard errors; seeded). The SBC tests run twoway's own ``sbc`` on the exact
(no sampler) path: the ``common-effect`` model with a known se, where a wrong prior on the intercept
has a power computable in closed form (see :func:`intercept_width_ratio`):

* the correct model passes at family-wise false-alarm rate ALPHA = 0.01 (a correct model fails a
  fresh seed with probability at most 1%: the tests are exact);
* the intercept's prior twice too wide and twice too narrow in the fit are flagged, with powers
  0.96 and 0.998 at that rate (computed, and asserted > 0.8, below).

Cost: three SBC runs of 50 exact fits each (about 15 s).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from twoway import Prior
from twoway.errors import FitError, ModelError
from twoway.runs.sbc import (
    POWER_SHIFT,
    rank_scores,
    rank_test_power,
    rank_tests,
    sbc,
    shifted_rank_distribution,
    sims_for_power,
    sum_distribution,
    uniformity_pvalues,
)

ALPHA = 0.01  # family-wise false-alarm rate of every pass/fail assertion
MC_SE = 4.0  # Monte Carlo tolerances: this many standard errors


def _mc_close(rate: float, p: float, n: int) -> bool:
    return abs(rate - p) <= MC_SE * math.sqrt(max(p * (1 - p), 1e-4) / n)


def _ranks(rng, n_sims: int, n_runs: int, n_draws: int, *, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Ranks (n_runs, n_sims) of a standard normal truth among n_draws draws of N(shift, scale^2)."""
    truth = rng.standard_normal((n_runs, n_sims, 1))
    draws = shift + scale * rng.standard_normal((n_runs, n_sims, n_draws))
    return (draws < truth).sum(axis=-1)


# ---------------------------------------------------------------------------
# the exact tests
# ---------------------------------------------------------------------------


def test_sum_distribution_is_the_exact_convolution():
    pmf = np.array([0.1, 0.0, 0.5, 0.4])
    brute = np.zeros(3 * 3 + 1)
    for values in itertools.product(range(4), repeat=3):
        brute[sum(values)] += np.prod(pmf[list(values)])
    np.testing.assert_allclose(sum_distribution(pmf, 3), brute, atol=1e-15)


def test_rank_tests_are_exact_by_enumeration():
    """Every rank vector of S = 3 replications among L = 4 draws: P(p <= a) <= a for every a (an exact test)."""
    n_draws, n_sims = 4, 3
    vectors = np.array(list(itertools.product(range(n_draws + 1), repeat=n_sims)))  # (125, 3), each 1/125
    tests = rank_tests(pd.DataFrame(vectors.T), n_draws)
    for column in ("p_shift", "p_width", "p_value"):
        p = tests[column].to_numpy()
        for a in np.unique(p):
            assert np.mean(p <= a) <= a + 1e-12, (column, a)
    # a two-sided test: the smallest and largest sums are the most extreme shifts
    shift = tests["p_shift"].to_numpy()
    assert shift[0] == pytest.approx(shift[-1]) and shift[0] == pytest.approx(shift.min())
    assert shift[0] == pytest.approx(2 / 125)  # P(sum = 0) = P(sum = 12) = 1/125, two-sided
    assert rank_scores(n_draws)[0].tolist() == sorted(rank_scores(n_draws)[0].tolist())


def test_false_alarm_rate_of_uniform_ranks():
    """10,000 columns of uniform ranks (S = 30, L = 100): each p-value's rate below 0.05 and 0.01 is the level."""
    rng = np.random.default_rng(20260201)
    n = 10_000
    tests = rank_tests(pd.DataFrame(rng.integers(0, 101, size=(n, 30)).T), 100)
    for column in ("p_shift", "p_width", "p_value"):
        for level in (0.05, 0.01):
            rate = float((tests[column] <= level).mean())
            # the exact discrete tests are at most at the level (a little below where the lattice falls short)
            assert rate <= level + MC_SE * math.sqrt(level * (1 - level) / n), (column, level, rate)
            assert rate >= 0.5 * level, (column, level, rate)


def test_shifted_rank_distribution_is_uniform_without_a_shift_and_matches_simulation():
    np.testing.assert_allclose(shifted_rank_distribution(100), np.full(101, 1 / 101), atol=1e-15)
    rng = np.random.default_rng(3)
    ranks = _ranks(rng, 1, 200_000, 20, shift=POWER_SHIFT).ravel()
    freq = np.bincount(ranks, minlength=21) / ranks.size
    pmf = shifted_rank_distribution(20, shift=POWER_SHIFT)
    assert np.all(np.abs(freq - pmf) <= MC_SE * np.sqrt(pmf * (1 - pmf) / ranks.size))
    assert pmf[:10].sum() > 0.6  # draws shifted up: the truth lies low among them


@pytest.mark.parametrize("shift, scale, test", [(0.5, 1.0, "shift"), (0.0, 2.0, "width"), (0.0, 0.5, "width")])
def test_power_is_the_rejection_rate_of_simulated_ranks(shift, scale, test):
    """rank_test_power (exact) against 3,000 simulated SBC runs of S = 60 ranks among L = 100 draws."""
    rng = np.random.default_rng(11)
    n_runs, n_sims, level = 3000, 60, 0.01 / 40
    ranks = _ranks(rng, n_sims, n_runs, 100, shift=shift, scale=scale)
    p = rank_tests(pd.DataFrame(ranks.T), 100)[f"p_{test}"].to_numpy()
    power = rank_test_power(n_sims, 100, level, shift=shift, scale=scale, test=test)
    assert _mc_close(float(np.mean(p <= level)), power, n_runs), (np.mean(p <= level), power)


def test_the_rank_tests_beat_the_histogram_chi_square_against_a_half_sd_shift():
    """The issue's case: 40 replications, a level of 1.7e-5; the chi-square caught a 0.5-sd shift ~3% of the time."""
    rng = np.random.default_rng(5)
    n_runs, level = 1000, 1.7e-5
    ranks = pd.DataFrame(_ranks(rng, 40, n_runs, 100, shift=POWER_SHIFT).T)
    chi2 = float((uniformity_pvalues(ranks, 100, 8) < level).mean())
    ours = float((rank_tests(ranks, 100)["p_value"] < level).mean())
    exact = rank_test_power(40, 100, level / 2)  # the shift test alone: a lower bound on ours
    assert ours >= exact - MC_SE * math.sqrt(exact * (1 - exact) / n_runs)
    assert chi2 < 0.06 and chi2 < exact / 2, (chi2, ours, exact)


def test_sims_for_power_reaches_the_power():
    level = 0.01 / (20 * 50 * 2)  # a 20-case table of 50 parameters, two tests each
    n = sims_for_power(100, level)
    assert all(rank_test_power(n + k, 100, level) >= 0.8 for k in range(4))
    assert rank_test_power(n - 5, 100, level) < 0.8
    assert 100 <= n <= 140
    with pytest.raises(FitError, match="power must be between 0 and 1"):
        sims_for_power(100, level, power=1.0)
    with pytest.raises(FitError, match="'shift' or 'width'"):
        rank_test_power(10, 100, level, test="chi2")


# ---------------------------------------------------------------------------
# twoway's own sbc: a wrong prior is flagged, the right one passes
# ---------------------------------------------------------------------------

ROWS, COLS, SE, N_SIMS, SEED = 2, 3, 40.0, 50, 11
TAU = 2.5  # the intercept's fixed prior sd in SBC (sbc_spec: normal(0, 2.5))


def intercept_width_ratio(tau_fit: float, tau: float = TAU) -> float:
    """Sd of the truth about the fitted posterior mean, in fitted posterior sds (1 when the prior is right).

    In a complete table with one known se, the zero-sum row and column
    effects are orthogonal to the intercept, whose posterior depends on the
    table's mean only: precision ``lam = n / se^2`` from the data. Fitted
    with a prior sd ``tau_fit``, the posterior is N(v lam ybar, v) with
    ``v = 1 / (lam + 1 / tau_fit^2)``, and the truth's standardised distance
    from it is N(0, k^2), ``k^2 = (tau^2 (1 - v lam)^2 + v^2 lam) / v``: the
    draws are those of a posterior 1/k times as wide as the right one, the
    alternative ``scale = 1 / k`` of :func:`rank_test_power`.
    """
    lam = ROWS * COLS / SE**2
    v = 1.0 / (lam + 1.0 / tau_fit**2)
    return math.sqrt((tau**2 * (1 - v * lam) ** 2 + v * v * lam) / v)


@pytest.fixture(scope="module")
def runs():
    """The same 50 simulated tables fitted with the right intercept prior, one twice too wide, one twice too narrow."""
    opts = {"se": SE, "chains": 1, "draws": 100, "seed": SEED, "progress": False}
    wide = {"intercept": Prior.make("normal", mu=0.0, sigma=2 * TAU)}
    narrow = {"intercept": {"dist": "normal", "mu": 0.0, "sigma": TAU / 2}}
    return {name: sbc("common-effect", ROWS, COLS, N_SIMS, fit_priors=priors, **opts)
            for name, priors in (("right", None), ("wide", wide), ("narrow", narrow))}


def test_a_calibrated_model_passes(runs):
    result = runs["right"]
    assert result.passes(ALPHA), result.format(ALPHA)
    assert intercept_width_ratio(TAU) == pytest.approx(1.0)
    assert "fit_priors" not in result.config
    text = result.format(ALPHA)
    assert "PASS" in text and "power: a posterior off by 0.5 sd in one parameter fails with probability" in text
    # the power printed is the exact one for these S, L and the Bonferroni level over the parameters
    level = ALPHA / len(result.parameters) / 2
    assert result.power(ALPHA) == pytest.approx(rank_test_power(N_SIMS, 100, level))
    assert result.to_dict(ALPHA)["power_shift"]["power"] == pytest.approx(result.power(ALPHA))


@pytest.mark.parametrize("name, tau_fit", [("wide", 2 * TAU), ("narrow", TAU / 2)])
def test_a_prior_twice_too_wide_or_narrow_is_flagged(runs, name, tau_fit):
    result = runs[name]
    assert result.config["fit_priors"] == {"intercept": {"dist": "normal", "mu": 0.0, "sigma": tau_fit}}
    # the posterior the power rests on: the fitted intercept's sd is the closed form's
    i = result.parameters.index("intercept")
    lam = ROWS * COLS / SE**2
    assert result.draws[:, :, i].std(axis=1, ddof=1).mean() == pytest.approx(math.sqrt(1 / (lam + tau_fit**-2)),
                                                                               rel=0.05)
    # the stated power at this false-alarm rate: the width test alone, at the parameter's Bonferroni level
    k = intercept_width_ratio(tau_fit)
    power = rank_test_power(N_SIMS, 100, ALPHA / len(result.parameters) / 2, shift=0.0, scale=1 / k, test="width")
    assert power > 0.8, power
    assert not result.passes(ALPHA), result.format(ALPHA)
    assert result.failing(ALPHA) == ["intercept"]
    spread = result.table(ALPHA).loc["intercept", "spread"]
    assert (spread < 1) if name == "wide" else (spread > 1)  # too wide: ranks in the middle; too narrow: at the ends
    # the other parameters' ranks are untouched (same tables, orthogonal to the intercept)
    others = [p for p in result.parameters if p != "intercept"]
    pd.testing.assert_frame_equal(result.ranks[others], runs["right"].ranks[others])


def test_fit_priors_must_name_a_prior_of_the_model():
    with pytest.raises(FitError, match="no prior named 'row_sd'"):
        sbc("common-effect", 2, 3, 2, se=1.0, fit_priors={"row_sd": {"dist": "halfnormal", "sigma": 1.0}})
    with pytest.raises(ModelError, match="'dist' key"):
        sbc("common-effect", 2, 3, 2, se=1.0, fit_priors={"intercept": {"sigma": 1.0}})
