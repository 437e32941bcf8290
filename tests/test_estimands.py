"""Estimands: contrasts, interval level and variables, variance decomposition, predictions, their CLI.

The fits here are made without a sampler: the sampled parameters are set to a
simulation's true values, the scales jittered draw by draw, and the integrated
effects (and latent shocks) are drawn back from their exact conditional law as
after any fit (``twoway.fit._make_fit``). What is tested is the arithmetic on
the draws, which is the same whatever produced them.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import twoway
from twoway import FitError, TwoWayData
from twoway.app.cli import main
from twoway.fit import _make_fit
from twoway.plan import resolve

pytestmark = pytest.mark.filterwarnings("ignore::twoway.errors.ConvergenceWarning")


def fit_from_truth(spec, data, truth, *, chains=2, draws=200, jitter=0.15, seed=0):
    """A Fit whose sampled parameters are ``truth``'s, scales jittered per draw; effects drawn back exactly."""
    plan = resolve(spec, data)
    rng = np.random.default_rng(seed)
    post = {}
    for name in plan.var_names:
        if name.endswith("_cov") or name not in truth:
            continue
        v = np.asarray(truth[name], dtype=float)
        base = np.broadcast_to(v, (chains, draws) + v.shape)
        if name.endswith("_rho"):
            val = np.clip(base + 0.05 * rng.standard_normal(base.shape), -0.9, 0.9)
        elif name.endswith("_loc"):
            val = base + 0.1 * rng.standard_normal(base.shape)
        else:
            val = base * np.exp(jitter * rng.standard_normal(base.shape))
        dims = ("chain", "draw") + ((("row",) if name.startswith("row_") else ("col",)) if v.ndim else ())
        post[name] = (dims, val)
    posterior = xr.Dataset(post, coords={"chain": np.arange(chains), "draw": np.arange(draws),
                                         "row": list(data.row_labels), "col": list(data.col_labels)})
    stats = xr.Dataset({"diverging": (("chain", "draw"), np.zeros((chains, draws), bool))})
    raw = xr.DataTree.from_dict({"posterior": posterior, "sample_stats": stats})
    info = {"engine": "jax", "backend": "jax", "likelihood_path": plan.path, "seed": seed, "chains": chains,
            "draws": draws, "tune": 0, "compile_seconds": 0.0, "sampling_seconds": 0.0}
    return _make_fit(raw, plan, info)


def simulated_fit(preset, *, rows=4, cols=5, reps=1, missing=0.2, se=0.1, seed=1, draws=200, **options):
    spec = twoway.preset(preset, **options)
    sim = twoway.simulate(spec, rows, cols, reps, seed=seed, missing=missing, se=se)
    return fit_from_truth(spec, sim.data, sim.truth, draws=draws, seed=seed)


@pytest.fixture(scope="module")
def crossed():
    return simulated_fit("crossed", reps=2)


def draws_of(da) -> np.ndarray:
    return da.transpose("chain", "draw", ...).values.reshape((-1,) + da.shape[2:])


def brute_hdi(x: np.ndarray, prob: float) -> tuple[float, float]:
    """The narrowest interval from sorted draw i to draw i + floor(prob S), first on ties."""
    x = np.sort(x)
    k = min(int(np.floor(prob * x.size)), x.size - 1)
    widths = x[k:] - x[: x.size - k]
    i = int(np.argmin(widths))
    return float(x[i]), float(x[i + k])


# -- contrasts ---------------------------------------------------------------------------------
def test_contrasts_are_differences_of_the_drawn_means_draw_by_draw(crossed):
    post = crossed.posterior
    for side, ref in (("col", "col3"), ("row", "row1")):
        c = crossed.contrasts(**{side: ref})
        means = post[f"{side}_mean"]
        others = [lab for lab in means.coords[side].values if lab != ref]
        assert list(c.draws.coords["contrast"].values) == [f"{lab} - {ref}" for lab in others]
        assert list(c.summary.index) == [f"{lab} - {ref}" for lab in others]
        for lab in others:
            expected = means.sel({side: lab}).values - means.sel({side: ref}).values
            np.testing.assert_array_equal(c.draws.sel(contrast=f"{lab} - {ref}").values, expected)
            assert c.summary.loc[f"{lab} - {ref}", "mean"] == pytest.approx(expected.mean(), rel=1e-12)
            assert c.summary.loc[f"{lab} - {ref}", "sd"] == pytest.approx(expected.std(ddof=1), rel=1e-12)
        # the intercept and the other side cancel: a contrast of means is a contrast of effects
        eff = post[f"{side}_effect"]
        np.testing.assert_allclose(c.draws.sel(contrast=f"{others[0]} - {ref}").values,
                                   eff.sel({side: others[0]}).values - eff.sel({side: ref}).values, atol=1e-12)
        assert {"ess_bulk", "ess_tail", "r_hat", "hdi_3%", "hdi_97%"} <= set(c.summary.columns)


def test_summary_lists_the_named_contrasts_in_its_table_text_and_json(crossed):
    s = crossed.summary(contrasts=["col=col2", ("row", "row4")])
    names = list(s.contrasts.index)
    assert names == ["col1 - col2", "col3 - col2", "col4 - col2", "col5 - col2",
                     "row1 - row4", "row2 - row4", "row3 - row4"]
    assert set(s.contrasts["side"]) == {"col", "row"}
    text = s.format()
    assert "each column mean minus the mean of column 'col2'" in text and "col5 - col2" in text
    d = s.to_dict()
    assert list(d["contrasts"]) == names
    assert d["contrasts"]["row2 - row4"]["reference"] == "row4"
    assert d["contrasts"]["col1 - col2"]["mean"] == pytest.approx(
        float(crossed.contrasts(col="col2").summary.loc["col1 - col2", "mean"]))


@pytest.mark.parametrize("call, match", [
    (dict(col="nope"), r"reference column must be one of the table's columns \(col1, .*got 'nope'"),
    (dict(), "exactly one side"),
    (dict(row="row1", col="col1"), "exactly one side"),
])
def test_contrast_errors(crossed, call, match):
    with pytest.raises(FitError, match=match):
        crossed.contrasts(**call)


def test_contrast_of_a_side_without_effects_is_refused():
    fit = simulated_fit("crossed", col_effect="none")
    with pytest.raises(FitError, match="no column effect"):
        fit.contrasts(col="col1")
    with pytest.raises(FitError, match="row=LABEL or col=LABEL"):
        fit.summary(contrasts=["col:col1"])


# -- interval level and variables -------------------------------------------------------------
@pytest.mark.parametrize("prob, lo, hi", [(0.5, "hdi_25%", "hdi_75%"), (0.9, "hdi_5%", "hdi_95%")])
def test_ci_prob_sets_the_interval_against_a_recomputed_hdi(crossed, prob, lo, hi):
    s = crossed.summary(ci_prob=prob, contrasts=["col=col1"])
    assert [lo, hi] == [c for c in s.table.columns if c.startswith("hdi_")]
    for name in ("sigma", "row_mean[row2]"):
        base, _, label = name.partition("[")
        da = crossed.posterior[base]
        x = draws_of(da.sel(row=label[:-1]) if label else da)
        assert (s.table.loc[name, lo], s.table.loc[name, hi]) == pytest.approx(brute_hdi(x, prob), abs=1e-12)
    x = draws_of(crossed.contrasts(col="col1").draws.sel(contrast="col4 - col1"))
    assert (s.contrasts.loc["col4 - col1", lo], s.contrasts.loc["col4 - col1", hi]) == pytest.approx(
        brute_hdi(x, prob), abs=1e-12)
    share = draws_of(crossed.variance_decomposition().shares.sel(component="row_effect"))
    assert (s.decomposition.loc["share[row_effect]", lo], s.decomposition.loc["share[row_effect]", hi]) == \
        pytest.approx(brute_hdi(share, prob), abs=1e-12)


def test_ci_prob_out_of_range_is_refused(crossed):
    for bad in (0.0, 1.0, 1.5, True):
        with pytest.raises(FitError, match="between 0 and 1"):
            crossed.summary(ci_prob=bad)


def test_var_takes_names_and_prefixes(crossed):
    s = crossed.summary(var_names=["row_", "sigma"])
    assert {n.split("[")[0] for n in s.table.index} == {"row_effect", "row_effect_sd", "row_mean", "sigma"}
    s = crossed.summary(var_names=["col_mean"])
    assert list(s.table.index) == [f"col_mean[col{j}]" for j in range(1, 6)]
    with pytest.raises(FitError, match="names or prefixes .* got 'zzz'"):
        crossed.summary(var_names=["zzz"])
    # the diagnostics judge every parameter, whichever are shown
    shown, every = crossed.summary(var_names=["sigma"]), crossed.summary()
    assert shown.diagnostics == every.diagnostics and shown.warnings == every.warnings
    assert every.diagnostics["min_ess_bulk"] < shown.table.loc["sigma", "ess_bulk"]


# -- variance decomposition -------------------------------------------------------------------
def test_shares_sum_to_one_and_match_a_hand_computation_heteroscedastic():
    fit = simulated_fit("additive", rows=5, cols=4, missing=0.25, se=None)
    data = fit.data
    se = np.random.default_rng(3).uniform(0.1, 0.5, data.values.shape)
    data = TwoWayData.from_array(data.values, se=np.where(data.mask, se, np.nan), row_labels=data.row_labels,
                                 col_labels=data.col_labels)
    spec = fit.model
    truth = {k: fit.posterior[k].values[0, 0] for k in fit.posterior.data_vars}
    fit = fit_from_truth(spec, data, truth, seed=4)
    vd = fit.variance_decomposition()
    np.testing.assert_allclose(vd.shares.sum("component").values, 1.0, rtol=1e-12)
    post = fit.posterior
    _, ii, jj = data.observed_index()
    rsd, csd = draws_of(post["row_sd"]), draws_of(post["col_sd"])
    hand = {
        "row_effect": draws_of(post["row_effect_sd"]) ** 2,
        "col_effect": draws_of(post["col_effect_sd"]) ** 2,
        "residual": (rsd[:, ii] ** 2 + csd[:, jj] ** 2).mean(axis=1),
        "known_se": np.full(rsd.shape[0], np.mean(data.se[data.mask] ** 2)),
    }
    assert list(vd.variances.coords["component"].values) == list(hand)
    total = sum(hand.values())
    for name, value in hand.items():
        np.testing.assert_allclose(draws_of(vd.variances.sel(component=name)), value, rtol=1e-12)
        np.testing.assert_allclose(draws_of(vd.shares.sel(component=name)), value / total, rtol=1e-12)
    np.testing.assert_allclose(draws_of(vd.icc.sel(icc="row")), hand["row_effect"] / total, rtol=1e-12)
    assert "icc[row]" in vd.summary.index and "total" in vd.summary.index
    assert "cell" not in vd.icc.coords["icc"].values  # one replicate table: no replicates of a cell


def test_decomposition_of_a_kronecker_model_and_of_fixed_effects():
    fit = simulated_fit("kronecker", rows=4, cols=5, row_structure="ar1", col_structure="cs", sigma=True,
                        row_effect="fixed", se=None)
    vd = fit.variance_decomposition()
    post = fit.posterior
    # ar1 rows: U[i, i] = row_sd^2; cs columns (the unit-scale side): V[j, j] = 1
    residual = draws_of(post["row_sd"]) ** 2 + draws_of(post["sigma"]) ** 2
    np.testing.assert_allclose(draws_of(vd.variances.sel(component="residual")), residual, rtol=1e-10)
    np.testing.assert_allclose(draws_of(vd.variances.sel(component="row_effect")),
                               draws_of(post["row_effect"]).var(axis=1), rtol=1e-12)
    np.testing.assert_allclose(vd.shares.sum("component").values, 1.0, rtol=1e-12)
    assert vd.icc is None and any("kronecker residual" in n for n in vd.notes)


def test_decomposition_in_the_summary_text_and_json(crossed):
    s = crossed.summary()
    assert "variance decomposition" in s.format() and "share[residual]" in s.format()
    d = s.to_dict()["variance_decomposition"]
    assert {"variance[row_effect]", "share[known_se]", "icc[cell]"} <= set(d["components"])
    assert d["notes"]


# -- predictions --------------------------------------------------------------------------------
def test_independent_model_predicts_the_drawn_means_and_adds_the_noise(crossed):
    data = crossed.data
    post = crossed.posterior
    mean_draws = (draws_of(post["intercept"])[:, None, None] + draws_of(post["row_effect"])[:, :, None]
                  + draws_of(post["col_effect"])[:, None, :])
    cells = crossed.predict()
    R, N, K = data.values.shape
    assert len(cells) == R * N * K and list(cells.columns) == [
        "row", "col", "replicate", "observed", "mean", "sd", "lower", "upper", "kind"]
    grid = cells["mean"].to_numpy().reshape(R, N, K)
    np.testing.assert_allclose(grid, np.broadcast_to(mean_draws.mean(axis=0), (R, N, K)), rtol=1e-12)
    np.testing.assert_allclose(cells["sd"].to_numpy().reshape(R, N, K)[0], mean_draws.std(axis=0), rtol=1e-10)
    missing = ~data.mask.ravel()
    assert (cells["kind"].to_numpy()[missing] == "predicted").all()
    assert (cells["kind"].to_numpy()[~missing] == "fitted").all() and cells["observed"].isna().to_numpy()[missing].all()
    new = crossed.predict(new_observation=True)
    noise = draws_of(post["sigma"]) ** 2
    se2 = np.where(data.mask, data.se_or_zero(), 0.0) ** 2          # missing cells: no known se
    expected = mean_draws.var(axis=0)[None] + noise.mean() + se2
    np.testing.assert_allclose(new["sd"].to_numpy().reshape(R, N, K) ** 2, expected, rtol=1e-10)
    narrow = crossed.predict(ci_prob=0.5)
    assert ((narrow["upper"] - narrow["lower"]) < (cells["upper"] - cells["lower"])).all()


@pytest.mark.parametrize("options", [
    dict(preset="kronecker", row_structure="ar1", col_structure="cs", sigma=True),
    dict(preset="kronecker", row_structure="diag", col_structure="ar1", sigma=True, row_effect="fixed"),
    dict(preset="full"),
])
def test_missing_cells_follow_the_dense_conditional_law(options, tmp_path):
    """New observations of missing cells against y_m | y_o from the dense marginal covariance, draw by draw.

    The oracle integrates the effects out; predict draws them and conditions the residual on them, so the two
    agree in distribution: the posterior-predictive mean within 4 Monte Carlo standard errors (the spread of
    the per-draw conditional means over sqrt(S)), the variance within 25% (S = 500 draws: the Monte Carlo part of the variance, the effects' share, has a
    relative sd of about sqrt(2 / S) = 0.063, so 25% is 4 sd of it at most).
    """
    from twoway.linalg.ops import NUMPY
    from twoway.likelihood.marginal import dense_covariance, point_parameters

    options = dict(options)
    preset = options.pop("preset")
    if preset == "full":   # a known (N K) x (N K) covariance from a CSV file, plus a nugget
        rng = np.random.default_rng(11)
        a = rng.normal(size=(24, 24))
        np.savetxt(tmp_path / "cov.csv", a @ a.T / 24 + 0.1 * np.eye(24), delimiter=",")
        spec = twoway.ModelSpec(residual="full", covariance=str(tmp_path / "cov.csv"), row_scale="none",
                                col_scale="none", sigma=True)
        sim = twoway.simulate(spec, 4, 6, 1, seed=7, missing=0.3)
        truth = dict(sim.truth, sigma=0.3)
        fit = fit_from_truth(spec, sim.data, truth, draws=250, seed=7)
    else:
        fit = simulated_fit(preset, rows=4, cols=6, missing=0.3, se=None, draws=250, seed=7, **options)
    data = fit.data
    N, K = data.n_rows, data.n_cols
    complete = TwoWayData.from_array(np.zeros((1, N, K)), row_labels=data.row_labels, col_labels=data.col_labels)
    plan = fit.plan.with_data(complete)
    obs = np.flatnonzero(data.mask[0].ravel())
    mis = np.flatnonzero(~data.mask[0].ravel())
    y_o = data.values[0].ravel()[obs]
    post = fit.posterior
    mus, vs = [], []
    for c in range(post.sizes["chain"]):
        for d in range(post.sizes["draw"]):
            params = point_parameters(fit.model, plan.layout, post, c, d, plan.constants)
            S = dense_covariance(NUMPY, fit.model, plan.layout, plan.design, params)
            W = np.linalg.solve(S[np.ix_(obs, obs)], S[np.ix_(obs, mis)])
            mus.append(plan.m0 + W.T @ (y_o - plan.m0))
            vs.append(np.diag(S[np.ix_(mis, mis)] - S[np.ix_(mis, obs)] @ W))
    mus, vs = np.array(mus), np.array(vs)
    oracle_mean = mus.mean(axis=0)
    oracle_var = vs.mean(axis=0) + mus.var(axis=0)
    cells = fit.predict(new_observation=True)
    got = cells.iloc[mis]
    assert (got["kind"] == "predicted").all()
    mcse = np.sqrt(oracle_var / mus.shape[0])
    assert np.all(np.abs(got["mean"].to_numpy() - oracle_mean) < 4 * mcse)
    np.testing.assert_allclose(got["sd"].to_numpy() ** 2, oracle_var, rtol=0.25)
    # the cell's mean (no new noise) is less uncertain than a new observation of it, by about sigma^2
    means = fit.predict().iloc[mis]
    sigma2 = float((draws_of(post["sigma"]) ** 2).mean())
    np.testing.assert_allclose(got["sd"].to_numpy() ** 2 - means["sd"].to_numpy() ** 2, sigma2, rtol=1e-8)


def test_latent_model_predicts_with_the_drawn_shocks():
    fit = simulated_fit("latent", reps=2, missing=0.2, se=None)
    post = fit.posterior
    cells = fit.predict()
    R, N, K = fit.data.values.shape
    mean = (draws_of(post["intercept"])[:, None, None, None] + draws_of(post["row_effect"])[:, None, :, None]
            + draws_of(post["col_effect"])[:, None, None, :] + draws_of(post["row_shock"])[..., None]
            + draws_of(post["col_shock"])[:, :, None, :])
    np.testing.assert_allclose(cells["mean"].to_numpy().reshape(R, N, K), mean.mean(axis=0), rtol=1e-10)
    assert list(cells["replicate"].unique()) == list(fit.data.replicate_labels)


def test_new_levels_have_effect_variance_plus_residual(crossed):
    post = crossed.posterior
    cells = crossed.predict(new_observation=True, new_rows=["new"], new_cols=["other"])
    N, K, R = 4, 5, 2
    assert len(cells) == R * (N + 1) * (K + 1)
    new = cells[(cells["row"] == "new") & (cells["col"] == "col2")]
    base = draws_of(post["intercept"]) + draws_of(post["col_effect"].sel(col="col2"))
    expected = base.var() + (draws_of(post["row_effect_sd"]) ** 2 + draws_of(post["sigma"]) ** 2).mean()
    np.testing.assert_allclose(new["sd"].to_numpy() ** 2, expected, rtol=1e-10)
    np.testing.assert_allclose(new["mean"].to_numpy(), base.mean(), rtol=1e-12)
    both = cells[(cells["row"] == "new") & (cells["col"] == "other")]
    expected = (draws_of(post["intercept"]).var()
                + (draws_of(post["row_effect_sd"]) ** 2 + draws_of(post["col_effect_sd"]) ** 2
                   + draws_of(post["sigma"]) ** 2).mean())
    np.testing.assert_allclose(both["sd"].to_numpy() ** 2, expected, rtol=1e-10)
    assert (both["kind"] == "predicted").all() and both["observed"].isna().all()
    # the table's own cells come first, unchanged by asking for new levels
    np.testing.assert_allclose(cells["mean"].to_numpy()[:R * N * K],
                               crossed.predict(new_observation=True)["mean"].to_numpy(), rtol=1e-12)


def test_new_levels_are_refused_where_they_have_no_law(crossed):
    fixed = simulated_fit("crossed", row_effect="fixed")
    with pytest.raises(FitError, match="row effects are fixed"):
        fixed.predict(new_rows=["x"])
    kron = simulated_fit("kronecker", rows=3, cols=3, se=None)
    with pytest.raises(FitError, match="kronecker residual's structure has no law for a new column"):
        kron.predict(new_cols=["x"])
    with pytest.raises(FitError, match="must not be rows of the table"):
        crossed.predict(new_rows=["row1"])


# -- the command line ---------------------------------------------------------------------------
def run_cli(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def fit_file(crossed, tmp_path_factory):
    path = tmp_path_factory.mktemp("fit") / "crossed.nc"
    crossed.save(path)
    return path


def test_cli_summary_with_contrasts_ci_prob_and_var(fit_file):
    code, out, err = run_cli(["summary", fit_file, "--contrast", "col=col1", "--contrast", "row=row2",
                              "--ci-prob", "0.8", "--var", "sigma", "--var", "col_mean", "--json"])
    assert code == 0, err
    d = json.loads(out)
    assert set(d["parameters"]) == {"sigma"} | {f"col_mean[col{j}]" for j in range(1, 6)}
    assert set(d["parameters"]["sigma"]) >= {"hdi_10%", "hdi_90%"}
    assert "col5 - col1" in d["contrasts"] and "row1 - row2" in d["contrasts"]
    assert "share[row_effect]" in d["variance_decomposition"]["components"]
    code, out, _ = run_cli(["summary", fit_file, "--contrast", "col=col1"])
    assert code == 0 and "col2 - col1" in out and "variance decomposition" in out


@pytest.mark.parametrize("args, match", [
    (["--contrast", "col=Placebo"], "reference column must be one of"),
    (["--contrast", "plate=A"], "side must be 'row' or 'col'"),
    (["--ci-prob", "1.5"], "--ci-prob option must be between 0 and 1"),
    (["--var", "nothing"], "names or prefixes"),
])
def test_cli_summary_errors_are_one_line(fit_file, args, match):
    import re

    code, _, err = run_cli(["summary", fit_file, *args])
    assert code == 2 and "Traceback" not in err
    assert err.startswith("twoway: error: ") and re.search(match, err) and err.count("\n") == 1


def test_cli_predict_writes_every_cell(fit_file, crossed, tmp_path):
    out = tmp_path / "cells.csv"
    code, text, err = run_cli(["predict", fit_file, "--out", out, "--new-observation", "--ci-prob", "0.5"])
    assert code == 0, err
    assert "wrote a new observation of each cell" in text
    table = pd.read_csv(out, keep_default_na=True)
    expected = crossed.predict(new_observation=True, ci_prob=0.5)
    assert list(table.columns) == list(expected.columns)
    np.testing.assert_allclose(table["sd"].to_numpy(), expected["sd"].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(table["lower"].to_numpy(), expected["lower"].to_numpy(), rtol=1e-9)
    missing = table["kind"] == "predicted"
    assert missing.sum() == crossed.data.n_cells - crossed.data.n_observed
    assert table.loc[missing, "observed"].isna().all() and table.loc[~missing, "observed"].notna().all()
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_cli_predict_new_levels_and_their_errors(fit_file, tmp_path):
    out = tmp_path / "new.csv"
    code, _, err = run_cli(["predict", fit_file, "--out", out, "--new-row", "R9", "--new-col", "C9"])
    assert code == 0, err
    table = pd.read_csv(out)
    assert len(table) == 2 * 5 * 6 and set(table.loc[table["row"] == "R9", "kind"]) == {"predicted"}
    code, _, err = run_cli(["predict", fit_file, "--out", out, "--new-row", "row1"])
    assert code == 2 and "must not be rows of the table" in err


@pytest.mark.parametrize("out, match", [
    (None, r"must end in one of .\.csv.|is an input|must not be"),
    ("cells.txt", "'.csv'"),
])
def test_cli_predict_refuses_a_bad_out_before_any_work(fit_file, tmp_path, out, match):
    import re

    target = fit_file if out is None else tmp_path / out
    before = fit_file.read_bytes()
    code, _, err = run_cli(["predict", fit_file, "--out", target])
    assert code == 2 and err.startswith("twoway: error: ") and re.search(match, err)
    assert fit_file.read_bytes() == before


def test_cli_report_takes_ci_prob_and_var(fit_file, tmp_path):
    out = tmp_path / "r.html"
    code, _, err = run_cli(["report", fit_file, "--out", out, "--ci-prob", "0.8", "--var", "row_"])
    assert code == 0, err
    html = out.read_text(encoding="utf-8")
    assert 'id="predictions"' in html and 'id="variance"' in html
    assert "hdi_10%" in html and "share[row_effect]" in html
    assert "row_effect_sd" in html and "col_effect_sd</td>" not in html


def test_network_meta_analysis_example_end_to_end(tmp_path):
    """The README's example with the common-effect model: exact posterior, no sampler, contrasts and predictions."""
    from importlib.resources import files

    path = files("twoway") / "examples" / "nma_example.csv"
    data = TwoWayData.from_csv(str(path), row="study", col="treatment", value="effect", se="se")
    fit = twoway.fit("common-effect", data, chains=2, draws=500, seed=3, progress=False)
    assert fit.info["method"] == "exact"
    c = fit.contrasts(col="Placebo")
    eff = fit.posterior["col_effect"]
    for drug in ("DrugA", "DrugB", "DrugC"):
        np.testing.assert_allclose(c.draws.sel(contrast=f"{drug} - Placebo").values,
                                   eff.sel(col=drug).values - eff.sel(col="Placebo").values, atol=1e-12)
    # every drug lowers the outcome against placebo in this table, clearly
    assert (c.summary["hdi_97%"] < 0).all()
    vd = fit.variance_decomposition()
    assert "residual" not in vd.variances.coords["component"].values   # the known se is the only residual
    cells = fit.predict()
    assert (cells["kind"] == "predicted").sum() == data.n_cells - data.n_observed
    # a study's predicted arm: its study effect plus the treatment's, draw by draw
    post = fit.posterior
    s1b = cells[(cells["row"] == "S1") & (cells["col"] == "DrugB")]
    expected = (post["intercept"] + post["row_effect"].sel(row="S1") + post["col_effect"].sel(col="DrugB")).values
    assert float(s1b["mean"].iloc[0]) == pytest.approx(expected.mean(), rel=1e-10)
    assert s1b["observed"].isna().all()


@pytest.mark.skipif("cell_effect" not in twoway.ModelSpec.__dataclass_fields__, reason="no random cell effect yet")
def test_random_cell_effect_enters_the_decomposition_and_the_cell_means():
    fit = simulated_fit("crossed", reps=3, cell_effect="random")
    post = fit.posterior
    vd = fit.variance_decomposition()
    np.testing.assert_allclose(draws_of(vd.variances.sel(component="cell")), draws_of(post["cell_sd"]) ** 2,
                               rtol=1e-12)
    shared = sum(draws_of(vd.variances.sel(component=c)) for c in ("row_effect", "col_effect", "cell"))
    total = draws_of(vd.variances).sum(axis=-1)
    np.testing.assert_allclose(draws_of(vd.icc.sel(icc="cell")), shared / total, rtol=1e-12)
    R, N, K = fit.data.values.shape
    mean = (draws_of(post["intercept"])[:, None, None] + draws_of(post["row_effect"])[:, :, None]
            + draws_of(post["col_effect"])[:, None, :] + draws_of(post["cell_effect"]))
    cells = fit.predict()
    np.testing.assert_allclose(cells["mean"].to_numpy().reshape(R, N, K),
                               np.broadcast_to(mean.mean(axis=0), (R, N, K)), rtol=1e-10)


@pytest.mark.parametrize("name", sorted(twoway.PRESETS))
def test_every_preset_has_contrasts_a_decomposition_and_predictions(name):
    fit = simulated_fit(name, rows=3, cols=4, reps=2, draws=50, se=0.2)
    s = fit.summary(contrasts=["row=row1", "col=col4"])
    assert len(s.contrasts) == 2 + 3
    vd = fit.variance_decomposition()
    np.testing.assert_allclose(vd.shares.sum("component").values, 1.0, rtol=1e-12)
    assert (vd.variances.values >= 0).all()
    cells = fit.predict(new_observation=True, max_draws=20)
    assert len(cells) == 2 * 3 * 4 and np.isfinite(cells[["mean", "sd", "lower", "upper"]].to_numpy()).all()
    assert (cells["lower"] <= cells["upper"]).all() and (cells["sd"] > 0).all()


@pytest.mark.parametrize("sigma", [True, False])
def test_kronecker_eigen_conditional_equals_the_dense_one_on_a_complete_table(sigma):
    """The eigen path of a complete table's correlated residual against the Cholesky path, draw by draw."""
    from twoway.results.decomposition import flat_parameters, full_layout
    from twoway.results.predict import _correlated_part

    fit = simulated_fit("kronecker", rows=4, cols=5, reps=2, missing=0.0, se=0.1 if sigma else None, draws=10,
                        row_structure="ar1", col_structure="cs", sigma=sigma)
    params, _, _ = flat_parameters(fit)
    lay, plan = full_layout(fit)
    for name, value in plan.constants.items():
        params.setdefault(name, np.full(20, value))
    post = fit.posterior
    mean = (draws_of(post["intercept"])[:, None, None, None] + draws_of(post["row_effect"])[:, None, :, None]
            + draws_of(post["col_effect"])[:, None, None, :]) * np.ones((1, 2, 1, 1))
    noise = (0.1 ** 2 if sigma else 0.0) + (draws_of(post["sigma"]) ** 2 if sigma else np.zeros(20))
    noise = noise[:, None, None, None] * np.ones(mean.shape)
    fast = _correlated_part(fit.model, lay, fit.data, params, mean, noise)
    dense = _correlated_part(fit.model, lay, fit.data, params, mean, noise, structured=False)
    np.testing.assert_allclose(fast[0], dense[0], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fast[1], dense[1], rtol=1e-7, atol=1e-9)
    if not sigma:   # no noise: the residual is known exactly at every cell
        resid = np.nan_to_num(fit.data.values)[None] - mean
        np.testing.assert_allclose(fast[0], resid, atol=1e-9)
        np.testing.assert_allclose(fast[1], 0.0, atol=1e-9)


@pytest.mark.parametrize("prob", [0.5, 0.8])
def test_prediction_intervals_hold_ci_prob_of_the_predictive_mixture(crossed, prob):
    """lower/upper hold ``prob`` of the mixture over draws of each cell's Gaussian, within 5 Monte Carlo sd.

    The interval is the HDI of 4000 draws from the mixture: its mass has a binomial sd of
    sqrt(p (1 - p) / 4000) (< 0.008); 5 sd per cell keeps the false-alarm rate below 1e-5 over the 40 cells.
    """
    from scipy.stats import norm

    from twoway.results.predict import cell_moments

    cells = crossed.predict(new_observation=True, ci_prob=prob)
    mu, var = cell_moments(crossed, new_observation=True)
    sd = np.sqrt(var)
    lo = cells["lower"].to_numpy().reshape(mu.shape[1:])
    hi = cells["upper"].to_numpy().reshape(mu.shape[1:])
    mass = (norm.cdf((hi - mu) / sd) - norm.cdf((lo - mu) / sd)).mean(axis=0)
    assert np.all(np.abs(mass - prob) < 5 * np.sqrt(prob * (1 - prob) / 4000))


def test_predictions_a_block_of_rows_at_a_time_equal_the_whole(monkeypatch):
    import twoway.results.predict as tp

    fit = simulated_fit("latent", reps=2, missing=0.2, se=0.1, draws=50)
    whole = fit.predict(new_observation=True, new_rows=["n1", "n2"], new_cols=["m"])
    monkeypatch.setattr(tp, "BLOCK_VALUES", 1)   # one row per block
    blocks = fit.predict(new_observation=True, new_rows=["n1", "n2"], new_cols=["m"])
    pd.testing.assert_frame_equal(whole[["row", "col", "replicate", "observed", "kind"]],
                                  blocks[["row", "col", "replicate", "observed", "kind"]])
    np.testing.assert_allclose(blocks["mean"], whole["mean"], rtol=1e-12)
    np.testing.assert_allclose(blocks["sd"], whole["sd"], rtol=1e-12)


def test_new_row_under_the_latent_residual_adds_its_shock_variance():
    fit = simulated_fit("latent", reps=2, row_scale="homo", col_scale="homo", draws=100)
    post = fit.posterior
    cells = fit.predict(new_observation=True, new_rows=["new"])
    for r, rep in enumerate(fit.data.replicate_labels):
        got = cells[(cells["row"] == "new") & (cells["col"] == "col3") & (cells["replicate"] == rep)]
        mean = (draws_of(post["intercept"]) + draws_of(post["col_effect"].sel(col="col3"))
                + draws_of(post["col_shock"].sel(col="col3"))[:, r])
        expected = mean.var() + (draws_of(post["row_effect_sd"]) ** 2 + draws_of(post["row_sd"]) ** 2
                                 + draws_of(post["sigma"]) ** 2).mean()
        np.testing.assert_allclose(got["mean"].to_numpy(), mean.mean(), rtol=1e-10)
        np.testing.assert_allclose(got["sd"].to_numpy() ** 2, expected, rtol=1e-10)
