"""The latent residual's shocks, integrated out and drawn back, agree with a model that samples them.

Both models have the same priors and data; the explicit one samples the
per-replicate row and column shocks (non-centred) with nutpie. For every
compared quantity the difference of posterior means is tested against its
Monte Carlo standard error (from each run's ESS), |z| < 4.4: a two-sided
false-alarm rate of 1e-5 per quantity, under 1e-3 for the whole test.
"""

import warnings

import arviz as az
import numpy as np
import pytest

import twoway
from twoway import Prior

PRIORS = dict(
    intercept=Prior.make("normal", mu=0, sigma=2),
    row_effect_sd=Prior.make("halfnormal", sigma=1),
    col_effect_sd=Prior.make("halfnormal", sigma=1),
    row_sd=Prior.make("halfnormal", sigma=1),
    col_sd=Prior.make("halfnormal", sigma=1),
    sigma=Prior.make("halfnormal", sigma=0.5),
)
SPEC = twoway.ModelSpec(residual="latent", row_scale="homo", col_scale="homo", sigma=True).with_priors(**PRIORS)


def explicit_model(data):
    import pymc as pm

    R, N, K = data.values.shape
    y = data.values
    with pm.Model() as model:
        intercept = pm.Normal("intercept", 0, 2)
        row_esd = pm.HalfNormal("row_effect_sd", 1)
        col_esd = pm.HalfNormal("col_effect_sd", 1)
        row_effect = pm.Deterministic("row_effect", row_esd * pm.Normal("_zr", 0, 1, shape=N))
        col_effect = pm.Deterministic("col_effect", col_esd * pm.Normal("_zc", 0, 1, shape=K))
        row_sd = pm.HalfNormal("row_sd", 1)
        col_sd = pm.HalfNormal("col_sd", 1)
        sigma = pm.HalfNormal("sigma", 0.5)
        row_shock = pm.Deterministic("row_shock", row_sd * pm.Normal("_sr", 0, 1, shape=(R, N)))
        col_shock = pm.Deterministic("col_shock", col_sd * pm.Normal("_sc", 0, 1, shape=(R, K)))
        mu = (intercept + row_effect[None, :, None] + col_effect[None, None, :]
              + row_shock[:, :, None] + col_shock[:, None, :])
        pm.Normal("y", mu, sigma, observed=y)
    return model


@pytest.mark.stats
@pytest.mark.slow  # 25 s; the default tier uses the drawn-back shocks in test_estimands.py (latent predictions)
def test_drawn_back_shocks_agree_with_sampled_shocks():
    import nutpie

    params = {"intercept": 1.0, "row_effect": [0.5, -0.5, 0.0, 1.0], "col_effect": [0.3, -0.3, 0.0],
              "row_sd": 0.8, "col_sd": 0.6, "sigma": 0.3}
    data = twoway.simulate(SPEC, 4, 3, 3, params=params, seed=3).data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = twoway.fit(SPEC, data, chains=4, draws=1500, tune=1000, seed=1, progress=False)
        compiled = nutpie.compile_pymc_model(explicit_model(data))
        theirs = nutpie.sample(compiled, chains=4, draws=1500, tune=1500, seed=2, progress_bar=False,
                               target_accept=0.95)
    a = ours.posterior
    b = theirs.posterior.to_dataset()
    for name in ("row_shock", "col_shock", "row_effect", "col_effect", "sigma", "row_sd", "col_sd"):
        xa = a[name].values.reshape(a.sizes["chain"] * a.sizes["draw"], -1)
        xb = b[name].values.reshape(b.sizes["chain"] * b.sizes["draw"], -1)
        ess_a = np.atleast_1d(az.ess(a[name]).values).ravel()
        ess_b = np.atleast_1d(az.ess(b[name]).values).ravel()
        se = np.sqrt(xa.var(0) / ess_a + xb.var(0) / ess_b)
        z = (xa.mean(0) - xb.mean(0)) / se
        assert np.all(np.abs(z) < 4.4), f"{name}: z = {np.round(z, 2)}"
        # and the spread agrees: an sd estimate's relative error is about sqrt((kurtosis - 1) / n) / 2,
        # n the ESS of the squared deviations (1 / sqrt(2 ESS) for a normal law)
        rel = np.abs(xa.std(0) / xb.std(0) - 1)
        rel_se = 0.5 * np.sqrt(_sd_error_term(a[name], xa) + _sd_error_term(b[name], xb))
        assert np.all(rel < 4.4 * rel_se), f"{name}: sd ratio off by {rel} (se {rel_se})"


def _sd_error_term(da, x):
    """(kurtosis - 1) / ESS of the squared deviations, per coordinate."""
    dev2 = (da - da.mean(("chain", "draw"))) ** 2
    ess = np.atleast_1d(az.ess(dev2).values).ravel()
    c = x - x.mean(0)
    kurt = (c ** 4).mean(0) / (c ** 2).mean(0) ** 2
    return (kurt - 1) / ess
