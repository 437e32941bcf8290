"""The sparse path (CHOLMOD) equals the dense twin; its effects follow the dense conditional law; the
laplace engine's posterior agrees with an exact grid and with NUTS; the chooser picks sparse on large
sparse tables and refuses dense paths that do not fit in memory."""

import math
import warnings

import numpy as np
import pytest
from scipy.stats import norm

from twoway import ModelSpec, fit, preset, simulate
from twoway.errors import ConvergenceWarning, FitError, ModelError, TwowayError
from twoway.likelihood import memory, sparse as sp
from twoway.linalg.ops import NUMPY
from twoway.likelihood.paths import marginal_logp
from twoway.likelihood.marginal import dense_covariance, indicator_matrix
from twoway.plan import resolve

TRUTH = {"row_effect_sd": 0.5, "col_effect_sd": 0.8, "sigma": 1.0}


def _known_matrix_file(tmp_path, labels, seed=0):
    n = len(labels)
    a = np.random.default_rng(seed).normal(size=(n, n))
    K = a @ a.T / n + np.eye(n)
    lines = ["," + ",".join(labels)] + [lab + "," + ",".join(repr(float(v)) for v in row)
                                        for lab, row in zip(labels, K)]
    path = tmp_path / "relationship.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _params(plan, rng, S=3):
    p = {"row_effect_sd": rng.uniform(0.2, 1.5, S), "col_effect_sd": rng.uniform(0.2, 1.5, S),
         "sigma": rng.uniform(0.2, 1.2, S)}
    p.update({k: np.full(S, v) for k, v in plan.constants.items()})
    return p


def _table(case, tmp_path):
    rng = np.random.default_rng(1)
    spec = preset("crossed")
    se = None
    if case == "se-constant":
        se = 0.3
    elif case == "se-varying":
        se = rng.uniform(0.1, 0.8, (2, 9, 7))
    data = simulate("crossed", 9, 7, 2, TRUTH, seed=3, missing=0.55, se=se).data
    if case == "known-rows":
        file = _known_matrix_file(tmp_path, data.row_labels)
        spec = ModelSpec(row_effect="random", col_effect="random", row_scale="none", col_scale="none", sigma=True,
                         row_effect_cov=f"known:{file}")
    return spec, data


CASES = ["plain", "se-constant", "se-varying", "known-rows"]


@pytest.mark.parametrize("case", CASES)
def test_sparse_logp_equals_dense_twin(case, tmp_path):
    spec, data = _table(case, tmp_path)
    sparse = resolve(spec, data, likelihood="sparse")
    dense = resolve(spec, data, likelihood="dense")
    assert sparse.path == "sparse" and isinstance(sparse.design, sp.SparseDesign)
    params = _params(sparse, np.random.default_rng(7))
    got = marginal_logp(NUMPY, spec, sparse.layout, sparse.design, params, "sparse")
    want = [marginal_logp(NUMPY, spec, dense.layout, dense.design, {k: v[s] for k, v in params.items()}, "dense")
            for s in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("case", ["plain", "se-varying", "known-rows"])
def test_sparse_effects_follow_the_dense_conditional_law(case, tmp_path):
    spec, data = _table(case, tmp_path)
    plan = resolve(spec, data, likelihood="sparse")
    dense = resolve(spec, data, likelihood="dense")
    params = {k: float(v[0]) for k, v in _params(plan, np.random.default_rng(3), S=1).items()}
    # dense: u | y ~ N(G Z' C^-1 r, G - G Z' C^-1 Z G)
    lay, design = dense.layout, dense.design
    C = dense_covariance(NUMPY, spec, lay, design, params)
    Z = indicator_matrix(lay) @ design.E
    G = design.covariance(NUMPY, params)
    CiZG = np.linalg.solve(C, Z @ G)
    mean = CiZG.T @ lay.r[lay.obs]
    cov = G - G @ Z.T @ CiZG
    system = plan.design.system(spec, plan.layout)
    factor = system.analyse()
    _, got_mean = system.evaluate(factor, params)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-9, atol=1e-10)
    S = 20000
    u = system.draw(factor, got_mean, np.random.default_rng(11), S)
    z = np.linalg.solve(np.linalg.cholesky(cov), (u - mean).T).T  # whitened: iid standard normal
    m = z.shape[1]
    n_checks = m + m * (m + 1) // 2
    crit = norm.isf(0.001 / (2 * n_checks))  # a 0.001 false-alarm rate over all entries (Bonferroni)
    assert np.max(np.abs(z.mean(axis=0))) * np.sqrt(S) < crit
    emp = np.cov(z, rowvar=False)
    se_entry = np.where(np.eye(m, dtype=bool), np.sqrt(2.0 / S), np.sqrt(1.0 / S))
    assert np.max(np.abs(emp - np.eye(m)) / se_entry) < crit


def test_laplace_posterior_equals_an_exact_grid():
    """Two variance parameters: the importance-sampled posterior means agree with a fine grid's."""
    from twoway.engines.laplace import log_prior

    spec = ModelSpec(row_effect="random", col_effect="none", row_scale="none", col_scale="none", sigma=True)
    data = simulate(spec, 30, 8, 1, {"row_effect_sd": 0.6, "sigma": 1.0}, seed=5, missing=0.5).data
    f = fit(spec, data, engine="laplace", chains=2, draws=1000, seed=4)
    assert f.info["likelihood_path"] == "sparse" and f.info["method"] == "laplace-importance"
    assert f.info["pareto_k"] < 0.7
    plan = resolve(spec, data, likelihood="sparse", priors=f.priors)
    system = plan.design.system(spec, plan.layout)
    factor = system.analyse()
    mode = np.log([f.info["laplace_mode"]["row_effect_sd"], f.info["laplace_mode"]["sigma"]])
    a = np.linspace(mode[0] - 3.0, mode[0] + 3.0, 91)
    b = np.linspace(mode[1] - 1.0, mode[1] + 1.0, 61)
    lp = np.empty((a.size, b.size))
    for i, ua in enumerate(a):
        for j, ub in enumerate(b):
            p = {**plan.constants, "row_effect_sd": math.exp(ua), "sigma": math.exp(ub)}
            lp[i, j] = (system.evaluate(factor, p)[0] + ua + ub + log_prior(plan.priors["row_effect_sd"], p["row_effect_sd"])
                        + log_prior(plan.priors["sigma"], p["sigma"]))
    w = np.exp(lp - lp.max())
    w /= w.sum()
    ess = f.info["importance_ess"]
    for name, grid in (("row_effect_sd", np.exp(a)[:, None]), ("sigma", np.exp(b)[None, :])):
        exact_mean = float((w * grid).sum())
        exact_sd = math.sqrt(float((w * grid**2).sum()) - exact_mean**2)
        got = float(f.posterior[name].mean())
        # resampled draws: Monte Carlo error from the importance ESS; 4 sd: false alarms ~1e-4 per check
        assert abs(got - exact_mean) < 4.0 * exact_sd / math.sqrt(ess), (name, got, exact_mean)


def test_laplace_fit_is_a_full_posterior_reproducible_from_the_seed():
    data = simulate("crossed", 40, 25, 1, TRUTH, seed=2, missing=0.7).data
    a = fit("crossed", data, engine="laplace", chains=2, draws=300, seed=9)
    b = fit("crossed", data, engine="laplace", chains=2, draws=300, seed=9)
    post = a.posterior
    for name, dims in (("intercept", ("chain", "draw")), ("row_effect", ("chain", "draw", "row")),
                       ("col_effect", ("chain", "draw", "col")), ("row_effect_sd", ("chain", "draw")),
                       ("col_effect_sd", ("chain", "draw")), ("sigma", ("chain", "draw"))):
        assert post[name].dims == dims
        np.testing.assert_array_equal(post[name].values, b.posterior[name].values)
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 300
    assert list(post["row_effect"].coords["row"].values) == list(data.row_labels)
    info = a.info
    assert info["engine"] == "laplace" and info["factorisations"] > info["proposals"] > 0
    with warnings.catch_warnings():  # R-hat over thousands of resampled effects may pass 1.01 by chance
        warnings.simplefilter("ignore", ConvergenceWarning)
        text = a.summary().format()
    assert "importance ESS" in text and "Pareto k" in text and "factorisations" in text


def _large_sparse(n=1200, k=400, n_obs=9000, seed=0):
    rng = np.random.default_rng(seed)
    missing = 1.0 - n_obs / (n * k)
    return simulate("crossed", n, k, 1, TRUTH, seed=seed, missing=missing).data


def test_chooser_picks_sparse_on_a_large_sparse_table_without_a_dense_design():
    data = _large_sparse()
    plan = resolve(preset("crossed"), data)
    assert plan.path == "sparse"
    assert plan.design._dense is None  # no (m, m) matrix was built
    small = simulate("crossed", 12, 9, 1, TRUTH, seed=1, missing=0.3).data
    assert resolve(preset("crossed"), small).path == "woodbury-schur"
    # many rows but few columns: woodbury-schur eliminates the rows and keeps a small dense block
    tall = _large_sparse(n=3000, k=40, n_obs=20000)
    assert resolve(preset("crossed"), tall).path == "woodbury-schur"
    # the model decides too: heterogeneous scales are not for the sparse path
    assert not sp.sparse_applies(preset("crossed-hetero"))


def test_too_big_dense_path_is_refused_with_the_memory_it_needs(monkeypatch):
    data = _large_sparse()
    monkeypatch.setattr(memory, "available_memory", lambda: 50 * 2**20)
    with pytest.raises(ModelError, match=r"would need about .* GiB of memory; 0\.0 GiB is available"):
        resolve(preset("crossed-hetero"), data)
    with pytest.raises(ModelError, match="sparse path"):
        resolve(preset("crossed"), data, likelihood="nuts")
    # naming a NUTS engine for a table only the sparse path can take: a clear error, before any work
    with pytest.raises(FitError, match="laplace"):
        fit("crossed", data, engine="jax", chains=1, draws=10, tune=10, seed=1)


def test_naming_a_nuts_engine_forces_a_traceable_path_when_it_fits():
    data = _large_sparse(n=700, k=320, n_obs=20000)
    from twoway.fit import compile_model

    assert resolve(preset("crossed"), data).path == "sparse"
    compiled = compile_model("crossed", data, engine="pymc", progress=False)
    assert compiled.plan.path == "woodbury-schur" and compiled.engine == "pymc"
    assert compile_model("crossed", data, progress=False).engine == "laplace"


def test_sparse_path_is_refused_for_models_it_cannot_fit():
    data = simulate("crossed", 6, 5, 1, TRUTH, seed=1).data
    with pytest.raises(ModelError, match="sparse likelihood path fits random row"):
        resolve(preset("crossed-hetero"), data, likelihood="sparse")


def test_missing_scikit_sparse_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sksparse", None)
    monkeypatch.setitem(sys.modules, "sksparse.cholmod", None)
    with pytest.raises(TwowayError, match="scikit-sparse"):
        sp.cholmod()


@pytest.mark.slow
def test_laplace_agrees_with_nuts_on_a_medium_table():
    """300 x 100, 10% observed: the laplace engine and NUTS (jax, woodbury-schur) within Monte Carlo error."""
    data = simulate("crossed", 300, 100, 1, {"row_effect_sd": 0.32, "col_effect_sd": 0.52, "sigma": 1.18},
                    seed=8, missing=0.9).data
    nuts = fit("crossed", data, engine="jax", chains=4, draws=1000, tune=1000, seed=3)
    lap = fit("crossed", data, engine="laplace", chains=4, draws=500, seed=3)
    assert nuts.info["likelihood_path"] != "sparse" and lap.info["likelihood_path"] == "sparse"
    ess_is = lap.info["importance_ess"]
    table = nuts.summary().table
    for name in ("row_effect_sd", "col_effect_sd", "sigma", "intercept"):
        a, b = float(nuts.posterior[name].mean()), float(lap.posterior[name].mean())
        sd = float(nuts.posterior[name].std())
        mcse = sd * math.sqrt(1.0 / float(table.loc[name, "ess_bulk"]) + 1.0 / ess_is)
        assert abs(a - b) < 4.0 * mcse, (name, a, b, mcse)  # 4 Monte Carlo se: ~1e-4 false alarms per check
        assert abs(float(nuts.posterior[name].std()) / float(lap.posterior[name].std()) - 1.0) < 0.15


def test_a_compiled_laplace_model_samples_another_table_of_its_layout():
    from twoway.fit import compile_model

    first = simulate("crossed", 30, 12, 1, TRUTH, seed=2, missing=0.5)
    compiled = compile_model("crossed", first.data, engine="laplace", progress=False)
    values = first.data.values + 1.0  # the same layout, other numbers
    from twoway.table.data import TwoWayData

    other = TwoWayData.from_array(values[0], row_labels=first.data.row_labels, col_labels=first.data.col_labels)
    f = compiled.sample(other, chains=1, draws=200, seed=1)
    assert f.info["likelihood_path"] == "sparse" and f.info["method"] == "laplace-importance"
    assert abs(float(f.posterior["intercept"].mean()) - float(np.nanmean(values)) ) < 1.0


def test_proposals_in_processes_give_the_same_draws(monkeypatch):
    from twoway.engines import laplace

    data = simulate("crossed", 30, 12, 1, TRUTH, seed=6, missing=0.5).data
    one = fit("crossed", data, engine="laplace", chains=1, draws=200, seed=5, cores=1)
    monkeypatch.setattr(laplace, "PROCESS_MIN_SYSTEM", 0)
    two = fit("crossed", data, engine="laplace", chains=1, draws=200, seed=5, cores=2)
    assert one.info["processes"] == 1 and two.info["processes"] == 2
    assert two.info["factorisations"] == one.info["factorisations"]
    for name in ("sigma", "row_effect", "col_effect", "intercept"):
        np.testing.assert_array_equal(one.posterior[name].values, two.posterior[name].values)
