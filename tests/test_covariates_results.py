"""Results of fits with covariates in the mean: coefficients, contrasts, predictions, decomposition, moments.

The fits are made without a sampler (as in ``test_estimands``): the sampled scales are set to
chosen values, jittered draw by draw, and the integrated effects and coefficients are drawn
back from their exact conditional law (``twoway.fit._make_fit``). What is tested is the
arithmetic on the draws, the same whatever produced them.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import twoway
from twoway import TwoWayData
from twoway.errors import DataError, FitError, TwowayWarning
from twoway.fit import _make_fit
from twoway.plan import resolve
from twoway.results.contrasts import contrasts, covariate_contrasts, parse_contrast
from twoway.results.moments import iter_moments

pytestmark = pytest.mark.filterwarnings("ignore::twoway.errors.ConvergenceWarning")

N, K = 6, 5
ROWS = [f"r{i}" for i in range(N)]
COLS = [f"c{j}" for j in range(K)]
GROUP = {r: "abc"[i % 3] for i, r in enumerate(ROWS)}            # a row-level factor
H = {c: float(j) - 2.0 for j, c in enumerate(COLS)}               # a column-level number
EFFECT = {"a": 0.0, "b": 3.0, "c": -2.0}
SLOPE = 4.0                                                       # large: the covariates dominate the mean


def long_table(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    row_eff, col_eff = 0.3 * rng.standard_normal(N), 0.3 * rng.standard_normal(K)
    lines = []
    for i, r in enumerate(ROWS):
        for j, c in enumerate(COLS):
            if (i + 2 * j) % 7 == 3:   # some cells missing; every row and column keeps data
                continue
            x = rng.standard_normal()
            y = (1.0 + row_eff[i] + col_eff[j] + SLOPE * x + EFFECT[GROUP[r]] + 0.5 * H[c]
                 + 0.2 * rng.standard_normal())
            lines.append({"row": r, "col": c, "y": y, "x": x, "g": GROUP[r], "h": H[c]})
    return pd.DataFrame(lines)


def fit_from_scales(spec, data, scales, *, chains=2, draws=150, jitter=0.15, seed=0):
    """A Fit whose sampled scales are ``scales``, jittered per draw; effects and coef drawn back exactly."""
    plan = resolve(spec, data)
    rng = np.random.default_rng(seed)
    post = {name: (("chain", "draw"), value * np.exp(jitter * rng.standard_normal((chains, draws))))
            for name, value in scales.items()}
    posterior = xr.Dataset(post, coords={"chain": np.arange(chains), "draw": np.arange(draws)})
    stats = xr.Dataset({"diverging": (("chain", "draw"), np.zeros((chains, draws), bool))})
    raw = xr.DataTree.from_dict({"posterior": posterior, "sample_stats": stats})
    info = {"engine": "jax", "backend": "jax", "likelihood_path": plan.path, "seed": seed, "chains": chains,
            "draws": draws, "tune": 0, "compile_seconds": 0.0, "sampling_seconds": 0.0}
    return _make_fit(raw, plan, info)


SCALES = {"row_effect_sd": 0.3, "col_effect_sd": 0.3, "sigma": 0.2}


@pytest.fixture(scope="module")
def table():
    return long_table()


@pytest.fixture(scope="module")
def data(table):
    return TwoWayData.from_long(table, row="row", col="col", value="y", covariates=["x", "g", "h"])


@pytest.fixture(scope="module")
def fit(data):
    """Crossed random effects, a cell-level x and a row-level factor g."""
    return fit_from_scales(twoway.preset("crossed", covariates="x + C(g)"), data, SCALES)


@pytest.fixture(scope="module")
def rowcol(data):
    """Only terms constant within rows (g) or columns (h): every cell has covariate values."""
    return fit_from_scales(twoway.preset("crossed", covariates="C(g) + h"), data, SCALES, seed=1)


@pytest.fixture(scope="module")
def sampled(fit, data):
    """The same draws as ``fit`` under effects = "sample" (the effects and coef sampled, not drawn back)."""
    spec = twoway.preset("crossed", covariates="x + C(g)", effects="sample")
    plan = resolve(spec, data)
    post = fit.posterior[[v for v in plan.var_names if v in fit.posterior]]
    raw = xr.DataTree.from_dict({"posterior": post, "sample_stats": fit.sample_stats})
    return _make_fit(raw, plan, dict(fit.info))


def flat(da) -> np.ndarray:
    return da.transpose("chain", "draw", ...).values.reshape((-1,) + da.shape[2:])


def cell_means(f, X=None, rows=None, cols=None) -> np.ndarray:
    """(S, n) draws of intercept + row_effect + col_effect + X coef at the cells (rows, cols)."""
    post = f.posterior
    design = f.plan.covariates
    if rows is None:
        _, rows, cols = f.data.observed_index()
        X = design.X
    mu = flat(post["intercept"])[:, None] + flat(post["row_effect"])[:, rows] + flat(post["col_effect"])[:, cols]
    coef = flat(post["coef"].sel(term=list(design.terms)))
    return mu + coef @ np.asarray(X).T


# -- the coefficient table ---------------------------------------------------------------------
def test_coefficient_table_names_each_term_where_it_lives_and_its_prior_sd(fit):
    from twoway.results.covariates import coefficient_table

    plan = fit.plan
    table = coefficient_table(fit)
    assert list(table.index) == ["x", "C(g)[T.b]", "C(g)[T.c]"] == list(plan.covariates.terms)
    assert list(table["level"]) == ["cell", "row", "row"]
    np.testing.assert_allclose(table["prior_sd"], plan.coef_sd, rtol=1e-12)
    coef = fit.posterior["coef"]
    np.testing.assert_allclose(table["mean"], coef.mean(("chain", "draw")).sel(term=list(table.index)), rtol=1e-12)
    assert {"sd", "hdi_3%", "hdi_97%", "ess_bulk", "r_hat"} <= set(table.columns)
    # the large slope is recovered (a check that the coefficients were drawn from the right law)
    assert table.loc["x", "mean"] == pytest.approx(SLOPE, abs=0.2)
    assert table.loc["C(g)[T.b]", "hdi_3%"] < EFFECT["b"] < table.loc["C(g)[T.b]", "hdi_97%"]


def test_summary_prints_the_formula_and_the_coefficients(fit):
    s = fit.summary()
    text = s.format()
    assert "x + C(g)" in text and "x[r,i,j]' coef" in text
    assert "covariates: coefficients of the terms of 'x + C(g)'" in text
    assert re.search(r"coef per term .*x ~ Normal\(0, ", text)
    d = s.to_dict()
    assert d["coefficients"]["formula"] == "x + C(g)"
    assert set(d["coefficients"]["terms"]) == {"x", "C(g)[T.b]", "C(g)[T.c]"}
    assert d["coefficients"]["terms"]["C(g)[T.c]"]["level"] == "row"
    assert twoway.preset("crossed").covariates is None
    assert "covariates" not in s.to_dict()["variance_decomposition"]["notes"][0]


# -- contrasts of a factor covariate -----------------------------------------------------------
def test_factor_contrasts_are_coefficient_differences_draw_by_draw(fit):
    coef = fit.posterior["coef"]
    b, c = coef.sel(term="C(g)[T.b]").values, coef.sel(term="C(g)[T.c]").values
    default = contrasts(fit, covariate="g")
    assert default.reference == "a" and list(default.summary.index) == ["b - a", "c - a"]
    np.testing.assert_array_equal(default.draws.sel(contrast="b - a").values, b)
    np.testing.assert_array_equal(default.draws.sel(contrast="c - a").values, c)
    other = covariate_contrasts(fit, "g", reference="b")
    assert list(other.summary.index) == ["a - b", "c - b"]
    np.testing.assert_allclose(other.draws.sel(contrast="a - b").values, -b, atol=0)
    np.testing.assert_allclose(other.draws.sel(contrast="c - b").values, c - b, rtol=1e-15)
    assert other.summary.loc["c - b", "mean"] == pytest.approx((c - b).mean(), rel=1e-12)


def test_factor_contrasts_through_the_summary_and_their_errors(fit):
    assert parse_contrast("covariate:g") == ("covariate:g", "")
    assert parse_contrast("covariate:g=b") == ("covariate:g", "b")
    assert parse_contrast("g=b") == ("covariate:g", "b")
    assert parse_contrast("g") == ("covariate:g", "")
    assert parse_contrast("col=c1") == ("col", "c1")
    with pytest.raises(FitError, match="row=LABEL or col=LABEL"):
        parse_contrast("row")
    s = fit.summary(contrasts=["covariate:g", "g=c", "col=c0"])
    assert list(s.contrasts.loc[s.contrasts["side"] == "covariate:g", "reference"].unique()) == ["a", "c"]
    assert "each level of the covariate 'g' minus its level 'a'" in s.format()
    with pytest.raises(FitError, match="side must be 'row' or 'col'.*factor covariates are 'g'"):
        fit.summary(contrasts=["plate=A"])
    with pytest.raises(FitError, match="reference level of 'g' must be one of its levels"):
        covariate_contrasts(fit, "g", reference="z")
    with pytest.raises(FitError, match="exactly one side"):
        contrasts(fit, row="r0", covariate="g")
    with pytest.raises(FitError, match="'reference' goes with 'covariate'"):
        contrasts(fit, row="r0", reference="r1")
    with pytest.raises(FitError, match="covariate 'x' is not a factor.*factor covariates: 'g'"):
        covariate_contrasts(fit, "x")


# -- predictions -------------------------------------------------------------------------------
def test_fitted_cells_are_effects_plus_covariates(fit):
    with pytest.warns(TwowayWarning, match=r"\d+ cell\(s\) without an observation were left out.*'x'.*--at FILE"):
        cells = fit.predict()
    data = fit.data
    assert len(cells) == data.n_observed and (cells["kind"] == "fitted").all()
    assert "--at FILE" in cells.attrs["note"] and str(data.n_cells - data.n_observed) in cells.attrs["note"]
    _, ii, _ = data.observed_index()
    assert list(cells["row"]) == [data.row_labels[i] for i in ii]
    np.testing.assert_allclose(cells["mean"], cell_means(fit).mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(cells["observed"], data.observed_values())


def test_row_and_column_terms_predict_every_cell(rowcol):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TwowayWarning)
        cells = rowcol.predict()
    data = rowcol.data
    assert len(cells) == data.n_cells and "note" not in cells.attrs
    assert (cells["kind"] == "predicted").sum() == data.n_cells - data.n_observed
    row_of = {r: i for i, r in enumerate(data.row_labels)}
    col_of = {c: j for j, c in enumerate(data.col_labels)}
    rows = np.array([row_of[r] for r in cells["row"]])
    cols = np.array([col_of[c] for c in cells["col"]])
    design = rowcol.plan.covariates
    X = design.design_for({"g": [GROUP[data.row_labels[i]] for i in rows],
                           "h": [H[data.col_labels[j]] for j in cols]})
    np.testing.assert_allclose(cells["mean"], cell_means(rowcol, X, rows, cols).mean(axis=0), rtol=1e-10)
    # a new column has no value of h (a column-level term): predicted with at= only
    with pytest.raises(FitError, match=r"new columns cannot be predicted.*'h'.*--at FILE"):
        rowcol.predict(new_cols=["c9"])


def test_predict_at_new_cells_uses_the_fitted_encoding(fit):
    at = pd.DataFrame({"row": ["r0", "r2", "new"], "col": ["c1", "c3", "c0"], "x": [0.5, -1.0, 2.0],
                       "g": ["b", "a", "c"]})
    out = fit.predict(at=at)
    assert list(out.columns) == ["row", "col", "x", "g", "observed", "mean", "sd", "lower", "upper", "kind"]
    assert list(out["row"]) == ["r0", "r2", "new"] and (out["kind"] == "predicted").all()
    X = fit.plan.covariates.design_for(at)
    data = fit.data
    rows = np.array([data.row_labels.index("r0"), data.row_labels.index("r2")])
    cols = np.array([data.col_labels.index("c1"), data.col_labels.index("c3")])
    np.testing.assert_allclose(out["mean"][:2], cell_means(fit, X[:2], rows, cols).mean(axis=0), rtol=1e-10)
    # a new row: its effect's law has mean 0
    post = fit.posterior
    new = (flat(post["intercept"]) + flat(post["col_effect"].sel(col="c0"))
           + flat(post["coef"].sel(term=list(fit.plan.covariates.terms))) @ X[2])
    assert out["mean"][2] == pytest.approx(new.mean(), rel=1e-10)
    assert out["sd"][2] > out["sd"][0]      # the new row's effect is unknown
    # an observed cell at the values it was fitted with is 'fitted', and equals predict()'s line
    _, ii, jj = data.observed_index()
    k = 3
    same = pd.DataFrame({"row": [data.row_labels[ii[k]]], "col": [data.col_labels[jj[k]]],
                         "x": [data.covariates["x"][k]], "g": [data.covariates["g"][k]]})
    line = fit.predict(at=same)
    assert line["kind"][0] == "fitted" and line["observed"][0] == data.observed_values()[k]
    assert line["mean"][0] == pytest.approx(cell_means(fit)[:, k].mean(), rel=1e-10)


def test_predict_at_errors_name_what_is_missing(fit):
    base = pd.DataFrame({"row": ["r0"], "col": ["c1"], "x": [0.5], "g": ["b"]})
    with pytest.raises(DataError, match="'x'"):
        fit.predict(at=base.drop(columns="x"))
    with pytest.raises(DataError, match=r"no value of 'g' at 1 cell\(s\) \('row 'r0', col 'c1''\)"):
        fit.predict(at=base.assign(g=[None]))
    with pytest.raises(DataError, match="row column 'row'"):
        fit.predict(at=base.drop(columns="row"))
    with pytest.raises(DataError, match="level 'z'"):
        fit.predict(at=base.assign(g=["z"]))
    with pytest.raises(FitError, match="not both"):
        fit.predict(at=base, new_rows=["q"])


# -- the variance decomposition ----------------------------------------------------------------
def test_decomposition_states_the_covariates_share(fit):
    vd = fit.variance_decomposition()
    assert "covariates" in list(vd.variances.coords["component"].values)
    X = fit.plan.covariates.X
    coef = flat(fit.posterior["coef"].sel(term=list(fit.plan.covariates.terms)))
    expected = np.var(coef @ X.T, axis=1)
    np.testing.assert_allclose(flat(vd.variances.sel(component="covariates")), expected, rtol=1e-10)
    np.testing.assert_allclose(flat(vd.shares).sum(axis=-1), 1.0, rtol=1e-12)
    assert vd.summary.loc["share[covariates]", "mean"] > 0.8       # the large slope explains most
    assert any("covariates" in note for note in vd.notes)
    assert "variance[covariates]" in fit.summary().format()


# -- moments: LOO and the predictive checks see the covariates ---------------------------------
def test_conditional_moments_include_the_covariates(fit, sampled):
    expected = cell_means(fit)
    pairs = [(0, 0), (1, 7)]
    for f in (fit, sampled):
        for (c, d), m in zip(pairs, iter_moments(f, pairs, conditional=True)):
            np.testing.assert_allclose(m.mean, expected[c * fit.posterior.sizes["draw"] + d], rtol=1e-12)
    # the integrated fit's marginal law has the coefficients' prior in its covariance: X diag(coef_sd^2) X'
    plain = twoway.preset("crossed")
    from twoway.likelihood.marginal import dense_covariance, point_parameters
    from twoway.linalg.ops import NUMPY

    plan, base = fit.plan, resolve(plain, fit.data)
    params = point_parameters(fit.model, plan.layout, fit.posterior, 0, 0, plan.constants)
    with_cov = dense_covariance(NUMPY, fit.model, plan.layout, plan.design.dense(), params)
    without = dense_covariance(NUMPY, plain, base.layout, base.design.dense(), params)
    X = plan.covariates.X
    np.testing.assert_allclose(with_cov - without, X @ np.diag(plan.coef_sd ** 2) @ X.T, atol=1e-8)
    marginal = next(iter_moments(fit, [(0, 0)], conditional=False))
    np.testing.assert_allclose(marginal.dense_cov(), with_cov, rtol=1e-12)


def test_predictive_tables_and_loo_track_the_covariates(fit):
    from twoway.results.loo import loo
    from twoway.results.ppc import posterior_predictive

    y = fit.data.observed_values()
    rep = posterior_predictive(fit, draws=100, seed=0)["y_rep"].values
    rr, ii, jj = fit.data.observed_index()
    rep_mean = rep.reshape((-1,) + rep.shape[-3:])[:, rr, ii, jj].mean(axis=0)
    # the covariates move the cells by several units; the replicated tables follow them cell by cell
    assert np.std(y) > 3 and np.max(np.abs(rep_mean - y)) < 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = loo(fit)
    elpd = float(getattr(result, "elpd", getattr(result, "elpd_loo", np.nan)))
    assert elpd > -2.0 * y.size      # a fit without the covariates' part in its means would be far worse


# -- the report --------------------------------------------------------------------------------
def test_report_shows_the_formula_and_the_coefficient_table(fit):
    from twoway.app.report import render_report

    html = render_report(fit, contrasts=["covariate:g=b"])
    m = re.search(r'<section id="coefficients">(.*?)</section>', html, re.DOTALL)
    assert m, "no coefficients section"
    body = m.group(1)
    assert "x + C(g)" in body and "<th>term</th>" in body and "<th>level</th>" in body
    for term in ("x", "C(g)[T.b]", "C(g)[T.c]"):
        assert f"<td>{term}</td>" in body
    assert "x[r,i,j]&#x27; coef" in html                    # the model's formula, in the model section
    contrasts = re.search(r'<section id="contrasts">(.*?)</section>', html, re.DOTALL).group(1)
    assert "<td>a - b</td>" in contrasts and "<td>c - b</td>" in contrasts
    predictions = re.search(r'<section id="predictions">(.*?)</section>', html, re.DOTALL).group(1)
    assert "left out" in predictions
