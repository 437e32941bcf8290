"""Predictions on big sparse tables: which cells by default, chunk by chunk, streamed to a file, refusals.

The fits are made without a sampler (as in ``test_estimands``): the sampled parameters are set to a
simulation's true values, the scales jittered draw by draw, and the integrated effects (and latent
shocks) drawn back from their exact conditional law (``twoway.fit._make_fit``). What is tested is
which cells are predicted and that chunking, streaming and the default's choice leave each cell's
numbers as the whole-grid computation gives them.
"""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pandas as pd
import pytest

import twoway
import twoway.results.predict as tp
from twoway import TwoWayData
from twoway.errors import FitError, TwowayError, TwowayWarning
from twoway.likelihood import memory
from twoway.results.predict import (
    PredictionTotals,
    cell_moments,
    predict,
    prediction_size,
)
from twoway.table.io import outputs
from twoway.table.io.outputs import table_writer

from test_estimands import fit_from_truth  # a Fit from true values, effects drawn back exactly

pytestmark = pytest.mark.filterwarnings("ignore::twoway.errors.ConvergenceWarning")

STATS = ["mean", "sd", "lower", "upper"]


def simulated_fit(preset, *, rows=5, cols=6, reps=1, missing=0.3, se=0.1, seed=1, draws=100, **options):
    spec = twoway.preset(preset, **options)
    sim = twoway.simulate(spec, rows, cols, reps, seed=seed, missing=missing, se=se)
    return fit_from_truth(spec, sim.data, sim.truth, draws=draws, seed=seed)


@pytest.fixture(scope="module")
def latent():
    """Two replicate tables, a latent residual with heteroscedastic rows: every piece of a cell's law."""
    return simulated_fit("latent", reps=2, row_scale="hetero", col_scale="homo", draws=60)


@pytest.fixture(scope="module")
def crossed():
    return simulated_fit("crossed", rows=6, cols=7, missing=0.4, draws=100)


def _key(frame: pd.DataFrame) -> pd.Series:
    parts = [frame["row"].astype(str), frame["col"].astype(str)]
    if "replicate" in frame:
        parts.append(frame["replicate"].astype(str))
    return parts[0].str.cat(parts[1:], sep="|")


# -- which cells ---------------------------------------------------------------------------------
def test_a_large_grid_defaults_to_the_observed_cells_with_the_grids_numbers(latent, monkeypatch):
    """Past GRID_DEFAULT_CELLS the default is the observed cells (and the new levels' cells), each line as the
    whole grid's computation gives it: mean and sd exactly; the interval too where no random draw enters it."""
    new = {"new_rows": ["n1"], "new_cols": ["m1"]}
    whole = predict(latent, **new, grid=True)
    monkeypatch.setattr(tp, "GRID_DEFAULT_CELLS", 10)
    obs = predict(latent, **new)
    data = latent.data
    R, N, K = data.values.shape
    n_new = R * ((N + 1) * (K + 1) - N * K)
    assert obs.attrs["cells"] == "observed" and whole.attrs["cells"] == "grid"
    assert len(obs) == data.n_observed + n_new and len(whole) == R * (N + 1) * (K + 1)
    # the table's observed cells first (C order over replicate, row, column), then the new levels' cells
    _, ii, jj = data.observed_index()
    head = obs.iloc[:data.n_observed]
    assert list(head["row"]) == [data.row_labels[i] for i in ii]
    assert list(head["col"]) == [data.col_labels[j] for j in jj]
    assert (head["kind"] == "fitted").all() and (obs.iloc[data.n_observed:]["kind"] == "predicted").all()
    np.testing.assert_array_equal(head["observed"], data.observed_values())
    merged = obs.assign(key=_key(obs)).merge(whole.assign(key=_key(whole)), on="key", suffixes=("", "_grid"))
    assert len(merged) == len(obs)
    for c in ("mean", "sd"):
        np.testing.assert_allclose(merged[c], merged[f"{c}_grid"], rtol=1e-12)
    fitted = merged["kind"] == "fitted"    # a cell's mean under the latent residual: the draws themselves
    np.testing.assert_array_equal(merged.loc[fitted, "lower"], merged.loc[fitted, "lower_grid"])
    np.testing.assert_array_equal(merged.loc[fitted, "upper"], merged.loc[fitted, "upper_grid"])
    # grid=False asks for the same cells whatever the size
    monkeypatch.setattr(tp, "GRID_DEFAULT_CELLS", 10 ** 9)
    pd.testing.assert_frame_equal(predict(latent, **new, grid=False), obs)


def test_observed_lines_hold_the_exact_moments_of_each_cells_law(latent):
    """New observations of observed and new cells against cell_moments (the grid's (S, R, N, K) arrays)."""
    got = predict(latent, new_observation=True, new_rows=["n1"], grid=False)
    mu, var = cell_moments(latent, new_observation=True, new_rows=["n1"])
    data = latent.data
    rows = list(data.row_labels) + ["n1"]
    r = np.array([list(data.replicate_labels).index(v) for v in got["replicate"]])
    i = np.array([rows.index(v) for v in got["row"]])
    j = np.array([list(data.col_labels).index(v) for v in got["col"]])
    m, v = mu[:, r, i, j], var[:, r, i, j]
    np.testing.assert_allclose(got["mean"], m.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got["sd"] ** 2, v.mean(axis=0) + m.var(axis=0), rtol=1e-10)
    assert (got["lower"] < got["mean"]).all() and (got["mean"] < got["upper"]).all()


def test_chunks_of_any_size_give_the_same_lines(latent, monkeypatch):
    """Intervals come from a generator per block of RNG_CELLS lines, so the chunk size changes nothing."""
    monkeypatch.setattr(tp, "RNG_CELLS", 4)
    whole = predict(latent, new_observation=True, new_rows=["n1"], grid=True)
    monkeypatch.setattr(tp, "BLOCK_VALUES", 1)     # one block of 4 lines per chunk
    seen = []
    chunked = predict(latent, new_observation=True, new_rows=["n1"], grid=True,
                      progress=lambda done, total: seen.append((done, total)))
    pd.testing.assert_frame_equal(chunked, whole)
    n = len(whole)
    assert len(seen) == -(-n // 4) and seen[-1] == (n, n) and all(a < b for (a, _), (b, _) in itertools.pairwise(seen))


def test_given_cells_and_their_older_name_at(crossed):
    data = crossed.data
    cells = pd.DataFrame({"row": [data.row_labels[2], "new", data.row_labels[0]],
                          "col": [data.col_labels[1], data.col_labels[3], data.col_labels[0]]})
    a = predict(crossed, cells=cells)
    b = predict(crossed, at=cells)
    pd.testing.assert_frame_equal(a, b)
    assert a.attrs["cells"] == "cells" and list(a["row"]) == list(cells["row"])
    grid = predict(crossed, new_rows=["new"], grid=True)
    for k in range(3):
        line = grid[(grid["row"] == cells["row"][k]) & (grid["col"] == cells["col"][k])]
        assert a["mean"][k] == pytest.approx(line["mean"].item(), rel=1e-12)
        assert a["sd"][k] == pytest.approx(line["sd"].item(), rel=1e-12)
    with pytest.raises(FitError, match="'cells' \\(or its older name 'at'\\), not both"):
        predict(crossed, cells=cells, at=cells)
    with pytest.raises(FitError, match="grid=True"):
        predict(crossed, cells=cells, grid=True)
    with pytest.raises(FitError, match="'grid' option"):
        predict(crossed, grid="yes")


def test_prediction_size_says_how_many_cells_before_any_work(crossed, monkeypatch):
    data = crossed.data
    R, N, K = data.values.shape
    size = prediction_size(crossed, new_rows=["a", "b"], grid=True)
    assert size.cells == "grid" and size.lines == R * (N + 2) * K == size.grid_cells
    assert size.draws == 200 and size.memory_bytes == size.lines * tp.LINE_BYTES and size.seconds > 0
    monkeypatch.setattr(tp, "GRID_DEFAULT_CELLS", 10)
    size = prediction_size(crossed, new_rows=["a", "b"])
    assert size.cells == "observed" and size.lines == data.n_observed + R * 2 * K
    assert size.lines == len(predict(crossed, new_rows=["a", "b"]))
    assert f"predicting {size.lines:,} cells, the observed cells (of a grid of {size.grid_cells:,} cells)" \
        in size.describe()
    assert prediction_size(crossed, cells=pd.DataFrame({"row": ["x"], "col": ["y"]}), max_draws=7).draws == 7


# -- streamed to a file ------------------------------------------------------------------------------
@pytest.mark.parametrize("ending", [".csv", ".parquet"])
def test_the_grid_streams_to_a_file_in_chunks_equal_to_the_table(latent, tmp_path, monkeypatch, ending):
    monkeypatch.setattr(tp, "SINK_LINES", 7)       # several frames reach the writer
    monkeypatch.setattr(tp, "RNG_CELLS", 4)
    monkeypatch.setattr(tp, "BLOCK_VALUES", 1)
    table = predict(latent, new_observation=True, new_cols=["m1"], grid=True)
    path = tmp_path / f"cells{ending}"
    frames = []
    with table_writer(path, what="predictions file") as write:
        def sink(frame):
            frames.append(len(frame))
            write(frame)
        sink.expect = write.expect
        totals = predict(latent, new_observation=True, new_cols=["m1"], grid=True, sink=sink)
    assert isinstance(totals, PredictionTotals) and write.expected == totals.lines == len(table) == write.lines
    assert len(frames) > 3 and totals.left_out == 0 and totals.cells == "grid"
    assert totals.fitted == int((table["kind"] == "fitted").sum()) and totals.predicted == len(table) - totals.fitted
    assert totals.mean_width == pytest.approx(float((table["upper"] - table["lower"]).mean()), rel=1e-12)
    back = pd.read_csv(path, keep_default_na=True) if ending == ".csv" else pd.read_parquet(path)
    assert list(back.columns) == list(table.columns) and len(back) == len(table)
    assert list(back["row"].astype(str)) == list(table["row"])
    np.testing.assert_allclose(back[STATS].to_numpy(), table[STATS].to_numpy(), rtol=1e-15)
    np.testing.assert_array_equal(back["observed"].isna(), table["observed"].isna())


def test_a_table_that_would_not_fit_on_disk_is_refused_and_nothing_is_written(crossed, tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "_free_bytes", lambda folder: 1000)
    path = tmp_path / "cells.csv"
    refusal = r"would take roughly .* on disk \(\d+ lines\) and 1.0 kB is free there; predict fewer cells"
    with pytest.raises(TwowayError, match=refusal), \
            table_writer(path, what="predictions file", advice="predict fewer cells") as write:
        predict(crossed, grid=True, sink=write)
    assert not path.exists() and not list(tmp_path.iterdir())
    # the first chunk's bytes per line refine the rough figure: a table that fits by the rough figure only
    monkeypatch.setattr(outputs, "LINE_BYTES", {"csv": 1, "parquet": 1})
    monkeypatch.setattr(tp, "RNG_CELLS", 4)
    monkeypatch.setattr(tp, "BLOCK_VALUES", 1)
    monkeypatch.setattr(tp, "SINK_LINES", 4)
    n = len(predict(crossed, grid=True))
    monkeypatch.setattr(outputs, "_free_bytes", lambda folder: 3 * n)
    with pytest.raises(TwowayError, match=r"would take about"), table_writer(path) as write:
        predict(crossed, grid=True, sink=write)
    assert not path.exists()


def test_a_table_that_would_not_fit_in_memory_is_refused(crossed, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    monkeypatch.setattr(memory, "DRAWS_FLOOR", 0)
    with pytest.raises(FitError, match=r"The \d+ predicted cells would take about .* of memory as a table .* "
                                       r"write them to a file as they are computed"):
        predict(crossed, grid=True)
    totals = predict(crossed, grid=True, sink=lambda frame: None)   # streamed: nothing held
    assert totals.lines == crossed.data.n_cells


# -- covariates ----------------------------------------------------------------------------------
def test_cells_without_covariate_values_are_left_out_and_counted(tmp_path):
    rng = np.random.default_rng(3)
    lines = [{"row": f"r{i}", "col": f"c{j}", "y": rng.normal(), "x": rng.normal()}
             for i in range(5) for j in range(6) if (i + j) % 4]
    data = TwoWayData.from_long(pd.DataFrame(lines), row="row", col="col", value="y", covariates=["x"])
    spec = twoway.preset("crossed", covariates="x")
    fit = fit_from_truth(spec, data, {"row_effect_sd": 0.5, "col_effect_sd": 0.5, "sigma": 0.3}, draws=50)
    obs = predict(fit, grid=False)             # observed cells: every one has its x
    assert len(obs) == data.n_observed and "note" not in obs.attrs
    with pytest.warns(TwowayWarning, match=rf"{data.n_cells - data.n_observed} cell\(s\) without an observation"):
        totals = predict(fit, grid=True, sink=lambda frame: None)
    assert totals.left_out == data.n_cells - data.n_observed and totals.lines == data.n_observed
    assert "cells=" in totals.note
    pd.testing.assert_frame_equal(obs.drop(columns=STATS[2:]), predict(fit, grid=False, seed=5).drop(columns=STATS[2:]))


# -- memory grows with the observed cells ----------------------------------------------------------
def test_memory_grows_with_the_observed_cells_not_the_grid():
    """A 400 x 300 table with 3 cells per row: the observed cells' predictions hold one chunk at a time.

    The grid's (S, R, N, K) moments alone would be 2 x 120,000 x 200 x 8 bytes = 384 MB; the
    chunks hold about BLOCK_VALUES x 8 x 2 = 32 MB (the interval draws, sorted in place).
    """
    rows, cols = 400, 300
    rng = np.random.default_rng(0)
    ii = np.repeat(np.arange(rows), 3)
    jj = (np.arange(rows * 3) * 7 + ii) % cols
    values = np.full((1, rows, cols), np.nan)
    values[0, ii, jj] = 1.0 + rng.normal(size=rows)[ii] + rng.normal(size=cols)[jj] + 0.3 * rng.normal(size=ii.size)
    data = TwoWayData.from_array(values)
    spec = twoway.preset("crossed")
    fit = fit_from_truth(spec, data, {"row_effect_sd": 1.0, "col_effect_sd": 1.0, "sigma": 0.3}, draws=100)
    assert fit.data.n_cells > tp.GRID_DEFAULT_CELLS
    tracemalloc.start()
    try:
        table = predict(fit, new_observation=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert table.attrs["cells"] == "observed" and len(table) == data.n_observed
    assert peak < 60e6, f"peak {peak / 1e6:.0f} MB"
