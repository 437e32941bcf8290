"""Integrated effects: every fast path equals the dense twin (value and gradient), and the
effects drawn back follow the exact conditional law obtained from the dense Gaussian."""

import numpy as np
import pytest

from twoway import ModelSpec, preset, simulate
from twoway.engines.pymc.model import build_pymc_model
from twoway.plan import integration_constants, resolve
from twoway.linalg.ops import NUMPY
from twoway.likelihood.woodbury import effects_conditional
from twoway.likelihood.marginal import base_projections, dense_covariance, effects_design, layout
from twins import assert_equals_dense_twin


CASES = [
    # (spec, rows, cols, replicates, missing, se, expected path)
    (preset("crossed"), 4, 5, 1, 0.0, None, "anova"),
    pytest.param(*(preset("crossed"), 3, 4, 3, 0.0, 0.2, "anova"), marks=pytest.mark.slow),
    pytest.param(*(ModelSpec(row_effect="fixed", col_effect="random", row_scale="homo", col_scale="none"), 4, 3, 2, 0.0, None, "anova"), marks=pytest.mark.slow),
    (preset("crossed"), 5, 4, 2, 0.2, None, "woodbury-schur"),
    pytest.param(*(preset("crossed"), 3, 6, 1, 0.2, 0.3, "woodbury-schur"), marks=pytest.mark.slow),
    pytest.param(*(preset("crossed-hetero"), 6, 4, 2, 0.0, None, "woodbury-schur"), marks=pytest.mark.slow),
    pytest.param(*(preset("crossed-hetero"), 4, 7, 3, 0.25, 0.2, "woodbury-schur"), marks=pytest.mark.slow),
    pytest.param(*(ModelSpec(row_effect="random", col_effect="fixed", row_scale="none", col_scale="hetero"), 5, 4, 2, 0.1, None,
     "woodbury-schur"), marks=pytest.mark.slow),
    pytest.param(ModelSpec(row_effect="fixed", col_effect="random", row_scale="hetero", col_scale="none",
                           intercept=False), 4, 5, 1, 0.15, 0.3, "woodbury-schur", marks=pytest.mark.slow),
    pytest.param(*(preset("additive"), 4, 6, 1, 0.0, 0.3, "woodbury-schur"), marks=pytest.mark.slow),
    pytest.param(*(preset("additive-sd"), 5, 3, 2, 0.15, None, "woodbury-schur"), marks=pytest.mark.slow),
    (ModelSpec(row_effect="fixed", col_effect="fixed", row_scale="hetero", col_scale="none"), 4, 4, 2, 0.1, 0.4, "woodbury"),
    pytest.param(*(ModelSpec(intercept=False, row_effect="random", col_effect="none", row_scale="none", col_scale="homo"), 4, 5, 1, 0.0, None, "anova"), marks=pytest.mark.slow),
    pytest.param(*(ModelSpec(intercept=False, row_effect="random", col_effect="none", row_scale="none", col_scale="homo"), 4, 5, 1, 0.1, None, "woodbury-schur"), marks=pytest.mark.slow),
    pytest.param(*(ModelSpec(intercept=False, row_effect="random", col_effect="none", row_scale="hetero", col_scale="none"), 4, 5, 2, 0.0, None, "woodbury-schur"), marks=pytest.mark.slow),
    # latent in the default tier: test_ops_twins.py (every ops); here through compiled PyMC, slow
    pytest.param(*(preset("latent"), 3, 4, 3, 0.0, None, "woodbury-latent"), marks=pytest.mark.slow),
    pytest.param(*(preset("latent"), 4, 3, 2, 0.2, 0.3, "woodbury-latent"), marks=pytest.mark.slow),
    pytest.param(*(ModelSpec(residual="latent", row_scale="homo", col_scale="none", row_effect="fixed"), 3, 5, 2, 0.1, None, "woodbury-latent"), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("spec, n, k, r, missing, se, path", CASES)
def test_fast_path_equals_dense_twin(spec, n, k, r, missing, se, path):
    data = simulate("additive", n, k, r, seed=10 * n + k + r, missing=missing, se=se).data
    fast = build_pymc_model(resolve(spec, data))
    dense = build_pymc_model(resolve(spec, data, likelihood="dense"))
    assert fast.likelihood_path == path and dense.likelihood_path == "dense"
    assert_equals_dense_twin(fast.model, dense.model, points=3, seed=1, jitter=0.5)


def _params(spec, built, data, rng):
    """A random parameter point in NumPy (scalars as shape-() arrays)."""
    p = {k: np.asarray(v) for k, v in built.constants.items()}
    for side in ("row", "col"):
        n = data.n_rows if side == "row" else data.n_cols
        if getattr(spec, f"{side}_effect") == "random":
            p[f"{side}_effect_sd"] = np.asarray(rng.uniform(0.3, 2.0))
        kind = getattr(spec, f"{side}_scale")
        if kind == "hetero":
            p[f"{side}_sd"] = rng.uniform(0.2, 1.5, size=n)
        elif kind == "homo":
            p[f"{side}_sd"] = np.asarray(rng.uniform(0.2, 1.5))
    if spec.sigma:
        p["sigma"] = np.asarray(rng.uniform(0.2, 1.0))
    return p


@pytest.mark.parametrize("spec, n, k, r, missing, se", [
    (preset("crossed"), 4, 5, 2, 0.1, None),
    (preset("additive"), 3, 4, 1, 0.0, 0.3),
    (ModelSpec(row_effect="fixed", col_effect="random", row_scale="homo"), 4, 3, 2, 0.0, None),
    (preset("latent"), 3, 4, 2, 0.1, None),
])
def test_effects_conditional_equals_dense_conditioning(spec, n, k, r, missing, se):
    data = simulate("additive", n, k, r, seed=5, missing=missing, se=se).data
    built = build_pymc_model(resolve(spec, data))
    rng = np.random.default_rng(2)
    params = _params(spec, built, data, rng)
    lay, design = built.layout, built.design
    proj = base_projections(NUMPY, spec, lay, params)
    g_inv, _ = design.prior(NUMPY, params)
    mean, L = effects_conditional(proj, design.E, g_inv)
    # dense: u | y ~ N(G Z' C^-1 r, G - G Z' C^-1 Z G)
    from twoway.likelihood.marginal import indicator_matrix

    C = dense_covariance(NUMPY, spec, lay, design, params)
    Z = indicator_matrix(lay) @ design.E
    G = design.covariance(NUMPY, params)
    rvec = lay.r[lay.obs]
    CiZG = np.linalg.solve(C, Z @ G)
    np.testing.assert_allclose(mean, CiZG.T @ rvec, rtol=1e-9, atol=1e-10)
    cov = G - G @ Z.T @ CiZG
    np.testing.assert_allclose(np.linalg.inv(L @ L.T), cov, rtol=1e-8, atol=1e-10)


def test_integration_constants_need_normal_priors():
    from twoway import ModelError, Prior

    spec = preset("crossed").with_priors(intercept=Prior.make("normal", mu=1.0, sigma=3.0))
    data = simulate("crossed", 3, 3, seed=1).data
    m0, const = integration_constants(spec, resolve(spec, data).model_priors)
    assert m0 == 1.0 and const == {"intercept_sd": 3.0}
    design = effects_design(spec, data)
    assert design.m == 1 + 3 + 3


SCHUR_CASES = [
    (preset("crossed"), 6, 4, 2, 0.2, None),
    (preset("crossed"), 3, 7, 1, 0.1, 0.3),
    (preset("crossed-hetero"), 5, 4, 3, 0.2, None),
    (ModelSpec(row_effect="fixed", col_effect="random", row_scale="hetero", col_scale="none"), 4, 6, 2, 0.1, None),
]


def _dense_conditional(spec, built, params):
    from twoway.likelihood.marginal import indicator_matrix

    lay, design = built.layout, built.design
    C = dense_covariance(NUMPY, spec, lay, design, params)
    Z = indicator_matrix(lay) @ design.E
    G = design.covariance(NUMPY, params)
    CiZG = np.linalg.solve(C, Z @ G)
    return CiZG.T @ lay.r[lay.obs], G - G @ Z.T @ CiZG


@pytest.mark.parametrize("spec, n, k, r, missing, se", SCHUR_CASES)
def test_schur_draws_follow_the_dense_conditional(spec, n, k, r, missing, se):
    from twoway.likelihood.paths import choose_path
    from twoway.likelihood.marginal import schur_draw

    data = simulate("additive", n, k, r, seed=7 * n + k, missing=missing, se=se).data
    built = build_pymc_model(resolve(spec, data))
    lay, design = built.layout, built.design
    assert choose_path(spec, lay, design) == "woodbury-schur"
    rng = np.random.default_rng(3)
    params = _params(spec, built, data, rng)
    mean, cov = _dense_conditional(spec, built, params)
    S = 20000
    batch = {key: np.repeat(np.asarray(v)[None], S, axis=0) for key, v in params.items()}
    u = schur_draw(spec, lay, design, batch, rng)
    # whitened by the dense law, the draws are iid standard normal: check mean and covariance
    L = np.linalg.cholesky(cov)
    z = np.linalg.solve(L, (u - mean).T).T
    m = z.shape[1]
    n_checks = m + m * (m + 1) // 2
    from scipy.stats import norm

    crit = norm.isf(0.001 / (2 * n_checks))   # a 0.001 false-alarm rate over all entries (Bonferroni)
    assert np.max(np.abs(z.mean(axis=0))) * np.sqrt(S) < crit
    emp = np.cov(z, rowvar=False)
    se_entry = np.where(np.eye(m, dtype=bool), np.sqrt(2.0 / S), np.sqrt(1.0 / S))
    assert np.max(np.abs(emp - np.eye(m)) / se_entry) < crit


def _known_matrix_file(tmp_path, labels, seed=0):
    n = len(labels)
    a = np.random.default_rng(seed).normal(size=(n, n))
    K = a @ a.T / n + np.eye(n)
    lines = ["," + ",".join(labels)] + [lab + "," + ",".join(repr(float(v)) for v in row) for lab, row in zip(labels, K)]
    path = tmp_path / "relationship.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, K


@pytest.mark.parametrize("col_effect, missing, path", [
    ("random", 0.2, "woodbury-schur"),   # the iid columns are eliminated, the known rows stay dense
    ("none", 0.0, "woodbury"),
])
def test_known_relationship_effects_equal_dense_twin(tmp_path, col_effect, missing, path):
    from twoway.likelihood.marginal import schur_draw

    data = simulate("additive", 5, 4, 2, seed=11, missing=missing).data
    file, K = _known_matrix_file(tmp_path, data.row_labels)
    spec = ModelSpec(row_effect="random", col_effect=col_effect, row_scale="none", col_scale="homo",
                     row_effect_cov=f"known:{file}")
    fast = build_pymc_model(resolve(spec, data))
    dense = build_pymc_model(resolve(spec, data, likelihood="dense"))
    assert fast.likelihood_path == path
    k = [b[0] for b in fast.design.blocks].index("row_effect")
    start, stop = fast.design.blocks[k][2:]
    np.testing.assert_allclose(fast.design.base_cov[k][start:stop, start:stop], K, rtol=1e-12)
    assert_equals_dense_twin(fast.model, dense.model, points=2, seed=2, jitter=0.5)
    if path == "woodbury-schur":
        rng = np.random.default_rng(2)
        # the draws, whitened by the dense conditional law, have mean 0 and sd 1
        params = _params(spec, fast, data, rng)
        mean, cov = _dense_conditional(spec, fast, params)
        S = 20000
        batch = {key: np.repeat(np.asarray(v)[None], S, axis=0) for key, v in params.items()}
        u = schur_draw(spec, fast.layout, fast.design, batch, rng)
        z = np.linalg.solve(np.linalg.cholesky(cov), (u - mean).T).T
        from scipy.stats import norm

        crit = norm.isf(0.001 / (2 * 2 * z.shape[1]))   # 0.001 false alarms over 2 m checks (Bonferroni)
        assert np.max(np.abs(z.mean(axis=0))) * np.sqrt(S) < crit
        assert np.max(np.abs(z.std(axis=0) - 1.0)) * np.sqrt(2 * S) < crit


def test_known_relationship_with_wrong_labels_is_a_clear_error(tmp_path):
    from twoway import DataError, ModelError

    data = simulate("additive", 4, 3, seed=1).data
    file, _ = _known_matrix_file(tmp_path, ["x1", "x2", "x3", "x4"])
    spec = ModelSpec(row_effect="random", row_effect_cov=f"known:{file}")
    with pytest.raises((DataError, ModelError), match="x1|label"):
        build_pymc_model(resolve(spec, data))
