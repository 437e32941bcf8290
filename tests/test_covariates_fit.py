"""Covariates in the mean (``ModelSpec.covariates``): fits recover the coefficients, the sampled
and integrated paths agree, confounded terms are refused, and the command line reads, simulates
and calibrates models with covariates.

Recovery fits use the engines that compile nothing (``exact`` for a model whose every unknown is
Gaussian, ``laplace`` for crossed random effects); one JAX fit samples the effects. Tolerances:
a posterior mean is within 4 posterior sds of the truth (a false alarm has probability about
6e-5 per coefficient when the posterior is calibrated); two fits agree within 4 Monte Carlo
standard errors of their difference.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import twoway
from twoway.app.cli import main
from twoway.errors import ModelError
from twoway.plan import resolve
from twoway.simulate import simulate
from twoway.spec.model import ModelSpec, load_model, preset
from twoway.table.data import TwoWayData

pytestmark = pytest.mark.filterwarnings("ignore::twoway.errors.TwowayWarning")


def coef_table(fit) -> pd.DataFrame:
    """Posterior mean and sd of each coefficient, by term."""
    da = fit.posterior["coef"]
    x = da.values.reshape(-1, da.sizes["term"])
    return pd.DataFrame({"mean": x.mean(axis=0), "sd": x.std(axis=0, ddof=1)},
                        index=[str(t) for t in da["term"].values])


def assert_recovered(fit, sim, k: float = 4.0) -> None:
    tab = coef_table(fit)
    assert list(tab.index) == list(sim.terms)
    truth = pd.Series(sim.truth["coef"], index=list(sim.terms))
    z = (tab["mean"] - truth).abs() / tab["sd"]
    assert (z < k).all(), pd.concat([tab, truth.rename("truth"), z.rename("z")], axis=1)


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------


def test_spec_names_the_coefficients_and_round_trips(tmp_path):
    spec = preset("crossed", covariates="  x + C(g) ")
    assert spec.covariates == "x + C(g)"
    assert "coef" in spec.parameter_names()
    assert spec.label == "crossed with covariates x + C(g)"
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert "covariates" not in preset("crossed").to_dict()  # stored as before covariates existed
    assert preset("crossed", covariates="").covariates is None
    path = tmp_path / "m.toml"
    path.write_text('preset = "crossed"\ncovariates = "x"\n[priors]\ncoef = { dist = "normal", mu = 0, sigma = 1 }\n')
    spec = load_model(path)
    assert spec.covariates == "x" and dict(spec.priors)["coef"].kwargs["sigma"] == 1.0


@pytest.mark.parametrize("prior", [{"dist": "normal", "mu": 1.0, "sigma": 1.0}, {"dist": "halfnormal", "sigma": 1.0}])
def test_coef_prior_must_be_normal_with_mean_zero(prior):
    with pytest.raises(ModelError, match="'coef' must be normal with mu = 0"):
        preset("crossed", covariates="x", priors={"coef": prior})


def table_with(values: dict, n_rows=6, n_cols=5, seed=0, **options) -> TwoWayData:
    """A simulated crossed table with these covariate values (broadcast on the grid)."""
    return simulate(preset("crossed", covariates=" + ".join(values)), n_rows, n_cols, seed=seed,
                    covariates=values, **options).data


def test_plan_scales_the_prior_per_sd_of_each_term():
    rng = np.random.default_rng(0)
    data = table_with({"x": 10.0 * rng.normal(size=(6, 5)), "u": rng.normal(size=(6, 1))})
    spec = preset("crossed", covariates="x + u", priors={"coef": {"dist": "normal", "mu": 0, "sigma": 2.0}})
    plan = resolve(spec, data)
    assert plan.covariates.terms == ("x", "u")
    assert plan.covariates.level == ("cell", "row")
    np.testing.assert_allclose(plan.coef_sd, 2.0 / plan.covariates.scale)
    assert "coef" not in plan.var_names  # integrated, and drawn back with the effects


def test_a_term_fixed_effects_absorb_is_refused():
    rng = np.random.default_rng(1)
    data = table_with({"u": rng.normal(size=(6, 1)), "v": rng.normal(size=(5,))})
    with pytest.raises(ModelError, match=r"'u' is constant within every row.*random row effects"):
        resolve(preset("crossed", row_effect="fixed", covariates="u"), data)
    with pytest.raises(ModelError, match=r"'v' is constant within every column.*random column effects"):
        resolve(preset("crossed", col_effect="fixed", covariates="v"), data)
    resolve(preset("crossed", row_effect="fixed", covariates="v"), data)  # a column-level term: identified


# ---------------------------------------------------------------------------
# recovery
# ---------------------------------------------------------------------------


def test_cell_level_numeric_and_factor_are_recovered_exactly():
    """Fixed effects and known se: every unknown is Gaussian, the posterior exact (no sampler)."""
    rng = np.random.default_rng(2)
    N, K = 8, 10
    cov = {"x": rng.normal(size=(N, K)), "g": rng.choice(["a", "b", "c"], size=(N, K))}
    spec = preset("common-effect", covariates="x + C(g)")
    coef = {"x": 1.5, "C(g)[T.b]": -1.0, "C(g)[T.c]": 0.5}
    sim = simulate(spec, N, K, seed=3, se=0.5, covariates=cov, params={"coef": coef})
    assert sim.truth_dict()["coef"] == coef
    fit = twoway.fit(spec, sim.data, chains=1, draws=1000, seed=4)
    assert fit.description.method == "exact"
    assert_recovered(fit, sim)
    assert fit.posterior["coef"].dims == ("chain", "draw", "term")


def test_row_column_and_cell_level_terms_are_recovered_with_random_effects():
    rng = np.random.default_rng(5)
    N, K = 14, 12
    cov = {"u": rng.normal(size=(N, 1)), "h": np.array(["p", "q", "r"] * 4), "x": rng.normal(size=(N, K))}
    spec = preset("crossed", covariates="u + C(h) + x")
    params = {"row_effect_sd": 0.4, "col_effect_sd": 0.4, "sigma": 0.3,
              "coef": {"u": 1.0, "C(h)[T.q]": -1.0, "C(h)[T.r]": 0.8, "x": 0.7}}
    sim = simulate(spec, N, K, seed=6, covariates=cov, params=params)
    plan = resolve(spec, sim.data)
    assert plan.covariates.level == ("row", "col", "col", "cell")
    fit = twoway.fit(spec, sim.data, engine="laplace", chains=1, draws=400, seed=7)
    assert_recovered(fit, sim)


@pytest.fixture(scope="module")
def crossed_sim():
    rng = np.random.default_rng(8)
    N, K = 8, 6
    cov = {"u": rng.normal(size=(N, 1)), "x": rng.normal(size=(N, K))}
    spec = preset("crossed", covariates="u + x")
    sim = simulate(spec, N, K, seed=9, covariates=cov,
                   params={"row_effect_sd": 0.5, "col_effect_sd": 0.5, "sigma": 0.5, "coef": [0.8, -0.6]})
    return spec, sim


def test_sampled_effects_agree_with_integrated_effects(crossed_sim):
    """The walk's sampled path (JAX NUTS, coef = coef_sd z) against the integrated one (laplace)."""
    from twoway.results.diagnostics import ess_bulk

    spec, sim = crossed_sim
    integrated = twoway.fit(spec, sim.data, engine="laplace", chains=2, draws=500, seed=10)
    sampled = twoway.fit(dataclasses.replace(spec, effects="sample"), sim.data, engine="jax",
                         chains=2, draws=500, tune=500, seed=11)
    a, b = coef_table(integrated), coef_table(sampled)
    ess_a = float(integrated.info["importance_ess"])
    ess_b = np.asarray(ess_bulk(sampled.posterior["coef"].values), dtype=float)  # (p,)
    # laplace: resampled draws carry at most the importance ESS of independent information
    mc = np.sqrt(a["sd"] ** 2 / min(ess_a, 1000) + b["sd"] ** 2 / ess_b)
    assert ((a["mean"] - b["mean"]).abs() < 4 * mc).all(), pd.concat([a, b, mc], axis=1)
    np.testing.assert_allclose(a["sd"], b["sd"], rtol=0.3)
    assert_recovered(sampled, sim)
    assert list(sampled.posterior["coef"]["term"].values) == ["u", "x"]


# ---------------------------------------------------------------------------
# simulate, fit-many, SBC
# ---------------------------------------------------------------------------


def test_simulate_draws_covariates_and_their_coefficients():
    spec = preset("crossed", covariates="x + C(g)")
    a = simulate(spec, 5, 6, seed=1)
    b = simulate(spec, 5, 6, seed=1)
    assert set(a.data.covariates) == {"x", "g"}
    assert a.terms == ("x", "C(g)[T.b]", "C(g)[T.c]")
    np.testing.assert_array_equal(a.data.values, b.data.values)
    np.testing.assert_array_equal(a.truth["coef"], b.truth["coef"])
    # the other parameters come from the stream they come from without covariates
    plain = simulate(preset("crossed"), 5, 6, seed=1)
    np.testing.assert_array_equal(a.truth["row_effect"], plain.truth["row_effect"])
    with pytest.raises(ModelError, match="one value per term"):
        simulate(spec, 5, 6, seed=1, params={"coef": [1.0]})
    # a template table: its covariate columns (and labels) are used
    again = simulate(spec, 5, 6, seed=2, covariates=a.data)
    np.testing.assert_array_equal(again.data.covariates["x"], a.data.covariates["x"])
    assert list(again.data.covariates["g"]) == list(a.data.covariates["g"])
    assert again.terms == a.terms


def test_fit_many_reads_and_fits_the_covariates(tmp_path):
    rng = np.random.default_rng(12)
    spec = preset("common-effect", covariates="x")
    for k in range(2):
        sim = simulate(spec, 4, 5, seed=k, se=0.5, covariates={"x": rng.normal(size=(4, 5))})
        sim.data.to_csv(tmp_path / f"t{k}.csv")
    result = twoway.runs.batch.fit_many([tmp_path / "t0.csv", tmp_path / "t1.csv"], "common-effect",
                                        tmp_path / "out", covariates="x", se="se", chains=1, draws=50)
    assert (result.summary["status"] == "ok").all(), result.summary["error"]
    assert "coef[x]_mean" in result.summary.columns


def test_sbc_ranks_every_term_and_is_uniform(tmp_path):
    """Exact posteriors (common-effect, known se): 60 replications, chi-square per parameter, family-wise
    false-alarm rate 0.01 (Bonferroni). A calibrated SBC with sampled variance parameters and covariates
    is left to the calibration benchmark (too slow here)."""
    from twoway.runs.sbc import sbc

    result = sbc("common-effect", 3, 4, 60, covariates="x + C(g)", se=1.0, chains=1, draws=99, seed=3,
                 progress=False)
    names = result.parameters
    assert {"coef[x]", "coef[C(g)[T.b]]", "coef[C(g)[T.c]]"} <= set(names)
    assert result.passes(0.01), result.format(0.01)


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_error(status, out, err, *needles):
    assert "Traceback" not in err, err
    assert status == 2, (status, out, err)
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("twoway: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def no_sampling(monkeypatch):
    import importlib

    def refuse(*args, **kwargs):
        pytest.fail("the command compiled or sampled a model; bad input must be refused before that")

    for module in ("twoway.fit", "twoway.app.cli"):
        monkeypatch.setattr(importlib.import_module(module), "compile_model", refuse)


def covariate_csv(tmp_path: Path, edit=None, name="data.csv") -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        for j in range(3):
            x = round(rng.normal(), 4)
            rows.append({"row": f"r{i}", "col": f"c{j}", "value": round(rng.normal(), 3), "x": x,
                         "z": 2 * x, "g": "ab"[(i + j) % 2], "k": "a"})
    df = pd.DataFrame(rows)
    if edit is not None:
        edit(df)
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def blank_x(df):
    df["x"] = df["x"].astype(object)
    df.loc[4, "x"] = ""


@pytest.mark.parametrize("formula, edit, needles", [
    ("xx + C(g)", None, ["'xx'", "'x'"]),                 # unknown column, with the closest name
    ("x", blank_x, ["line 6"]),                           # a missing value, with its line
    ("x + C(k)", None, ["'k'", "single level"]),                    # a factor with one level
    ("x + z", None, ["collinear"]),                       # collinear terms
    ("x +", None, ["x +"]),                               # a syntax error
    ("1 + x", None, ["intercept"]),                       # an intercept term
])
def test_fit_refuses_bad_covariates(formula, edit, needles, tmp_path, capsys, no_sampling):
    data = covariate_csv(tmp_path, edit)
    out = tmp_path / "fit.nc"
    status, stdout, err = run_cli(capsys, "fit", data, "--covariates", formula, "--out", out)
    assert_one_error(status, stdout, err, *needles)
    assert not out.exists()


def test_simulate_writes_covariates_and_fit_reads_them(tmp_path, capsys):
    table, truth = tmp_path / "t.csv", tmp_path / "t.json"
    status, out, err = run_cli(capsys, "simulate", "--rows", 4, "--cols", 5, "--model", "common-effect",
                               "--se", 0.5, "--covariates", "x + C(g)", "--seed", 1, "--out", table,
                               "--truth", truth)
    assert status == 0, err
    header = table.read_text().splitlines()[0].split(",")
    assert {"x", "g"} <= set(header)
    assert set(json.loads(truth.read_text())["truth"]["coef"]) == {"x", "C(g)[T.b]", "C(g)[T.c]"}
    fit_file = tmp_path / "fit.nc"
    status, out, err = run_cli(capsys, "fit", table, "--model", "common-effect", "--covariates", "x + C(g)",
                               "--chains", 1, "--draws", 100, "--seed", 2, "--out", fit_file, "--quiet")
    assert status == 0, err
    fit = twoway.Fit.load(fit_file)
    assert fit.model.covariates == "x + C(g)"
    assert list(fit.posterior["coef"]["term"].values) == ["x", "C(g)[T.b]", "C(g)[T.c]"]

    # predict --at: the cells of a long table with their covariate values
    cells = tmp_path / "cells.csv"
    cells.write_text("row,col,x,g\nrow1,col2,0.5,b\nrow3,col1,1.0,a\n")
    pred = tmp_path / "pred.csv"
    status, out, err = run_cli(capsys, "predict", fit_file, "--at", cells, "--out", pred)
    assert status == 0, err
    assert len(pd.read_csv(pred)) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("row,col,x\nrow1,col2,0.5\n")
    pred2 = tmp_path / "pred2.csv"
    status, out, err = run_cli(capsys, "predict", fit_file, "--at", bad, "--out", pred2)
    assert_one_error(status, out, err, "'g'")
    assert not pred2.exists()
    status, out, err = run_cli(capsys, "predict", fit_file, "--at", tmp_path / "nope.csv", "--out", pred2)
    assert_one_error(status, out, err, "nope.csv")
    assert not pred2.exists()


def test_a_compiled_model_needs_the_same_covariate_values():
    from twoway.errors import FitError
    from twoway.fit import compile_model

    rng = np.random.default_rng(13)
    spec = preset("common-effect", covariates="x", priors={"coef": {"dist": "normal", "mu": 0, "sigma": 1}})
    x = rng.normal(size=(4, 5))
    a = simulate(spec, 4, 5, seed=1, se=0.5, covariates={"x": x}).data
    b = simulate(spec, 4, 5, seed=2, se=0.5, covariates={"x": x}).data
    c = simulate(spec, 4, 5, seed=3, se=0.5, covariates={"x": x + 1.0}).data
    compiled = compile_model(spec, a)
    assert compiled.sample(b, chains=1, draws=20, seed=1).posterior["coef"].sizes["term"] == 1
    with pytest.raises(FitError, match="covariate values the model was compiled for"):
        compiled.sample(c, chains=1, draws=20, seed=1)


def test_cli_reads_the_model_files_covariates_and_runs_sbc_and_fit_many(tmp_path, capsys):
    table = tmp_path / "t.csv"
    status, _, err = run_cli(capsys, "simulate", "--rows", 3, "--cols", 4, "--model", "common-effect", "--se", 1.0,
                             "--covariates", "x", "--seed", 5, "--out", table)
    assert status == 0, err
    model = tmp_path / "m.toml"
    model.write_text('preset = "common-effect"\ncovariates = "x"\n')
    fit_file = tmp_path / "fit.nc"
    status, _, err = run_cli(capsys, "fit", table, "--model", model, "--chains", 1, "--draws", 50, "--seed", 1,
                             "--out", fit_file, "--quiet")
    assert status == 0, err
    assert list(twoway.Fit.load(fit_file).posterior["coef"]["term"].values) == ["x"]

    status, out, err = run_cli(capsys, "fit-many", table, "--model", "common-effect", "--covariates", "x",
                               "--chains", 1, "--draws", 50, "--out", tmp_path / "many", "--no-progress")
    assert status == 0, err
    assert "coef[x]_mean" in pd.read_csv(tmp_path / "many" / "summary.csv").columns

    status, out, err = run_cli(capsys, "sbc", "--rows", 3, "--cols", 4, "--sims", 4, "--model", "common-effect",
                               "--se", 1.0, "--covariates", "x + C(g)", "--chains", 1, "--draws", 20,
                               "--out", tmp_path / "sbc", "--json", "--no-progress")
    assert status in (0, 1), err
    assert {"coef[x]", "coef[C(g)[T.b]]"} <= set(json.loads(out)["p_values"])
    status, out, err = run_cli(capsys, "sbc", "--rows", 3, "--cols", 4, "--sims", 4, "--covariates", "x +",
                               "--out", tmp_path / "sbc2")
    assert_one_error(status, out, err, "x +")
    assert not (tmp_path / "sbc2").exists()
