"""Seeded recovery: on tables simulated from the prior, 94% intervals cover the truth 94% of the time.

When the parameters of each table are drawn from the same prior the fit uses,
a correct posterior gives 94% intervals whose coverage, averaged over the
simulations, is exactly 94% (up to the Monte Carlo error of the interval from
a finite number of draws). Per simulation we take the fraction f of true
values covered within a group of parameters (row means, column means, row
sds, column sds); the f's of independent simulations are i.i.d. in [0, 1],
and we test their mean against 0.94 with a t statistic at a two-sided
false-alarm rate of 0.001 per group (0.004 for the four groups together).
"""

import warnings

import numpy as np
import pytest
from scipy import stats

import twoway
from twoway import Prior
from twoway.results.recovery import recovery
from twoway.fit import compile_model

ALPHA = 0.001
N_SIMS = 40

SPEC = twoway.preset("additive").with_priors(
    intercept=Prior.make("normal", mu=0, sigma=2),
    row_effect_sd=Prior.make("halfnormal", sigma=1),
    col_effect_sd=Prior.make("halfnormal", sigma=1),
    row_log_sd_loc=Prior.make("normal", mu=-0.5, sigma=0.5),
    row_log_sd_scale=Prior.make("halfnormal", sigma=0.3),
    col_log_sd_loc=Prior.make("normal", mu=-0.5, sigma=0.5),
    col_log_sd_scale=Prior.make("halfnormal", sigma=0.3),
)
GROUPS = ("row_mean", "col_mean", "row_sd", "col_sd")


def coverage(spec, shape, groups, n_sims, *, se=None, draws=500, seed0=1000):
    """Per group of parameters, the fraction of true values covered in each simulated table."""
    n, k, r = shape
    sims = [twoway.simulate(spec, n, k, r, seed=seed0 + m, se=se) for m in range(n_sims)]
    compiled = compile_model(spec, sims[0].data, progress=False)
    fractions = {g: [] for g in groups}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m, sim in enumerate(sims):
            fit = compiled.sample(sim.data, chains=2, draws=draws, tune=draws, seed=m, progress=False)
            names = sorted({p for g in groups.values() for p in g})
            rec = recovery(fit, {p: sim.truth[p] for p in names}, names=names)
            for g, params in groups.items():
                rows = rec.loc[[i for i in rec.index if i.split("[")[0] in params]]
                fractions[g].append(rows["covered"].mean())
    return fractions


def assert_calibrated(fractions):
    """t test of each group's mean coverage against 0.94 at the false-alarm rate ALPHA."""
    for g, values in fractions.items():
        f = np.asarray(values)
        se = max(f.std(ddof=1), 0.02) / np.sqrt(f.size)  # floor: a run where every f is 1 has sd 0
        t = (f.mean() - 0.94) / se
        limit = stats.t.ppf(1 - ALPHA / 2, df=f.size - 1)
        assert abs(t) < limit, f"{g}: coverage {f.mean():.3f} over {f.size} tables (t = {t:.2f})"


@pytest.mark.stats
def test_intervals_cover_the_truth_at_the_stated_rate():
    groups = {g: (g,) for g in GROUPS}
    assert_calibrated(coverage(SPEC, (6, 8, 1), groups, N_SIMS, se=0.3))


@pytest.mark.stats
def test_crossed_model_is_calibrated():
    spec = twoway.preset("crossed").with_priors(
        intercept=Prior.make("normal", mu=0, sigma=2),
        row_effect_sd=Prior.make("halfnormal", sigma=1),
        col_effect_sd=Prior.make("halfnormal", sigma=1),
        sigma=Prior.make("halfnormal", sigma=0.5),
    )
    groups = {"means": ("row_mean", "col_mean"), "scales": ("row_effect_sd", "col_effect_sd", "sigma"),
              "effects": ("row_effect", "col_effect")}
    assert_calibrated(coverage(spec, (6, 5, 2), groups, N_SIMS))


@pytest.mark.stats
@pytest.mark.slow  # Kronecker calibration in the default tier: test_calibration.py (fa:1 x cs) and test_sbc.py
def test_kronecker_ar1_by_unstructured_is_calibrated():
    import dataclasses

    spec = dataclasses.replace(twoway.preset("kronecker"), row_structure="ar1",
                               col_structure="unstructured").with_priors(
        intercept=Prior.make("normal", mu=0, sigma=2),
        row_effect_sd=Prior.make("halfnormal", sigma=1),
        col_effect_sd=Prior.make("halfnormal", sigma=1),
        row_sd=Prior.make("halfnormal", sigma=1),
    )
    groups = {"means": ("row_mean", "col_mean"), "row": ("row_rho", "row_sd"), "col": ("col_sd",)}
    assert_calibrated(coverage(spec, (6, 3, 4), groups, 30, draws=400))


FULL_MODULE = """
import numpy as np


def exp_rows(ops, rho, scale):
    d = np.abs(np.subtract.outer(np.arange(4), np.arange(4))).astype(float)
    return scale * scale * ops.kron(rho ** ops.asarray(d), ops.asarray(np.eye(3)))
"""


@pytest.mark.stats
@pytest.mark.slow  # the full residual's likelihood is twin-tested for every ops in test_ops_twins.py
def test_full_covariance_model_is_calibrated(tmp_path):
    path = tmp_path / "cov_rows.py"
    path.write_text(FULL_MODULE)
    spec = twoway.ModelSpec(residual="full", covariance=f"{path}:exp_rows", row_scale="none", col_scale="none",
                            sigma=True).with_priors(
        intercept=Prior.make("normal", mu=0, sigma=2),
        row_effect_sd=Prior.make("halfnormal", sigma=1),
        col_effect_sd=Prior.make("halfnormal", sigma=1),
        sigma=Prior.make("halfnormal", sigma=0.3),
        rho=Prior.make("uniform", lower=0.0, upper=0.9),
        scale=Prior.make("halfnormal", sigma=1),
    )
    groups = {"means": ("row_mean", "col_mean"), "covariance": ("rho", "scale", "sigma")}
    assert_calibrated(coverage(spec, (4, 3, 3), groups, 30, draws=400))
