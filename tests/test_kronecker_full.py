"""Kronecker and full residuals: every path against the dense twin, files and callables, the tensor view."""

import dataclasses

import numpy as np
import pytest

import twoway
from twoway import DataError, ModelError, simulate
from twoway.engines.pymc.model import build_pymc_model
from twoway.plan import resolve
from twoway.linalg.ops import NUMPY
from twoway.likelihood.woodbury import effects_conditional
from twoway.likelihood.marginal import base_projections, dense_covariance, indicator_matrix
from twins import assert_equals_dense_twin, logp_and_grad


def kron(row, col, sigma=False, **kw):
    return dataclasses.replace(twoway.preset("kronecker"), row_structure=row, col_structure=col, sigma=sigma, **kw)


CASES = [
    (kron("ar1", "unstructured"), 5, 4, 2, 0.0, None, "kronecker-ar1"),
    (kron("cs", "diag"), 4, 3, 1, 0.0, None, "kronecker-cholesky"),
    pytest.param(*(kron("fa:1", "ar1"), 4, 4, 2, 0.0, None, "kronecker-cholesky"), marks=pytest.mark.slow),
    (kron("ar1", "iid", sigma=True), 5, 3, 2, 0.0, None, "kronecker-eigen"),
    pytest.param(*(kron("unstructured", "cs", sigma=True, row_effect="fixed"), 3, 4, 1, 0.0, None, "kronecker-eigen"), marks=pytest.mark.slow),
    (kron("ar1", "ar1"), 4, 4, 2, 0.15, None, "dense-table"),
    pytest.param(*(kron("iid", "unstructured", sigma=True), 4, 3, 2, 0.0, 0.3, "dense-table"), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("spec, n, k, r, missing, se, path", CASES)
def test_kronecker_paths_equal_dense_twin(spec, n, k, r, missing, se, path):
    data = simulate(spec, n, k, r, seed=n + k + r, missing=missing, se=se).data
    fast = build_pymc_model(resolve(spec, data))
    dense = build_pymc_model(resolve(spec, data, likelihood="dense"))
    assert fast.likelihood_path == path
    assert_equals_dense_twin(fast.model, dense.model, points=2, seed=3, jitter=0.3)


COV_MODULE = '''
def ar_rows(ops, rho, scale):
    import numpy as np
    N, K = {N}, {K}
    d = np.abs(np.subtract.outer(np.arange(N), np.arange(N)))
    rows = rho ** ops.asarray(d.astype(float))
    return scale * scale * ops.kron(rows, ops.asarray(np.eye(K)))
'''


@pytest.fixture
def cov_module(tmp_path):
    path = tmp_path / "mycov.py"
    path.write_text(COV_MODULE.format(N=4, K=3))
    return path


def full_spec(source, **kw):
    P = twoway.Prior
    return twoway.ModelSpec(residual="full", covariance=source, row_scale="none", col_scale="none",
                            sigma=True, priors=(("rho", P.make("uniform", lower=0.0, upper=0.9)),
                                                ("scale", P.make("halfnormal", sigma=1.0))), **kw)


def test_full_callable_equals_dense_twin_and_simulates(cov_module):
    spec = full_spec(f"{cov_module}:ar_rows")
    assert {"rho", "scale"} <= set(spec.parameter_names())
    sim = simulate(spec, 4, 3, 2, seed=1)
    assert 0 <= sim.truth["rho"] <= 0.9
    for missing in (0.0, 0.2):
        data = simulate(spec, 4, 3, 2, seed=2, missing=missing).data
        fast, dense = build_pymc_model(resolve(spec, data)), build_pymc_model(resolve(spec, data, likelihood="dense"))
        assert fast.likelihood_path == "dense-table"
        point = {k: v + 0.1 for k, v in fast.model.initial_point().items()}
        a, b = logp_and_grad(fast.model, point), logp_and_grad(dense.model, point)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-10)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-8, atol=1e-8)


def test_full_needs_priors_for_callable_parameters(cov_module):
    with pytest.raises(ModelError, match="needs a prior for 'rho'"):
        simulate(twoway.ModelSpec(residual="full", covariance=f"{cov_module}:ar_rows"), 4, 3, seed=1)
    # a spec runs no user code: the callable is loaded (and found missing) when a table meets the model
    missing = twoway.ModelSpec(residual="full", covariance=f"{cov_module}:nothing")
    assert "rho" not in missing.parameter_names()
    with pytest.raises(ModelError, match="no such function"):
        simulate(missing, 4, 3, seed=1)
    with pytest.raises(ModelError, match="give each a prior"):
        twoway.resolve(twoway.ModelSpec(residual="full", covariance=f"{cov_module}:ar_rows"),
                       twoway.TwoWayData.from_array(np.ones((4, 3))))


def test_full_from_a_file_with_labels(tmp_path):
    N, K = 3, 2
    rng = np.random.default_rng(0)
    A = rng.normal(size=(N * K, N * K))
    cov = A @ A.T + N * K * np.eye(N * K)
    rows, cols = ["a", "b", "c"], ["x", "y"]
    labels = [f"{r}:{c}" for r in rows for c in cols]
    order = [5, 0, 3, 1, 4, 2]  # the file lists the cells in another order
    lines = ["," + ",".join(labels[o] for o in order)]
    for i in order:
        lines.append(labels[i] + "," + ",".join(f"{cov[i, j]:.17g}" for j in order))
    path = tmp_path / "cov.csv"
    path.write_text("\n".join(lines) + "\n")
    from twoway.spec.covariance import load_full_covariance

    full = load_full_covariance(str(path), rows, cols)
    np.testing.assert_allclose(full.matrix, cov)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(",".join("1" for _ in range(N * K)) for _ in range(N * K)) + "\n")
    with pytest.raises(DataError, match="positive definite"):
        load_full_covariance(str(bad), rows, cols)
    with pytest.raises(DataError, match="lacks the cells d:x, d:y"):
        load_full_covariance(str(path), rows + ["d"], cols)


def test_kronecker_effects_conditional_equals_dense_conditioning():
    spec = kron("ar1", "unstructured", sigma=True)
    sim = simulate(spec, 4, 3, 2, seed=4)
    built = build_pymc_model(resolve(spec, sim.data))
    params = {k: np.asarray(v) for k, v in sim.truth.items()}
    params.update({k: np.asarray(v) for k, v in built.constants.items()})
    params["_row_cov"], params["_col_cov"] = sim.truth["row_cov"], sim.truth["col_cov"]
    lay, design = built.layout, built.design
    proj = base_projections(NUMPY, spec, lay, params)
    g_inv, _ = design.prior(NUMPY, params)
    mean, L = effects_conditional(proj, design.E, g_inv)
    C = dense_covariance(NUMPY, spec, lay, design, params)
    Z = indicator_matrix(lay) @ design.E
    G = design.covariance(NUMPY, params)
    CiZG = np.linalg.solve(C, Z @ G)
    np.testing.assert_allclose(mean, CiZG.T @ lay.r[lay.obs], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(np.linalg.inv(L @ L.T), G - G @ Z.T @ CiZG, rtol=1e-8, atol=1e-10)


def test_kronecker_fit_holds_structures_and_tensor_view():
    spec = kron("ar1", "cs")
    sim = simulate(spec, 5, 3, 3, seed=7)
    fit = twoway.fit(spec, sim.data, chains=2, draws=200, tune=200, seed=1, progress=False)
    post = fit.posterior
    assert fit.info["likelihood_path"] == "kronecker-ar1"
    for name in ("row_rho", "row_sd", "col_rho", "row_cov", "col_cov", "row_effect", "col_mean"):
        assert name in post, name
    assert post["row_cov"].dims == ("chain", "draw", "row", "row_other")
    # the column factor has unit mean variance (the redundant Kronecker scale is fixed there)
    np.testing.assert_allclose(np.trace(post["col_cov"].values, axis1=-2, axis2=-1) / 3, 1.0, rtol=1e-10)
    from twoway.results.covariance import covariance_tensor

    T = covariance_tensor(fit, chain=1, draw=5, include_effects=False)
    U, V = post["row_cov"].values[1, 5], post["col_cov"].values[1, 5]
    np.testing.assert_allclose(T, np.einsum("ik,jl->ijkl", U, V), rtol=1e-10)
    assert covariance_tensor(fit).shape == (5, 3, 5, 3)


def test_structure_options_reach_the_model_from_the_command_line(tmp_path, capsys):
    from twoway.app.cli import main

    assert main(["dof", "--rows", "10", "--cols", "4", "--model", "kronecker", "--row-structure", "ar1",
                 "--col-structure", "unstructured", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["parameters"]["row_structure (ar1)"] == 2 and out["parameters"]["col_structure (unstructured)"] == 9
    assert main(["dof", "--rows", "4", "--cols", "4", "--row-structure", "ar1"]) == 2
    assert "kronecker residual" in capsys.readouterr().err
    assert main(["simulate", "--rows", "5", "--cols", "3", "--model", "latent", "--replicates", "2",
                 "--seed", "1", "--out", str(tmp_path / "l.csv"), "--truth", str(tmp_path / "l.json")]) == 0
    truth = json.loads((tmp_path / "l.json").read_text())["truth"]
    assert set(truth["row_shock"]) == {"0", "1"} or len(truth["row_shock"]) == 2
