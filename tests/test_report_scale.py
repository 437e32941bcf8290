"""Reports and summaries that scale: a moderately large sparse fit (300 x 100, 10% observed).

One table is simulated and fitted once with the ``laplace`` engine (4 chains x 1000 draws:
enough values that the summary shortens its long parameters) and its report rendered
once, with every figure function watched (how often it is called, with how many
labels), so that the tests can say which figures a large table gets: hexagonal bins
and block averages of the residuals, never a heatmap of every cell; forest plots of
the largest effects; a bounded number of trace panels. The statistics of the
predictive checks computed from the observed cells are checked against the dense
computation, and the checks of a fit against the replicated tables
:func:`posterior_predictive` draws with the same seed.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import twoway
from twoway.app import report as report_module
from twoway.app.report import figures
from twoway.results.ppc import (
    cell_statistics,
    flatten_statistics,
    posterior_predictive,
    predictive_checks,
    table_statistics,
)
from twoway.results.summary import PRINT_HEAD, SCREENED

TRUTH = {"row_effect_sd": 0.32, "col_effect_sd": 0.52, "sigma": 1.18}


@pytest.fixture(scope="module")
def large_fit():
    data = twoway.simulate("crossed", 300, 100, 1, TRUTH, seed=8, missing=0.9).data
    return twoway.fit("crossed", data, engine="laplace", chains=4, draws=1000, seed=3)


@pytest.fixture(scope="module")
def watched(large_fit):
    """The report of the large fit, every figure function's calls recorded, and its progress calls."""
    calls: dict[str, list] = {}

    def spy(name):
        real = getattr(figures, name)

        def wrapper(*args, **kwargs):
            calls.setdefault(name, []).append((args, kwargs))
            return real(*args, **kwargs)

        return wrapper

    names = ("heatmap_png", "forest_png", "trace_rank_png", "checks_png", "residuals_png", "histograms_png",
             "binned_map_png")
    ticks: list[tuple[int, int]] = []
    with pytest.MonkeyPatch.context() as mp:
        for name in names:
            mp.setattr(figures, name, spy(name))
        html = report_module.render_report(large_fit, progress=lambda done, total: ticks.append((done, total)))
    return html, calls, ticks


def section(text: str, sid: str) -> str:
    m = re.search(rf'<section id="{re.escape(sid)}">(.*?)</section>', text, re.S)
    assert m, f"no section {sid!r}"
    return m.group(1)


def test_a_large_table_gets_binned_residuals_and_no_heatmap(large_fit, watched):
    html, calls, _ = watched
    assert report_module.is_large(large_fit.data)
    assert "heatmap_png" not in calls and "checks_png" not in calls     # nothing drawn cell by cell, level by level
    fitted = section(html, "fitted")
    assert "hexagonal-bin plots of observed and residual against fitted" in fitted
    assert "map of the mean residual by blocks" in fitted and 'alt="heatmap' not in fitted
    (fit_args, _), = calls["residuals_png"]
    assert fit_args[0].size == large_fit.data.n_observed                # the observed cells only, not the grid
    data = section(html, "data")
    assert "map of the share of cells observed" in data and 'alt="heatmap' not in data
    assert 'alt="heatmap' not in section(html, "predictions")
    for sid in ("data", "fitted", "predictions", "effects", "traces", "checks"):
        assert "<img" in section(html, sid), sid
    assert len(html) < 3_000_000                                        # a few figures, not megabytes of cells


def test_forest_plots_show_the_largest_effects_and_traces_are_bounded(watched):
    html, calls, _ = watched
    for args, _ in calls["forest_png"]:
        for panel in args[0]:
            assert len(panel["labels"]) <= max(2 * report_module.FOREST_EXTREMES, 3)
    effects = [p for args, _ in calls["forest_png"] for p in args[0] if p["title"].startswith("row effects")]
    assert effects and "largest" in effects[0]["title"]
    means = np.asarray(effects[0]["mean"])
    assert np.all(np.diff(means) <= 0)                                  # largest first, smallest last
    (series,), _ = calls["trace_rank_png"][0]
    assert 0 < len(series) <= report_module.MAX_TRACE_SERIES
    traced = re.search(r"Traced \((\d+)\)", section(html, "traces"))
    assert traced and int(traced.group(1)) == len(series)


def test_the_predictive_checks_of_a_large_table_are_histograms_of_p_values(watched):
    html, calls, _ = watched
    checks = section(html, "checks")
    assert "histograms of the posterior predictive p-values" in checks
    assert "most extreme" in checks and "row_corr" in checks
    assert checks.count("<tr") < 60                                     # not one line per row and column


def test_report_progress_counts_every_section(watched):
    html, _, ticks = watched
    total = ticks[0][1]
    assert [d for d, _ in ticks] == list(range(1, total + 1)) and all(t == total for _, t in ticks)
    assert total == 1 + html.count("<section id=")                      # the summary, then each section


def test_summary_of_a_large_fit_lists_no_entry_per_row_or_column(large_fit):
    summary = large_fit.summary()
    assert summary.shortened == {"row_effect": 300, "col_effect": 100, "row_mean": 300, "col_mean": 100}
    labels = [str(i) for i in summary.table.index]
    assert sum(lab.startswith("row_effect[") for lab in labels) == PRINT_HEAD
    assert len(labels) <= 4 + 4 * PRINT_HEAD                             # the scalars and each long parameter's head
    text = summary.format()
    assert "row_effect: 290 more entries not summarised (see them with --var row_effect)" in text
    assert summary.to_dict()["shortened"]["col_mean"] == {"entries": 100, "shown": PRINT_HEAD}
    # asked for by name, every entry is there
    assert len(large_fit.summary(var_names=["col_effect"]).table) == 100


def test_a_shortened_summary_judges_the_entries_whose_chains_disagree():
    """Beyond the printed entries, the ones whose split chains disagree most are judged (R-hat, ESS)."""
    import types

    import xarray as xr

    from twoway.results import summary as summary_module
    from twoway.results.summary import RHAT_LIMIT

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 500, 300))
    x[:, :, 150] += np.array([-1.0, -0.5, 0.5, 1.0])[:, None]           # chains apart: R-hat well above 1.01
    post = xr.Dataset({"row_effect": (("chain", "draw", "row"), x)}, coords={"row": [f"r{i}" for i in range(300)]})
    fit = types.SimpleNamespace(description=types.SimpleNamespace(chains_comparable=True))
    checked, shown = summary_module._judged_statistics(fit, post, ["row_effect"], {"row_effect": 300}, 0.94)
    assert len(shown) == PRINT_HEAD and len(checked) == PRINT_HEAD + SCREENED
    assert "row_effect[r150]" in checked.index and "row_effect[r150]" not in shown.index
    assert checked.loc["row_effect[r150]", "r_hat"] > RHAT_LIMIT
    assert (checked["r_hat"] > RHAT_LIMIT).sum() == 1


# ---------------------------------------------------------------------------
# predictive checks from the observed cells
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 7, 5), (3, 6, 4), (2, 1, 3)])
def test_statistics_of_the_observed_cells_equal_the_dense_ones(shape):
    rng = np.random.default_rng(sum(shape))
    tables = rng.normal(size=(5,) + shape)
    mask = rng.random(shape) < 0.7
    tables[:, ~mask] = np.nan
    index = np.nonzero(mask)
    dense = flatten_statistics(table_statistics(tables))
    long = flatten_statistics(cell_statistics(tables[(slice(None),) + index], index, shape))
    np.testing.assert_allclose(long, dense, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(long), np.isnan(dense))
    one = flatten_statistics(cell_statistics(tables[0][index], index, shape))
    np.testing.assert_allclose(one, flatten_statistics(table_statistics(tables[0])), rtol=1e-12, atol=1e-12)


def test_checks_are_the_statistics_of_the_replicated_tables_of_the_same_seed():
    sim = twoway.simulate("crossed", 8, 6, 2, TRUTH, seed=2, missing=0.3)
    fit = twoway.fit("crossed", sim.data, engine="laplace", chains=2, draws=100, seed=1)
    table = predictive_checks(fit, draws=60, seed=5)
    rep = posterior_predictive(fit, draws=60, seed=5)["y_rep"].values
    stats = flatten_statistics(table_statistics(rep))
    np.testing.assert_allclose(table["rep_mean"].to_numpy(), np.nanmean(stats, axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(table["observed"].to_numpy(),
                               flatten_statistics(table_statistics(sim.data.values)), rtol=1e-12, atol=1e-12)
    assert "note" not in table.attrs


def test_checks_of_a_large_table_leave_out_the_correlations_and_say_so(large_fit):
    table = predictive_checks(large_fit, draws=report_module.PPC_DRAWS, seed=0)
    assert np.isnan(table.loc["row_corr", "p_value"]) and "row_corr and col_corr were not checked" in table.attrs["note"]
    assert table["p_value"].drop(["row_corr", "col_corr"]).notna().mean() > 0.99
    asked = predictive_checks(large_fit, draws=5, seed=0, correlations=True)
    assert np.isfinite(asked.loc["row_corr", "observed"]) and "note" not in asked.attrs


def test_block_means_by_hand():
    ii, jj = np.array([0, 1, 2, 3, 4]), np.array([0, 0, 1, 2, 2])
    share, rows, cols = figures.block_means(ii, jj, None, (5, 3), bins=2)
    np.testing.assert_allclose(share, [[3 / 6, 0.0], [0.0, 2 / 2]])     # blocks of rows 0-2 / 3-4, cols 0-1 / 2
    means, _, _ = figures.block_means(ii, jj, np.arange(5.0), (5, 3), bins=2)
    np.testing.assert_allclose(means, [[1.0, np.nan], [np.nan, 3.5]])
    np.testing.assert_allclose(rows, [0, 2.5, 5])
    np.testing.assert_allclose(cols, [0, 1.5, 3])
