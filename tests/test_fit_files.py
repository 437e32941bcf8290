"""Fit files grow with the observed cells and the distinct draws: the observed cells stored long, the derived
means computed on read, repeated draws stored once, compression where it pays; files of the earlier layout
(the observed grid, stored row_mean/col_mean) still open, with the same numbers."""

import json
import warnings

import numpy as np
import pytest
import xarray as xr

from twoway import Fit, TwoWayData, fit, simulate
from twoway.errors import ConvergenceWarning, DataError, TwowayWarning
from twoway.fit import (
    UNIQUE_DRAW,
    UNIQUE_DRAW_INDEX,
    _compression,
    _pays_to_compress,
    pack_draws,
    unique_draws,
    unpack_draws,
)

TRUTH = {"row_effect_sd": 0.5, "col_effect_sd": 0.8, "sigma": 1.0}
CHAINS, DRAWS = 2, 1000   # 2,000 draws resampled from 1,000 laplace proposals: draws repeat


@pytest.fixture(scope="module")
def table():
    """A sparse crossed table (30 x 20, 30% observed) with a numeric and a text covariate and known errors."""
    data = simulate("crossed", 30, 20, 1, TRUTH, seed=2, missing=0.7).data
    frame = data.to_long()
    rng = np.random.default_rng(0)
    frame["se"] = rng.uniform(0.1, 0.4, len(frame))
    frame["x"] = rng.normal(size=len(frame))
    frame["g"] = rng.choice(["a", "b", "c"], size=len(frame))
    return TwoWayData.from_long(frame, row="row", col="col", value="value", se="se", covariates=["x", "g"])


@pytest.fixture(scope="module")
def lap(table):
    with warnings.catch_warnings():   # the importance weights' diagnostics do not matter to the files
        warnings.simplefilter("ignore", TwowayWarning)
        return fit("crossed", table, engine="laplace", chains=CHAINS, draws=DRAWS, seed=9, cores=1,
                   covariates="x + C(g)", progress=False)


def _summary_text(f: Fit) -> str:
    with warnings.catch_warnings():   # R-hat over resampled effects may pass 1.01 by chance
        warnings.simplefilter("ignore", ConvergenceWarning)
        return f.summary().format()


def _old_layout(f: Fit) -> xr.DataTree:
    """The tree as earlier versions wrote it: row_mean/col_mean stored, the observed grid (R, N, K)."""
    tree = f.tree.copy()
    tree["posterior"] = xr.DataTree(f.posterior)
    tree["observed_data"] = xr.DataTree(f.data.to_dataset(layout="grid"))
    return tree


# -- what a file holds ---------------------------------------------------------------------------------


def test_file_holds_the_observed_cells_and_each_distinct_draw_once(lap, table, tmp_path):
    path = lap.save(tmp_path / "fit.nc")
    with xr.open_datatree(path, engine="h5netcdf") as raw:
        obs, post = raw["observed_data"].to_dataset(), raw["posterior"].to_dataset()
        assert obs["y"].dims == ("cell",) and obs.sizes["cell"] == table.n_observed
        assert obs["se"].dims == ("cell",) and obs["covariate_1"].dims == ("cell",)
        assert not {"row_mean", "col_mean"} & set(post.data_vars)
        assert post[UNIQUE_DRAW_INDEX].dims == ("chain", "draw")
        assert post["row_effect"].dims == (UNIQUE_DRAW, "row")
        index = post[UNIQUE_DRAW_INDEX].values
    # the engine resampled 1,000 proposals into 2,000 draws: the file holds the distinct ones, each once
    draws = np.concatenate([lap.posterior[n].values.reshape(CHAINS * DRAWS, -1)
                            for n in ("intercept", "row_effect", "col_effect", "coef", "sigma")], axis=1)
    distinct = np.unique(draws, axis=0).shape[0]
    assert post.sizes[UNIQUE_DRAW] == distinct <= lap.info["proposals"] < CHAINS * DRAWS
    assert np.unique(index).size == distinct
    old = tmp_path / "old.nc"
    _old_layout(lap).to_netcdf(old, engine="h5netcdf")
    assert path.stat().st_size < 0.6 * old.stat().st_size


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_a_saved_fit_loads_with_every_draw_and_the_derived_means(lap, table, tmp_path, suffix):
    back = Fit.load(lap.save(tmp_path / f"fit{suffix}"))
    assert list(back.posterior.data_vars) == list(lap.posterior.data_vars)
    assert list(lap.posterior.data_vars)[-2:] == ["row_mean", "col_mean"]
    for name in lap.posterior.data_vars:
        assert back.posterior[name].dims == lap.posterior[name].dims
        np.testing.assert_array_equal(back.posterior[name].values, lap.posterior[name].values)
    np.testing.assert_array_equal(back.data.values, table.values)
    np.testing.assert_array_equal(back.data.se, table.se)
    for name in ("x", "g"):
        np.testing.assert_array_equal(back.data.covariates[name], table.covariates[name])
    assert back.plan.path == lap.plan.path
    assert _summary_text(back) == _summary_text(lap)


def test_derived_means_are_computed_on_read_from_the_draws_held(lap):
    post = lap.posterior
    assert "row_mean" not in lap.tree["posterior"].data_vars
    expected = post["intercept"] + post["row_effect"] + post["col_effect"].mean("col")
    np.testing.assert_allclose(post["row_mean"].values, expected.transpose("chain", "draw", "row").values)
    assert lap.posterior["row_mean"].data is post["row_mean"].data      # computed once per Fit
    # a tree whose effects were replaced gives means of the new effects
    tree = lap.tree.copy()
    shifted = lap.tree["posterior"].to_dataset()
    shifted["col_effect"] = shifted["col_effect"] + 1.0
    tree["posterior"] = xr.DataTree(shifted)
    np.testing.assert_allclose(Fit(tree).posterior["row_mean"].values, post["row_mean"].values + 1.0)


@pytest.mark.parametrize("engine", ["h5netcdf", "zarr"])
def test_files_of_the_earlier_layout_still_open(lap, table, tmp_path, engine):
    tree = _old_layout(lap)
    if engine == "h5netcdf":
        path = tmp_path / "old.nc"
        tree.to_netcdf(path, engine="h5netcdf")
    else:
        path = tmp_path / "old.zarr"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # zarr 3: consolidated metadata is not in its spec
            tree.to_zarr(path, mode="w")
    old = Fit.load(path)
    assert old.tree["observed_data"]["y"].dims == ("replicate", "row", "col")
    assert "row_mean" in old.tree["posterior"].data_vars       # read as stored
    for name in lap.posterior.data_vars:
        np.testing.assert_array_equal(old.posterior[name].values, lap.posterior[name].values)
    np.testing.assert_array_equal(old.data.values, table.values)
    assert old.data.covariates["g"].tolist() == table.covariates["g"].tolist()
    assert _summary_text(old) == _summary_text(lap)
    # saved again, it is written in the new layout, with the same numbers
    again = Fit.load(old.save(tmp_path / "again.nc"))
    assert "cell" in again.tree["observed_data"]["y"].dims
    assert "row_mean" not in again.tree["posterior"].data_vars
    np.testing.assert_array_equal(again.posterior["col_mean"].values, lap.posterior["col_mean"].values)


# -- the pieces -----------------------------------------------------------------------------------------


def test_unique_draws_are_exact_to_the_bit():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(40, 6))
    pick = rng.integers(0, 40, 300)
    a, b = base[pick], np.arange(40.0)[pick]
    first, index = unique_draws([a, b])
    assert first.size == np.unique(pick).size
    np.testing.assert_array_equal(a[first][index], a)
    z = np.array([[0.0], [-0.0], [np.nan], [np.nan], [0.0]])     # -0.0 kept apart from 0.0; NaN as stored
    first, index = unique_draws([z])
    assert first.tolist() == [0, 1, 2] and index.tolist() == [0, 1, 2, 2, 0]
    assert np.signbit(z[first][index]).tolist() == np.signbit(z).tolist()


def test_draws_that_do_not_repeat_are_stored_as_they_are():
    rng = np.random.default_rng(4)
    post = xr.Dataset({"sigma": (("chain", "draw"), rng.gamma(2.0, size=(2, 50))),
                       "row_effect": (("chain", "draw", "row"), rng.normal(size=(2, 50, 3)))})
    assert pack_draws(post) is post
    repeated = post.isel(draw=np.repeat(np.arange(10), 5))
    packed = pack_draws(repeated)
    assert packed.sizes[UNIQUE_DRAW] == 20
    xr.testing.assert_identical(unpack_draws(packed), repeated)


def test_compression_is_asked_where_it_pays():
    rng = np.random.default_rng(5)
    assert _pays_to_compress(np.repeat(np.arange(100, dtype=np.int32), 200))    # cell positions
    assert not _pays_to_compress(rng.normal(size=20_000))                        # float64 draws
    assert not _pays_to_compress(np.zeros(10))                                   # too small to bother
    tree = xr.DataTree.from_dict({
        "posterior": xr.Dataset({"row_effect": (("chain", "draw", "row"), rng.normal(size=(2, 500, 20)))}),
        "observed_data": xr.Dataset(coords={"row_index": ("cell", np.repeat(np.arange(20, dtype=np.int32), 500))}),
    })
    assert _compression(tree) == {"/observed_data": {"row_index": {"zlib": True, "complevel": 1, "shuffle": True}}}


def test_the_cells_layout_reads_cells_in_any_order_and_refuses_bad_positions():
    rng = np.random.default_rng(6)
    values = rng.normal(size=(2, 4, 5))
    values[0, 1, 2] = values[1, 3, :2] = np.nan
    n = int((~np.isnan(values)).sum())
    data = TwoWayData.from_array(values, se=rng.uniform(0.1, 0.2, values.shape),
                                 covariates={"x": np.arange(n, dtype=float), "g": np.array(list("abc"))[np.arange(n) % 3]})
    ds = data.to_dataset(layout="cells")
    assert ds["y"].dims == ("cell",) and ds.sizes["cell"] == n and ds["row_index"].dtype == np.int32
    shuffled = TwoWayData.from_dataset(ds.isel(cell=rng.permutation(n)))
    np.testing.assert_array_equal(shuffled.values, data.values)
    np.testing.assert_array_equal(shuffled.se, data.se)
    for name in ("x", "g"):
        np.testing.assert_array_equal(shuffled.covariates[name], data.covariates[name])
    twice = ds.assign_coords(row_index=ds["row_index"].copy(data=np.r_[ds["row_index"].values[1:2],
                                                                        ds["row_index"].values[1:]]),
                             col_index=ds["col_index"].copy(data=np.r_[ds["col_index"].values[1:2],
                                                                        ds["col_index"].values[1:]]))
    with pytest.raises(DataError, match="each cell once"):
        TwoWayData.from_dataset(twice)
    outside = ds.assign_coords(col_index=ds["col_index"] + 5)
    with pytest.raises(DataError, match="'col_index' must hold positions 0..4"):
        TwoWayData.from_dataset(outside)
    with pytest.raises(DataError, match="layout must be one of 'grid', 'cells'"):
        data.to_dataset(layout="long")
    assert json.loads(ds.attrs["twoway_covariates"]) == ["x", "g"]
