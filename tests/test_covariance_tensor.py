"""covariance_tensor: the marginal covariance of one table includes a known relationship matrix of the effects.

With the effects integrated out, ``y[r, i, j] = intercept + row_effect[i] + col_effect[j] + e[r, i, j]`` with
``intercept ~ N(m0, s0^2)``, ``row_effect ~ N(0, row_effect_sd^2 Krow)``, ``col_effect ~ N(0, col_effect_sd^2
Kcol)`` (K the identity unless ``{side}_effect_cov = "known:FILE"``) and an independent residual of variance
``se[0, i, j]^2 + row_sd[i]^2 + sigma^2`` (``combine = "variance"``). So, by the law
``dense_covariance`` documents (``B + Z G Z'``),

    Cov(y[i, j], y[k, l]) = s0^2 + row_effect_sd^2 Krow[i, k] + col_effect_sd^2 Kcol[j, l]
                            + [i == k][j == l] (se[0, i, j]^2 + row_sd[i]^2 + sigma^2),

and without the effects only the last term. The fits here are built by hand (a DataTree with the
posterior draws, the table, the spec and the priors), so the expected tensor is exact; one test reads a
real (short) fit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from twoway import ModelSpec, simulate
from twoway.results.covariance import covariance_tensor
from twoway.fit import Fit
from twoway.plan import resolve

N, K, R = 4, 3, 2
CHAINS, DRAWS = 2, 3


def _spd(n: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a @ a.T / n + 0.5 * np.eye(n)


def _write_known(path, labels, matrix, order):
    """The matrix as a labelled CSV, its levels listed in another ``order`` (the reader must reorder)."""
    lines = ["," + ",".join(labels[o] for o in order)]
    lines += [labels[i] + "," + ",".join(repr(float(matrix[i, j])) for j in order) for i in order]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def table():
    """A 4 x 3 table with 2 replicates and per-cell se that differ between the replicates."""
    se = 0.2 + 0.05 * np.arange(R * N * K).reshape(R, N, K)
    return simulate("additive", N, K, R, seed=3, se=se).data


@pytest.fixture(scope="module")
def known(tmp_path_factory, table):
    d = tmp_path_factory.mktemp("known")
    Krow, Kcol = _spd(N, 1), _spd(K, 2)
    files = {"row": _write_known(d / "rows.csv", list(table.row_labels), Krow, [2, 0, 3, 1]),
             "col": _write_known(d / "cols.csv", list(table.col_labels), Kcol, [1, 2, 0])}
    return {"row": Krow, "col": Kcol}, files


def _spec(row_file=None, col_file=None) -> ModelSpec:
    return ModelSpec(row_effect="random", col_effect="random", row_scale="hetero", col_scale="none", sigma=True,
                     row_effect_cov=None if row_file is None else f"known:{row_file}",
                     col_effect_cov=None if col_file is None else f"known:{col_file}")


def _draws(seed: int = 0) -> dict:
    """Posterior draws of the sampled parameters, different in every chain and draw."""
    rng = np.random.default_rng(seed)
    return {
        "row_effect_sd": rng.uniform(0.5, 2.0, (CHAINS, DRAWS)),
        "col_effect_sd": rng.uniform(0.5, 2.0, (CHAINS, DRAWS)),
        "row_sd": rng.uniform(0.2, 1.0, (CHAINS, DRAWS, N)),
        "sigma": rng.uniform(0.1, 0.6, (CHAINS, DRAWS)),
    }


def _hand_made_fit(spec: ModelSpec, data, draws: dict) -> Fit:
    """A Fit holding ``draws`` as its posterior, without sampling (what covariance_tensor reads of a fit)."""
    plan = resolve(spec, data)
    post = xr.Dataset(
        {name: (("chain", "draw") + (("row",) if v.ndim == 3 else ()), v) for name, v in draws.items()},
        coords={"chain": np.arange(CHAINS), "draw": np.arange(DRAWS), "row": list(data.row_labels)},
    )
    tree = xr.DataTree.from_dict({"posterior": post, "observed_data": data.to_dataset()})
    tree.attrs.update({
        "twoway_model": spec.to_json(),
        "twoway_priors": json.dumps({k: p.to_dict() for k, p in plan.priors.items()}),
        "twoway_info": json.dumps({"likelihood_path": plan.path}),
    })
    return Fit(tree)


def _expected(fit: Fit, Krow, Kcol, chain: int, draw: int, *, include_effects: bool = True) -> np.ndarray:
    """The tensor by the formula of the module docstring, at one draw."""
    post, data = fit.posterior, fit.data
    s0 = fit.priors["intercept"].kwargs["sigma"]
    a = float(post["row_effect_sd"].values[chain, draw])
    c = float(post["col_effect_sd"].values[chain, draw])
    row_sd = post["row_sd"].values[chain, draw]
    sigma = float(post["sigma"].values[chain, draw])
    noise = data.se[0] ** 2 + row_sd[:, None] ** 2 + sigma ** 2              # (N, K), the first replicate's se
    T = np.einsum("ik,jl->ijkl", np.eye(N), np.eye(K)) * noise[:, :, None, None]
    if include_effects:
        T = T + s0 ** 2 + a * a * Krow[:, None, :, None] + c * c * Kcol[None, :, None, :]
    return T


@pytest.mark.parametrize("sides", [("row",), ("col",), ("row", "col")])
def test_tensor_includes_the_known_relationship_matrices(table, known, sides):
    mats, files = known
    Krow = mats["row"] if "row" in sides else np.eye(N)
    Kcol = mats["col"] if "col" in sides else np.eye(K)
    spec = _spec(files["row"] if "row" in sides else None, files["col"] if "col" in sides else None)
    fit = _hand_made_fit(spec, table, _draws())
    # the plan read the files (reordered to the table's labels)
    design = fit.plan.design
    for side, M in (("row", Krow), ("col", Kcol)):
        k = [blk[0] for blk in design.blocks].index(f"{side}_effect")
        start, stop = design.blocks[k][2:]
        np.testing.assert_allclose(design.base_cov[k][start:stop, start:stop], M, rtol=1e-12)
    for chain, draw in ((0, 0), (1, 2)):
        T = covariance_tensor(fit, chain=chain, draw=draw)
        assert T.shape == (N, K, N, K)
        np.testing.assert_allclose(T, _expected(fit, Krow, Kcol, chain, draw), rtol=1e-12, atol=1e-12)
        # the tensor is symmetric: Cov(y[i, j], y[k, l]) = Cov(y[k, l], y[i, j])
        np.testing.assert_allclose(T, T.transpose(2, 3, 0, 1), rtol=0, atol=1e-14)
        # with the known matrices replaced by the identity the tensor would differ
        wrong = _expected(fit, np.eye(N), np.eye(K), chain, draw)
        assert np.max(np.abs(T - wrong)) > 0.05
        # without the effects the known matrices play no part: the residual's diagonal alone
        T0 = covariance_tensor(fit, chain=chain, draw=draw, include_effects=False)
        np.testing.assert_allclose(T0, _expected(fit, Krow, Kcol, chain, draw, include_effects=False),
                                   rtol=1e-12, atol=1e-12)


def test_known_and_identity_relationships_give_different_tensors(table, known):
    """The same draws, with and without the known matrices: the effects' share differs by exactly
    ``row_effect_sd^2 (Krow - I)`` and ``col_effect_sd^2 (Kcol - I)``."""
    mats, files = known
    draws = _draws(1)
    with_known = covariance_tensor(_hand_made_fit(_spec(files["row"], files["col"]), table, draws), chain=1, draw=1)
    identity = covariance_tensor(_hand_made_fit(_spec(), table, draws), chain=1, draw=1)
    a, c = draws["row_effect_sd"][1, 1], draws["col_effect_sd"][1, 1]
    diff = (a * a * (mats["row"] - np.eye(N))[:, None, :, None]
            + c * c * (mats["col"] - np.eye(K))[None, :, None, :]) * np.ones((N, K, N, K))
    assert np.max(np.abs(diff)) > 0.05
    np.testing.assert_allclose(with_known - identity, diff, rtol=1e-10, atol=1e-12)


def test_tensor_of_a_sampled_fit_includes_the_known_matrix(table, known):
    """A real (short) fit: the spec, the priors and the posterior it stores give the same tensor."""
    import twoway

    mats, files = known
    spec = _spec(files["row"])
    fit = twoway.fit(spec, table, engine="jax", chains=1, draws=20, tune=20, seed=1, progress=False)
    assert fit.model.row_effect_cov == f"known:{files['row']}"
    T = covariance_tensor(fit, chain=0, draw=7)
    np.testing.assert_allclose(T, _expected(fit, mats["row"], np.eye(K), 0, 7), rtol=1e-10, atol=1e-12)
    assert np.max(np.abs(T - _expected(fit, np.eye(N), np.eye(K), 0, 7))) > 0.01
