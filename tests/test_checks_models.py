"""Checks work on every residual: predictive tables keep correlated structure, exact LOO by cell and row,
and the report shows the covariance matrices of a Kronecker fit."""

import dataclasses
import warnings

import numpy as np
import pytest

import twoway


@pytest.fixture(scope="module")
def kron_fit():
    spec = dataclasses.replace(twoway.preset("kronecker"), row_structure="ar1", col_structure="cs")
    sim = twoway.simulate(spec, 6, 3, 2, seed=2, params={"row_rho": 0.8})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return twoway.fit(spec, sim.data, chains=2, draws=200, tune=200, seed=1, progress=False)


def test_moments_of_a_kronecker_fit_are_its_covariance(kron_fit):
    from twoway.results.moments import iter_moments

    m = next(iter_moments(kron_fit, [(0, 3)], conditional=True))
    post = kron_fit.posterior
    U, V = post["row_cov"].values[0, 3], post["col_cov"].values[0, 3]
    R, N, K = kron_fit.data.values.shape
    expected = np.kron(np.eye(R), np.kron(U, V))  # complete table: observed cells in (r, i, j) order
    np.testing.assert_allclose(m.cov, expected, rtol=1e-10, atol=1e-12)
    mean = (post["intercept"].values[0, 3] + post["row_effect"].values[0, 3][:, None]
            + post["col_effect"].values[0, 3][None, :])
    np.testing.assert_allclose(m.mean, np.tile(mean.ravel(), R), rtol=1e-10)


def test_checks_and_loo_run_on_correlated_fits(kron_fit):
    from twoway.results.loo import loo
    from twoway.results.ppc import predictive_checks

    table = predictive_checks(kron_fit, draws=100)
    assert table["p_value"].between(0, 1).all() and "row_corr" in table.index
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cell = loo(kron_fit, by="cell")
        row = loo(kron_fit, by="row")
    assert np.isfinite(cell.elpd) and np.isfinite(row.elpd)
    assert row.elpd < cell.elpd  # predicting whole rows is harder than single cells


def test_report_shows_kronecker_covariances(kron_fit, tmp_path):
    from twoway.app.report import write_report

    path = write_report(kron_fit, tmp_path / "r.html")
    html = path.read_text()
    section = html[html.index('id="covariance"'):]
    section = section[:section.index("</section>")]
    assert "data:image/png;base64," in section
