"""Exact leave-one-out densities: closed forms against direct conditioning, and on real fits.

One model is compiled and sampled once in this file (the ``additive`` preset
on a small table with replicates, missing cells and known se); with
``conditional=False`` its random effects are integrated out, which gives the
dense covariances that correlated models will produce.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

import twoway
from twoway import FitError, Prior
from twoway.fit import compile_model
from twoway.likelihood.diagonal import residual_sd
from twoway.results.loo import (
    add_log_likelihood,
    default_conditional,
    loo,
    loo_block_logpdf,
    loo_cell_logpdf,
    pointwise_log_likelihood,
    unit_blocks,
    unit_labels,
)
from twoway.results.moments import iter_moments

SPEC = twoway.preset("additive").with_priors(
    intercept=Prior.make("normal", mu=0, sigma=3),
    row_effect_sd=Prior.make("halfnormal", sigma=1),
    col_effect_sd=Prior.make("halfnormal", sigma=1),
    row_log_sd_loc=Prior.make("normal", mu=-1, sigma=0.5),
    row_log_sd_scale=Prior.make("halfnormal", sigma=0.3),
    col_log_sd_loc=Prior.make("normal", mu=-1, sigma=0.5),
    col_log_sd_scale=Prior.make("halfnormal", sigma=0.3),
)


# ---------------------------------------------------------------------------
# pure functions: closed forms against conditioning the dense Gaussian
# ---------------------------------------------------------------------------


def random_spd(rng, n, condition=1.0):
    """A random SPD matrix with correlated entries and eigenvalues spread by ``condition``."""
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = np.exp(rng.uniform(0, math.log(condition), size=n)) if condition > 1 else rng.uniform(0.5, 2, size=n)
    return (q * eig) @ q.T


def direct_conditional_logpdf(y, mean, cov, block):
    """log N(y_B | mean and covariance of y_B given y_-B), by partitioning and Schur complement."""
    block = np.asarray(block)
    rest = np.setdiff1d(np.arange(y.size), block)
    s_bb = cov[np.ix_(block, block)]
    if rest.size:
        s_br = cov[np.ix_(block, rest)]
        s_rr = cov[np.ix_(rest, rest)]
        cond_mean = mean[block] + s_br @ np.linalg.solve(s_rr, y[rest] - mean[rest])
        cond_cov = s_bb - s_br @ np.linalg.solve(s_rr, s_br.T)
    else:
        cond_mean, cond_cov = mean[block], s_bb
    d = y[block] - cond_mean
    _, logdet = np.linalg.slogdet(cond_cov)
    return -0.5 * (block.size * math.log(2 * math.pi) + logdet + d @ np.linalg.solve(cond_cov, d))


@pytest.mark.parametrize("n, condition", [(1, 1.0), (2, 1.0), (5, 10.0), (13, 100.0), (40, 1e3)])
def test_cell_density_equals_direct_conditioning(n, condition):
    rng = np.random.default_rng(n)
    cov = random_spd(rng, n, condition)
    mean = rng.normal(size=n)
    y = rng.multivariate_normal(mean, cov)
    got = loo_cell_logpdf(y, mean, cov)
    want = np.array([direct_conditional_logpdf(y, mean, cov, [i]) for i in range(n)])
    assert got.shape == (n,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("n, seed", [(4, 0), (9, 1), (24, 2)])
def test_block_density_equals_direct_conditioning(n, seed):
    rng = np.random.default_rng(seed)
    cov = random_spd(rng, n, 50.0)
    mean = rng.normal(size=n)
    y = rng.multivariate_normal(mean, cov)
    perm = rng.permutation(n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(3, n - 1), replace=False))
    blocks = np.split(perm, cuts)  # a random partition, blocks of unequal sizes, unsorted indices
    blocks.append(np.arange(n))  # the whole vector: its marginal density
    blocks.append(np.array([perm[0]]))  # a one-cell block is a cell
    got = loo_block_logpdf(y, mean, cov, blocks)
    want = np.array([direct_conditional_logpdf(y, mean, cov, b) for b in blocks])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    assert got[-1] == pytest.approx(loo_cell_logpdf(y, mean, cov)[perm[0]], abs=1e-12)


def test_diagonal_fast_path_equals_dense_path():
    rng = np.random.default_rng(7)
    n = 11
    var = rng.uniform(0.2, 3.0, size=n)
    mean = rng.normal(size=n)
    y = mean + np.sqrt(var) * rng.normal(size=n)
    blocks = [np.array([0, 3, 5]), np.array([1]), np.array([2, 4, 6, 7, 8, 9, 10])]
    np.testing.assert_allclose(loo_cell_logpdf(y, mean, var=var), loo_cell_logpdf(y, mean, np.diag(var)),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(loo_block_logpdf(y, mean, None, blocks, var=var),
                               loo_block_logpdf(y, mean, np.diag(var), blocks), rtol=0, atol=1e-12)


def test_stacked_draws_equal_one_draw_at_a_time():
    rng = np.random.default_rng(3)
    covs = np.stack([random_spd(rng, 6, 5.0) for _ in range(4)])
    means = rng.normal(size=(4, 6))
    ys = rng.normal(size=(4, 6))
    blocks = [np.array([0, 1]), np.array([2, 3, 4, 5])]
    cells = loo_cell_logpdf(ys, means, covs)
    whole = loo_block_logpdf(ys, means, covs, blocks)
    for s in range(4):
        np.testing.assert_allclose(cells[s], loo_cell_logpdf(ys[s], means[s], covs[s]), atol=1e-12)
        np.testing.assert_allclose(whole[s], loo_block_logpdf(ys[s], means[s], covs[s], blocks), atol=1e-12)


def test_leave_one_out_is_not_the_marginal_density_when_cells_correlate():
    # the check that the formula conditions at all: with correlation, p(y_i | y_-i) != p(y_i)
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    y, mean = np.array([1.0, 1.0]), np.zeros(2)
    got = loo_cell_logpdf(y, mean, cov)
    marginal = -0.5 * (math.log(2 * math.pi) + 1.0)
    expected = -0.5 * (math.log(2 * math.pi) + math.log(0.19) + (1.0 - 0.9) ** 2 / 0.19)
    np.testing.assert_allclose(got, [expected, expected], atol=1e-12)
    assert abs(got[0] - marginal) > 0.5


def test_bad_covariances_and_arguments_are_refused():
    with pytest.raises(FitError, match="not positive definite"):
        loo_cell_logpdf(np.zeros(2), np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(FitError, match="covariance or the variances"):
        loo_cell_logpdf(np.zeros(2), np.zeros(2))


# ---------------------------------------------------------------------------
# fits
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def result():
    sim = twoway.simulate(SPEC, 5, 6, 2, seed=11, missing=0.1, se=0.2,
                          row_labels=list("abcde"), col_labels=["u", "v", "w", "x", "y", "z"])
    return compile_model(SPEC, sim.data, progress=False).sample(chains=2, draws=250, tune=300, seed=4,
                                                                progress=False)


def test_units_blocks_and_labels(result):
    data = result.data
    rr, ii, jj = data.observed_index()
    labels = unit_labels(data, "cell")
    assert len(labels) == data.n_observed
    assert labels[0] == f"{data.replicate_labels[rr[0]]}|{data.row_labels[ii[0]]}|{data.col_labels[jj[0]]}"
    rows = unit_blocks(data, "row")
    assert len(rows) == 5 and sum(b.size for b in rows) == data.n_observed
    assert all((ii[b] == k).all() for k, b in enumerate(rows))
    assert set(rr[rows[0]]) == {0, 1}  # a row block spans both replicate tables
    assert unit_labels(data, "col") == list(data.col_labels)
    assert unit_blocks(data, "cell") is None
    with pytest.raises(FitError, match="one of cell, row, col"):
        unit_blocks(data, "replicate")


@pytest.mark.parametrize("by, size", [("cell", None), ("row", 5), ("col", 6)])
def test_pointwise_log_likelihood_dims_and_labels(result, by, size):
    ll = pointwise_log_likelihood(result, by=by)
    n = result.data.n_observed if size is None else size
    assert ll.dims == ("chain", "draw", by) and ll.shape == (2, 250, n) and ll.name == "y"
    assert list(ll.coords[by].values) == unit_labels(result.data, by)
    assert np.isfinite(ll.values).all()
    assert ll.attrs["twoway_conditional"] == int(default_conditional(result, by))
    if by == "cell":
        assert list(ll.coords["cell_row"].values) == [result.data.row_labels[i] for i in result.data.observed_index()[1]]


def test_conditional_cells_are_the_model_likelihood(result):
    """Given the drawn effects, the cells are independent: the ordinary normal log-density."""
    ll = pointwise_log_likelihood(result, by="cell", conditional=True, draws=20)
    post = result.posterior
    data = result.data
    rr, ii, jj = data.observed_index()
    y = data.observed_values()
    c, d = 1, int(ll.coords["draw"].values[7])
    p = {k: post[k].values[c, d] for k in ("intercept", "row_effect", "col_effect", "row_sd", "col_sd")}
    mu = p["intercept"] + p["row_effect"][ii] + p["col_effect"][jj]
    sd = residual_sd(data.se_or_zero()[rr, ii, jj], p["row_sd"][ii], p["col_sd"][jj], None, combine="variance")
    want = -0.5 * np.log(2 * np.pi * sd**2) - 0.5 * ((y - mu) / sd) ** 2
    np.testing.assert_allclose(ll.sel(draw=d).values[c], want, rtol=1e-10)
    # rows given the effects: the sum of their cells
    rows = pointwise_log_likelihood(result, by="row", conditional=True, draws=20)
    sums = [ll.values[..., b].sum(-1) for b in unit_blocks(data, "row")]
    np.testing.assert_allclose(rows.values, np.stack(sums, -1), rtol=1e-12)


def test_marginal_cells_condition_the_dense_law_of_each_draw(result):
    """With the random effects integrated out the covariance is dense; the stored value is p(y_i | y_-i)."""
    ll = pointwise_log_likelihood(result, by="cell", conditional=False, draws=5)
    y = result.data.observed_values()
    m = next(iter_moments(result, [(0, int(ll.coords["draw"].values[2]))], conditional=False))
    assert m.cov is not None and np.count_nonzero(m.cov - np.diag(np.diag(m.cov))) > 0
    for i in (0, 7, y.size - 1):
        want = direct_conditional_logpdf(y, m.mean, m.cov, [i])
        assert ll.values[0, 2, i] == pytest.approx(want, abs=1e-10)
    marginal = -0.5 * np.log(2 * np.pi * m.var) - 0.5 * (y - m.mean) ** 2 / m.var
    assert not np.allclose(ll.values[0, 2], marginal, atol=1e-3)


def test_thinned_draws_keep_chains_and_draw_labels(result):
    ll = pointwise_log_likelihood(result, by="col", draws=50)
    assert ll.shape == (2, 50, 6)
    assert set(ll.coords["draw"].values) <= set(result.posterior["draw"].values)
    full = pointwise_log_likelihood(result, by="col")
    np.testing.assert_allclose(ll.values, full.sel(draw=ll.coords["draw"]).values)
    with pytest.raises(FitError, match="whole number"):
        pointwise_log_likelihood(result, by="col", draws=0)


def lppd_and_is(ll: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: log mean exp(ll) (in-sample) and -log mean exp(-ll) (plain importance sampling LOO)."""
    flat = ll.reshape(-1, ll.shape[-1])
    s = flat.shape[0]

    def lme(a):
        top = a.max(0)
        return top + np.log(np.exp(a - top).sum(0)) - math.log(s)

    return lme(flat), -lme(-flat)


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
@pytest.mark.parametrize("by", ["cell", "row"])
def test_arviz_loo_on_the_stored_group(result, by):
    import arviz as az

    with_ll = add_log_likelihood(result, by=by)
    assert "log_likelihood" in with_ll.tree.children and "log_likelihood" not in result.tree.children
    stored = with_ll.tree["log_likelihood"]["y"]
    assert stored.dims == ("chain", "draw", by)
    res = az.loo(with_ll.tree, pointwise=True)
    ours = loo(result, by=by)
    assert res.elpd == pytest.approx(ours.elpd) and np.isfinite(res.elpd) and np.isfinite(res.se)
    assert ours.pareto_k.dims == (by,) and ours.n_data_points == stored.sizes[by]
    lppd, is_loo = lppd_and_is(stored.values)
    # PSIS weights fall as the density rises, so each unit's estimate is below its in-sample density
    assert (ours.elpd_i.values <= lppd + 1e-9).all()
    assert ours.p > 0 and ours.elpd <= lppd.sum()
    good = ours.pareto_k.values < 0.5
    # where the importance ratios are well behaved, plain importance sampling agrees with PSIS
    np.testing.assert_allclose(ours.elpd_i.values[good], is_loo[good], atol=0.05)


def test_conditioning_on_effects_or_integrating_them_out_estimates_the_same_elpd(result):
    """Both are estimators of the same leave-one-cell-out density; they differ by Monte Carlo error only."""
    given = loo(result, by="cell", conditional=True)
    integrated = loo(result, by="cell", conditional=False)
    assert abs(given.elpd - integrated.elpd) < 1.0  # observed difference 0.1 (se of elpd 3.6)


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_fit_with_log_likelihood_saves_and_loads(result, tmp_path):
    import arviz as az

    path = add_log_likelihood(result, by="col").save(tmp_path / "fit.nc")
    back = twoway.Fit.load(path)
    assert back.tree["log_likelihood"]["y"].dims == ("chain", "draw", "col")
    assert isinstance(back.tree, xr.DataTree)
    assert az.loo(back.tree).elpd == pytest.approx(loo(result, by="col").elpd)
