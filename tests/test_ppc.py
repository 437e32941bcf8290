"""Posterior predictive checks: the statistics by hand, replicated tables, and checks that can fail.

One model is compiled once in this file, a model without row effects
(``row_effect="none"``, random column effects, one residual scale shared by all
rows), and sampled on two tables of the same layout: one simulated from the
model itself, and the same table with rows shifted apart after simulation.
"""

from __future__ import annotations

import numpy as np
import pytest

import twoway
from twoway import FitError, ModelSpec, Prior
from twoway.fit import compile_model
from twoway.results.ppc import (
    flatten_statistics,
    mean_offdiag_corr,
    posterior_predictive,
    ppp_values,
    predictive_checks,
    statistic_names,
    table_statistics,
)

NO_ROWS = ModelSpec(row_effect="none", col_effect="random", row_scale="homo", col_scale="none",
                    sigma=False).with_priors(
    intercept=Prior.make("normal", mu=0, sigma=5),
    col_effect_sd=Prior.make("halfnormal", sigma=2),
    row_sd=Prior.make("halfnormal", sigma=2),
)
SHIFT = np.array([-4.0, -2.0, 0.0, 0.0, 2.0, 4.0])  # added to the rows after simulation

# ---------------------------------------------------------------------------
# statistics against hand computations
# ---------------------------------------------------------------------------

Y = np.array([
    [[1.0, 2.0, np.nan, 4.0], [2.0, 1.0, 0.5, np.nan], [3.0, np.nan, np.nan, np.nan]],
    [[0.0, 2.5, 3.0, 1.0], [np.nan, 2.0, 1.5, 3.5], [1.0, 0.0, np.nan, np.nan]],
])  # (R=2, N=3, K=4); row 2 has three cells, column 2 has four


def hand_corr(a, b):
    both = ~np.isnan(a) & ~np.isnan(b)
    return np.corrcoef(a[both], b[both])[0, 1]


def test_row_and_column_means_and_variances_by_hand():
    s = table_statistics(Y)
    for i in range(3):
        cells = [Y[r, i, j] for r in range(2) for j in range(4) if not np.isnan(Y[r, i, j])]
        assert s["row_mean"][i] == pytest.approx(np.mean(cells))
        assert s["row_var"][i] == pytest.approx(np.var(cells, ddof=1))
    for j in range(4):
        cells = [Y[r, i, j] for r in range(2) for i in range(3) if not np.isnan(Y[r, i, j])]
        assert s["col_mean"][j] == pytest.approx(np.mean(cells))
        assert s["col_var"][j] == pytest.approx(np.var(cells, ddof=1))
    cells = Y[~np.isnan(Y)]
    assert s["mean"] == pytest.approx(cells.mean()) and s["sd"] == pytest.approx(cells.std(ddof=1))


def test_correlations_between_rows_and_between_columns_by_hand():
    rows = [Y[:, i, :].reshape(-1) for i in range(3)]  # observations: (replicate, col)
    with np.errstate(invalid="ignore"):
        pairs = [hand_corr(rows[a], rows[b]) for a in range(3) for b in range(a + 1, 3)]
    # rows 1 and 2 share two cells where row 1 is 2.0 twice: no spread, no correlation; left out of the mean
    assert np.isnan(pairs[2]) and np.isfinite(pairs[:2]).all()
    assert mean_offdiag_corr(Y, "row") == pytest.approx(np.mean(pairs[:2]), abs=1e-12)
    cols = [Y[:, :, j].reshape(-1) for j in range(4)]  # observations: (replicate, row)
    with np.errstate(invalid="ignore"):
        pairs = [hand_corr(cols[a], cols[b]) for a in range(4) for b in range(a + 1, 4)]
    # columns 2 and 3 share only (rep 1, row 0) and (rep 1, row 1): a correlation of two points, still defined
    assert abs(pairs[-1]) == pytest.approx(1.0)
    assert mean_offdiag_corr(Y, "col") == pytest.approx(np.nanmean(pairs), abs=1e-12)
    with pytest.raises(FitError, match="'row' or 'col'"):
        mean_offdiag_corr(Y, "replicate")


def test_correlation_of_perfectly_related_rows_and_undefined_cases():
    base = np.arange(5.0)
    y = np.stack([base, 2 * base + 1, -base])[None]  # (1, 3, 5): r = 1, -1, -1
    assert mean_offdiag_corr(y, "row") == pytest.approx((1 - 1 - 1) / 3)
    flat = np.ones((1, 2, 3))  # no spread: no correlation at all
    assert np.isnan(mean_offdiag_corr(flat, "row"))


def test_statistics_of_a_stack_equal_those_of_each_table():
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(4, 2, 3, 4))
    stack[:, np.isnan(Y)] = np.nan
    flat = flatten_statistics(table_statistics(stack))
    names = statistic_names(["a", "b", "c"], ["w", "x", "y", "z"])
    assert flat.shape == (4, len(names)) and len(names) == 2 + 2 * 3 + 2 * 4 + 1 + 2
    assert names[:3] == ["mean", "sd", "row_mean[a]"] and names[-2:] == ["row_corr", "col_corr"]
    assert names.index("col_var[y]") == 2 + 6 + 4 + 2
    for s in range(4):
        np.testing.assert_allclose(flat[s], flatten_statistics(table_statistics(stack[s])), rtol=1e-12)


def test_a_row_with_one_cell_has_no_variance():
    y = Y[:1].copy()  # replicate 1 only: row 2 has one cell
    s = table_statistics(y)
    assert np.isnan(s["row_var"][2]) and s["row_mean"][2] == 3.0
    assert np.isfinite(s["row_var"][:2]).all()


def test_posterior_predictive_p_values_count_ties_half():
    observed = np.array([1.0, 5.0, np.nan, 2.0])
    rep = np.array([[0.0, 1.0, 1.0, np.nan],
                    [1.0, 2.0, 1.0, 3.0],
                    [2.0, 3.0, 1.0, 1.0],
                    [3.0, 4.0, 1.0, 2.0]])
    p = ppp_values(observed, rep)
    np.testing.assert_allclose(p[[0, 1, 3]], [2.5 / 4, 0.0, 1.5 / 3])
    assert np.isnan(p[2])


# ---------------------------------------------------------------------------
# fits
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled_and_table():
    sim = twoway.simulate(NO_ROWS, 6, 8, 2, seed=5, missing=0.1,
                          params={"intercept": 1.0, "col_effect_sd": 1.0, "row_sd": 0.8})
    return compile_model(NO_ROWS, sim.data, progress=False), sim.data


@pytest.fixture(scope="module")
def own_fit(compiled_and_table):
    compiled, data = compiled_and_table
    return compiled.sample(data, chains=2, draws=300, tune=300, seed=2, progress=False)


@pytest.fixture(scope="module")
def shifted_fit(compiled_and_table):
    compiled, data = compiled_and_table
    shifted = data.with_values(data.values + SHIFT[None, :, None])
    return compiled.sample(shifted, chains=2, draws=300, tune=300, seed=2, progress=False)


def test_replicated_tables_keep_the_layout_and_missing_cells(own_fit):
    data = own_fit.data
    rep = posterior_predictive(own_fit, draws=40, seed=1)
    y = rep["y_rep"]
    assert y.dims == ("sample", "replicate", "row", "col") and y.shape == (40,) + data.values.shape
    np.testing.assert_array_equal(np.isnan(y.values), np.broadcast_to(~data.mask, y.shape))
    assert list(y.coords["row"].values) == list(data.row_labels)
    assert set(zip(rep["chain"].values, rep["draw"].values)) <= {(c, d) for c in range(2) for d in range(300)}
    again = posterior_predictive(own_fit, draws=40, seed=1)
    np.testing.assert_array_equal(again["y_rep"].values, y.values)
    other = posterior_predictive(own_fit, draws=40, seed=2)
    assert not np.allclose(np.nan_to_num(other["y_rep"].values), np.nan_to_num(y.values))
    assert posterior_predictive(own_fit, draws=10, conditional=False)["y_rep"].shape[0] == 10
    with pytest.raises(FitError, match="whole number"):
        posterior_predictive(own_fit, draws=0)


def test_check_table_has_every_statistic_with_p_values(own_fit):
    table = predictive_checks(own_fit, draws=200, seed=0)
    data = own_fit.data
    assert list(table.index) == statistic_names(data.row_labels, data.col_labels)
    assert list(table.columns) == ["observed", "rep_mean", "rep_sd", "p_value"]
    assert ((table["p_value"] >= 0) & (table["p_value"] <= 1)).all()
    s = table_statistics(data.values)
    assert table.loc["row_mean[row3]", "observed"] == pytest.approx(s["row_mean"][2])
    assert table.loc["col_var[col8]", "observed"] == pytest.approx(s["col_var"][7])


def test_no_extreme_p_value_on_a_table_from_the_model_itself(own_fit):
    """Seeded; under the true model p-values pile up near 0.5, so none below 0.001 or above 0.999.

    Observed here: the 32 p-values lie between 0.026 and 0.904.
    """
    p = predictive_checks(own_fit, draws=500, seed=0)["p_value"]
    assert p.notna().all()
    assert ((p > 0.001) & (p < 0.999)).all(), p[(p <= 0.001) | (p >= 0.999)]


def test_rows_shifted_after_simulation_give_extreme_row_mean_p_values(shifted_fit):
    """A model without row effects cannot reproduce rows shifted 4 apart (residual sd 0.8): the check fails there.

    Observed here: p = 1.000 and 0.000 for the two outer rows, 0.000 for both correlations.
    """
    table = predictive_checks(shifted_fit, draws=500, seed=0)
    labels = shifted_fit.data.row_labels
    p = table["p_value"]
    assert p[f"row_mean[{labels[0]}]"] > 0.999 and p[f"row_mean[{labels[-1]}]"] < 0.001
    assert p["row_corr"] < 0.001 or p["row_corr"] > 0.999 or p["col_corr"] < 0.001 or p["col_corr"] > 0.999
