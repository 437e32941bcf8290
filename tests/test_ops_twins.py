"""Every likelihood path equals its dense twin under each array library, without a PyMC model.

:func:`twoway.likelihood.paths.marginal_logp` is written once against the ops protocol
(:mod:`twoway.linalg.ops`: NumPy, PyTensor, JAX). For each path, a
small table whose plan resolves to that path is evaluated by the fast path
and by the dense twin (``likelihood="dense"``: the full covariance of the
observed cells, one Cholesky) at fixed parameter values:

* NumPy: values equal to rounding; central finite differences of both equal
  ``jax.grad`` of the JAX dense twin (to the accuracy the step allows);
* PyTensor: values and ``pytensor.grad`` of both equal (FAST_COMPILE, with
  twoway's excluded rewrites left out as in sampling);
* JAX: values and ``jax.grad`` of both equal, jitted with the residual grid
  (or the ANOVA sums of squares) as a traced argument, as the JAX engine does;

and the three libraries agree with each other. The gradient is taken with
respect to every variance parameter of the case: effect sds, residual scales
(per level for ``hetero``), sigma, the Kronecker structures' own parameters
(from which ``_row_cov``/``_col_cov`` are built, so the closed-form AR(1)
precision of ``kronecker-ar1`` is tied to the matrix the dense twin uses) and
a ``full`` callable's parameters.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import twoway
from twoway import ModelSpec, preset, simulate
from twoway.linalg.ops import JAX, NUMPY, PYTENSOR
from twoway.likelihood.paths import PATHS, marginal_logp
from twoway.plan import anova_vector, resolve

RTOL_VALUE = 1e-9       # fast path against dense twin, same library: rounding only
RTOL_GRAD = 1e-8        # exact gradients (PyTensor, JAX) against the dense twin's
FD_STEP = 1e-6          # central differences: error ~ eps |f| / h + h^2 |f'''|, far below 1e-5 relative
RTOL_FD = 1e-5


# -- the files some cases read ---------------------------------------------------------------------------
COV_MODULE = '''
import numpy as np


def ar_rows(ops, rho, scale):
    N, K = {N}, {K}
    d = np.abs(np.subtract.outer(np.arange(N), np.arange(N))).astype(float)
    return scale * scale * ops.kron(rho ** ops.asarray(d), ops.asarray(np.eye(K)))
'''

ROWS, COLS = [f"row{i + 1}" for i in range(4)], [f"col{j + 1}" for j in range(3)]


def _write_labelled(path: Path, labels, matrix) -> Path:
    lines = ["," + ",".join(labels)]
    lines += [lab + "," + ",".join(repr(float(v)) for v in row) for lab, row in zip(labels, matrix)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _spd(n: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a @ a.T / n + np.eye(n)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder with a known relationship matrix of the rows, a full covariance and a covariance module."""
    d = tmp_path_factory.mktemp("ops_twins")
    _write_labelled(d / "rows_known.csv", ROWS, _spd(4, 0))
    _write_labelled(d / "cols_known.csv", COLS, _spd(3, 1))
    cells = [f"{r}:{c}" for r in ROWS for c in COLS]
    _write_labelled(d / "full.csv", cells, _spd(12, 2))
    (d / "mycov.py").write_text(COV_MODULE.format(N=4, K=3))
    return d


# -- the cases -------------------------------------------------------------------------------------------
def kron(row: str, col: str, sigma: bool = False, **kw) -> ModelSpec:
    return dataclasses.replace(preset("kronecker"), row_structure=row, col_structure=col, sigma=sigma, **kw)


def full(source: str) -> ModelSpec:
    P = twoway.Prior
    return ModelSpec(residual="full", covariance=source, row_scale="none", col_scale="none", sigma=True,
                     priors=(("rho", P.make("uniform", lower=0.0, upper=0.9)),
                             ("scale", P.make("halfnormal", sigma=1.0))))


@dataclass(frozen=True)
class Case:
    id: str
    spec: Callable[[Path], ModelSpec]   # of the folder with the files
    shape: tuple                        # (rows, cols, replicates)
    missing: float
    se: float | None
    path: str
    simulate_from: str | None = "additive"   # None: simulate from the spec itself


CASES = [
    Case("no-effects", lambda d: ModelSpec(intercept=False, row_effect="none", col_effect="none",
                                           row_scale="hetero", col_scale="homo", sigma=False),
         (4, 3, 2), 0.1, 0.3, "diagonal"),
    Case("crossed-complete", lambda d: preset("crossed"), (4, 3, 2), 0.0, None, "anova"),
    Case("fixed-random-homo-se", lambda d: ModelSpec(row_effect="fixed", col_effect="random", row_scale="homo",
                                                     col_scale="none"), (4, 3, 2), 0.0, 0.2, "anova"),
    # one variance for every cell: the constant-pattern branch of the Schur path
    Case("crossed-missing-se", lambda d: preset("crossed"), (4, 3, 2), 0.2, 0.3, "woodbury-schur"),
    # per-cell variances summed over replicates
    Case("crossed-hetero-missing-se", lambda d: preset("crossed-hetero"), (4, 3, 2), 0.2, 0.3, "woodbury-schur"),
    # the columns eliminated (the table transposed), sds added (combine = "sd")
    Case("col-eliminated-sd", lambda d: ModelSpec(row_effect="fixed", col_effect="random", row_scale="none",
                                                  col_scale="hetero", combine="sd"), (3, 4, 2), 0.1, None,
         "woodbury-schur"),
    Case("known-rows-iid-cols", lambda d: ModelSpec(row_effect="random", col_effect="random", row_scale="none",
                                                    col_scale="homo", sigma=False,
                                                    row_effect_cov=f"known:{d / 'rows_known.csv'}"),
         (4, 3, 2), 0.0, None, "woodbury-schur"),
    Case("fixed-fixed-hetero-se", lambda d: ModelSpec(row_effect="fixed", col_effect="fixed", row_scale="hetero",
                                                      col_scale="none"), (4, 3, 2), 0.1, 0.4, "woodbury"),
    Case("known-rows-fixed-cols", lambda d: ModelSpec(row_effect="random", col_effect="fixed", row_scale="hetero",
                                                      col_scale="homo", sigma=False,
                                                      row_effect_cov=f"known:{d / 'rows_known.csv'}"),
         (4, 3, 2), 0.1, 0.2, "woodbury"),
    # a random cell effect shared by the replicates of a cell, on each path a crossed/additive model takes
    Case("cell-no-effects", lambda d: ModelSpec(intercept=False, row_effect="none", col_effect="none",
                                                row_scale="homo", col_scale="none", sigma=False,
                                                cell_effect="random"), (4, 3, 3), 0.1, 0.3, "diagonal"),
    Case("cell-crossed-complete", lambda d: dataclasses.replace(preset("crossed"), cell_effect="random"),
         (4, 3, 3), 0.0, None, "anova"),
    Case("cell-crossed-missing-se", lambda d: dataclasses.replace(preset("crossed"), cell_effect="random"),
         (4, 3, 3), 0.2, 0.3, "woodbury-schur"),
    Case("cell-additive-missing", lambda d: dataclasses.replace(preset("additive"), cell_effect="random"),
         (4, 3, 2), 0.2, 0.3, "woodbury-schur"),
    Case("cell-fixed-fixed-hetero-se", lambda d: ModelSpec(row_effect="fixed", col_effect="fixed",
                                                           row_scale="hetero", col_scale="none",
                                                           cell_effect="random"), (4, 3, 2), 0.1, 0.4, "woodbury"),
    Case("latent", lambda d: preset("latent"), (4, 3, 2), 0.0, None, "woodbury-latent"),
    Case("latent-homo-fixed-missing-se", lambda d: ModelSpec(residual="latent", row_scale="homo", col_scale="hetero",
                                                             row_effect="fixed"), (4, 3, 2), 0.2, 0.3,
         "woodbury-latent"),
    Case("kron-ar1-unstructured", lambda d: kron("ar1", "unstructured"), (4, 3, 2), 0.0, None, "kronecker-ar1",
         None),
    Case("kron-fa-cs", lambda d: kron("fa:1", "cs"), (4, 3, 1), 0.0, None, "kronecker-cholesky", None),
    Case("kron-known-diag", lambda d: kron(f"known:{d / 'rows_known.csv'}", "diag", row_effect="fixed"),
         (4, 3, 2), 0.0, None, "kronecker-cholesky", None),
    # fixed eigenvectors on both sides (cs)
    Case("kron-cs-cs-nugget", lambda d: kron("cs", "cs", sigma=True, row_effect="fixed"), (4, 3, 1), 0.0, None,
         "kronecker-eigen", None),
    # a general eigen-decomposition of the rows, fixed eigenvectors of the columns (diag)
    Case("kron-unstructured-diag-nugget", lambda d: kron("unstructured", "diag", sigma=True), (4, 3, 2), 0.0, None,
         "kronecker-eigen", None),
    Case("kron-ar1-known-nugget", lambda d: kron("ar1", f"known:{d / 'cols_known.csv'}", sigma=True),
         (4, 3, 2), 0.0, None, "kronecker-eigen", None),
    Case("kron-ar1-ar1-missing", lambda d: kron("ar1", "ar1"), (4, 3, 2), 0.15, None, "dense-table", None),
    Case("kron-iid-unstructured-se", lambda d: kron("iid", "unstructured", sigma=True), (4, 3, 2), 0.0, 0.3,
         "dense-table", None),
    Case("full-file", lambda d: ModelSpec(residual="full", covariance=str(d / "full.csv"), row_scale="none",
                                          col_scale="none", sigma=True), (4, 3, 2), 0.0, None, "dense-table", None),
    Case("full-callable-missing", lambda d: full(f"{d / 'mycov.py'}:ar_rows"), (4, 3, 2), 0.2, None,
         "dense-table", None),
]

def _params_of_cases():
    return [pytest.param(c, id=c.id) for c in CASES]


CASE_PARAMS = _params_of_cases()
RESOLVE_PARAMS = [pytest.param(c, id=c.id) for c in CASES]


def test_the_cases_cover_every_path():
    """Every path that any ops can evaluate has a case here; the NumPy-only ones have their twins elsewhere."""
    assert {c.path for c in CASES} == {name for name, p in PATHS.items() if p.every_ops} - {"dense"}
    assert {name for name, p in PATHS.items() if not p.every_ops} == {"sparse"}  # tests/test_sparse.py


# -- parameters: a flat vector theta, and the params dict built from it in any library ---------------------
@dataclass(frozen=True)
class Built:
    case: Case
    fast: object            # Plan
    dense: object           # Plan
    names: tuple            # (name, start, stop, shape) of each free parameter in theta
    theta: np.ndarray
    make_params: Callable    # (theta, ops) -> params dict


def _levels(lo: float, hi: float, n: int) -> np.ndarray:
    return np.linspace(lo, hi, n)


def _correlation(n: int, seed: int) -> np.ndarray:
    s = _spd(n, seed)
    d = np.sqrt(np.diag(s))
    return s / np.outer(d, d)


def _structure_values(st, unit: bool) -> dict:
    """Fixed values of a Kronecker structure's public parameters (shapes as Structure.parameter_dims)."""
    n, nm, kind = st.n, st._name, st.kind
    out = {}
    if kind in ("ar1", "cs"):
        out[nm("rho")] = 0.45 if kind == "ar1" else 0.3
    if kind in ("iid", "known", "ar1", "cs") and not unit:
        out[nm("sd")] = 1.2
    if kind in ("diag", "unstructured"):
        out[nm("sd")] = _levels(0.8, 1.3, n)
    if kind == "fa":
        out[nm("loadings")] = np.linspace(0.5, 1.1, n * st.k).reshape(n, st.k)
        out[nm("psi")] = _levels(0.4, 0.7, n)
    return out


def _structure_matrix(ops, st, unit: bool, p: dict):
    """The factor at parameter values ``p`` (values of any library), as the engines build it."""
    from twoway.linalg.structured import ar1_matrix, cs_matrix, fa_matrix

    n, nm, kind = st.n, st._name, st.kind
    sd2 = 1.0 if unit else None
    if kind in ("iid", "known", "ar1", "cs") and not unit:
        sd2 = p[nm("sd")] * p[nm("sd")]
    if kind == "iid":
        return sd2 * ops.asarray(np.eye(n))
    if kind == "known":
        return sd2 * ops.asarray(st._known_unit() if unit else st.known)
    if kind == "ar1":
        return ar1_matrix(p[nm("rho")], sd2, n)
    if kind == "cs":
        return cs_matrix(p[nm("rho")], sd2, n)
    if kind == "diag":
        return ops.diag(p[nm("sd")] * p[nm("sd")])
    if kind == "fa":
        return fa_matrix(p[nm("loadings")], p[nm("psi")])
    sd = p[nm("sd")]
    return sd[:, None] * ops.asarray(_correlation(n, 7 + n)) * sd[None, :]


def _free_values(plan) -> dict:
    """The variance parameters of ``plan`` at fixed values (positive sds, correlations inside their range)."""
    spec, data = plan.spec, plan.data
    vals = {}
    for side, n in (("row", data.n_rows), ("col", data.n_cols)):
        if getattr(spec, f"{side}_effect") == "random":
            vals[f"{side}_effect_sd"] = 0.9 if side == "row" else 1.3
        kind = getattr(spec, f"{side}_scale")
        if kind == "hetero":
            vals[f"{side}_sd"] = _levels(0.5, 1.1, n) if side == "row" else _levels(0.6, 0.9, n)
        elif kind == "homo":
            vals[f"{side}_sd"] = 0.7
    if spec.sigma:
        vals["sigma"] = 0.6
    if spec.cell_effect == "random":
        vals["cell_sd"] = 0.5
    if spec.residual == "full":
        vals.update({name: {"rho": 0.5, "scale": 1.1}[name] for name in plan.parts["full"].parameters})
    if spec.residual == "kronecker":
        for side, unit in (("row", False), ("col", True)):
            vals.update(_structure_values(plan.parts[side], unit))
    return vals


def _build(case: Case, folder: Path) -> Built:
    spec = case.spec(folder)
    n, k, r = case.shape
    seed = 100 + 10 * n + k + r
    sim = simulate(case.simulate_from or spec, n, k, r, seed=seed, missing=case.missing, se=case.se)
    fast = resolve(spec, sim.data)
    dense = resolve(spec, sim.data, likelihood="dense")
    vals = _free_values(fast)
    names, pieces, pos = [], [], 0
    for name, v in vals.items():
        v = np.asarray(v, dtype=float)
        names.append((name, pos, pos + v.size, v.shape))
        pieces.append(v.ravel())
        pos += v.size
    theta = np.concatenate(pieces)
    constants = dict(fast.constants)
    names = tuple(names)

    def make_params(th, ops):
        p = {key: c for key, c in constants.items()}
        for name, a, b, shape in names:
            p[name] = th[a] if shape == () else th[a:b].reshape(shape)
        if spec.residual == "kronecker":
            for side, unit in (("row", False), ("col", True)):
                p[f"_{side}_cov"] = _structure_matrix(ops, fast.parts[side], unit, p)
        return p

    return Built(case=case, fast=fast, dense=dense, names=names, theta=theta, make_params=make_params)


@functools.lru_cache(maxsize=None)
def _built_cached(case_id: str, folder: str) -> Built:
    return _build(next(c for c in CASES if c.id == case_id), Path(folder))


@pytest.fixture
def built(request, folder) -> Built:
    return _built_cached(request.param.id, str(folder))


def _logp(ops, plan, params, lay=None):
    return marginal_logp(ops, plan.spec, plan.layout if lay is None else lay, plan.design, params, plan.path)


def _symbolic_layout(plan, arg):
    """The plan's layout with the data replaced by ``arg`` as the engines do: the residual grid, or the
    five ANOVA sums of squares on the anova path."""
    lay = plan.layout
    if plan.path == "anova":
        return dataclasses.replace(lay, anova=dataclasses.replace(
            lay.anova, ss_grand=arg[0], ss_row=arg[1], ss_col=arg[2], ss_inter=arg[3], ss_within=arg[4]))
    return dataclasses.replace(lay, r=arg)


def _data_arg(plan) -> np.ndarray:
    return anova_vector(plan.layout.anova) if plan.path == "anova" else plan.layout.r


# -- NumPy --------------------------------------------------------------------------------------------
def _numpy_value(b: Built, plan, theta) -> float:
    return float(_logp(NUMPY, plan, b.make_params(np.asarray(theta, dtype=float), NUMPY)))


def _central_differences(f, theta, h=FD_STEP) -> np.ndarray:
    g = np.empty(theta.size)
    for i in range(theta.size):
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        g[i] = (f(up) - f(down)) / (2 * h)
    return g


# -- JAX ----------------------------------------------------------------------------------------------
#: XLA's CPU optimisation passes cost most of a compile and nothing these tiny programs need
_FAST_XLA = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _jit_call(f, *args):
    import jax

    lowered = jax.jit(f).lower(*args)
    try:
        compiled = lowered.compile(compiler_options=_FAST_XLA)
    except Exception:  # pragma: no cover - an XLA without these options: compile as the engine does
        compiled = lowered.compile()
    return compiled(*args)


@functools.lru_cache(maxsize=None)
def _jax_value_and_grad(case_id: str, folder: str, which: str):
    """(value, gradient) of the fast or dense plan under the JAX ops, jitted with the data as an argument."""
    import jax

    from twoway.engines.jax import enable_x64

    enable_x64()
    b = _built_cached(case_id, folder)
    plan = b.fast if which == "fast" else b.dense

    def f(theta, data):
        return _logp(JAX, plan, b.make_params(theta, JAX), _symbolic_layout(plan, data))

    value, grad = _jit_call(jax.value_and_grad(f), jax.numpy.asarray(b.theta), jax.numpy.asarray(_data_arg(plan)))
    return float(value), np.asarray(grad)


# -- PyTensor -----------------------------------------------------------------------------------------
def _pytensor_values_and_grads(b: Built):
    """((value, gradient) of the fast plan, the same of the dense twin) under the PyTensor ops, one compile."""
    import pytensor
    import pytensor.tensor as pt

    from twoway.engines.pymc.compile_modes import safe_mode

    theta = pt.dvector("theta")
    outputs = []
    for plan in (b.fast, b.dense):
        data = pytensor.shared(_data_arg(plan), name="data")
        logp = _logp(PYTENSOR, plan, b.make_params(theta, PYTENSOR), _symbolic_layout(plan, data))
        outputs += [logp, pytensor.grad(logp, theta)]
    fn = pytensor.function([theta], outputs, mode=safe_mode("FAST_COMPILE"))
    v_fast, g_fast, v_dense, g_dense = fn(b.theta)
    return (float(v_fast), np.asarray(g_fast)), (float(v_dense), np.asarray(g_dense))


# -- the tests ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("built", RESOLVE_PARAMS, indirect=True)
def test_resolve_chooses_the_claimed_path(built):
    assert built.fast.path == built.case.path
    assert built.dense.path == "dense"
    assert built.fast.integrated and built.dense.integrated


@pytest.mark.parametrize("built", CASE_PARAMS, indirect=True)
def test_numpy_fast_path_equals_dense_twin(built, folder):
    b = built
    assert b.fast.path == b.case.path
    v_fast, v_dense = _numpy_value(b, b.fast, b.theta), _numpy_value(b, b.dense, b.theta)
    assert np.isfinite(v_fast)
    np.testing.assert_allclose(v_fast, v_dense, rtol=RTOL_VALUE)
    g_fast = _central_differences(lambda t: _numpy_value(b, b.fast, t), b.theta)
    g_dense = _central_differences(lambda t: _numpy_value(b, b.dense, t), b.theta)
    _, g_exact = _jax_value_and_grad(b.case.id, str(folder), "dense")
    atol = RTOL_FD * max(1.0, np.max(np.abs(g_exact)))
    np.testing.assert_allclose(g_fast, g_exact, rtol=RTOL_FD, atol=atol)
    np.testing.assert_allclose(g_dense, g_exact, rtol=RTOL_FD, atol=atol)


@pytest.mark.parametrize("built", CASE_PARAMS, indirect=True)
def test_jax_fast_path_equals_dense_twin(built, folder):
    b = built
    assert b.fast.path == b.case.path
    v_fast, g_fast = _jax_value_and_grad(b.case.id, str(folder), "fast")
    v_dense, g_dense = _jax_value_and_grad(b.case.id, str(folder), "dense")
    assert np.isfinite(v_fast) and np.all(np.isfinite(g_fast))
    np.testing.assert_allclose(v_fast, v_dense, rtol=RTOL_VALUE)
    np.testing.assert_allclose(g_fast, g_dense, rtol=RTOL_GRAD, atol=RTOL_GRAD * max(1.0, np.max(np.abs(g_dense))))
    # and the same number as NumPy's
    np.testing.assert_allclose(v_fast, _numpy_value(b, b.fast, b.theta), rtol=RTOL_VALUE)


@pytest.mark.parametrize("built", CASE_PARAMS, indirect=True)
def test_pytensor_fast_path_equals_dense_twin(built, folder):
    b = built
    assert b.fast.path == b.case.path
    (v_fast, g_fast), (v_dense, g_dense) = _pytensor_values_and_grads(b)
    assert np.isfinite(v_fast) and np.all(np.isfinite(g_fast))
    scale = max(1.0, np.max(np.abs(g_dense)))
    np.testing.assert_allclose(v_fast, v_dense, rtol=RTOL_VALUE)
    np.testing.assert_allclose(g_fast, g_dense, rtol=RTOL_GRAD, atol=RTOL_GRAD * scale)
    # and the same numbers as JAX's
    v_jax, g_jax = _jax_value_and_grad(b.case.id, str(folder), "fast")
    np.testing.assert_allclose(v_fast, v_jax, rtol=RTOL_VALUE)
    np.testing.assert_allclose(g_fast, g_jax, rtol=RTOL_GRAD, atol=RTOL_GRAD * scale)
