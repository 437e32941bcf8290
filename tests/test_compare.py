"""Model comparison by PSIS-LOO: the table, refusals, the right structure wins, and the CLI.

Two models are compiled once each, on 6 x 8 tables simulated from the
``additive`` preset with strong row effects: the true structure (``additive``)
and one without row effects (``row_effect="none"``). Both are sampled on five
simulated tables (seeds 0-4) with the same compiled models; every prior is
given explicitly so the compiled models can be reused.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import twoway
import pandas as pd
from scipy.special import logsumexp

from twoway import FitError, ModelSpec, Prior, TwoWayData, TwowayWarning
from twoway.app.cli import main
from twoway.app.report import render_report
from twoway.results.compare import (COLUMNS, compare, fits_table, pointwise_differences, preferred,
                                    table_difference, unique_names, verdict)
from twoway.results.loo import exact_loo, gaussian_lppd, pointwise_log_likelihood
from twoway.fit import compile_model

PRIORS = dict(
    intercept=Prior.make("normal", mu=0, sigma=5),
    row_effect_sd=Prior.make("halfnormal", sigma=3),
    col_effect_sd=Prior.make("halfnormal", sigma=3),
    row_log_sd_loc=Prior.make("normal", mu=-1, sigma=0.5),
    row_log_sd_scale=Prior.make("halfnormal", sigma=0.3),
    col_log_sd_loc=Prior.make("normal", mu=-1, sigma=0.5),
    col_log_sd_scale=Prior.make("halfnormal", sigma=0.3),
    sigma=Prior.make("halfnormal", sigma=0.5),
)


def with_all_priors(spec: ModelSpec) -> ModelSpec:
    return spec.with_priors(**{k: v for k, v in PRIORS.items() if k in spec.parameter_names()})


TRUE = with_all_priors(twoway.preset("additive"))
NO_ROWS = with_all_priors(ModelSpec(row_effect="none", col_effect="random"))
PARAMS = {"intercept": 1.0, "row_effect": np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]),
          "row_sd": np.full(6, 0.4), "col_sd": np.full(8, 0.3)}
SEEDS = range(5)


@pytest.fixture(scope="module")
def runs():
    """For each seed: (fit of the true model, fit of the model without row effects)."""
    tables = [twoway.simulate(TRUE, 6, 8, params=PARAMS, seed=s).data for s in SEEDS]
    true_model = compile_model(TRUE, tables[0], progress=False)
    no_rows = compile_model(NO_ROWS, tables[0], progress=False)
    return [(true_model.sample(t, chains=2, draws=300, tune=300, seed=s, progress=False),
             no_rows.sample(t, chains=2, draws=300, tune=300, seed=s, progress=False))
            for s, t in zip(SEEDS, tables)]


@pytest.fixture(scope="module")
def comparisons(runs):
    return [compare({"additive": a, "no_rows": b}) for a, b in runs]


def test_the_true_structure_is_preferred(comparisons):
    """Row effects 1-3 against residual sd about 0.5: the model with row effects predicts left-out cells better.

    Observed: preferred in 5 of 5 seeds, by 60 to 130 in elpd (9 to 16 standard errors).
    """
    wins = sum(t.index[0] == "additive" for t in comparisons)
    assert wins >= 4, [t.index[0] for t in comparisons]


def test_comparison_table(comparisons):
    table = comparisons[0]
    assert tuple(table.columns) == COLUMNS and table.index.name == "model"
    assert set(table.index) == {"additive", "no_rows"} and table.attrs["by"] == "cell"
    assert list(table["rank"]) == [0, 1]
    best, other = table.iloc[0], table.iloc[1]
    assert best["elpd"] > other["elpd"] and best["elpd_diff"] == 0 and best["dse"] == 0
    assert other["elpd_diff"] == pytest.approx(other["elpd"] - best["elpd"])
    assert other["dse"] > 0 and (table["se"] > 0).all()
    assert table["weight"].sum() == pytest.approx(1.0, abs=1e-6)
    assert (table["pareto_k_bad"] >= 0).all() and table["pareto_k_bad"].dtype.kind == "i"
    assert (table["p_loo"] > 0).all()


def test_preferred_sentence_says_who_and_by_how_much(comparisons):
    table = comparisons[0]
    text = preferred(table)
    diff = -table.iloc[1]["elpd_diff"]
    assert text.startswith("'additive' is preferred over 'no_rows' clearly")
    assert f"{diff:.1f}" in text and "standard errors" in text and "leave one cell out" in text


def test_comparing_a_fit_with_itself_says_so(runs):
    a = runs[0][0]
    with pytest.warns(TwowayWarning, match="'additive' and 'additive_2' are the same fit"):
        table = compare([a, a])
    assert set(table.index) == {"additive", "additive_2"}
    assert table.attrs["same"] == [("additive", "additive_2")]
    assert table["elpd_diff"].abs().max() == pytest.approx(0.0, abs=1e-9)
    assert preferred(table).startswith("'additive' and 'additive_2' are the same fit")
    assert "compares a fit with itself" in preferred(table)
    # a tie between different fits is still worded as a tie
    tie = table.copy()
    tie.attrs["same"] = []
    assert preferred(tie).startswith("'additive' and 'additive_2' predict equally well")
    close = tie.copy()
    close.loc[close.index[1], ["elpd_diff", "dse"]] = [-1.5, 1.0]
    assert "only by 1.5" in preferred(close) and "1.5 standard errors" in preferred(close)


def test_leaving_out_rows(runs):
    a, b = runs[1]
    table = compare({"additive": a, "no_rows": b}, by="row")
    assert table.attrs["by"] == "row" and table.index[0] == "additive"
    assert "leave one row out" in preferred(table)


def test_fits_of_different_tables_are_refused(runs):
    with pytest.raises(FitError, match=r"'seed0' and 'seed1' are of different tables \(their observed values differ in 48 cells\)"):
        compare({"seed0": runs[0][0], "seed1": runs[1][1]})


def test_bad_inputs_are_refused(runs):
    a = runs[0][0]
    with pytest.raises(FitError, match="at least 2 fits; got 1"):
        compare([a])
    with pytest.raises(FitError, match="must be twoway Fit objects"):
        compare({"x": a, "y": "fit.nc"})
    with pytest.raises(FitError, match="one of cell, row, col"):
        compare([a, a], by="replicate")


def test_table_differences_are_named():
    base = TwoWayData.from_array(np.arange(12.0).reshape(3, 4), se=np.full((3, 4), 0.5))
    assert table_difference(base, base) is None
    assert "shapes" in table_difference(base, TwoWayData.from_array(np.arange(8.0).reshape(2, 4)))
    relabel = TwoWayData.from_array(base.values[0], se=base.se[0], row_labels=["x", "y", "z"])
    assert table_difference(base, relabel) == "their row labels differ"
    holes = base.values.copy()
    holes[0, 1, 1] = np.nan
    assert table_difference(base, base.with_values(holes)) == "their missing cells differ (1 cell)"
    assert table_difference(base, base.with_values(base.values + 1)) == "their observed values differ in 12 cells"
    no_se = TwoWayData.from_array(base.values[0])
    assert table_difference(base, no_se) == "one has known standard errors and the other not"
    other_se = TwoWayData.from_array(base.values[0], se=np.full((3, 4), 0.6))
    assert table_difference(base, other_se) == "their standard errors differ in 12 cells"


def test_unique_names():
    assert unique_names(["a", "a", "b", "a"]) == ["a", "a_2", "b", "a_3"]


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fit_files(runs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fits")
    a, b = runs[0]
    paths = {"true": a.save(folder / "true.nc"), "norows": b.save(folder / "norows.nc"),
             "other": runs[1][0].save(folder / "other.nc")}
    bad = folder / "table.csv"
    bad.write_text("row,col,value\na,b,1\n")
    paths["bad"] = bad
    return paths


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_prints_the_table_and_the_verdict(fit_files, capsys):
    status, out, err = run_cli(capsys, "compare", fit_files["true"], fit_files["norows"])
    assert status == 0, err
    lines = out.splitlines()
    assert "leave-one-cell-out" in lines[0]
    assert any(line.startswith("true ") for line in lines) and any(line.startswith("norows ") for line in lines)
    assert "pareto_k_bad" in out and "elpd_diff" in out
    assert lines[-1].startswith("'true' is preferred over 'norows'")


def test_cli_json(fit_files, capsys):
    status, out, err = run_cli(capsys, "compare", fit_files["norows"], fit_files["true"], "--json", "--by", "col")
    assert status == 0, err
    doc = json.loads(out)
    assert set(doc) == {"by", "models", "preferred", "warnings", "loo_method", "same", "pointwise"}
    assert doc["by"] == "col" and doc["same"] == [] and len(doc["pointwise"]) == 8
    assert [m["name"] for m in doc["models"]] == ["true", "norows"]
    keys = {"name", "rank", "elpd", "se", "elpd_diff", "dse", "weight", "p_loo", "pareto_k_bad"}
    assert all(set(m) == keys for m in doc["models"])
    assert doc["models"][0]["rank"] == 0 and doc["models"][0]["elpd_diff"] == 0.0
    assert isinstance(doc["models"][1]["pareto_k_bad"], int)
    assert doc["preferred"].startswith("'true' is preferred")


@pytest.mark.parametrize("which, needle", [
    (("true", "other"), "are of different tables"),
    (("true", "bad"), "is not a twoway fit"),
    (("true",), "at least 2 fit files; got 1"),
])
def test_cli_errors_exit_2_with_one_line(fit_files, capsys, which, needle):
    status, out, err = run_cli(capsys, "compare", *[fit_files[w] for w in which])
    assert status == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("twoway: error: ") and needle in lines[0], err


def test_cli_compare_of_a_fit_with_itself_notes_it(fit_files, capsys):
    status, out, err = run_cli(capsys, "compare", fit_files["true"], fit_files["true"])
    assert status == 0, err
    assert out.splitlines()[-1].startswith("'true' and 'true_2' are the same fit")
    assert "are the same fit" in err  # also a one-line warning
    status, out, err = run_cli(capsys, "compare", fit_files["true"], fit_files["true"], "--json")
    doc = json.loads(out)
    assert doc["same"] == [["true", "true_2"]] and "compares a fit with itself" in doc["preferred"]
    assert any("same fit" in w for w in doc["warnings"])


def test_cli_prints_the_pointwise_table(fit_files, capsys):
    status, out, err = run_cli(capsys, "compare", fit_files["true"], fit_files["norows"])
    assert status == 0, err
    assert "pointwise table: elpd by cell, true minus norows" in out and "(5 of 48;" in out
    status, out, _ = run_cli(capsys, "compare", fit_files["true"], fit_files["norows"], "--pointwise")
    assert "(48 of 48)" in out
    status, out, _ = run_cli(capsys, "compare", fit_files["true"], fit_files["norows"], "--json")
    doc = json.loads(out)
    diffs = [p["diff"] for p in doc["pointwise"]]
    assert len(diffs) == 48 and diffs == sorted(diffs, reverse=True)
    assert sum(diffs) == pytest.approx(-doc["models"][1]["elpd_diff"], rel=1e-9)


# ---------------------------------------------------------------------------
# the verdict in words, against the numbers
# ---------------------------------------------------------------------------

def test_verdict_large_and_uncertain_is_not_worded_as_none():
    """The smoking-cessation case: 168.0 with se 91.8 (1.8 se) is large and uncertain, not 'hardly apart'."""
    text = verdict("random-effects", "common-effect", 168.0, 91.8, n_units=50,
                   drivers=[("1|s3|B", 80.2), ("1|s7|C", 41.5)])
    assert "hardly tell them apart" not in text and "equally well" not in text
    assert "higher by 168.0" in text and "a large difference but an uncertain one" in text
    assert "se 91.8" in text and "1.8 standard errors" in text and "not absent" in text
    assert "Most of it comes from 2 of 50 cells: '1|s3|B' (+80.2), '1|s7|C' (+41.5), together 121.7 of 168.0" in text
    assert "pointwise table" in text


def test_verdict_large_and_clear():
    text = verdict("a", "b", 168.0, 20.0)
    assert text.startswith("'a' is preferred over 'b' clearly")
    assert "higher by 168.0" in text and "8.4 standard errors" in text and "large and clear" in text
    assert "uncertain" not in text


def test_verdict_small_and_clear():
    text = verdict("a", "b", 1.2, 0.3)
    assert "only by 1.2" in text and "a small difference (under 4)" in text and "4.0 standard errors" in text
    assert "about equally well" in text and "clearly" not in text and "uncertain" not in text


def test_verdict_small_and_uncertain():
    text = verdict("a", "b", 1.5, 1.0, by="row")
    assert "only by 1.5" in text and "1.5 standard errors" in text and "leave one row out" in text
    assert "small, uncertain difference" in text and "hardly tell them apart" in text


def test_verdict_boundaries_and_spread_differences():
    # the thresholds: 4 in elpd is large, 2 standard errors is clear
    assert "large and clear" in verdict("a", "b", 4.0, 2.0)
    assert "large difference but an uncertain one" in verdict("a", "b", 4.0, 2.01)
    assert "small difference (under 4)" in verdict("a", "b", 3.99, 1.0)
    # a difference not carried by a few units is said to be spread out
    spread = verdict("a", "b", 30.0, 5.0, drivers=[("x", 3.0), ("y", 2.0), ("z", 1.0)])
    assert "spread over many cells; the largest parts: 'x' (+3.0), 'y' (+2.0), 'z' (+1.0)" in spread
    assert "Most of it" not in spread
    assert verdict("a", "b", 0.01, 0.5).startswith("'a' and 'b' predict equally well")
    assert "(and 2 other fits)" in verdict("a", "b", 10.0, 1.0, n_others=2)


def _table_with_pointwise(diffs, dse):
    """A comparison table of fits 'a' (best) and 'b' whose pointwise differences are ``diffs``."""
    diffs = np.asarray(diffs, dtype=float)
    elpd_b = -np.ones(diffs.size)
    total = float(diffs.sum())
    table = pd.DataFrame({"rank": [0, 1], "elpd": [float((elpd_b + diffs).sum()), float(elpd_b.sum())],
                          "se": [1.0, 1.0], "elpd_diff": [0.0, -total], "dse": [0.0, dse], "weight": [0.9, 0.1],
                          "p_loo": [2.0, 1.0], "pareto_k_bad": [0, 0]}, index=pd.Index(["a", "b"], name="model"))
    table.attrs.update(by="cell", same=[], pointwise={"units": [f"u{k}" for k in range(diffs.size)],
                                                     "elpd_i": {"a": list(elpd_b + diffs), "b": list(elpd_b)}})
    return table


def test_preferred_names_the_cells_that_carry_the_difference():
    diffs = np.full(40, 0.1)
    diffs[[7, 19]] = [120.0, 44.0]
    table = _table_with_pointwise(diffs, dse=91.8)
    total = float(diffs.sum())
    text = preferred(table)
    assert f"higher by {total:.1f}" in text and "large difference but an uncertain one" in text
    assert "Most of it comes from 1 of 40 cells: 'u7' (+120.0)" in text  # 120 alone is more than half of 167.8
    pw = pointwise_differences(table)
    assert list(pw.index[:2]) == ["u7", "u19"] and list(pw.columns) == ["elpd_a", "elpd_b", "diff"]
    assert pw["diff"].sum() == pytest.approx(total)
    even = _table_with_pointwise(np.full(40, 0.5), dse=2.0)
    assert "spread over many cells" in preferred(even)


def test_the_verdict_on_real_fits_names_the_top_cells(comparisons):
    table = comparisons[0]
    pw = pointwise_differences(table)
    text = preferred(table)
    diff = -table.iloc[1]["elpd_diff"]
    assert pw["diff"].sum() == pytest.approx(diff, rel=1e-9)
    assert f"'{pw.index[0]}' (+{pw['diff'].iloc[0]:.1f})" in text


# ---------------------------------------------------------------------------
# exact leave-one-out: the effective number of parameters
# ---------------------------------------------------------------------------

def _nma(seed, n_rows=8, n_cols=5, consistent=True):
    """Studies x treatments with known se; the noise has the stated se when ``consistent``."""
    rng = np.random.default_rng(seed)
    se = rng.uniform(0.1, 0.4, (n_rows, n_cols))
    noise = rng.normal(0, 1, (n_rows, n_cols)) * (se if consistent else 0.2)
    y = 0.7 + rng.normal(0, 1, n_rows)[:, None] + np.linspace(-0.5, 1.0, n_cols)[None, :] + noise
    return TwoWayData.from_array(y, se=se)


def _common_effect(sd):
    return twoway.preset("common-effect").with_priors(**{n: Prior.make("normal", mu=0, sigma=sd)
                                                         for n in ("intercept", "row_effect", "col_effect")})


def test_gaussian_lppd_for_independent_residuals_matches_the_hat_matrix_formula():
    """With R diagonal and h = 1 - R_ii Q_ii (leverage), e = R Q r (fitted residual):
    p_i = -log(1 - h^2) / 2 + e^2 h / (R (1 - h^2)); checked to 1e-9."""
    rng = np.random.default_rng(0)
    n, k = 12, 4
    x = rng.normal(size=(n, k))
    r = np.diag(rng.uniform(0.2, 1.0, n))
    cov = x @ (4.0 * np.eye(k)) @ x.T + r
    y = rng.multivariate_normal(np.zeros(n), cov)
    from twoway.results.loo import loo_cell_logpdf
    p = gaussian_lppd(y, np.zeros(n), cov, r) - loo_cell_logpdf(y, np.zeros(n), cov)
    q = np.linalg.inv(cov)
    h = 1 - np.diag(r) * np.diag(q)
    e = np.diag(r) * (q @ y)
    assert p == pytest.approx(-0.5 * np.log(1 - h * h) + e * e * h / (np.diag(r) * (1 - h * h)), abs=1e-9)
    assert np.all(p > 0)
    blocks = [np.arange(0, 6), np.arange(6, 12)]
    from twoway.results.loo import loo_block_logpdf
    pb = gaussian_lppd(y, np.zeros(n), cov, r, blocks) - loo_block_logpdf(y, np.zeros(n), cov, blocks)
    assert np.all(pb > 0) and pb.shape == (2,)


def test_exact_common_effect_fit_has_its_effective_number_of_parameters():
    """Common-effect, 8 x 5 table: 12 free mean parameters (8 + 5 - 1).

    The exact lppd equals the Monte Carlo lppd over 4 x 1000 independent draws of the effects
    (log mean_s N(y_i | mu_s, se_i^2)) within 0.1 in the sum (observed difference 0.01), for cells,
    rows and columns.
    """
    f = twoway.fit(_common_effect(2.0), _nma(3, consistent=False), chains=4, draws=1000, seed=1)
    assert f.description.posterior_gaussian
    for by, n in (("cell", 40), ("row", 8), ("col", 5)):
        e = exact_loo(f, by=by)
        ll = pointwise_log_likelihood(f, by=by, conditional=True).values.reshape(-1, n)
        lppd_mc = logsumexp(ll, axis=0) - np.log(ll.shape[0])
        assert e.p > 1.0, (by, e.p)
        assert e.p == pytest.approx(lppd_mc.sum() - e.elpd, abs=0.1), by
        assert float(e.p_loo_i.sum()) == pytest.approx(e.p)


def test_p_loo_of_flat_fixed_effects_is_about_the_number_of_mean_parameters():
    """Prior sd 100 on every effect: the hat matrix trace is 12 (to 0.01); p_loo averaged over 40
    tables simulated from the model is within 15% of 12 (expected sum of h/(1+h) - log(1-h^2)/2,
    about 11.2 at h near 0.3)."""
    from twoway.results.moments import iter_moments
    spec = _common_effect(100.0)
    values = []
    for seed in range(40):
        f = twoway.fit(spec, _nma(seed), chains=1, draws=2, seed=seed)
        values.append(exact_loo(f).p)
        if seed == 0:
            r = next(iter_moments(f, [(0, 0)], conditional=True)).var
            s = next(iter_moments(f, [(0, 0)], conditional=False)).dense_cov()
            assert 40 - float(np.sum(r * np.diag(np.linalg.inv(s)))) == pytest.approx(12.0, abs=0.01)
    assert np.mean(values) == pytest.approx(12.0, rel=0.15)


def test_exact_fits_compare_with_their_p_loo_and_the_report_sets_them_side_by_side():
    """Common-effect against treatments left out, both exact, on a table with treatment effects -0.5 to 1
    and se 0.1-0.4: the right model's p_loo is near its 12 mean parameters; the one without treatments is
    so misspecified that its p_loo exceeds the 40 cells (as PSIS-LOO's would), and the warning says so."""
    data = _nma(5)
    full = twoway.fit(_common_effect(2.0), data, chains=1, draws=20, seed=1)
    no_cols = twoway.fit(twoway.preset("common-effect", col_effect="none").with_priors(
        intercept=Prior.make("normal", mu=0, sigma=2), row_effect=Prior.make("normal", mu=0, sigma=2)),
        data, chains=1, draws=20, seed=1)
    with pytest.warns(TwowayWarning, match=r"'no_treatments': its effective number of parameters p_loo"):
        table = compare({"common": full, "no_treatments": no_cols})
    assert 6.0 < table.loc["common", "p_loo"] < 18.0 and table.loc["no_treatments", "p_loo"] > 40
    assert table.index[0] == "common" and "clearly" in preferred(table)
    side = fits_table({"common": full, "no_treatments": no_cols}, table)
    assert list(side.columns) == ["model", "likelihood", "engine", "elpd", "p_loo", "variance"]
    assert side.loc["common", "engine"] == "exact (no sampler)" and side.loc["common", "model"] == "common-effect"
    assert side.loc["common", "p_loo"] == pytest.approx(table.loc["common", "p_loo"])
    html = render_report([full, no_cols], names=["common", "no_treatments"])
    assert "The fits side by side" in html and "Pointwise table: common minus no_treatments" in html
    assert "none (known se only)" in html


def test_fits_table_reports_scale_parameters(runs):
    a, b = runs[0]
    side = fits_table({"additive": a, "no_rows": b})
    assert "elpd" not in side.columns
    assert "row_effect_sd" in side.loc["additive", "variance"]
    assert "row_effect_sd" not in side.loc["no_rows", "variance"] and "col_effect_sd" in side.loc["no_rows", "variance"]
