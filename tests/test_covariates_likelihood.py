"""Covariates in the mean, integrated with the intercept and the effects, on every likelihood path.

With a covariates' design X (n_obs, p) the cells are
``y = intercept + row_effect + col_effect + X coef + e``, ``coef ~ N(0, diag(coef_sd^2))``.
Every path sees the residual through the augmented indicators ``[rows | cols | X]``; each is
checked against its dense twin (the whole covariance with ``Z = [rows | cols | X] E``, one
Cholesky):

* NumPy, every case: the value (and two draws at once, NumPy's batch) equals the dense twin's;
  central differences of the fast path equal the dense twin's exact gradient;
* JAX and PyTensor, one case per path and branch (:data:`TRACED`): the value and the exact
  gradient (``jax.grad`` of a jitted program with the residual grid a traced argument, as the
  JAX engine runs it; ``pytensor.grad``) equal the dense twin's (PyTensor's ``pytensor.grad``);
* the sparse path (NumPy/CHOLMOD): its value, its draws and the laplace engine's ``coef``;
* the anova path (complete balanced tables): the coefficients through the five eigen-spaces'
  Gram matrices of ``[r X]`` (checked against explicit projections), with its five sums of
  squares and the residual's cross products traced as the walk traces them, and a plan with
  covariates on a complete table choosing it (its JAX and PyMC models against the same plan on
  the woodbury-schur path).

The coefficients' draw-back follows the exact conditional law (mean and variance of many draws
against the dense GLS conditional, tolerances from Monte Carlo error), and without covariates
nothing changes. The tables and variance parameters are ``tests/test_ops_twins.py``'s cases;
X is added by hand (``layout(..., x=X)``, ``effects_design(..., coef_sd=...)``), independent
of a plan's covariates formula.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import test_ops_twins as twins

from twoway import preset, simulate
from twoway.engines.walk import tables
from twoway.likelihood import sparse as sp
from twoway.likelihood.marginal import (
    _residual_after_effects,
    dense_covariance,
    effects_design,
    effects_map,
    indicator_matrix,
    layout,
)
from twoway.likelihood.paths import (
    PATHS,
    LikelihoodPath,
    choose_path,
    draw_effects,
    marginal_logp,
    path_named,
)
from twoway.linalg.ops import JAX, NUMPY, PYTENSOR
from twoway.plan import known_relationships, resolve

RTOL_VALUE = 1e-9
RTOL_GRAD = 1e-8
RTOL_FD = 1e-5
COEF_SD = np.array([0.8, 1.5, 0.6])

#: ops-twins case -> the path it takes with covariates
CASES = {
    "no-effects": "woodbury",                       # only the coefficients integrated
    "crossed-complete": "anova",                    # the coefficients through the eigen-spaces' Gram matrices
    "fixed-random-homo-se": "anova",                # fixed rows (no grand-mean variance), known se, replicates
    "cell-crossed-complete": "anova",               # a random cell effect, three replicates
    "crossed-missing-se": "woodbury-schur",         # one variance for every cell: constant patterns
    "crossed-hetero-missing-se": "woodbury-schur",  # per-cell variances
    "col-eliminated-sd": "woodbury-schur",          # the columns eliminated
    "fixed-fixed-hetero-se": "woodbury",
    "cell-fixed-fixed-hetero-se": "woodbury",       # a random cell effect, collapsed per cell
    "cell-additive-missing": "woodbury-schur",      # the same under the Schur complement
    "latent-homo-fixed-missing-se": "woodbury-latent",
    "kron-ar1-unstructured": "kronecker-ar1",
    "kron-known-diag": "kronecker-cholesky",
    "kron-unstructured-diag-nugget": "kronecker-eigen",
    "kron-cs-cs-nugget": "kronecker-eigen",         # fixed eigenvectors
    "kron-ar1-ar1-missing": "dense-table",          # gaps
    "kron-iid-unstructured-se": "dense-table",      # se
    "full-file": "dense-table",                     # a full covariance
}

#: the cases JAX and PyTensor trace: every path, each covariate branch once (compiles cost seconds)
TRACED = ["no-effects", "crossed-complete", "fixed-random-homo-se", "cell-crossed-complete",
          "fixed-fixed-hetero-se", "crossed-missing-se", "cell-additive-missing",
          "latent-homo-fixed-missing-se", "kron-ar1-unstructured", "kron-known-diag",
          "kron-unstructured-diag-nugget", "kron-ar1-ar1-missing", "full-file"]


def design_x(data, seed: int = 11) -> np.ndarray:
    """(n_obs, 3): a covariate varying by cell and replicate, one constant within rows, one per cell (0/1)."""
    _, ii, jj = data.observed_index()
    rng = np.random.default_rng(seed)
    by_row = rng.normal(size=data.n_rows)
    return np.stack([rng.normal(size=ii.size), by_row[ii], ((ii + jj) % 2).astype(float)], axis=1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cov_twins")
    twins._write_labelled(d / "rows_known.csv", twins.ROWS, twins._spd(4, 0))
    twins._write_labelled(d / "cols_known.csv", twins.COLS, twins._spd(3, 1))
    cells = [f"{r}:{c}" for r in twins.ROWS for c in twins.COLS]
    twins._write_labelled(d / "full.csv", cells, twins._spd(12, 2))
    return d


@dataclass(frozen=True)
class Built:
    id: str
    spec: object
    data: object
    lay: object          # with the covariates
    design: object       # with the coefficients' block
    path: str
    theta: np.ndarray
    make_params: Callable


@functools.cache
def _built(case_id: str, folder: str) -> Built:
    b = twins._build(next(c for c in twins.CASES if c.id == case_id), Path(folder))
    plan = b.fast
    spec, data = plan.spec, plan.data
    lay = layout(data, plan.m0, plan.parts, x=design_x(data))
    design = effects_design(spec, data, known=known_relationships(spec, data), coef_sd=COEF_SD)
    return Built(case_id, spec, data, lay, design, choose_path(spec, lay, design), b.theta, b.make_params)


@pytest.fixture(scope="module")
def built(folder):
    return {cid: _built(cid, str(folder)) for cid in CASES}


def _logp(ops, b: Built, params, path, lay=None):
    return marginal_logp(ops, b.spec, b.lay if lay is None else lay, b.design, params, path)


def _numpy(b: Built, theta, path) -> float:
    return float(_logp(NUMPY, b, b.make_params(np.asarray(theta, dtype=float), NUMPY), path))


def _data_args(b: Built) -> tuple:
    """What the walk reads from the table: the five sums of squares and the residual's cross products
    (5, p) on the anova path, the residual grid otherwise."""
    if b.path == "anova":
        st = b.lay.anova
        return (np.array([st.ss_grand, st.ss_row, st.ss_col, st.ss_inter, st.ss_within]), np.asarray(st.cross))
    return (np.asarray(b.lay.r),)


def _symbolic_layout(b: Built, args):
    """b's layout reading the table's numbers from ``args`` (traced), as the walk does."""
    if b.path == "anova":
        ss, cross = args
        return dataclasses.replace(b.lay, anova=dataclasses.replace(
            b.lay.anova, ss_grand=ss[0], ss_row=ss[1], ss_col=ss[2], ss_inter=ss[3], ss_within=ss[4], cross=cross))
    return dataclasses.replace(b.lay, r=args[0])


# -- exact gradients: PyTensor (no rewrites: the graph as built) and JAX (jitted) --------------------------
@functools.cache
def _pytensor(case_id: str, folder: str) -> dict:
    """{"fast"/"dense": (value, gradient)} under the PyTensor ops, the table's numbers shared variables
    (the dense twin reads the residual grid, the fast path what the walk reads)."""
    import pytensor
    import pytensor.tensor as pt
    from pytensor.compile.mode import Mode

    b = _built(case_id, folder)
    theta = pt.dvector("theta")
    grid = dataclasses.replace(b.lay, r=pytensor.shared(np.asarray(b.lay.r), name="grid"))
    fast = _symbolic_layout(b, [pytensor.shared(a, name=f"data{k}") for k, a in enumerate(_data_args(b))])
    outputs = []
    for path, lay in ((b.path, fast), ("dense", grid)):
        logp = _logp(PYTENSOR, b, b.make_params(theta, PYTENSOR), path, lay)
        outputs += [logp, pytensor.grad(logp, theta)]
    # without rewrites: compiling costs ~0.1 s instead of ~1 s, the algebra is the same
    fn = pytensor.function([theta], outputs, mode=Mode(linker="py", optimizer=None))
    v_fast, g_fast, v_dense, g_dense = fn(b.theta)
    return {"fast": (float(v_fast), np.asarray(g_fast)), "dense": (float(v_dense), np.asarray(g_dense))}


@functools.cache
def _jax(case_id: str, folder: str) -> tuple:
    """(value, gradient) of the fast path under the JAX ops, jitted with the table's numbers as arguments."""
    import jax

    from twoway.engines.jax import enable_x64

    enable_x64()
    b = _built(case_id, folder)

    def f(theta, args):
        return _logp(JAX, b, b.make_params(theta, JAX), b.path, _symbolic_layout(b, args))

    args = tuple(jax.numpy.asarray(a) for a in _data_args(b))
    value, grad = twins._jit_call(jax.value_and_grad(f), jax.numpy.asarray(b.theta), args)
    return float(value), np.asarray(grad)


def _close_grad(got, want):
    np.testing.assert_allclose(got, want, rtol=RTOL_GRAD, atol=RTOL_GRAD * max(1.0, np.max(np.abs(want))))


# -- the paths against their dense twins ---------------------------------------------------------------
def test_the_cases_take_every_integrated_path(built):
    assert {b.path for b in built.values()} == {n for n, p in PATHS.items() if p.every_ops} - {
        "dense", "diagonal"}
    assert {built[c].path for c in TRACED} == {b.path for b in built.values()}
    for cid, want in CASES.items():
        b = built[cid]
        assert b.path == want, cid
        N, K = b.data.n_rows, b.data.n_cols
        assert b.design.n_cov == 3 and b.design.E.shape == (N + K + 3, b.design.m)
        assert b.design.blocks[-1] == ("coef", None, b.design.m - 3, b.design.m)


def test_dense_twin_adds_the_coefficients_covariance(built):
    """The dense twin itself: the covariance without coefficients plus ``X diag(coef_sd^2) X'``."""
    for cid in ("crossed-missing-se", "cell-fixed-fixed-hetero-se", "latent-homo-fixed-missing-se",
                "kron-ar1-ar1-missing"):
        b = built[cid]
        params = b.make_params(b.theta, NUMPY)
        plain = effects_design(b.spec, b.data, known=known_relationships(b.spec, b.data))
        without = dense_covariance(NUMPY, b.spec, dataclasses.replace(b.lay, x=None), plain, params)
        X = b.lay.x
        np.testing.assert_allclose(dense_covariance(NUMPY, b.spec, b.lay, b.design, params),
                                   without + (X * COEF_SD**2) @ X.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cid", list(CASES))
def test_numpy_path_equals_dense_twin(built, folder, cid):
    b = built[cid]
    v_fast, v_dense = _numpy(b, b.theta, b.path), _numpy(b, b.theta, "dense")
    assert np.isfinite(v_fast)
    np.testing.assert_allclose(v_fast, v_dense, rtol=RTOL_VALUE)
    if b.path != "dense-table":  # NumPy's batch over draws (the dense-table path goes one draw at a time)
        theta2 = b.theta * 1.1
        p1, p2 = b.make_params(b.theta, NUMPY), b.make_params(theta2, NUMPY)
        batch = {k: np.stack([np.asarray(p1[k], dtype=float), np.asarray(p2[k], dtype=float)]) for k in p1}
        np.testing.assert_allclose(_logp(NUMPY, b, batch, b.path), [v_dense, _numpy(b, theta2, "dense")],
                                   rtol=RTOL_VALUE)
    g_fast = twins._central_differences(lambda t: _numpy(b, t, b.path), b.theta)
    if cid in TRACED:
        g_want = _pytensor(cid, str(folder))["dense"][1]
    else:
        g_want = twins._central_differences(lambda t: _numpy(b, t, "dense"), b.theta)
    np.testing.assert_allclose(g_fast, g_want, rtol=RTOL_FD, atol=RTOL_FD * max(1.0, np.max(np.abs(g_want))))


@pytest.mark.parametrize("cid", TRACED)
def test_pytensor_path_equals_dense_twin(built, folder, cid):
    got = _pytensor(cid, str(folder))
    (v_fast, g_fast), (v_dense, g_dense) = got["fast"], got["dense"]
    assert np.isfinite(v_fast) and np.all(np.isfinite(g_fast))
    np.testing.assert_allclose(v_fast, v_dense, rtol=RTOL_VALUE)
    np.testing.assert_allclose(v_fast, _numpy(built[cid], built[cid].theta, "dense"), rtol=RTOL_VALUE)
    _close_grad(g_fast, g_dense)


@pytest.mark.parametrize("cid", TRACED)
def test_jax_path_equals_dense_twin(built, folder, cid):
    v_fast, g_fast = _jax(cid, str(folder))
    assert np.isfinite(v_fast) and np.all(np.isfinite(g_fast))
    np.testing.assert_allclose(v_fast, _numpy(built[cid], built[cid].theta, "dense"), rtol=RTOL_VALUE)
    _close_grad(g_fast, _pytensor(cid, str(folder))["dense"][1])


# -- the draw-back ---------------------------------------------------------------------------------------
def _dense_conditional(lay, design, spec, params):
    """Mean and covariance of the coordinates u given y: ``G Z' C^-1 r`` and ``G - G Z' C^-1 Z G``."""
    C = dense_covariance(NUMPY, spec, lay, design, params)
    A = np.concatenate([indicator_matrix(lay), lay.x], axis=1)
    Z = A @ effects_map(lay, design)
    G = design.covariance(NUMPY, params)
    GZ = G @ Z.T
    sol = np.linalg.solve(C, np.concatenate([lay.r[lay.obs][:, None], GZ.T], axis=1))
    return GZ @ sol[:, 0], G - GZ @ sol[:, 1:]


def _assert_draws_follow(u, mean, cov):
    """Each coordinate's mean and variance of the draws u (S, m) within 5 Monte Carlo sd of the exact law's."""
    S = u.shape[0]
    var = np.diag(cov)
    assert np.all(np.abs(u.mean(axis=0) - mean) < 5.0 * np.sqrt(var / S))
    assert np.all(np.abs(u.var(axis=0) / var - 1.0) < 5.0 * np.sqrt(2.0 / S))


@pytest.mark.parametrize("cid", ["fixed-fixed-hetero-se", "crossed-missing-se", "cell-additive-missing",
                                 "latent-homo-fixed-missing-se", "kron-ar1-unstructured", "full-file",
                                 "fixed-random-homo-se", "cell-crossed-complete"])
def test_coefficients_are_drawn_from_their_exact_conditional(built, cid):
    b = built[cid]
    S = 800 if b.path == "dense-table" else 4000
    params = b.make_params(b.theta, NUMPY)
    batch = {k: np.broadcast_to(np.asarray(v, dtype=float), (S,) + np.shape(v)) for k, v in params.items()}
    rng = np.random.default_rng(5)
    path = path_named(b.path)
    if b.spec.residual == "kronecker":  # the factors as given: a Kronecker path rebuilds them from the structures
        u = LikelihoodPath.draw_coordinates(path, b.spec, b.lay, b.design, batch, rng, 256)
    else:
        u = path.draw_coordinates(b.spec, b.lay, b.design, batch, rng, 256)
        drawn = draw_effects(b.spec, b.lay, b.design, {k: v[:7] for k, v in batch.items()}, rng)
        assert drawn["coef"].shape == (7, 3)
    mean, cov = _dense_conditional(b.lay, b.design, b.spec, params)
    _assert_draws_follow(u, mean, cov)


def test_only_coefficients_with_known_se_draw_independently():
    """Nothing sampled (known se, no scale, no effects): the draws are S independent ones of the one law."""
    from twoway import ModelSpec

    spec = ModelSpec(intercept=False, row_effect="none", col_effect="none", row_scale="none", col_scale="none",
                     sigma=False)
    data = simulate("additive", 4, 3, 2, seed=1, se=0.3, missing=0.2).data
    lay = layout(data, 0.0, {}, x=design_x(data))
    design = effects_design(spec, data, coef_sd=COEF_SD)
    assert choose_path(spec, lay, design) == "woodbury" and design.m == 3
    np.testing.assert_allclose(marginal_logp(NUMPY, spec, lay, design, {}, "woodbury"),
                               marginal_logp(NUMPY, spec, lay, design, {}, "dense"), rtol=RTOL_VALUE)
    drawn = draw_effects(spec, lay, design, {}, np.random.default_rng(3), n_draws=4000)
    _assert_draws_follow(drawn["coef"], *_dense_conditional(lay, design, spec, {}))


def test_residual_after_effects_subtracts_x_coef(built):
    b = built["latent-homo-fixed-missing-se"]
    rng = np.random.default_rng(0)
    N, K = b.data.n_rows, b.data.n_cols
    effects = {"intercept": rng.normal(size=2), "row_effect": rng.normal(size=(2, N)),
               "col_effect": rng.normal(size=(2, K)), "coef": rng.normal(size=(2, 3))}
    got = _residual_after_effects(b.lay, effects, 2)
    _, ii, jj = b.lay.obs
    for s in range(2):
        want = (b.lay.r[b.lay.obs] - (effects["intercept"][s] - b.lay.m0) - effects["row_effect"][s][ii]
                - effects["col_effect"][s][jj] - b.lay.x @ effects["coef"][s])
        np.testing.assert_allclose(got[s][b.lay.obs], want, rtol=1e-12, atol=1e-12)
        assert np.all(got[s][b.lay.mask == 0] == 0.0)


# -- without covariates ----------------------------------------------------------------------------------
def test_without_covariates_nothing_changes(built):
    for cid in ("crossed-missing-se", "latent-homo-fixed-missing-se", "kron-ar1-unstructured", "crossed-complete",
                "cell-crossed-complete"):
        b = built[cid]
        plain = effects_design(b.spec, b.data, known=known_relationships(b.spec, b.data))
        assert plain.n_cov == 0 and plain.E.shape[0] == b.data.n_rows + b.data.n_cols
        none = dataclasses.replace(b.lay, x=None)
        empty = dataclasses.replace(b.lay, x=np.zeros((b.lay.n_obs, 0)))
        assert none.x is None and none.x_grid is None and empty.x is None and none.indicators[0].shape[1] == (
            b.data.n_rows + b.data.n_cols)
        params = b.make_params(b.theta, NUMPY)
        path = choose_path(b.spec, none, plain)
        base = marginal_logp(NUMPY, b.spec, none, plain, params, path)
        assert marginal_logp(NUMPY, b.spec, empty, plain, params, path) == base
        # a design without coefficients on a layout with covariates ignores them
        np.testing.assert_allclose(marginal_logp(NUMPY, b.spec, b.lay, plain, params, path), base, rtol=1e-12)


ANOVA = [cid for cid, path in CASES.items() if path == "anova"]


def test_anova_takes_covariates(built):
    """A complete balanced table chooses the anova path with covariates as without them."""
    for cid in ANOVA:
        b = built[cid]
        plain = effects_design(b.spec, b.data, known=known_relationships(b.spec, b.data))
        assert choose_path(b.spec, dataclasses.replace(b.lay, x=None), plain) == "anova"
        assert b.path == "anova" and b.design.n_cov == 3
        st = b.lay.anova
        assert st.cross.shape == (5, 3) and st.gram.shape == (5, 3, 3)
    # without the Gram matrices (a layout whose statistics were computed without covariates) it is not taken
    b = built["crossed-complete"]
    bare = dataclasses.replace(b.lay, anova=dataclasses.replace(b.lay.anova, cross=None, gram=None))
    assert choose_path(b.spec, bare, b.design) == "woodbury-schur"


def _projections(R: int, N: int, K: int) -> list[np.ndarray]:
    """The five eigen-spaces' orthogonal projections (n, n), n = R N K in C order over (replicate, row, col)."""
    def J(n):
        return np.full((n, n), 1.0 / n)

    def Q(n):
        return np.eye(n) - J(n)

    return [np.kron(np.kron(J(R), a), b) for a, b in ((J(N), J(K)), (Q(N), J(K)), (J(N), Q(K)), (Q(N), Q(K)))] + [
        np.kron(np.kron(Q(R), np.eye(N)), np.eye(K))]


@pytest.mark.parametrize("cid", ANOVA)
def test_anova_grams_are_the_eigenspaces_projections(built, cid):
    """``r' P_k X`` and ``X' P_k X`` against explicit projections; they sum to ``r' X`` and ``X' X``."""
    b = built[cid]
    R, N, K = b.lay.shape
    P = _projections(R, N, K)
    np.testing.assert_allclose(sum(P), np.eye(R * N * K), atol=1e-12)
    r, X = b.lay.r.reshape(-1), b.lay.x_grid.reshape(-1, 3)
    st = b.lay.anova
    np.testing.assert_allclose(st.cross, [r @ Pk @ X for Pk in P], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(st.gram, [X.T @ Pk @ X for Pk in P], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose([st.ss_grand, st.ss_row, st.ss_col, st.ss_inter, st.ss_within],
                               [r @ Pk @ r for Pk in P], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(st.gram.sum(axis=0), X.T @ X, rtol=1e-12)
    np.testing.assert_allclose(st.cross.sum(axis=0), r @ X, rtol=1e-12, atol=1e-12)


def test_anova_value_does_not_depend_on_batching(built):
    """NumPy draws batch over leading dims: S = 3 draws at once equal three single evaluations."""
    b = built["cell-crossed-complete"]
    thetas = [b.theta * f for f in (0.8, 1.0, 1.3)]
    ps = [b.make_params(t, NUMPY) for t in thetas]
    batch = {k: np.stack([np.asarray(p[k], dtype=float) for p in ps]) for k in ps[0]}
    got = _logp(NUMPY, b, batch, "anova")
    assert got.shape == (3,)
    np.testing.assert_allclose(got, [_numpy(b, t, "anova") for t in thetas], rtol=1e-12)
    np.testing.assert_allclose(got, [_numpy(b, t, "woodbury") for t in thetas], rtol=RTOL_VALUE)


@functools.cache
def _anova_plan():
    """A plan with covariates (a cell-level and a row-level term) on a complete 5 x 4 table with 2 replicates."""
    rng = np.random.default_rng(12)
    N, K, R = 5, 4, 2
    cov = {"x": rng.normal(size=(N, K)), "u": rng.normal(size=(N, 1))}
    spec = preset("crossed", covariates="x + u")
    sims = [simulate(spec, N, K, R, seed=s, covariates=cov,
                     params={"row_effect_sd": 0.5, "col_effect_sd": 0.7, "sigma": 0.6, "coef": [0.8, -0.5]})
            for s in (13, 14)]
    return resolve(spec, sims[0].data), sims[1].data


def test_plan_with_covariates_on_a_complete_table_takes_anova():
    plan, _ = _anova_plan()
    assert plan.path == "anova" and plan.design.n_cov == 2
    got = tables(plan)
    assert set(got) == {"anova_ss", "anova_cross"} and got["anova_cross"].shape == (5, 2)
    np.testing.assert_allclose(got["anova_cross"], plan.layout.anova.cross)
    assert set(tables(dataclasses.replace(plan, path="woodbury-schur"))) == {"residual_grid"}


def test_walk_on_the_anova_path_with_covariates_equals_woodbury_schur():
    """The JAX and PyMC models the walk builds on the anova path (the sums of squares and cross products
    arguments or data containers) against the same plan on the woodbury-schur path, at the same points,
    on the plan's table and, with the compiled program's arguments, on another table of the same cells."""
    from twoway.engines.jax.model import describe, model_args
    from twoway.engines.pymc.model import build_pymc_model, data_updates

    plan, other = _anova_plan()
    schur = dataclasses.replace(plan, path="woodbury-schur")
    jm, js = describe(plan), describe(schur)
    assert jm.sites == js.sites
    rng = np.random.default_rng(3)
    points = [{site: rng.normal(0.0, 0.5, size=shape) for site, shape in jm.sites.items()} for _ in range(3)]
    for table in (plan, plan.with_data(other)):
        args, args_s = model_args(table), model_args(dataclasses.replace(table, path="woodbury-schur"))
        for theta in points:
            np.testing.assert_allclose(float(jm.log_density(theta, args)), float(js.log_density(theta, args_s)),
                                       rtol=1e-10)
    model, model_s = build_pymc_model(plan).model, build_pymc_model(schur).model
    assert "anova_cross" in model.named_vars
    logp, logp_s = model.compile_logp(mode="FAST_COMPILE"), model_s.compile_logp(mode="FAST_COMPILE")
    point = model.initial_point()
    np.testing.assert_allclose(float(logp(point)), float(logp_s(point)), rtol=1e-10)
    updates = data_updates(plan, other)
    np.testing.assert_allclose(updates["anova_cross"], plan.with_data(other).layout.anova.cross)
    assert not np.allclose(updates["anova_cross"], tables(plan)["anova_cross"])


# -- the sparse path -------------------------------------------------------------------------------------
@functools.cache
def _sparse_case(case: str):
    rng = np.random.default_rng(1)
    se = {"plain": None, "se-constant": 0.3, "se-varying": rng.uniform(0.1, 0.8, (2, 9, 7))}[case]
    data = simulate("crossed", 9, 7, 2, {"row_effect_sd": 0.5, "col_effect_sd": 0.8, "sigma": 1.0}, seed=3,
                    missing=0.55, se=se).data
    spec = preset("crossed")
    plan = resolve(spec, data, likelihood="sparse")
    lay = layout(data, plan.m0, plan.parts, x=design_x(data))
    design = sp.SparseDesign(spec, data, None, coef_sd=COEF_SD)
    return spec, data, plan, lay, design


@pytest.mark.parametrize("case", ["plain", "se-constant", "se-varying"])
def test_sparse_path_equals_dense_twin(case):
    spec, _, plan, lay, design = _sparse_case(case)
    assert choose_path(spec, lay, design) == "sparse" and design.n_cov == 3
    assert design.blocks[-1] == ("coef", None, design.m - 3, design.m)
    dense = design.dense()
    assert dense.n_cov == 3 and dense.E.shape == (9 + 7 + 3, design.m)
    params = {"row_effect_sd": np.array([0.4, 1.1]), "col_effect_sd": np.array([0.9, 0.3]),
              "sigma": np.array([0.7, 1.2]), **{k: np.full(2, v) for k, v in plan.constants.items()}}
    got = marginal_logp(NUMPY, spec, lay, design, params, "sparse")
    want = [marginal_logp(NUMPY, spec, lay, dense, {k: v[s] for k, v in params.items()}, "dense") for s in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_sparse_coefficients_follow_the_dense_conditional():
    spec, _, plan, lay, design = _sparse_case("se-varying")
    params = {"row_effect_sd": 0.6, "col_effect_sd": 0.9, "sigma": 0.8, **plan.constants}
    S = 2000
    batch = {k: np.full(S, float(v)) for k, v in params.items()}
    drawn = draw_effects(spec, lay, design, batch, np.random.default_rng(2))
    assert drawn["coef"].shape == (S, 3) and drawn["row_effect"].shape == (S, 9)
    mean, cov = _dense_conditional(lay, design.dense(), spec, params)
    u = np.concatenate([drawn["intercept"][:, None] - lay.m0, drawn["row_effect"], drawn["col_effect"],
                        drawn["coef"]], axis=1)
    _assert_draws_follow(u, mean, cov)


def test_laplace_engine_writes_the_coefficients():
    from twoway.engines.laplace import LaplaceEngine

    _, _, plan, lay, design = _sparse_case("plain")
    plan = dataclasses.replace(plan, layout=lay, design=design)
    engine = LaplaceEngine()
    tree = engine.sample(engine.compile(plan, progress=False), plan, chains=2, draws=50, tune=0, seed=1,
                         progress=False, cores=1, proposals=100)
    post = tree["posterior"].to_dataset()
    assert post["coef"].dims == ("chain", "draw", "term") and post["coef"].shape == (2, 50, 3)
    assert post.sizes["term"] == 3 and np.all(np.isfinite(post["coef"].values))
    assert set(tree.attrs["engine_info"]["laplace_mode"]) == {"row_effect_sd", "col_effect_sd", "sigma"}


def test_memory_estimates_count_the_coefficients(built):
    from twoway.likelihood import memory

    b = built["crossed-missing-se"]
    assert memory.dense_path_bytes(b.spec, b.data, n_cov=0) == memory.dense_path_bytes(b.spec, b.data)
    assert memory.dense_path_bytes(b.spec, b.data, n_cov=3) > memory.dense_path_bytes(b.spec, b.data)
    assert memory.dense_design_bytes(b.spec, b.data, n_cov=3) > memory.dense_design_bytes(b.spec, b.data)


@pytest.mark.parametrize("ops_name", ["numpy", "jax"])
def test_anova_unrolled_and_lapack_factorisations_agree(built, monkeypatch, ops_name):
    """The anova path factors ``S^-1 + X' C^-1 X`` entry by entry up to SMALL_P terms and with ``ops.cholesky``
    above: both give the dense twin's value (batched draws for NumPy; value and gradient for JAX)."""
    import jax

    from twoway.likelihood import anova

    b = built["cell-crossed-complete"]
    thetas = [b.theta * f for f in (0.8, 1.0, 1.3)]
    want = [_numpy(b, t, "dense") for t in thetas]
    for small in (anova.SMALL_P, 0):
        monkeypatch.setattr(anova, "SMALL_P", small)
        if ops_name == "numpy":
            ps = [b.make_params(t, NUMPY) for t in thetas]
            batch = {k: np.stack([np.asarray(p[k], dtype=float) for p in ps]) for k in ps[0]}
            np.testing.assert_allclose(_logp(NUMPY, b, batch, "anova"), want, rtol=RTOL_VALUE)
        else:
            from twoway.engines.jax import enable_x64
            from twoway.linalg.ops import JAX

            enable_x64()

            def f(t):
                return _logp(JAX, b, b.make_params(t, JAX), "anova")

            value, grad = jax.value_and_grad(f)(jax.numpy.asarray(b.theta))
            np.testing.assert_allclose(float(value), want[1], rtol=RTOL_VALUE)
            g_want = twins._central_differences(lambda t: _numpy(b, t, "dense"), b.theta)
            np.testing.assert_allclose(np.asarray(grad), g_want, rtol=RTOL_FD,
                                       atol=RTOL_FD * max(1.0, np.max(np.abs(g_want))))
