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
from twoway import FitError, ModelSpec, Prior, TwoWayData
from twoway.app.cli import main
from twoway.results.compare import COLUMNS, compare, preferred, table_difference, unique_names
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


def test_comparing_a_fit_with_itself_names_and_ties(runs):
    a = runs[0][0]
    table = compare([a, a])
    assert set(table.index) == {"additive", "additive_2"}
    assert table["elpd_diff"].abs().max() == pytest.approx(0.0, abs=1e-9)
    assert preferred(table).endswith("predict equally well: their expected log predictive density "
                                     "(leave one cell out) differs by 0.0, so the data do not tell them apart.")
    close = table.copy()
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
    assert set(doc) == {"by", "models", "preferred", "warnings", "loo_method"} and doc["by"] == "col"
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
