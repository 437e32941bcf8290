"""Factor-analytic structures fitted: loadings recovered in their identified form, the constraint in every
draw, no library warnings on a correct Kronecker fit, and a warning naming parameters whose chains sit in
different modes (a constructed posterior with chains in opposite-sign modes) that a healthy fit does not raise."""

import dataclasses
import warnings

import numpy as np
import pytest
from scipy import stats

import twoway
from twoway.results.diagnostics import chain_separation, separated_chains
from twoway.errors import ConvergenceWarning
from twoway.linalg.structured import fa_identify, fa_matrix
from twoway.spec.model import preset

#: Family-wise false-alarm rate of the recovery check (Bonferroni over the loadings).
ALPHA = 0.001

ROW_LOADINGS = np.array([[1.2, 0.0], [0.6, 0.9], [-0.8, 0.5], [0.4, -1.0], [1.0, 0.3], [-0.5, -0.7], [0.9, 0.8]])
ROW_PSI = np.array([0.3, 0.2, 0.4, 0.25, 0.35, 0.3, 0.2])
COL_RAW = np.array([[1.0, 0.0], [0.7, 0.8], [-0.6, 0.7], [0.5, -0.9], [0.9, 0.4]])
COL_PSI_RAW = np.array([0.3, 0.25, 0.3, 0.2, 0.35])


def _col_truth():
    m = np.mean(np.diag(fa_matrix(COL_RAW, COL_PSI_RAW)))
    return COL_RAW / np.sqrt(m), COL_PSI_RAW / m


@pytest.fixture(scope="module")
def fa2_fit():
    spec = dataclasses.replace(preset("kronecker"), row_structure="fa:2", col_structure="fa:2")
    col_loadings, col_psi = _col_truth()
    sim = twoway.simulate(spec, 7, 5, 30, seed=11, params={
        "row_loadings": ROW_LOADINGS, "row_psi": ROW_PSI, "col_loadings": col_loadings, "col_psi": col_psi})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a correct Kronecker fit on the default engine: no library warnings
        fit = twoway.fit(spec, sim.data, chains=2, draws=400, tune=400, seed=3, progress=False)
    return sim, fit


def test_fa_identify_keeps_the_matrix_and_fixes_the_rotation():
    rng = np.random.default_rng(0)
    lam = rng.normal(size=(50, 6, 3))
    ident = fa_identify(lam)
    np.testing.assert_allclose(ident @ np.swapaxes(ident, -1, -2), lam @ np.swapaxes(lam, -1, -2), atol=1e-12)
    assert np.all(np.triu(ident[:, :3, :], 1) == 0.0)
    assert np.all(np.diagonal(ident[:, :3, :], axis1=-2, axis2=-1) > 0)
    # any rotation or reflection of the factors gives the same identified form
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    np.testing.assert_allclose(fa_identify(lam @ q), ident, atol=1e-10)


@pytest.mark.parametrize("side", ["row", "col"])
def test_fa2_loadings_recovered_in_identified_form_and_constraint_in_every_draw(fa2_fit, side):
    sim, fit = fa2_fit
    post = fit.posterior
    lam = post[f"{side}_loadings"].values                       # (chains, draws, n, 2)
    assert np.all(lam[..., 0, 1] == 0.0), "the upper triangle must be exactly zero in every draw"
    assert np.all(lam[..., 0, 0] > 0) and np.all(lam[..., 1, 1] > 0), "the diagonal must be positive in every draw"
    truth = fa_identify(np.asarray(sim.truth[f"{side}_loadings"]))
    free = ~np.triu(np.ones(truth.shape, bool), 1)              # the loadings that are not fixed at zero
    flat = lam.reshape(-1, *lam.shape[2:])
    z = (flat.mean(axis=0)[free] - truth[free]) / flat.std(axis=0)[free]   # fixed zeros have no spread
    # the truth is a draw from the posterior (approximately normal here): each |z| exceeds the
    # Bonferroni bound with probability at most ALPHA / (number of free loadings)
    bound = stats.norm.isf(ALPHA / (2 * free.sum()))
    assert np.all(np.abs(z) < bound), z
    # and the psi as well, through the whole covariance
    cov = post[f"{side}_cov"].values.reshape(-1, *truth.shape[:1] * 2)
    true_cov = np.asarray(sim.truth[f"{side}_cov"])
    zc = (cov.mean(axis=0) - true_cov) / cov.std(axis=0)
    assert np.all(np.abs(zc) < stats.norm.isf(ALPHA / (2 * zc.size)))


def test_healthy_fit_has_no_mode_warning(fa2_fit):
    _, fit = fa2_fit
    assert separated_chains(fit.posterior) == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = fit.summary()
    assert not any("different modes" in str(w.message) for w in caught)
    assert not any("different modes" in w for w in summary.warnings)


def test_chains_in_opposite_sign_modes_are_named(fa2_fit):
    _, fit = fa2_fit
    tree = fit.tree.copy()
    post = tree["posterior"].to_dataset()
    flipped = post["row_loadings"].copy()
    flipped[dict(chain=1)] = -flipped[dict(chain=1)]            # chain 2 in the mirror-image mode
    tree["posterior"] = post.assign(row_loadings=flipped)
    bad = twoway.Fit(tree)
    found = {label: opposite for label, _, opposite in separated_chains(bad.posterior)}
    assert "row_loadings[row1, f1]" in found and found["row_loadings[row1, f1]"]
    assert not any(label.startswith("col_") for label in found)
    with pytest.warns(ConvergenceWarning, match=r"different modes .*row_loadings\[row1, f1\].*opposite sides of zero"):
        summary = bad.summary()
    assert any("row_loadings[row1, f1]" in w for w in summary.warnings)


def test_chain_separation_numbers():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 500, 2))
    x[:2, :, 0] += 5.0                                         # two chains in a mode 5 sds away
    sep, opposite = chain_separation(x)
    assert sep[0] > 4 and sep[1] < 0.5
    assert not opposite[0]                                     # both modes above zero: no sign flip
    x[:2, :, 0] -= 10.0
    assert not chain_separation(x)[1][0]                       # modes at -5 and 0: 0 is not beyond one sd
    y = rng.normal(size=(2, 500)) + np.array([[3.0], [-3.0]])
    sep, opposite = chain_separation(y)
    assert sep > 5 and opposite
    assert np.isnan(chain_separation(rng.normal(size=(1, 100)))[0])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["nutpie", "pymc"])
def test_kronecker_fit_on_other_engines_gives_no_library_warnings(engine):
    spec = dataclasses.replace(preset("kronecker"), row_structure="fa:1", col_structure="ar1")
    sim = twoway.simulate(spec, 5, 4, 3, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = twoway.fit(spec, sim.data, chains=2, draws=200, tune=300, seed=1, engine=engine, progress=False)
    lam = fit.posterior["row_loadings"].values
    assert np.all(lam[..., 0, 0] > 0)
