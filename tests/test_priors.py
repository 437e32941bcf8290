"""The NumPy draws of a prior follow the same law as the PyMC variable the fit uses; its NumPy log-density is the family's."""

import numpy as np
import pytest
from scipy import stats

from twoway import ModelError, Prior
from twoway.engines.pymc.priors import pymc_distribution, pymc_variable

ALPHA = 1e-3  # false-alarm rate of each Kolmogorov-Smirnov test below


@pytest.mark.parametrize("prior", [
    Prior.make("normal", mu=1.5, sigma=2.0),
    Prior.make("halfnormal", sigma=0.7),
    Prior.make("halfstudentt", nu=3.0, sigma=1.2),
    Prior.make("exponential", scale=2.5),
    Prior.make("lognormal", mu=-0.3, sigma=0.6),
])
def test_numpy_draws_match_pymc_draws(prior):
    import pymc as pm

    with pm.Model():
        rv = pymc_variable(prior, "x")
    ours = prior.sample(np.random.default_rng(1), 20000)
    theirs = pm.draw(rv, draws=20000, random_seed=2)
    assert stats.ks_2samp(ours, theirs).pvalue > ALPHA


def test_prior_validation_and_text():
    assert str(Prior.make("halfnormal", sigma=2)) == "halfnormal(sigma=2)"
    with pytest.raises(ModelError, match="finite"):
        Prior.make("normal", mu=float("nan"), sigma=1)
    with pytest.raises(ModelError, match="dist"):
        Prior.from_mapping("sigma", {"sigma": 1})
    assert Prior.from_mapping("x", {"dist": "Normal", "mu": 0, "sigma": 1}).dist == "normal"


def test_default_priors_scale_with_the_data():
    from twoway.spec.priors import default_priors

    small, big = default_priors(0.0, 1.0), default_priors(100.0, 10.0)
    assert big["intercept"].kwargs == {"mu": 100.0, "sigma": 25.0}
    assert big["row_effect_sd"].kwargs["sigma"] == 10 * small["row_effect_sd"].kwargs["sigma"]
    assert np.isclose(big["row_log_sd_loc"].kwargs["mu"] - small["row_log_sd_loc"].kwargs["mu"], np.log(10))


def _half_t_logpdf(nu, sigma):
    return lambda x: np.log(2.0) + stats.t.logpdf(x, nu, 0.0, sigma)


@pytest.mark.parametrize("prior, reference", [
    (Prior.make("normal", mu=1.5, sigma=2.0), stats.norm(1.5, 2.0).logpdf),
    (Prior.make("halfnormal", sigma=0.7), stats.halfnorm(scale=0.7).logpdf),
    (Prior.make("halfstudentt", nu=3.0, sigma=1.2), _half_t_logpdf(3.0, 1.2)),
    (Prior.make("exponential", scale=2.5), stats.expon(scale=2.5).logpdf),
    (Prior.make("lognormal", mu=-0.3, sigma=0.6), stats.lognorm(0.6, scale=np.exp(-0.3)).logpdf),
    (Prior.make("uniform", lower=-0.5, upper=2.0), stats.uniform(-0.5, 2.5).logpdf),
    (Prior.make("beta", alpha=2.0, beta=5.0), stats.beta(2.0, 5.0).logpdf),
])
def test_logpdf_is_the_family_log_density(prior, reference):
    """``Prior.logpdf`` equals SciPy's log-density, elementwise in the shape of ``x``, -inf outside the
    support; the laplace engine's ``log_prior`` is the same number."""
    from twoway.engines.laplace import log_prior

    x = prior.sample(np.random.default_rng(4), (3, 5))
    ours = prior.logpdf(x)
    assert ours.shape == (3, 5)
    np.testing.assert_allclose(ours, reference(x), rtol=1e-12)
    assert np.ndim(prior.logpdf(float(x[0, 0]))) == 0
    assert log_prior(prior, float(x[0, 0])) == pytest.approx(float(reference(x[0, 0])), rel=1e-12)
    outside = {"normal": None, "uniform": 2.5, "beta": 1.5}.get(prior.dist, -0.1)
    if outside is not None:
        assert prior.logpdf(outside) == -np.inf
