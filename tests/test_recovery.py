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
from twoway.check import recovery
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


@pytest.mark.stats
def test_intervals_cover_the_truth_at_the_stated_rate():
    sims = [twoway.simulate(SPEC, 6, 8, seed=1000 + m, se=0.3) for m in range(N_SIMS)]
    compiled = compile_model(SPEC, sims[0].data, progress=False)
    fractions = {g: [] for g in GROUPS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m, sim in enumerate(sims):
            fit = compiled.sample(sim.data, chains=2, draws=500, tune=500, seed=m, progress=False)
            rec = recovery(fit, sim.truth_dict(), names=list(GROUPS))
            for g in GROUPS:
                rows = rec.loc[[i for i in rec.index if i.startswith(g + "[")]]
                fractions[g].append(rows["covered"].mean())
    for g in GROUPS:
        f = np.asarray(fractions[g])
        se = max(f.std(ddof=1), 0.02) / np.sqrt(f.size)  # floor: a run where every f is 1 has sd 0
        t = (f.mean() - 0.94) / se
        limit = stats.t.ppf(1 - ALPHA / 2, df=f.size - 1)
        assert abs(t) < limit, f"{g}: coverage {f.mean():.3f} over {f.size} tables (t = {t:.2f})"
