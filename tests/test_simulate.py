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
    from twoway.app.demo import seed_table

    path = files("twoway") / "examples" / "seed_8x12.csv"
    shipped = TwoWayData.from_csv(str(path), row="row", col="col", value="value")
    sim = seed_table()
    np.testing.assert_array_equal(shipped.values, sim.data.values)
    assert shipped.row_labels == sim.data.row_labels and shipped.col_labels == sim.data.col_labels


# ---------------------------------------------------------------------------------------------
# given hyperparameters are in force when what depends on them is drawn

ALPHA = 1e-3
"""False-alarm rate of each chi-square check below (two-sided)."""


def _chi2_ok(standardised: np.ndarray) -> bool:
    """Whether sum(x^2) of n standard normal draws lies in the central 1 - ALPHA interval of chi2(n)."""
    from scipy import stats

    x = np.ravel(standardised)
    lo, hi = stats.chi2.ppf([ALPHA / 2, 1 - ALPHA / 2], x.size)
    return bool(lo < np.sum(x * x) < hi)


CELL = ModelSpec(row_effect="random", col_effect="random", row_scale="none", col_scale="none", sigma=True,
                 cell_effect="random")


@pytest.mark.parametrize("name, shape, value", [
    ("row_effect_sd", (4000, 2, 1), 0.5),
    ("col_effect_sd", (2, 4000, 1), 0.7),
    ("cell_sd", (80, 50, 2), 0.3),
])
def test_given_effect_sd_draws_the_effects(name, shape, value):
    """The effects drawn under a given sd are N(0, sd^2): sum(effect^2) / sd^2 ~ chi2(n), n = 4000.

    The table is made of them (the truth is what was used): with the intercept, the other
    effects and sigma near zero, every replicate of a cell is its effect.
    """
    n_rows, n_cols, n_reps = shape
    effect = name.replace("_sd", "") if name != "cell_sd" else "cell_effect"
    params = {"intercept": 0.0, "sigma": 1e-9, "cell_sd": 0.0, name: value}
    for side, n in (("row", n_rows), ("col", n_cols)):
        if f"{side}_effect" != effect:
            params[f"{side}_effect"] = np.zeros(n)
    for seed in (11, 12, 13):
        sim = simulate(CELL, n_rows, n_cols, n_reps, params=params, seed=seed)
        t = sim.truth
        assert t[name] == value
        drawn = np.asarray(t[effect])
        assert _chi2_ok(drawn / value), (seed, np.std(drawn))
        table = sim.data.values
        expected = {"row_effect": drawn[:, None], "col_effect": drawn[None, :], "cell_effect": drawn}[effect]
        np.testing.assert_allclose(table, np.broadcast_to(expected, table.shape), atol=1e-6)


def test_given_hetero_hyperparameters_draw_the_scales():
    """Given row_log_sd_loc and row_log_sd_scale: log(row_sd) ~ N(loc, scale^2) over 4000 rows."""
    spec = ModelSpec(row_effect="none", col_effect="none", row_scale="hetero", col_scale="none", sigma=False)
    loc, scale = -0.5, 0.3
    for seed in (11, 12, 13):
        t = simulate(spec, 4000, 2, params={"row_log_sd_loc": loc, "row_log_sd_scale": scale}, seed=seed).truth
        assert t["row_log_sd_loc"] == loc and t["row_log_sd_scale"] == scale
        assert _chi2_ok((np.log(t["row_sd"]) - loc) / scale)


def test_given_row_sd_makes_the_residual():
    """A hetero row_sd given is the residual's sd of each row (sample variance over 4000 columns)."""
    spec = ModelSpec(row_effect="none", col_effect="none", row_scale="hetero", col_scale="none", sigma=False)
    row_sd = np.array([0.5, 1.0, 2.0])
    sim = simulate(spec, 3, 4000, params={"row_sd": row_sd, "intercept": 0.0}, seed=5)
    np.testing.assert_array_equal(sim.truth["row_sd"], row_sd)
    for i in range(3):
        assert _chi2_ok(sim.data.values[0, i] / row_sd[i])


def test_given_factor_scales_draw_the_loadings():
    """A row fa:2 structure's given loadings_scale and psi_scale are the scales of the drawn loadings and psi.

    Rows below the first k of the identified loadings are the raw rows rotated by an
    orthogonal matrix made of the first k rows: iid N(0, scale^2) entries.
    """
    import dataclasses

    spec = dataclasses.replace(preset("kronecker"), row_structure="fa:2")
    given = {"row_loadings_scale": 0.4, "row_psi_scale": 2.5}
    t = simulate(spec, 1000, 2, params=given, seed=3).truth
    assert t["row_loadings_scale"] == 0.4 and t["row_psi_scale"] == 2.5
    assert _chi2_ok(t["row_loadings"][2:] / 0.4)
    assert _chi2_ok(t["row_psi"] / 2.5)  # |N(0, s^2)|: the squares are chi2 all the same


def test_kronecker_truth_is_the_matrices_used():
    """Given column-structure values are put on the unit scale the model fixes; the truth records them."""
    import dataclasses

    from twoway.errors import TwowayWarning

    spec = dataclasses.replace(preset("kronecker"), row_structure="ar1", col_structure="diag")
    with pytest.warns(TwowayWarning, match="mean variance 1"):
        sim = simulate(spec, 4, 3, params={"row_rho": 0.6, "row_sd": 1.5, "col_sd": [1.0, 2.0, 3.0]}, seed=1)
    t = sim.truth
    col_sd = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0 / 3.0)
    np.testing.assert_allclose(t["col_sd"], col_sd, rtol=1e-12)
    np.testing.assert_allclose(t["col_cov"], np.diag(col_sd**2), rtol=1e-12)
    assert t["row_rho"] == 0.6 and t["row_sd"] == 1.5
    lags = np.abs(np.subtract.outer(np.arange(4), np.arange(4)))
    np.testing.assert_allclose(t["row_cov"], 1.5**2 * 0.6**lags, rtol=1e-12)
    # values already on the unit scale are kept as given, without a warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = simulate(spec, 4, 3, params={"col_sd": col_sd}, seed=1).truth
    np.testing.assert_array_equal(again["col_sd"], col_sd)


def test_parameters_not_given_come_from_the_same_stream():
    """Giving a hyperparameter changes what depends on it and nothing else."""
    spec = ModelSpec(row_effect="random", col_effect="random", row_scale="hetero", col_scale="none", sigma=True)
    base = simulate(spec, 6, 5, seed=3).truth
    t = simulate(spec, 6, 5, params={"row_effect_sd": 0.5, "row_log_sd_loc": 0.0}, seed=3).truth
    np.testing.assert_allclose(t["row_effect"], base["row_effect"] * 0.5 / base["row_effect_sd"], rtol=1e-12)
    np.testing.assert_allclose(np.log(t["row_sd"]), np.log(base["row_sd"]) - base["row_log_sd_loc"], atol=1e-12)
    for name in ("intercept", "col_effect", "col_effect_sd", "row_log_sd_scale", "sigma"):
        np.testing.assert_array_equal(t[name], base[name])


def test_given_arrays_are_copied():
    row_effect = np.array([1.0, -1.0, 0.0])
    sim = simulate("crossed", 3, 4, params={"row_effect": row_effect}, seed=1)
    np.testing.assert_array_equal(sim.truth["row_effect"], row_effect)
    assert sim.truth["row_effect"] is not row_effect


def _relationship_file(folder, labels, rho):
    """An AR(1)-like relationship matrix K[i, j] = rho^|i - j| written as a labelled CSV."""
    n = len(labels)
    K = rho ** np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    lines = ["," + ",".join(labels)] + [lab + "," + ",".join(repr(float(v)) for v in row) for lab, row in zip(labels, K)]
    path = folder / "K.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, K


def test_known_relationship_matrix_shapes_the_simulated_effects(tmp_path):
    """``row_effect_cov = "known:FILE"`` draws row effects ~ N(0, sd^2 K), not independent ones.

    The random stream is the same with and without K, so with the same seed the effects with K
    are exactly K^(1/2) times those without (the symmetric square root). And, over 600 rows
    with rho = 0.9, the effects whitened by K^(-1/2) / sd have variance 1: the chi-square check
    has a false-alarm rate of 1e-3; the effects' lag-1 correlation is rho within 0.08 (its sd is
    about sqrt((1 - rho^2) / n) = 0.018 here, so 0.08 is over 4 sd).
    """
    from scipy import stats

    n, rho, sd = 600, 0.9, 0.7
    labels = [f"row{i + 1}" for i in range(n)]
    path, K = _relationship_file(tmp_path, labels, rho)
    plain = ModelSpec(row_effect="random", col_effect="none", row_scale="none", col_scale="none", sigma=True)
    known = ModelSpec(row_effect="random", col_effect="none", row_scale="none", col_scale="none", sigma=True,
                      row_effect_cov=f"known:{path}")
    with_k = simulate(known, n, 2, seed=5, params={"row_effect_sd": sd}).truth["row_effect"]
    without = simulate(plain, n, 2, seed=5, params={"row_effect_sd": sd}).truth["row_effect"]
    w, v = np.linalg.eigh(K)
    np.testing.assert_allclose(with_k, v @ (np.sqrt(w) * (v.T @ without)), rtol=1e-9, atol=1e-12)
    white = (v @ ((v.T @ with_k) / np.sqrt(w))) / sd
    lo, hi = stats.chi2.ppf([5e-4, 1 - 5e-4], n) / n
    assert lo < np.mean(white ** 2) < hi
    lag1 = np.corrcoef(with_k[:-1], with_k[1:])[0, 1]
    assert abs(lag1 - rho) < 0.08, lag1
