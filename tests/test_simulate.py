"""Simulation: shapes, labels, seeds, given parameters, and the variance each combination implies."""

import json

import numpy as np
import pytest

from twoway import ModelError, ModelSpec, preset, simulate


def test_shapes_labels_and_truth():
    sim = simulate("additive", 4, 6, 3, seed=1, row_labels=list("abcd"))
    d = sim.data
    assert d.values.shape == (3, 4, 6) and d.is_complete and not d.has_se
    assert d.row_labels == tuple("abcd") and len(d.col_labels) == 6
    t = sim.truth
    assert np.shape(t["row_effect"]) == (4,) and np.shape(t["col_sd"]) == (6,)
    assert np.allclose(t["row_mean"], t["intercept"] + t["row_effect"] + np.mean(t["col_effect"]))
    assert "sigma" not in t  # the additive preset has no sigma
    js = json.loads(json.dumps(sim.truth_dict()))
    assert set(js["row_sd"]) == set("abcd")


def test_same_seed_same_table_and_other_seed_differs():
    a = simulate("additive-sd", 5, 5, seed=7).data.values
    b = simulate("additive-sd", 5, 5, seed=7).data.values
    c = simulate("additive-sd", 5, 5, seed=8).data.values
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_given_parameters_are_used_and_checked():
    params = {"intercept": 10.0, "row_effect": [1.0, -1.0, 0.0], "row_sd": [0.1, 0.2, 0.3]}
    sim = simulate("additive", 3, 4, params=params, seed=2)
    assert sim.truth["intercept"] == 10.0 and np.allclose(sim.truth["row_sd"], [0.1, 0.2, 0.3])
    with pytest.raises(ModelError, match="one value per level"):
        simulate("additive", 3, 4, params={"row_effect": [1.0, 2.0]})
    with pytest.raises(ModelError, match="sigma"):
        simulate("additive", 3, 4, params={"sigma": 1.0})  # additive has no sigma
    with pytest.raises(ModelError, match="must not be negative"):
        simulate("additive", 3, 4, params={"col_sd": [1, 1, -1, 1]})


def test_missing_cells_and_se():
    sim = simulate("additive", 10, 10, 2, seed=3, missing=0.3, se=0.5)
    d = sim.data
    assert 0.15 < 1 - d.n_observed / d.n_cells < 0.45
    assert d.has_se and np.all(np.isnan(d.se[~d.mask])) and np.all(d.se[d.mask] == 0.5)
    assert d.mask.any(axis=(0, 2)).all() and d.mask.any(axis=(0, 1)).all()
    with pytest.raises(ModelError, match="missing fraction"):
        simulate("additive", 3, 3, missing=1.0)


@pytest.mark.parametrize("combine", ["variance", "sd"])
def test_cell_variance_follows_the_combination_rule(combine):
    """With many replicates, each cell's sample variance estimates the model's variance.

    For R normal draws the sample variance s^2 has sd ~ v * sqrt(2 / (R - 1)); we pool
    the standardised errors of all 12 cells into one z statistic and allow |z| < 4
    (false-alarm rate about 6e-5).
    """
    spec = ModelSpec(combine=combine, row_scale="hetero", col_scale="hetero", sigma=True)
    params = {"row_sd": [0.5, 1.0, 2.0], "col_sd": [0.3, 0.6, 0.9, 1.2], "sigma": 0.4}
    r = 4000
    sim = simulate(spec, 3, 4, r, params=params, seed=11, se=0.25)
    rs, cs = np.array(params["row_sd"])[:, None], np.array(params["col_sd"])[None, :]
    if combine == "variance":
        expected = 0.25**2 + rs**2 + cs**2 + 0.4**2
    else:
        expected = (0.25 + rs + cs + 0.4) ** 2
    observed = sim.data.values.var(axis=0, ddof=1)
    z = (observed - expected) / (expected * np.sqrt(2 / (r - 1)))
    assert abs(z.sum() / np.sqrt(z.size)) < 4
    assert np.all(np.abs(z) < 4.5)  # each cell alone, false-alarm rate about 7e-6 per cell


def test_prior_draws_cover_every_parameter_of_the_model():
    spec = ModelSpec(row_effect="fixed", col_effect="random", row_scale="homo", col_scale="hetero")
    t = simulate(spec, 4, 5, seed=1).truth
    assert abs(np.sum(t["row_effect"])) < 1e-12  # fixed effects sum to zero
    for name in ("intercept", "col_effect_sd", "row_sd", "col_log_sd_loc", "col_log_sd_scale", "sigma"):
        assert name in t
    assert np.ndim(t["row_sd"]) == 0 and np.shape(t["col_sd"]) == (5,)


def test_shipped_example_is_the_demo_table():
    from importlib.resources import files

    from twoway import TwoWayData
    from twoway.demo import seed_table

    path = files("twoway") / "examples" / "seed_8x12.csv"
    shipped = TwoWayData.from_csv(str(path), row="row", col="col", value="value")
    sim = seed_table()
    np.testing.assert_array_equal(shipped.values, sim.data.values)
    assert shipped.row_labels == sim.data.row_labels and shipped.col_labels == sim.data.col_labels
