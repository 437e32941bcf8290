"""Fitting: the DataTree's contents and labels, files, summaries, seeds, errors."""

import json
import warnings

import numpy as np
import pytest

import twoway
from twoway import ConvergenceWarning, FitError, Prior, TwoWayData
from twoway.fit import compile_model

# every prior given, so that tables of the same layout reuse one compiled model
SPEC = twoway.preset("additive-sd").with_priors(
    intercept=Prior.make("normal", mu=0, sigma=3),
    row_effect_sd=Prior.make("halfnormal", sigma=1),
    col_effect_sd=Prior.make("halfnormal", sigma=1),
    row_log_sd_loc=Prior.make("normal", mu=-1, sigma=0.5),
    row_log_sd_scale=Prior.make("halfnormal", sigma=0.3),
    col_log_sd_loc=Prior.make("normal", mu=-1, sigma=0.5),
    col_log_sd_scale=Prior.make("halfnormal", sigma=0.3),
    sigma=Prior.make("halfnormal", sigma=0.3),
)


@pytest.fixture(scope="module")
def table():
    sim = twoway.simulate(SPEC, 5, 4, 2, seed=3, missing=0.1, se=0.2,
                          row_labels=["a", "b", "c", "d", "e"], col_labels=["w", "x", "y", "z"])
    return sim.data


@pytest.fixture(scope="module")
def compiled(table):
    return compile_model(SPEC, table, progress=False)


@pytest.fixture(scope="module")
def result(compiled):
    return compiled.sample(chains=2, draws=300, tune=300, seed=5, progress=False)


def test_posterior_has_labelled_public_parameters(result, table):
    post = result.posterior
    assert list(post["row_effect"].coords["row"].values) == list(table.row_labels)
    assert list(post["col_sd"].coords["col"].values) == list(table.col_labels)
    assert post["row_mean"].dims == ("chain", "draw", "row")
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 300
    assert not [v for v in post.data_vars if v.startswith("_")]
    assert "replicate" not in post.dims  # replicate tables share the parameters
    obs = result.tree["observed_data"].to_dataset()  # the observed cells only, long
    assert obs["y"].dims == ("cell",) and obs.sizes["cell"] == table.n_observed
    np.testing.assert_array_equal(result.data.values, table.values)
    # effects integrated out (and drawn back); the random row effects are eliminated by their Schur complement
    assert result.info["likelihood_path"] == "woodbury-schur" and result.info["engine"] == "jax"
    assert json.loads(result.tree.attrs["twoway_data_summary"])["n_observed"] == table.n_observed


def test_derived_means_are_computed_from_the_draws(result):
    post = result.posterior
    expected = post["intercept"] + post["row_effect"] + post["col_effect"].mean("col")
    np.testing.assert_allclose(post["row_mean"].values, expected.transpose(*post["row_mean"].dims).values)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_save_and_load_round_trip(result, tmp_path, suffix):
    path = result.save(tmp_path / f"fit{suffix}")
    back = twoway.Fit.load(path)
    for name in result.posterior.data_vars:
        np.testing.assert_array_equal(back.posterior[name].values, result.posterior[name].values)
    assert back.model == result.model and back.priors == result.priors
    np.testing.assert_array_equal(back.data.values, result.data.values)
    np.testing.assert_array_equal(back.data.se, result.data.se)
    assert back.data.row_labels == result.data.row_labels
    assert back.summary().diagnostics["divergences"] == result.summary().diagnostics["divergences"]


def test_load_refuses_what_is_not_a_fit(tmp_path):
    bad = tmp_path / "x.nc"
    bad.write_text("row,col,value\n")
    with pytest.raises(FitError, match="not a twoway fit"):
        twoway.Fit.load(bad)
    with pytest.raises(FitError, match="does not exist"):
        twoway.Fit.load(tmp_path / "none.nc")


def test_summary_table_and_diagnostics(result):
    s = result.summary()
    assert list(s.table.columns) == ["mean", "sd", "hdi_3%", "hdi_97%", "ess_bulk", "ess_tail", "r_hat"]
    assert "row_sd[c]" in s.table.index and "sigma" in s.table.index
    assert (s.table["hdi_3%"] <= s.table["mean"]).all() and (s.table["mean"] <= s.table["hdi_97%"]).all()
    assert set(s.diagnostics) == {"divergences", "max_r_hat", "min_ess_bulk", "sampling_seconds", "total_seconds"}
    assert s.diagnostics["min_ess_bulk"] == pytest.approx(s.table["ess_bulk"].min())
    text = s.format()
    assert "priors:" in text and "likelihood: woodbury" in text and "sigma ~ halfnormal(sigma=0.3)" in text


def test_poor_sampling_is_warned_in_plain_words(compiled):
    short = compiled.sample(chains=2, draws=25, tune=25, seed=1, progress=False)
    with pytest.warns(ConvergenceWarning, match="effective sample size is below 400"):
        s = short.summary()
    assert any("draw more" in w for w in s.warnings)
    one = compiled.sample(chains=1, draws=50, tune=50, seed=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert any("one chain" in w for w in one.summary().warnings)


def test_same_seed_same_draws_and_new_table_reuses_the_compiled_model(compiled, result, table):
    again = compiled.sample(chains=2, draws=300, tune=300, seed=5, progress=False)
    np.testing.assert_array_equal(again.posterior["row_sd"].values, result.posterior["row_sd"].values)
    other = table.with_values(table.values + 5.0)
    moved = compiled.sample(other, chains=2, draws=300, tune=300, seed=5, progress=False)
    shift = moved.posterior["intercept"].mean() - result.posterior["intercept"].mean()
    assert 3.0 < float(shift) < 7.0  # the intercept follows the data (its prior sd is 3)
    np.testing.assert_array_equal(moved.data.values, other.values)


def test_other_layout_is_refused_by_a_compiled_model(compiled):
    bigger = twoway.simulate(SPEC, 6, 4, 2, seed=1).data
    with pytest.raises(FitError, match="layout"):
        compiled.sample(bigger, draws=10, tune=10)


@pytest.mark.parametrize("kwargs, match", [
    ({"chains": 0}, "chains"),
    ({"draws": 2.5}, "draws"),
    ({"seed": -1}, "seed"),
    ({"tune": 0, "engine": "nutpie"}, "tune.*nutpie"),
    ({"engine": "stan"}, "engine"),
    ({"backend": "stan"}, "engine"),
    ({"engine": "jax", "backend": "nutpie"}, "same thing"),
])
def test_bad_sampling_options(table, kwargs, match):
    with pytest.raises(FitError, match=match):
        twoway.fit(SPEC, table, **kwargs)


def test_fit_needs_a_table():
    with pytest.raises(FitError, match="TwoWayData"):
        twoway.fit("additive", np.zeros((3, 3)))


def test_model_without_unknown_scale_needs_se():
    spec = twoway.ModelSpec(row_scale="none", col_scale="none", sigma=False)
    data = TwoWayData.from_array(np.arange(12.0).reshape(3, 4))
    with pytest.raises(twoway.ModelError, match="standard error"):
        twoway.fit(spec, data)


def test_pymc_backend_gives_the_same_structure(table):
    res = twoway.fit(SPEC, table, chains=2, draws=100, tune=100, seed=2, backend="pymc", progress=False)
    assert res.info["engine"] == "pymc" and res.engine == "pymc"
    assert set(res.posterior.data_vars) >= {"row_effect", "col_sd", "row_mean", "sigma"}
    assert list(res.posterior["row_sd"].coords["row"].values) == list(table.row_labels)
    assert "diverging" in res.sample_stats
