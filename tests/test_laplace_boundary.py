"""The laplace engine near a variance's boundary: the defensive mixture proposal is a proper density that its
draws follow, its boundary components go where the probes find mass near zero, and on a weakly identified
row sd the posterior mass near zero agrees with an exact grid (or the fit says it cannot vouch for it).

Tolerances: Monte Carlo error from the importance ESS (4 sd: a false alarm ~1e-4 per check), a
Kolmogorov-Smirnov bound at a 1e-4 false-alarm rate, quadrature error of a fine grid (< 1e-3).
"""

import math
import warnings

import numpy as np
import pytest

from twoway import fit, preset, simulate
from twoway.engines import laplace
from twoway.engines.laplace import importance_warnings, near_zero, pareto_k_threshold
from twoway.errors import TwowayWarning
from twoway.likelihood.paths import marginal_logp
from twoway.linalg.ops import NUMPY
from twoway.plan import resolve

# crossed 60 x 30, 20% observed, true row sd 0.05: the row sd's posterior has ~8% of its mass below 0.01
WEAK = {"n_rows": 60, "n_cols": 30, "missing": 0.8, "seed": 3,
        "params": {"row_effect_sd": 0.05, "col_effect_sd": 0.5, "sigma": 1.0}}
THRESHOLD = 0.01


def _trapezoid(u):
    d = np.diff(u)
    return np.concatenate([[d[0] / 2], (d[:-1] + d[1:]) / 2, [d[-1] / 2]])


def _exact_row_sd(plan, centre, spread, lo=1e-5, hi=1.0):
    """Exact posterior of the row sd by a grid of the three log scales: (mean, mass below THRESHOLD, edge).

    The row axis has THRESHOLD on it; below ``lo`` the log-scale density falls as c exp(u), whose integral is
    the density at ``lo``; the other two axes span +-4 posterior sd with 9 points (trapezoid: exact to ~1e-8
    on a near-Gaussian at that spacing, 6e-5 of the mass beyond).
    """
    row = np.concatenate([np.linspace(math.log(lo), math.log(THRESHOLD), 40),
                          np.linspace(math.log(THRESHOLD), math.log(hi), 50)[1:]])
    axes = {"row_effect_sd": row, **{n: centre[n] + spread[n] * np.linspace(-4, 4, 9) for n in centre}}
    mesh = np.meshgrid(*axes.values(), indexing="ij")
    params = {n: np.exp(m).ravel() for n, m in zip(axes, mesh)}
    params.update({k: np.full(mesh[0].size, v) for k, v in plan.constants.items()})
    lp = np.asarray(marginal_logp(NUMPY, plan.spec, plan.layout, plan.design, params, "sparse")).reshape(mesh[0].shape)
    for n, m in zip(axes, mesh):
        lp = lp + m + plan.priors[n].logpdf(np.exp(m))
    dens = np.exp(lp - lp.max())
    marg = dens @ _trapezoid(axes["sigma"]) @ _trapezoid(axes["col_effect_sd"])
    w = _trapezoid(row)
    tail = marg[0]
    total = tail + marg @ w
    below = (tail + marg[:40] @ _trapezoid(row[:40])) / total
    mean = (tail * lo + (marg * np.exp(row)) @ w) / total
    edge = max(marg[-1] / marg.max(), dens[:, [0, -1]].max() / dens.max(), dens[:, :, [0, -1]].max() / dens.max())
    return float(mean), float(below), float(edge)


@pytest.fixture(scope="module")
def weak():
    data = simulate("crossed", WEAK["n_rows"], WEAK["n_cols"], 1, WEAK["params"], seed=WEAK["seed"],
                    missing=WEAK["missing"]).data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = fit("crossed", data, engine="laplace", chains=2, draws=1000, seed=0)
    plan = resolve(preset("crossed"), data, likelihood="sparse", priors=f.priors)
    others = ("col_effect_sd", "sigma")
    centre = {n: float(np.log(f.posterior[n].values).mean()) for n in others}
    spread = {n: float(np.log(f.posterior[n].values).std()) for n in others}
    return data, f, [w for w in caught if issubclass(w.category, TwowayWarning)], _exact_row_sd(plan, centre, spread)


def test_weak_row_sd_mass_near_zero_equals_an_exact_grid(weak):
    _, f, caught, (exact_mean, exact_below, edge) = weak
    assert edge < 2e-3  # the grid holds the posterior (a Gaussian's density 4 sd out is 3e-4 of its peak)
    assert exact_below > 0.03  # the case has real mass near zero
    info = f.info
    assert info["boundary_share"]["row_effect_sd"] >= laplace.BOUNDARY_MIN  # the probes saw it
    assert info["boundary_share"]["sigma"] == 0.0  # a well identified scale gets no boundary component
    assert info["pareto_k"] < info["pareto_k_threshold"] and not caught
    r = f.posterior["row_effect_sd"].values.ravel()
    ess = info["importance_ess"]
    scale = math.sqrt(1.0 / ess + 1.0 / r.size)  # importance error, then the resampling's
    got_below = float(np.mean(r < THRESHOLD))
    assert abs(got_below - exact_below) < 4.0 * math.sqrt(exact_below * (1 - exact_below)) * scale + 1e-3, \
        (got_below, exact_below)
    assert abs(float(r.mean()) - exact_mean) < 4.0 * float(r.std()) * scale + 1e-3, (float(r.mean()), exact_mean)
    # the engine's own weighted estimate of the mass near zero, with its Monte Carlo error
    zero = info["near_zero"]["row_effect_sd"]
    assert zero["below"] == pytest.approx(0.1 * info["laplace_mode"]["row_effect_sd"])
    bulk = math.sqrt(zero["mass"] * (1 - zero["mass"]) / ess)  # the error of ESS independent draws
    assert zero["mass"] > 0.03 and zero["mc_error"] < min(0.25 * zero["mass"], laplace.NEAR_ZERO_ERROR * bulk)


def test_few_proposals_either_agree_with_the_grid_or_warn(weak):
    """With 200 proposals each seeded fit is within its Monte Carlo error of the grid, or says it cannot vouch
    for its weights (and names --engine jax)."""
    data, _, _, (_, exact_below, _) = weak
    for seed in range(3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            f = fit("crossed", data, engine="laplace", chains=1, draws=200, seed=seed)
        messages = [str(w.message) for w in caught if issubclass(w.category, TwowayWarning)]
        assert f.info["proposals"] == 200
        if messages:
            assert all("--engine jax" in m for m in messages)
            continue
        r = f.posterior["row_effect_sd"].values.ravel()
        ess = f.info["importance_ess"]
        got = float(np.mean(r < THRESHOLD))
        tol = 4.0 * math.sqrt(exact_below * (1 - exact_below) * (1 / ess + 1 / r.size)) + 1e-3
        assert abs(got - exact_below) < tol, (seed, got, exact_below)


def test_without_the_boundary_component_the_fit_says_so(weak, monkeypatch):
    """The t proposal alone (as before the mixture) misses the mass near zero, or finds it with a few heavy
    weights: either way the fit warns and names --engine jax."""
    data = weak[0]
    monkeypatch.setattr(laplace, "_boundary_shares", lambda excess, mass: np.zeros(len(mass)))
    with pytest.warns(TwowayWarning, match=r"row_effect_sd has .*mass near zero.*--engine jax"):
        f = fit("crossed", data, engine="laplace", chains=2, draws=500, seed=0)
    zero = f.info["near_zero"]["row_effect_sd"]
    assert zero["probe_mass"] > 0.03 and f.info["boundary_share"]["row_effect_sd"] == 0.0


def _integral_1d(shares, mode, scale):
    u = np.linspace(-40.0, 10.0, 50001)
    q = np.exp(laplace._mixture_logpdf(u[:, None], mode, scale, shares))
    return float(np.sum(q) * (u[1] - u[0])), u, q


def test_mixture_density_integrates_to_one():
    mode, scale = np.array([-2.0]), np.array([[0.09]])
    total, _, _ = _integral_1d(np.array([0.3]), mode, scale)
    assert total == pytest.approx(1.0, abs=1e-4)
    # two parameters, a boundary component on each: a 2-D grid
    mode2 = np.array([-2.0, 0.1])
    scale2 = np.array([[0.16, -0.02], [-0.02, 0.01]])
    a = np.concatenate([np.linspace(-35.0, -4.0, 150), np.linspace(-4.0, 3.0, 351)[1:]])
    b = np.concatenate([np.linspace(-35.0, -1.0, 150), np.linspace(-1.0, 3.0, 401)[1:]])
    uu = np.stack(np.meshgrid(a, b, indexing="ij"), axis=-1).reshape(-1, 2)
    q = np.exp(laplace._mixture_logpdf(uu, mode2, scale2, np.array([0.3, 0.2]))).reshape(a.size, b.size)
    assert float(_trapezoid(a) @ q @ _trapezoid(b)) == pytest.approx(1.0, abs=1e-3)


def test_mixture_draws_follow_the_mixture_density():
    """The proposals' distribution equals the density their weights divide by (Kolmogorov-Smirnov, 1e-4)."""
    mode, scale, shares = np.array([-2.0]), np.array([[0.09]]), np.array([0.4])
    M = 4000
    us, log_q, drawn = laplace._mixture_draws(np.random.default_rng(5), mode, scale, shares, M)
    assert us.shape == (M, 1) and drawn[0] == pytest.approx(0.4)
    np.testing.assert_allclose(log_q, laplace._mixture_logpdf(us, mode, scale, drawn), rtol=1e-12)
    total, u, q = _integral_1d(drawn, mode, scale)
    cdf = np.cumsum(q) * (u[1] - u[0]) / total
    emp = np.searchsorted(np.sort(us[:, 0]), u, side="right") / M
    assert np.max(np.abs(emp - cdf)) < math.sqrt(-math.log(1e-4 / 2) / (2 * M))
    # about 0.4 x 8% of the draws lie below a tenth of the mode's scale: the boundary is covered
    assert np.mean(us[:, 0] < mode[0] + math.log(0.1)) > 0.02


def test_no_boundary_component_gives_the_t_proposal_unchanged():
    mode, scale = np.array([0.0, 1.0]), np.array([[0.04, 0.01], [0.01, 0.09]])
    a = laplace._mixture_draws(np.random.default_rng(3), mode, scale, np.zeros(2), 50)
    b = laplace._t_proposals(np.random.default_rng(3), mode, scale, 50)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_boundary_shares_follow_the_probes():
    log2 = math.log(laplace.PROBE_EXCESS)
    shares = laplace._boundary_shares(np.array([log2 + 1, log2 - 0.1, 5.0, 3.0]),
                                      np.array([0.02, 0.5, 1e-6, 0.001]))
    # heavier than the t and mass near zero: a share (10 x the mass within [0.2, 0.5]); the t covers it: none;
    # mass negligible: none
    np.testing.assert_allclose(shares, [0.2, 0.0, 0.0, 0.2])
    many = laplace._boundary_shares(np.full(3, 5.0), np.full(3, 0.2))
    assert many.sum() == pytest.approx(laplace.BOUNDARY_TOTAL) and np.allclose(many, many[0])


def test_near_zero_mass_and_error():
    us = np.log(np.array([[0.001, 1.0], [0.5, 1.0], [1.0, 1.0], [2.0, 1.0]]))
    w = np.array([0.1, 0.2, 0.3, 0.4])
    (below, mass, se), (_, mass2, se2) = near_zero(us, w, np.zeros(2))
    assert below == pytest.approx(0.1) and mass == pytest.approx(0.1)
    assert se == pytest.approx(math.sqrt(0.01 * 0.81 + (0.04 + 0.09 + 0.16) * 0.01))
    assert mass2 == 0.0 and se2 == 0.0


def test_importance_warnings():
    assert pareto_k_threshold(1000) == pytest.approx(2 / 3)
    assert pareto_k_threshold(200) == pytest.approx(1 - 1 / math.log10(200))
    assert pareto_k_threshold(10**6) == 0.7
    names = ["row_effect_sd", "sigma"]
    fine = [(0.01, 0.06, 0.01), (0.1, 0.0, 0.0)]
    probed = np.array([0.05, 0.0])

    def warn(khat, zero, probe=probed, ess=800.0):
        return importance_warnings(names, khat, 1000, zero, ess=ess, probe_mass=probe)

    assert warn(0.5, fine) == []
    (k_message,) = warn(0.68, fine)  # above 0.67 for 1,000 proposals, below the old 0.7
    assert "Pareto k = 0.68 > 0.67" in k_message and "--engine jax" in k_message
    # covered much worse than the bulk: 2% error on 6% mass where 800 independent draws give 0.84%
    (thin,) = warn(0.2, [(0.01, 0.06, 0.02), (0.1, 0.0, 0.0)])
    assert thin.startswith("The posterior of row_effect_sd has mass near zero (6.0% below 0.01") and "jax" in thin
    # missed: the probes estimate 5%, the proposals found 0.5%
    (missed,) = warn(0.2, [(0.01, 0.005, 0.004), (0.1, 0.0, 0.0)])
    assert "about 5% of its mass near zero" in missed and "found 0.5%" in missed and "--engine jax" in missed
    assert warn(0.2, [(0.01, 0.005, 0.004), (0.1, 0.0, 0.0)], probe=np.array([0.005, 0.0])) == []  # too little
