"""Structure-aware exact LOO and predictive moments equal the dense computation on every likelihood path.

The fits here are made without a sampler (as in ``test_estimands``): the sampled
parameters are a simulation's true values, the scales jittered draw by draw among
a few values (so draws repeat their covariance parameters, as the ``laplace``
engine's do), and the integrated effects are drawn back exactly by
``twoway.fit._make_fit``. The oracle is the dense covariance of the observed
cells (:func:`twoway.likelihood.marginal.dense_covariance`, one Cholesky per
draw) conditioned directly (:func:`loo_cell_logpdf`, :func:`loo_block_logpdf`).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import xarray as xr

import twoway
from twoway.engines.description import EXACT
from twoway.fit import _make_fit
from twoway.likelihood.marginal import dense_covariance, point_parameters
from twoway.linalg.ops import NUMPY
from twoway.plan import resolve
from twoway.results.loo import (
    exact_loo,
    gaussian_lppd,
    loo_block_logpdf,
    loo_cell_logpdf,
    pointwise_log_likelihood,
    unit_blocks,
)
from twoway.results.moments import iter_moments
from twoway.results.structured import GaussianLaw, integrated_law, iter_laws

pytestmark = pytest.mark.filterwarnings("ignore::twoway.errors.TwowayWarning")

ATOL = 1e-8


def fit_from_truth(spec, data, truth, *, likelihood="auto", chains=2, draws=4, levels=3, seed=0, description=None):
    """A Fit whose parameters are ``truth``'s, each scale jittered among ``levels`` values; effects drawn back
    (``description``: the engine's, default NUTS)."""
    plan = resolve(spec, data, likelihood=likelihood)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, levels, size=(chains, draws))           # draws share their scales' values
    post = {}
    for name in plan.var_names:
        if name not in truth:
            continue
        v = np.asarray(truth[name], dtype=float)
        val = np.broadcast_to(v, (chains, draws) + v.shape).copy()
        if name == "sigma" or name.endswith("_sd") and not name.startswith(("row_log", "col_log")):
            factors = np.exp(0.3 * rng.standard_normal((levels,) + v.shape))
            val = val * factors[pick]
        if name == "coef":
            dims = ("term",)
        elif v.ndim == 0:
            dims = ()
        elif v.ndim == 1:
            dims = ("row",) if v.size == data.n_rows and name.startswith("row_") else ("col",)
        else:
            dims = (f"{name}_i", f"{name}_j")
        post[name] = (("chain", "draw") + dims, val)
    posterior = xr.Dataset(post, coords={"chain": np.arange(chains), "draw": np.arange(draws),
                                         "row": list(data.row_labels), "col": list(data.col_labels)})
    stats = xr.Dataset({"diverging": (("chain", "draw"), np.zeros((chains, draws), bool))})
    raw = xr.DataTree.from_dict({"posterior": posterior, "sample_stats": stats})
    info = {"engine": "jax", "backend": "jax", "likelihood_path": plan.path, "likelihood": likelihood,
            "seed": seed, "chains": chains, "draws": draws, "tune": 0, "compile_seconds": 0.0,
            "sampling_seconds": 0.0}
    if description is not None:
        info["description"] = description.to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _make_fit(raw, plan, info, description)


def dense_moments(fit, c, d, conditional, post=None, data=None):
    """The oracle: mean and dense covariance of the observed cells at one draw (the pre-structured code)."""
    spec = fit.model
    post = fit.posterior if post is None else post
    data = fit.data if data is None else data
    rr, ii, jj = data.observed_index()
    X = None
    if spec.covariates:
        X = np.asarray(fit.plan.covariates.X, dtype=float)
    if spec.effects == "integrate":
        plan = fit.plan
        lay, design = plan.layout, plan.design.dense()
        if conditional:
            design = design.without_effects()
        params = point_parameters(spec, lay, post, c, d, plan.constants)
        cov = dense_covariance(NUMPY, spec, lay, design, params)
        if not conditional:
            return np.full(ii.size, plan.m0), cov
        mean = np.full(ii.size, float(params.get("intercept", 0.0))) + params["row_effect"][ii] \
            + params["col_effect"][jj]
        if X is not None:
            mean = mean + X @ post["coef"].values[c, d]
        return mean, cov
    from twoway.likelihood.diagonal import residual_sd

    g = {k: post[k].values[c, d] for k in post.data_vars}
    se = data.se_or_zero()[rr, ii, jj]
    rs = g.get("row_sd")
    rs = None if rs is None else (rs[ii] if np.ndim(rs) else rs)
    cs = g.get("col_sd")
    cs = None if cs is None else (cs[jj] if np.ndim(cs) else cs)
    var = np.broadcast_to(residual_sd(se, rs, cs, g.get("sigma"), combine=spec.combine) ** 2, ii.shape)
    cov = np.diag(var).astype(float)
    mean = np.full(ii.size, float(g.get("intercept", 0.0)))
    if X is not None:
        mean = mean + X @ g["coef"]
    for side, idx in (("row", ii), ("col", jj)):
        if conditional or getattr(spec, f"{side}_effect") != "random":
            mean = mean + g[f"{side}_effect"][idx]
        else:
            cov = cov + g[f"{side}_effect_sd"] ** 2 * (idx[:, None] == idx[None, :])
    return mean, cov


def dense_loo(fit, conditional):
    """{by: (chains, draws, units)} by the dense oracle, for cells, rows and columns."""
    post, data = fit.posterior, fit.data
    y = data.observed_values()
    out = {by: np.empty((post.sizes["chain"], post.sizes["draw"], n))
           for by, n in (("cell", y.size), ("row", data.n_rows), ("col", data.n_cols))}
    for c in range(post.sizes["chain"]):
        for d in range(post.sizes["draw"]):
            mean, cov = dense_moments(fit, c, d, conditional, post, data)
            out["cell"][c, d] = loo_cell_logpdf(y, mean, cov)
            for by in ("row", "col"):
                out[by][c, d] = loo_block_logpdf(y, mean, cov, unit_blocks(data, by))
    return out


def _table_file(tmp_path, n):
    rng = np.random.default_rng(5)
    a = rng.normal(size=(n, n))
    C = a @ a.T / n + 0.5 * np.eye(n)
    path = tmp_path / "cov.csv"
    np.savetxt(path, C, delimiter=",")
    return path


def _case(name, tmp_path):
    """(spec, data, truth, likelihood option, the path the plan must take)."""
    R, N, K, missing, se, like, cov = 1, 5, 4, 0.0, None, "auto", None
    if name == "diagonal":
        spec = twoway.preset("additive", effects="sample")
    elif name == "anova":
        spec = twoway.preset("crossed")
    elif name == "woodbury-schur":
        spec, missing, se = twoway.preset("crossed-hetero"), 0.25, 0.3
    elif name == "woodbury":
        spec, missing = twoway.preset("crossed", row_effect="fixed", col_effect="fixed"), 0.2
    elif name == "woodbury-cell":
        spec, R, missing = twoway.ModelSpec(cell_effect="random", row_scale="homo", col_scale="none"), 2, 0.2
    elif name == "woodbury-latent":
        spec, R, missing, se = twoway.preset("latent"), 2, 0.15, 0.2
    elif name == "kronecker-cholesky":
        spec = twoway.preset("kronecker", col_structure="unstructured")
    elif name == "kronecker-ar1":
        spec, R = twoway.preset("kronecker", row_structure="ar1", col_structure="cs"), 2
    elif name == "kronecker-eigen":
        spec = twoway.preset("kronecker", row_structure="ar1", col_structure="unstructured", sigma=True)
    elif name == "dense-table":
        spec, R, missing = twoway.preset("kronecker", col_structure="unstructured"), 2, 0.2
    elif name == "full":
        cov = _table_file(tmp_path, N * K)
        spec, missing = twoway.ModelSpec(residual="full", covariance=f"{cov}", row_scale="none",
                                         col_scale="none", sigma=True), 0.1
    elif name == "sparse":
        spec, R, missing, se, like = twoway.preset("crossed"), 2, 0.5, 0.2, "sparse"
        N, K = 7, 6
    else:  # pragma: no cover
        raise KeyError(name)
    return spec, R, N, K, missing, se, like


PATHS = ["diagonal", "anova", "woodbury-schur", "woodbury", "woodbury-cell", "woodbury-latent",
         "kronecker-cholesky", "kronecker-ar1", "kronecker-eigen", "dense-table", "full", "sparse"]


def _fit(name, tmp_path, covariates=False, levels=3):
    spec, R, N, K, missing, se, like = _case(name, tmp_path)
    if covariates:
        spec = dataclasses.replace(spec, covariates="x + C(g)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = twoway.simulate(spec, N, K, R, seed=3, missing=missing, se=se)
    fit = fit_from_truth(spec, sim.data, sim.truth, likelihood=like, levels=levels)
    want = {"woodbury-cell": "woodbury-schur", "full": "dense-table"}.get(name, name)
    assert fit.plan.path == want
    return fit


@pytest.mark.parametrize("covariates", [False, True], ids=["plain", "covariates"])
@pytest.mark.parametrize("name", PATHS)
def test_structured_loo_equals_the_dense_loo(name, covariates, tmp_path):
    if covariates and name == "full":
        pytest.skip("a full covariance model is tested without covariates")
    # plain: draws repeat their scales (one law per group); with covariates: every draw its own (batches)
    fit = _fit(name, tmp_path, covariates, levels=8 if covariates else 3)
    for conditional in (False, True):
        want = dense_loo(fit, conditional)
        for by in ("cell", "row", "col"):
            got = pointwise_log_likelihood(fit, by=by, conditional=conditional).values
            np.testing.assert_allclose(got, want[by], rtol=1e-9, atol=ATOL, err_msg=f"{by} conditional={conditional}")


@pytest.mark.parametrize("name", ["anova", "woodbury-schur", "woodbury-cell", "sparse"])
def test_the_schur_and_dense_effects_give_the_same_precision(name, tmp_path):
    """H in the coordinates with one iid side eliminated equals the dense H, and both equal C^-1."""
    fit = _fit(name, tmp_path, covariates=True)
    plan = fit.plan
    params = point_parameters(fit.model, plan.layout, fit.posterior, 1, 2, plan.constants)
    C = dense_covariance(NUMPY, fit.model, plan.layout, plan.design.dense(), params)
    Q = np.linalg.inv(C)
    r = np.random.default_rng(0).normal(size=(C.shape[0], 3))
    block = np.flatnonzero(plan.layout.obs[2] == 1)
    methods = ["dense", "schur"] if name != "sparse" else ["auto"]
    for method in methods:
        law = integrated_law(fit.model, plan.layout, plan.design, params, conditional=False, method=method)
        prec = law.precision
        scale = np.abs(Q).max()
        np.testing.assert_allclose(prec.diag, np.diag(Q), rtol=1e-9, atol=1e-12 * scale)
        np.testing.assert_allclose(prec.apply(r), Q @ r, rtol=1e-9, atol=1e-11 * np.abs(Q @ r).max())
        np.testing.assert_allclose(prec.block(block), Q[np.ix_(block, block)], rtol=1e-9, atol=1e-12 * scale)
        np.testing.assert_allclose(law.var, np.diag(C), rtol=1e-12)
    if name != "sparse":
        assert type(integrated_law(fit.model, plan.layout, plan.design, params, conditional=False,
                                   method="schur").precision.H).__name__ == "SchurH"


@pytest.mark.parametrize("name", ["woodbury-cell", "woodbury-latent", "kronecker-eigen", "dense-table", "sparse"])
def test_moments_are_the_dense_covariance_and_draws_follow_it(name, tmp_path):
    fit = _fit(name, tmp_path, covariates=name != "dense-table")
    pairs = [(0, 1), (1, 3)]
    for conditional in (False, True):
        for (c, d), m in zip(pairs, iter_moments(fit, pairs, conditional=conditional)):
            mean, cov = dense_moments(fit, c, d, conditional)
            np.testing.assert_allclose(m.mean, mean, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(m.dense_cov(), cov, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(m.var, np.diag(cov), rtol=1e-12)
    # structured draws: the sample covariance of 20,000 draws within 5 Monte Carlo standard errors of the law
    m = next(iter_moments(fit, [(0, 0)], conditional=False))
    cov = m.dense_cov()
    draws = m.sample(np.random.default_rng(1), 20000)
    emp = np.cov(draws, rowvar=False)
    se = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / 20000)
    assert np.max(np.abs(emp - cov) / se) < 5.5


@pytest.mark.parametrize("name", ["diagonal", "woodbury-schur", "kronecker-eigen"])
def test_a_batch_of_precisions_equals_one_precision_per_draw(name, tmp_path):
    fit = _fit(name, tmp_path, covariates=True, levels=8)
    for conditional in (False, True):
        batched = list(iter_laws(fit, conditional=conditional, batch=True))
        single = list(iter_laws(fit, conditional=conditional, batch=False))
        assert all(ch.batch is not None for ch in batched) and all(ch.law is not None for ch in single)
        per_draw = {p: ch.law.precision for ch in single for p in ch.pairs}
        block = np.flatnonzero(fit.data.observed_index()[1] == 2)
        r = np.random.default_rng(1).normal(size=fit.data.n_observed)
        for ch in batched:
            prec = ch.batch
            for s, pair in enumerate(ch.pairs):
                one = per_draw[pair]
                np.testing.assert_allclose(prec.diag[s], one.diag, rtol=1e-10)
                np.testing.assert_allclose(prec.apply(np.broadcast_to(r, (prec.S, r.size)))[s], one.apply(r),
                                           rtol=1e-9, atol=1e-10 * np.abs(one.apply(r)).max())
                np.testing.assert_allclose(prec.block(block)[s], one.block(block), rtol=1e-9,
                                           atol=1e-12 * np.abs(one.block(block)).max())


def test_draws_that_share_their_scales_share_one_law(tmp_path):
    fit = _fit("kronecker-cholesky", tmp_path)
    chunks = list(iter_laws(fit, conditional=False))
    laws = {id(ch.law) for ch in chunks}
    keys = {tuple(np.round(fit.posterior["row_sd"].values[c, d], 15).ravel()) for ch in chunks for c, d in ch.pairs}
    assert len(laws) == len(keys) < 8
    assert sum(len(ch.pairs) for ch in chunks) == 8
    assert all(ch.mean.shape[0] == 1 for ch in chunks)   # the marginal mean is shared by every draw


def test_exact_loo_of_a_gaussian_posterior_uses_the_structured_precisions():
    """common-effect: nothing sampled; elpd and p_loo by the structured law equal the dense formulas."""
    spec = twoway.preset("common-effect")
    sim = twoway.simulate(spec, 6, 4, 1, seed=2, missing=0.2, se=0.5)
    fit = fit_from_truth(spec, sim.data, sim.truth, chains=1, draws=5, description=EXACT)
    assert fit.description.posterior_gaussian
    y = fit.data.observed_values()
    mean, cov = dense_moments(fit, 0, 0, False)
    _, resid = dense_moments(fit, 0, 0, True)
    for by in ("cell", "row"):
        e = exact_loo(fit, by=by)
        blocks = unit_blocks(fit.data, by)
        want = loo_cell_logpdf(y, mean, cov) if blocks is None else loo_block_logpdf(y, mean, cov, blocks)
        np.testing.assert_allclose(e.elpd_i.values, want, rtol=1e-10, atol=ATOL)
        np.testing.assert_allclose(e.p_loo_i.values, gaussian_lppd(y, mean, cov, resid, blocks) - want,
                                   rtol=1e-8, atol=ATOL)


def test_a_law_never_builds_an_n_by_n_matrix_for_its_precision(tmp_path, monkeypatch):
    """The precision's pieces come from the structure: building the dense covariance is not needed."""
    fit = _fit("woodbury-latent", tmp_path, covariates=True)

    def refuse(self):
        raise AssertionError("dense covariance built")

    monkeypatch.setattr(GaussianLaw, "dense", refuse)
    ll = pointwise_log_likelihood(fit, by="row", conditional=False)
    assert np.isfinite(ll.values).all()


# ---------------------------------------------------------------------------
# the draws dealt to worker processes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, covariates", [("sparse", False), ("woodbury", True)], ids=["groups", "batches"])
def test_worker_processes_give_the_same_rows_as_one_process(name, covariates, tmp_path, monkeypatch):
    """Forked workers (forced on by a zero time threshold) return every draw's row, the same numbers."""
    from twoway.results import loo as loo_module
    from twoway.results.workers import can_fork

    if not can_fork():
        pytest.skip("no fork on this system")
    fit = _fit(name, tmp_path, covariates, levels=8 if covariates else 3)
    one = loo_module.log_likelihood_rows(fit, conditional=False, workers=1)
    monkeypatch.setattr(loo_module, "PARALLEL_SECONDS", 0.0)
    seen = []
    two = loo_module.log_likelihood_rows(fit, conditional=False, workers=2, progress=lambda d, t: seen.append((d, t)))
    np.testing.assert_allclose(two[0][two[1]], one[0][one[1]], rtol=0, atol=1e-12)
    assert two[0].shape[0] <= one[1].size and one[0].shape[0] <= one[1].size
    if not covariates:                                                   # repeated scales share a row
        assert two[0].shape[0] == one[0].shape[0] < one[1].size
    assert seen[-1] == (one[1].size, one[1].size) and len(seen) > 1


def test_a_failing_worker_is_one_clear_error():
    from twoway.errors import FitError
    from twoway.results.workers import can_fork, map_tasks

    if not can_fork():
        pytest.skip("no fork on this system")

    def work(task):
        if task == 3:
            raise ValueError("bad task")
        yield task * 2

    with pytest.raises(FitError, match="A worker process failed: ValueError: bad task"):
        list(map_tasks(work, range(6), workers=2))
    got = sorted(piece for _, piece in map_tasks(lambda t: iter([t * 2]), range(6), workers=2))
    assert got == [0, 2, 4, 6, 8, 10]


def test_the_compiled_pair_sums_equal_numpys(tmp_path, monkeypatch):
    """The Schur complement's pair sums, compiled (Numba) or in NumPy: the same precision to rounding."""
    from twoway.results import pair_sums

    from twoway.results import structured

    fit = _fit("sparse", tmp_path)
    if not pair_sums.compiled():
        pytest.skip("Numba cannot compile here: only the NumPy sums run")
    calls = []
    original = structured.complement_pairs
    monkeypatch.setattr(structured, "complement_pairs",
                        lambda S, plan, m, f: (calls.append(plan.pair_flat.size), original(S, plan, m, f)))
    compiled = pointwise_log_likelihood(fit, by="cell", conditional=False).values
    assert calls and max(calls) > 0                                   # the Schur path ran, with pairs
    monkeypatch.setitem(pair_sums._KERNELS, "sums", None)            # the NumPy sums
    assert not pair_sums.compiled()
    plain = pointwise_log_likelihood(fit, by="cell", conditional=False).values
    np.testing.assert_allclose(compiled, plain, rtol=1e-12, atol=1e-12)
