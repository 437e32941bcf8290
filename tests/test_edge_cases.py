"""Edge cases that are the everyday case somewhere: nothing to sample, partial se, a random cell effect,
sampler start-up failures, unreliable leave-one-out."""

import dataclasses

import numpy as np
import pytest
from scipy.stats import multivariate_normal

import twoway
from twoway.app.cli import main
from twoway.table.data import TwoWayData
from twoway.errors import DataError, ModelError
from twoway.linalg.ops import NUMPY
from twoway.likelihood.paths import marginal_logp
from twoway.spec.model import ModelSpec, preset
from twoway.plan import resolve

P = twoway.Prior


# -- 1. nothing left to sample: the common-effect network meta-analysis ---------------------------------
def _nma_table(seed: int = 11):
    """8 studies x 5 treatments, about 40% of the cells missing (treatments not in a study), known se."""
    rng = np.random.default_rng(seed)
    N, K = 8, 5
    study, treat = rng.normal(0, 1, N), np.array([0.0, 0.5, -0.3, 1.0, 0.2])
    se = rng.uniform(0.1, 0.4, (N, K))
    y = 0.7 + study[:, None] + treat[None, :] + rng.normal(0, 1, (N, K)) * se
    drop = rng.random((N, K)) < 0.4
    drop[np.arange(N), np.arange(N) % K] = False          # every study keeps 2 treatments at least
    drop[np.arange(N), (np.arange(N) + 1) % K] = False
    y[drop] = np.nan
    return TwoWayData.from_array(y, se=np.where(drop, np.nan, se))


WIDE = 1e3  # prior sd of the intercept and the fixed effects: the prior shifts the GLS answer by ~ (se/WIDE)^2


def _gls(data):
    """GLS estimate and covariance of (intercept, row_effect, col_effect), the effects summing to zero."""
    from scipy.linalg import helmert

    _, N, K = data.values.shape
    ii, jj = np.nonzero(data.mask[0])
    y, w = data.values[0][ii, jj], 1.0 / data.se[0][ii, jj] ** 2
    Hr, Hc = helmert(N, full=False).T, helmert(K, full=False).T
    X = np.concatenate([np.ones((ii.size, 1)), Hr[ii], Hc[jj]], axis=1)
    cov_c = np.linalg.inv(X.T @ (w[:, None] * X))
    beta_c = cov_c @ X.T @ (w * y)
    T = np.zeros((1 + N + K, X.shape[1]))
    T[0, 0] = 1.0
    T[1:1 + N, 1:N] = Hr
    T[1 + N:, N:] = Hc
    return T @ beta_c, T @ cov_c @ T.T


def _wide_common_effect():
    return preset("common-effect").with_priors(intercept=P.make("normal", mu=0.0, sigma=WIDE),
                                               row_effect=P.make("normal", mu=0.0, sigma=WIDE),
                                               col_effect=P.make("normal", mu=0.0, sigma=WIDE))


def test_common_effect_posterior_is_the_gls_estimate():
    """The exact posterior's draws have the GLS mean and covariance.

    S = 4 x 2000 independent draws: each mean is within 4.5 Monte Carlo sds of the GLS estimate, each
    covariance entry within 4.5 of its sampling sd sqrt((s_ii s_jj + s_ij^2) / S); the prior's pull
    (relative ~ (0.4 / 1e3)^2) is far below either. 14 means and 105 covariance entries, two-sided
    4.5 sd each: a false alarm below 1e-3 in all.
    """
    data = _nma_table()
    fit = twoway.fit(_wide_common_effect(), data, chains=4, draws=2000, seed=5)
    assert fit.info["method"] == "exact"
    post = fit.posterior
    assert post["row_effect"].shape == (4, 2000, 8) and post["col_effect"].shape == (4, 2000, 5)
    draws = np.concatenate([post["intercept"].values.reshape(-1, 1), post["row_effect"].values.reshape(-1, 8),
                            post["col_effect"].values.reshape(-1, 5)], axis=1)
    S = draws.shape[0]
    mean, cov = _gls(data)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(draws.mean(0) - mean) < 4.5 * sd / np.sqrt(S))
    err = np.sqrt((np.outer(sd**2, sd**2) + cov**2) / S)
    iu = np.triu_indices(cov.shape[0])
    assert np.all(np.abs(np.cov(draws.T)[iu] - cov[iu]) < 4.5 * err[iu])


def test_common_effect_draws_are_reproducible_from_the_seed():
    data = _nma_table()
    spec = preset("common-effect")
    a = twoway.fit(spec, data, chains=2, draws=50, seed=3)
    b = twoway.fit(spec, data, chains=2, draws=50, seed=3)
    c = twoway.fit(spec, data, chains=2, draws=50, seed=4)
    np.testing.assert_array_equal(a.posterior["col_effect"].values, b.posterior["col_effect"].values)
    assert not np.array_equal(a.posterior["col_effect"].values, c.posterior["col_effect"].values)
    assert a.info["method"] == "exact" and a.sample_stats.sizes.get("draw", 50) == 50


def test_common_effect_through_the_cli(tmp_path, capsys):
    data = _nma_table()
    rows = []
    for i, j in zip(*np.nonzero(data.mask[0])):
        rows.append(f"{data.row_labels[i]},{data.col_labels[j]},{float(data.values[0, i, j])!r},{float(data.se[0, i, j])!r}")
    table = tmp_path / "nma.csv"
    table.write_text("study,treatment,value,se\n" + "\n".join(rows) + "\n")
    out = tmp_path / "nma.nc"
    status = main(["fit", str(table), "--row", "study", "--col", "treatment", "--model", "common-effect",
                   "--draws", "200", "--seed", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "exact Gaussian, nothing left to sample" in captured.out
    fit = twoway.Fit.load(out)
    assert fit.info["method"] == "exact" and fit.posterior.sizes["draw"] == 200


# -- 3. partial known se -----------------------------------------------------------------------------
def test_empty_se_is_no_known_error_not_a_missing_cell(tmp_path):
    """An empty se keeps the cell, with variance from the unknown scales alone (log-density by hand)."""
    lines = ["row,col,value,se"]
    rng = np.random.default_rng(4)
    for i in range(4):
        for j in range(3):
            se = "" if (i + j) % 4 == 0 else f"{rng.uniform(0.2, 0.5):.3f}"
            lines.append(f"r{i},c{j},{rng.normal():.4f},{se}")
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    data = TwoWayData.from_csv(path, row="row", col="col", value="value", se="se")
    assert data.n_observed == 12
    assert np.count_nonzero(data.se_or_zero() == 0) == 3
    spec = ModelSpec(row_effect="none", col_effect="none", intercept=False, row_scale="none",
                     col_scale="none", sigma=True)
    plan = resolve(spec, data)
    sigma = 0.7
    value = float(marginal_logp(NUMPY, spec, plan.layout, plan.design, {"sigma": sigma}, plan.path))
    y = data.values[0].ravel()
    var = data.se_or_zero()[0].ravel() ** 2 + sigma**2
    assert value == pytest.approx(multivariate_normal(np.zeros(12), np.diag(var)).logpdf(y), rel=1e-12)


def test_zero_se_only_when_asked(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("row,col,value,se\na,x,1,0.2\na,y,2,0\nb,x,3,0.3\nb,y,4,0.1\n")
    with pytest.raises(DataError, match="must be positive.*zero_se='none'"):
        TwoWayData.from_csv(path, row="row", col="col", value="value", se="se")
    data = TwoWayData.from_csv(path, row="row", col="col", value="value", se="se", zero_se="none")
    assert data.n_observed == 4 and data.se_or_zero()[0, 0, 1] == 0.0
    values = np.array([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(DataError, match="must be positive"):
        TwoWayData.from_array(values, se=np.array([[0.2, 0.0], [0.3, 0.1]]))
    arr = TwoWayData.from_array(values, se=np.array([[0.2, np.nan], [0.3, 0.1]]))
    assert arr.n_observed == 4 and arr.se_or_zero()[0, 0, 1] == 0.0


def test_no_scale_and_a_cell_without_se_is_a_clear_error():
    data = TwoWayData.from_array(np.array([[1.0, 2.0], [3.0, 4.0]]), se=np.array([[0.2, np.nan], [0.3, 0.1]]))
    with pytest.raises(ModelError, match=r"cell \(row 'row1', col 'col2'\) has none"):
        resolve(preset("common-effect"), data)


# -- 2. a random cell effect shared by the replicates of a cell ------------------------------------------
CELL = dataclasses.replace(preset("crossed"), cell_effect="random")
CELL_TRUTH = {"cell_sd": 0.8, "sigma": 0.4, "row_effect_sd": 1.0, "col_effect_sd": 1.0}


def test_cell_effect_spec_names_and_dof():
    assert "cell_sd" in CELL.parameter_names()
    dof = twoway.degrees_of_freedom(CELL, 5, 4, 3)
    assert dict(dof.parameters)["cell_effect"] == 20 and dict(dof.parameters)["cell_sd"] == 1
    with pytest.raises(ModelError, match="independent residual"):
        dataclasses.replace(preset("latent"), cell_effect="random")
    with pytest.raises(ModelError, match="cell_effect"):
        ModelSpec(cell_effect="fixed")


def test_cell_effect_from_a_model_file(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('preset = "crossed"\ncell_effect = "random"\n[priors]\ncell_sd = { dist = "halfnormal", sigma = 0.5 }\n')
    spec = twoway.load_model(path)
    assert spec.cell_effect == "random" and spec.prior_overrides["cell_sd"].kwargs["sigma"] == 0.5


def test_simulated_cell_effects_are_shared_by_replicates():
    sim = twoway.simulate(CELL, 30, 20, 4, params={"cell_sd": 1.0, "sigma": 0.1}, seed=2)
    y = sim.data.values
    assert sim.truth["cell_effect"].shape == (30, 20)
    # replicates of a cell differ by noise only (sd 0.1 * sqrt 2); the cells by about cell_sd
    assert np.std(y[0] - y[1]) < 0.2
    inter = sim.truth["cell_effect"]
    assert np.std(y.mean(0) - sim.truth["intercept"] - sim.truth["row_effect"][:, None]
                  - sim.truth["col_effect"][None, :] - inter) < 0.1


def test_cell_effect_note_only_for_replicates_without_it():
    from twoway.results.summary import cell_effect_note

    assert "no cell effect" in cell_effect_note(preset("crossed"), 3)
    assert cell_effect_note(preset("crossed"), 1) is None and cell_effect_note(CELL, 3) is None


@pytest.fixture(scope="module")
def cell_fits():
    """A table with cell effects (8 x 6 x 3), fitted with and without them (JAX engine)."""
    sim = twoway.simulate(CELL, 8, 6, 3, params=CELL_TRUTH, seed=21)
    with_cell = twoway.fit(CELL, sim.data, chains=2, draws=500, tune=500, seed=1)
    without = twoway.fit(preset("crossed"), sim.data, chains=2, draws=500, tune=500, seed=1)
    return sim, with_cell, without


@pytest.mark.slow
def test_cell_effects_recovered(cell_fits):
    """cell_sd's 99% interval holds the truth; 90% intervals of the 48 drawn cell effects hold theirs.

    The 48 cells' coverage is close to binomial(48, 0.9) (mean 43.2, sd 2.1); at least 36 (3.5 sd below)
    fails with probability about 1e-3. The single 99% interval for cell_sd: 1% false alarm.
    """
    sim, fit, _ = cell_fits
    sd = fit.posterior["cell_sd"].values.ravel()
    lo, hi = np.quantile(sd, [0.005, 0.995])
    assert lo < CELL_TRUTH["cell_sd"] < hi
    cells = fit.posterior["cell_effect"].values.reshape(-1, 8, 6)
    lo, hi = np.quantile(cells, [0.05, 0.95], axis=0)
    truth = sim.truth["cell_effect"]
    assert np.count_nonzero((lo < truth) & (truth < hi)) >= 36
    assert "cell_sd" in fit.summary().table.index


@pytest.mark.slow
def test_summary_notes_replicates_without_a_cell_effect(cell_fits):
    _, with_cell, without = cell_fits
    assert any("no cell effect" in line for line in without.summary().header)
    assert not any("no cell effect" in line for line in with_cell.summary().header)


@pytest.mark.slow
def test_predictive_check_finds_a_missing_cell_effect(cell_fits):
    """cell_mean_var: p-value beyond 0.001/0.999 when the model lacks the cell effect, inside (0.01, 0.99)
    when it has it (2% false alarm for the second; the first is a power check at cell_sd = 2 sigma)."""
    from twoway.results.ppc import predictive_checks

    _, with_cell, without = cell_fits
    p_without = predictive_checks(without, draws=400, seed=3)["p_value"]["cell_mean_var"]
    p_with = predictive_checks(with_cell, draws=400, seed=3)["p_value"]["cell_mean_var"]
    assert p_without < 0.001 or p_without > 0.999
    assert 0.01 < p_with < 0.99


# -- 4. sampler start-up failures: one line, exit 2, for every engine ----------------------------------------
@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("startup")
    sim = twoway.simulate("crossed", 4, 3, 2, seed=1)
    d = sim.data
    lines = ["row,col,replicate,value"]
    for r, i, j in zip(*d.observed_index()):
        lines.append(f"{d.row_labels[i]},{d.col_labels[j]},{d.replicate_labels[r]},{float(d.values[r, i, j])!r}")
    path = folder / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _model_file(folder, priors: str, extra: str = "") -> str:
    path = folder / f"m{abs(hash(priors + extra))}.toml"
    path.write_text(f'preset = "crossed"\n{extra}\n[priors]\n{priors}\n')
    return str(path)


@pytest.mark.parametrize("engine,prior,name,extra", [
    ("jax", 'sigma = { dist = "halfnormal", sigma = 1e-200 }', "sigma", ""),
    ("jax", 'sigma = { dist = "halfnormal", sigma = 1e-200 }', "sigma", 'effects = "sample"'),
    ("nutpie", 'intercept = { dist = "normal", mu = 1e300, sigma = 1.0 }', "intercept", ""),
    ("nutpie", 'sigma = { dist = "halfnormal", sigma = 1e-200 }', "sigma", 'effects = "sample"'),
    ("pymc", 'row_effect_sd = { dist = "halfnormal", sigma = 1e-200 }', "row_effect_sd", ""),
])
def test_no_finite_start_is_one_line_exit_2(small_table, tmp_path, capsys, engine, prior, name, extra):
    """-inf or NaN at every start (an extreme prior): exit 2, one line naming the prior (found before any
    compile, or, pymc here, from the sampler's own start-up error)."""
    model = _model_file(tmp_path, prior, extra)
    status = main(["fit", str(small_table), "--model", model, "--engine", engine, "--draws", "50", "--tune", "50",
                   "--out", str(tmp_path / "f.nc"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    lines = [line for line in err.splitlines() if line.startswith("twoway: error:")]
    assert len(lines) == 1 and "start" in lines[0] and f"prior for {name!r}" in lines[0]
    assert "Traceback" not in err and "backtrace" not in err
    assert not (tmp_path / "f.nc").exists()


def test_engine_start_up_errors_become_fit_errors():
    from pymc.exceptions import SamplingError

    from twoway.engines.startup import start_failure

    plan = resolve(preset("crossed"), twoway.simulate("crossed", 4, 3, 2, seed=1).data)
    rust = RuntimeError("All initialization points failed\n\nCaused by:\n    Logp function returned error\n\n"
                        "Stack backtrace:\n   0: <unknown>")
    err = start_failure(plan, rust, engine="nutpie")
    assert isinstance(err, twoway.FitError) and "\n" not in str(err) and "All initialization points failed" in str(err)
    assert "could not start" in str(start_failure(plan, SamplingError("Initial evaluation of model at starting "
                                                                      "point failed!\nStarting values: ..."),
                                                  engine="pymc"))
    assert start_failure(plan, ValueError("something else"), engine="pymc") is None


# -- 5. compare warns when leave-one-out is unreliable ------------------------------------------------------
def test_exact_loo_of_a_fit_with_nothing_sampled():
    """No importance sampling: each cell's elpd is the Gaussian conditional density of the marginal law."""
    from twoway.linalg.ops import NUMPY
    from twoway.results.loo import loo
    from twoway.likelihood.marginal import dense_covariance

    data = _nma_table()
    fit = twoway.fit(preset("common-effect"), data, chains=2, draws=100, seed=1)
    e = loo(fit)
    plan = fit.plan
    cov = dense_covariance(NUMPY, plan.spec, plan.layout, plan.design, dict(plan.constants))
    r = plan.layout.r[plan.layout.obs]
    Q = np.linalg.inv(cov)
    mean_i = r - (Q @ r) / np.diag(Q)
    expected = -0.5 * (np.log(2 * np.pi / np.diag(Q)) + (r - mean_i) ** 2 * np.diag(Q))
    np.testing.assert_allclose(np.asarray(e.elpd_i), expected, rtol=1e-10)
    # p_loo = lppd - elpd (checked against a Monte Carlo lppd in test_compare.py): positive, with fixed effects
    assert e.p > 0.0 and np.all(np.asarray(e.pareto_k) == 0.0)


def test_compare_of_exact_fits_does_not_warn():
    import warnings

    from twoway.results.compare import compare

    data = _nma_table()
    wide = preset("common-effect").with_priors(col_effect=P.make("normal", mu=0.0, sigma=10.0))
    fits = {"default": twoway.fit(preset("common-effect"), data, chains=2, draws=100, seed=1),
            "wide": twoway.fit(wide, data, chains=2, draws=100, seed=1)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", twoway.errors.TwowayWarning)
        table = compare(fits)
    assert table.attrs["warnings"] == [] and set(table.attrs["loo_method"]) == {"default", "wide"}
    assert (table["pareto_k_bad"] == 0).all()


def test_loo_warnings_say_how_many_cells():
    import pandas as pd

    from twoway.results.compare import loo_warnings

    table = pd.DataFrame({"pareto_k_bad": [0, 3, 0], "p_loo": [2.0, 4.0, 30.5]}, index=["a", "b", "c"])
    table.attrs["by"] = "cell"
    notes = loo_warnings(table, 24)
    assert len(notes) == 2
    assert "'b'" in notes[0] and "3 of 24 cells have Pareto k above 0.7" in notes[0]
    assert "'c'" in notes[1] and "p_loo (30.5) exceeds the number of cells (24)" in notes[1]
    table.attrs["by"] = "row"
    assert "3 of 5 rows" in loo_warnings(table, 5)[0]


@pytest.fixture(scope="module")
def outlier_fits():
    """A 3 x 3 table with one cell 30 sd off, fitted by two models (JAX engine)."""
    rng = np.random.default_rng(5)
    y = rng.normal(size=(3, 3))
    y[0, 0] += 30.0
    data = TwoWayData.from_array(y)
    return {m: twoway.fit(m, data, chains=2, draws=500, tune=500, seed=2) for m in ("crossed", "additive")}


@pytest.mark.slow
def test_compare_warns_about_high_pareto_k_and_refits(outlier_fits):
    """Seeded: the outlier's Pareto k is above 0.7 for both models (a warning each). Refitted without it, its
    exact leave-one-out density is far below its in-sample one, so the crossed model's p_loo (in-sample minus
    leave-one-out, summed) exceeds the 9 cells: the p_loo warning, and no Pareto k warning any more."""
    from twoway.results.compare import compare

    with pytest.warns(twoway.errors.TwowayWarning, match=r"1 of 9 cells have Pareto k above 0.7"):
        table = compare(outlier_fits)
    assert (table["pareto_k_bad"] >= 1).all() and len(table.attrs["warnings"]) == 2
    with pytest.warns(twoway.errors.TwowayWarning, match=r"'crossed'.*p_loo \(\d+\.\d\) exceeds the number of "
                                                         r"cells \(9\)"):
        refitted = compare(outlier_fits, refit=True)
    assert (refitted["pareto_k_bad"] == 0).all()
    assert not any("Pareto k" in note for note in refitted.attrs["warnings"])
    assert all("refitted" in how for how in refitted.attrs["loo_method"].values())
    assert refitted.loc["crossed", "p_loo"] > 9 and np.isfinite(refitted["elpd"]).all()


@pytest.mark.parametrize("spec, missing, se, path", [
    (CELL, 0.2, None, "woodbury-schur"),
    (dataclasses.replace(preset("additive"), cell_effect="random"), 0.1, 0.3, "woodbury-schur"),
    (ModelSpec(row_effect="fixed", col_effect="fixed", row_scale="homo", col_scale="none",
               cell_effect="random"), 0.1, 0.2, "woodbury"),
    (CELL, 0.0, None, "anova"),
])
def test_effects_and_cell_effects_drawn_back_follow_the_dense_joint_conditional(spec, missing, se, path):
    """Effects (from their marginal conditional) then cell effects (given them): jointly the dense conditional.

    20000 draws whitened by the dense joint law of (effects' coordinates, cell effects) given y: every mean
    within crit / sqrt(S) of 0 and every covariance entry within crit of its sampling sd of the identity's,
    crit for a 0.001 false-alarm rate over all entries (Bonferroni).
    """
    from scipy.stats import norm

    from twoway.likelihood.paths import choose_path, path_named
    from twoway.likelihood.marginal import draw_cell_effects, indicator_matrix, noise_variance

    data = twoway.simulate(CELL, 4, 3, 3, params={"cell_sd": 0.7}, seed=8, missing=missing, se=se).data
    plan = resolve(spec, data)
    lay, design = plan.layout, plan.design
    rng = np.random.default_rng(4)
    params = {k: np.asarray(v) for k, v in plan.constants.items()}
    for name in plan.var_names:
        if name.endswith("log_sd_loc") or name.endswith("log_sd_scale"):
            continue
        hetero = name in ("row_sd", "col_sd") and getattr(spec, f"{name[:3]}_scale") == "hetero"
        n = data.n_rows if name.startswith("row") else data.n_cols
        params[name] = rng.uniform(0.4, 1.2, size=n) if hetero else np.asarray(rng.uniform(0.4, 1.2))
    # the dense joint conditional of (u, c): prior blockdiag(G, v I), noise D
    rr, ii, jj = lay.obs
    N, K = data.n_rows, data.n_cols
    Zu = indicator_matrix(lay) @ design.E
    Zc = np.zeros((ii.size, N * K))
    Zc[np.arange(ii.size), ii * K + jj] = 1.0
    Z = np.concatenate([Zu, Zc], axis=1)
    d = noise_variance(NUMPY, spec, lay, params)[rr, ii, jj]
    prior_prec = np.zeros((Z.shape[1],) * 2)
    prior_prec[:design.m, :design.m] = np.linalg.inv(design.covariance(NUMPY, params))
    prior_prec[design.m:, design.m:] = np.eye(N * K) / params["cell_sd"] ** 2
    prec = prior_prec + Z.T @ (Z / d[:, None])
    cov = np.linalg.inv(prec)
    mean = cov @ Z.T @ (lay.r[lay.obs] / d)
    S = 20000
    batch = {k: np.repeat(np.asarray(v)[None], S, axis=0) for k, v in params.items()}
    assert choose_path(spec, lay, design) == path
    u = path_named(path).draw_coordinates(spec, lay, design, batch, rng, 4096)
    effects = {}
    for name, _, start, stop in design.blocks:
        coords = u[:, start:stop]
        effects[name] = lay.m0 + coords[:, 0] if name == "intercept" else coords @ design.bases[name[:3]].T
    c = draw_cell_effects(spec, lay, batch, effects, rng)["cell_effect"].reshape(S, N * K)
    z = np.linalg.solve(np.linalg.cholesky(cov), (np.concatenate([u, c], axis=1) - mean).T).T
    m = z.shape[1]
    crit = norm.isf(0.001 / (2 * (m + m * (m + 1) // 2)))
    assert np.max(np.abs(z.mean(axis=0))) * np.sqrt(S) < crit
    se_entry = np.where(np.eye(m, dtype=bool), np.sqrt(2.0 / S), np.sqrt(1.0 / S))
    assert np.max(np.abs(np.cov(z, rowvar=False) - np.eye(m)) / se_entry) < crit


@pytest.mark.slow  # a PyTensor compile; the PyTensor log-density itself is in test_ops_twins.py
def test_pymc_model_with_a_cell_effect_equals_its_dense_twin():
    """The PyMC build (nutpie and pymc engines) samples cell_sd; its log-density and gradient equal the dense one's."""
    from twins import assert_equals_dense_twin

    from twoway.engines.pymc.model import build_pymc_model

    data = twoway.simulate(CELL, 4, 3, 3, seed=6, missing=0.15).data
    fast = build_pymc_model(resolve(CELL, data))
    dense = build_pymc_model(resolve(CELL, data, likelihood="dense"))
    assert fast.likelihood_path == "woodbury-schur" and "cell_sd" in fast.model.named_vars
    assert_equals_dense_twin(fast.model, dense.model, points=3, seed=1, jitter=0.5)
