"""Row/column covariance structures: matrices, closed forms, priors, parsing and known matrices."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from twoway import TwoWayData, preset
from twoway.engines.pymc.model import build_pymc_model
from twoway.engines.pymc.priors import pymc_distribution, pymc_variable
from twoway.errors import DataError, ModelError
from twoway.linalg.structured import (
    ar1_logdet,
    ar1_matrix,
    ar1_precision,
    ar1_quad,
    cs_logdet,
    cs_matrix,
    cs_precision,
    cs_quad,
    fa_logdet,
    fa_matrix,
    fa_precision,
    fa_quad,
)
from twoway.plan import resolve
from twoway.spec.priors import Prior
from twoway.spec.structures import parse_structure
from twoway.table.io.matrices import read_labelled_matrix

ALPHA = 1e-3  # false-alarm rate of each Kolmogorov-Smirnov test below


def fast_mode():
    """A PyTensor mode without C compilation: these graphs are tiny, and a cold C cache costs minutes."""
    from pytensor.compile.mode import Mode

    return Mode(linker="py", optimizer="fast_compile")
LABELS = ("a", "b", "c", "d", "e")


def write_matrix(path: Path, labels, matrix, header=None) -> Path:
    header = labels if header is None else header
    lines = ["," + ",".join(header)]
    for lab, row in zip(labels, matrix):
        lines.append(lab + "," + ",".join(str(v) for v in row))
    path.write_text("\n".join(lines) + "\n")
    return path


def spd(n, seed=0):
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a @ a.T + n * np.eye(n)


@pytest.fixture(scope="module")
def known_file(tmp_path_factory):
    m = spd(len(LABELS), seed=3)
    return write_matrix(tmp_path_factory.mktemp("known") / "K.csv", LABELS, m), m


def assert_spd(m):
    np.testing.assert_allclose(m, m.T, rtol=0, atol=1e-12)
    assert np.linalg.eigvalsh(m).min() > 0


# ---------------------------------------------------------------------------
# every kind: the NumPy matrix equals the PyMC matrix at the same parameters
# ---------------------------------------------------------------------------

EXPECTED_NAMES = {
    # kind: (names without unit scale, names with unit scale), side "row"
    "iid": (["row_sd"], []),
    "diag": (["row_sd"], ["row_sd"]),
    "ar1": (["row_rho", "row_sd"], ["row_rho"]),
    "cs": (["row_rho", "row_sd"], ["row_rho"]),
    "fa:2": (["row_loadings", "row_psi", "row_loadings_scale", "row_psi_scale"], ["row_loadings", "row_psi"]),
    "unstructured": (["row_corr", "row_sd"], ["row_corr", "row_sd"]),
    "known": (["row_sd"], []),
}


def kronecker_model(text, side, labels=LABELS):
    """The PyMC model of a Kronecker plan with the structure ``text`` on ``side`` and ``iid`` on the other.

    The column factor is built with unit scale, the row factor without. Returns the side's
    structure, its priors in force and the PyMC model.
    """
    other = {"row": "col", "col": "row"}[side]
    spec = dataclasses.replace(preset("kronecker"), **{f"{side}_structure": text, f"{other}_structure": "iid"})
    values = np.random.default_rng(0).normal(size=(1, len(labels), len(labels)))
    plan = resolve(spec, TwoWayData.from_array(values, row_labels=labels, col_labels=labels))
    return plan.parts[side], plan.structure_priors(side), build_pymc_model(plan).model


def closed_forms(st, params, X):
    """``log det`` and the quadratic forms ``x' A^-1 x`` of the structure's matrix by its closed form
    (:mod:`twoway.linalg.structured`), for the kinds that have one; None for the others."""
    nm, n = st._name, st.n
    sd2 = float(params.get(nm("sd"), 1.0)) ** 2 if st.kind in ("ar1", "cs") else None
    if st.kind == "ar1":
        return ar1_logdet(params[nm("rho")], sd2, n), ar1_quad(params[nm("rho")], sd2, X)
    if st.kind == "cs":
        return cs_logdet(params[nm("rho")], sd2, n), cs_quad(params[nm("rho")], sd2, X)
    if st.kind == "fa":
        return fa_logdet(params[nm("loadings")], params[nm("psi")]), fa_quad(params[nm("loadings")], params[nm("psi")], X)
    return None


@pytest.mark.parametrize("unit_scale", [False, True])
@pytest.mark.parametrize("text", list(EXPECTED_NAMES))
def test_matrix_equals_pymc_cov_and_closed_forms_equal_dense(text, unit_scale, known_file):
    import pymc as pm

    path, _ = known_file
    side = "col" if unit_scale else "row"
    st, priors, model = kronecker_model(f"known:{path}" if text == "known" else text, side)
    names = st.parameter_names(unit_scale=unit_scale)
    assert names == [n.replace("row_", f"{side}_") for n in EXPECTED_NAMES[text][unit_scale]]
    for name, dims in st.parameter_dims(unit_scale=unit_scale).items():
        assert tuple(model.named_vars_to_dims.get(name, ())) == dims
    X = np.random.default_rng(1).normal(size=(3, 2, st.n))
    outs = pm.draw([model[f"{side}_cov"], *(model[n] for n in names)], draws=3, random_seed=7, mode=fast_mode())
    for d in range(3):
        cov = outs[0][d]
        params = {k: v[d] for k, v in zip(names, outs[1:])}
        m = st.matrix(params, unit_scale=unit_scale)
        np.testing.assert_allclose(m, cov, rtol=1e-12, atol=1e-12)
        assert_spd(m)
        if unit_scale:
            assert abs(np.mean(np.diag(m)) - 1.0) < 1e-12
        # the structure's closed forms against the dense matrix
        closed = closed_forms(st, params, X)
        if closed is not None:
            logdet, quad = _dense_logdet_quad(cov, X)
            np.testing.assert_allclose(closed[0], logdet, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(closed[1], quad, rtol=1e-10)
    # NumPy prior draws give SPD matrices of the right shapes
    rng = np.random.default_rng(5)
    for _ in range(20):
        draw = st.draw(rng, priors, unit_scale=unit_scale)
        assert list(draw) == names
        for name, dims in st.parameter_dims(unit_scale=unit_scale).items():
            assert np.shape(draw[name]) == tuple(len(st.coords()[d]) for d in dims)
        m = st.matrix(draw, unit_scale=unit_scale)
        assert_spd(m)
        if unit_scale:
            assert abs(np.mean(np.diag(m)) - 1.0) < 1e-12


def test_model_compiles_with_gradient_and_adds_coords():
    _, _, model = kronecker_model("fa:2", "row")
    assert list(model.coords["row"]) == list(LABELS)
    assert list(model.coords["row_factor"]) == ["f1", "f2"]
    _, _, model = kronecker_model("unstructured", "col")
    assert list(model.coords["col_other"]) == list(LABELS)
    point = model.initial_point()
    assert np.isfinite(model.compile_logp(mode=fast_mode())(point))
    assert np.all(np.isfinite(model.compile_dlogp(mode=fast_mode())(point)))


def test_unit_scale_diag_matrix_rescales_and_fa_is_identifiable():
    st = parse_structure("diag", side="col", labels=LABELS)
    m = st.matrix({"col_sd": np.arange(1.0, 6.0)}, unit_scale=True)
    np.testing.assert_allclose(np.diag(m), np.arange(1.0, 6.0) ** 2 / 11.0, rtol=1e-14)
    fa = parse_structure("fa:2", side="row", labels=LABELS)
    lam = fa.draw(np.random.default_rng(0), fa.default_priors(1.0, unit_scale=False), unit_scale=False)["row_loadings"]
    assert lam[0, 1] == 0.0 and lam[0, 0] > 0 and lam[1, 1] > 0
    assert fa.n_parameters(unit_scale=False) == 5 * 2 - 1 + 5 + 2
    assert parse_structure("unstructured", side="row", labels=LABELS).n_parameters(unit_scale=True) == 10 + 5 - 1


# ---------------------------------------------------------------------------
# prior draws: NumPy and PyMC follow the same law
# ---------------------------------------------------------------------------


def _draws(text, side, names, draws, seed, labels=LABELS):
    """Prior draws of the structure's public parameters: NumPy's (``Structure.draw``) and PyMC's, same priors."""
    import pymc as pm

    st, priors, model = kronecker_model(text, side, labels)
    rng = np.random.default_rng(seed)
    d = [st.draw(rng, priors, unit_scale=side == "col") for _ in range(draws)]
    ours = {n: np.array([x[n] for x in d]) for n in names}
    out = pm.draw([model[n] for n in names], draws=draws, random_seed=seed + 1, mode=fast_mode())
    return st, ours, dict(zip(names, out))


@pytest.mark.parametrize("text", ["ar1", "cs"])
def test_rho_prior_draws_match_pymc(text):
    st, ours, theirs = _draws(text, "row", ["row_rho", "row_sd"], 4000, 1)
    for name in ours:
        assert stats.ks_2samp(ours[name], theirs[name]).pvalue > ALPHA
    lo, hi = st.rho_range()
    assert stats.kstest(ours["row_rho"], stats.uniform(lo, hi - lo).cdf).pvalue > ALPHA


def test_lkj_correlation_draws_match_pymc():
    n, eta = 4, 2.0
    _, ours, theirs = _draws("unstructured", "col", ["col_corr", "col_sd"], 3000, 3, labels=LABELS[:n])
    # an off-diagonal element of an LKJ(eta) matrix: 2 Beta(b, b) - 1 with b = eta - 1 + n / 2
    b = eta - 1.0 + n / 2.0
    for i, j in ((0, 1), (1, 3), (2, 3)):
        assert stats.ks_2samp(ours["col_corr"][:, i, j], theirs["col_corr"][:, i, j]).pvalue > ALPHA
        assert stats.kstest((ours["col_corr"][:, i, j] + 1) / 2, stats.beta(b, b).cdf).pvalue > ALPHA
    for i in (0, n - 1):  # the unit-scale sds (softmax of a zero-sum normal)
        assert stats.ks_2samp(ours["col_sd"][:, i], theirs["col_sd"][:, i]).pvalue > ALPHA
    np.testing.assert_allclose(np.mean(ours["col_sd"] ** 2, axis=1), 1.0, rtol=1e-12)


def test_fa_unit_scale_draws_match_pymc():
    _, ours, theirs = _draws("fa:1", "col", ["col_loadings", "col_psi"], 3000, 5, labels=LABELS[:3])
    for name, index in (("col_loadings", (0, 0)), ("col_loadings", (2, 0)), ("col_psi", (1,))):
        a, b = ours[name][(slice(None), *index)], theirs[name][(slice(None), *index)]
        assert stats.ks_2samp(a, b).pvalue > ALPHA


# ---------------------------------------------------------------------------
# closed forms against dense linear algebra, NumPy and PyTensor
# ---------------------------------------------------------------------------

CASES = [(n, rho) for n in (1, 2, 3, 7) for rho in (-0.85, -0.3, 0.0, 0.45, 0.95)]


def _dense_logdet_quad(a, X):
    return np.linalg.slogdet(a)[1], np.einsum("...i,...i->...", X, np.linalg.solve(a, X[..., None])[..., 0])


@pytest.mark.parametrize("n,rho", CASES)
def test_ar1_closed_forms_equal_dense(n, rho):
    sd2 = 1.7
    lag = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    a = sd2 * rho ** lag
    np.testing.assert_allclose(ar1_matrix(rho, sd2, n), a, rtol=1e-14)
    X = np.random.default_rng(n).normal(size=(4, 3, n))
    logdet, quad = _dense_logdet_quad(a, X)
    np.testing.assert_allclose(ar1_logdet(rho, sd2, n), logdet, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ar1_quad(rho, sd2, X), quad, rtol=1e-10)
    np.testing.assert_allclose(ar1_precision(rho, sd2, n), np.linalg.inv(a), rtol=1e-10, atol=1e-10)
    if n > 2:
        assert np.count_nonzero(np.triu(ar1_precision(rho, sd2, n), 2)) == 0  # tridiagonal


@pytest.mark.parametrize("n,rho", [(n, r) for n in (2, 3, 7) for r in (-0.9 / (n - 1), -0.1, 0.0, 0.6, 0.97)])
def test_cs_closed_forms_equal_dense(n, rho):
    sd2 = 0.6
    a = sd2 * ((1 - rho) * np.eye(n) + rho * np.ones((n, n)))
    np.testing.assert_allclose(cs_matrix(rho, sd2, n), a, rtol=1e-14)
    X = np.random.default_rng(n).normal(size=(5, n))
    logdet, quad = _dense_logdet_quad(a, X)
    np.testing.assert_allclose(cs_logdet(rho, sd2, n), logdet, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(cs_quad(rho, sd2, X), quad, rtol=1e-10)
    np.testing.assert_allclose(cs_precision(rho, sd2, n), np.linalg.inv(a), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n,k", [(2, 1), (5, 1), (6, 3), (9, 2)])
def test_fa_closed_forms_equal_dense(n, k):
    rng = np.random.default_rng(n * 10 + k)
    lam, psi = rng.normal(size=(n, k)), rng.uniform(0.2, 2.0, n)
    a = lam @ lam.T + np.diag(psi)
    np.testing.assert_allclose(fa_matrix(lam, psi), a, rtol=1e-14)
    X = rng.normal(size=(2, 3, n))
    logdet, quad = _dense_logdet_quad(a, X)
    np.testing.assert_allclose(fa_logdet(lam, psi), logdet, rtol=1e-10)
    np.testing.assert_allclose(fa_quad(lam, psi, X), quad, rtol=1e-10)
    np.testing.assert_allclose(fa_precision(lam, psi), np.linalg.inv(a), rtol=1e-10, atol=1e-10)


def _dense_twin(a, X):
    """PyTensor logdet + sum of quadratic forms by one Cholesky of the dense matrix."""
    import pytensor.tensor as pt

    chol = pt.linalg.cholesky(a, lower=True)
    z = pt.linalg.solve_triangular(chol, X.T, lower=True)
    return 2.0 * pt.log(pt.diagonal(chol)).sum() + (z * z).sum()


@pytest.mark.parametrize("kind,n,rho", [("ar1", 6, -0.7), ("ar1", 4, 0.35), ("ar1", 3, 0.0),
                                        ("cs", 6, -0.15), ("cs", 4, 0.8)])
def test_ar1_cs_pytensor_values_and_gradients_equal_dense_twin(kind, n, rho):
    import pytensor
    import pytensor.tensor as pt

    logdet_f, quad_f, matrix_f, precision_f = {
        "ar1": (ar1_logdet, ar1_quad, ar1_matrix, ar1_precision),
        "cs": (cs_logdet, cs_quad, cs_matrix, cs_precision),
    }[kind]
    X = np.random.default_rng(n).normal(size=(3, n))
    r, sd = pt.dscalar("rho"), pt.dscalar("sd")
    closed = logdet_f(r, sd**2, n) + quad_f(r, sd**2, pt.constant(X)).sum()
    dense = _dense_twin(matrix_f(r, sd**2, n), pt.constant(X))
    f = pytensor.function([r, sd], [closed, dense, *pt.grad(closed, [r, sd]), *pt.grad(dense, [r, sd]),
                                    precision_f(r, sd**2, n), quad_f(r, sd**2, pt.constant(X))], mode=fast_mode())
    c, d, gc_r, gc_s, gd_r, gd_s, prec, quad = f(rho, 1.3)
    np.testing.assert_allclose(c, d, rtol=1e-10)
    np.testing.assert_allclose([gc_r, gc_s], [gd_r, gd_s], rtol=1e-8, atol=1e-8)
    # the PyTensor versions equal the NumPy versions
    np.testing.assert_allclose(prec, precision_f(rho, 1.3**2, n), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(quad, quad_f(rho, 1.3**2, X), rtol=1e-12)
    np.testing.assert_allclose(c, logdet_f(rho, 1.3**2, n) + quad_f(rho, 1.3**2, X).sum(), rtol=1e-12)


def test_fa_pytensor_values_and_gradients_equal_dense_twin():
    import pytensor
    import pytensor.tensor as pt

    n, k = 6, 2
    rng = np.random.default_rng(11)
    lam0, psi0, X = rng.normal(size=(n, k)), rng.uniform(0.3, 1.5, n), rng.normal(size=(4, n))
    lam, psi = pt.dmatrix("lam"), pt.dvector("psi")
    closed = fa_logdet(lam, psi) + fa_quad(lam, psi, pt.constant(X)).sum()
    dense = _dense_twin(fa_matrix(lam, psi), pt.constant(X))
    f = pytensor.function([lam, psi], [closed, dense, *pt.grad(closed, [lam, psi]), *pt.grad(dense, [lam, psi]),
                                       fa_precision(lam, psi)], mode=fast_mode())
    c, d, gc_l, gc_p, gd_l, gd_p, prec = f(lam0, psi0)
    np.testing.assert_allclose(c, d, rtol=1e-10)
    np.testing.assert_allclose(gc_l, gd_l, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(gc_p, gd_p, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(c, fa_logdet(lam0, psi0) + fa_quad(lam0, psi0, X).sum(), rtol=1e-12)
    np.testing.assert_allclose(prec, fa_precision(lam0, psi0), rtol=1e-12, atol=1e-12)


def test_ar1_matrix_gradient_is_finite_at_rho_zero():
    import pytensor
    import pytensor.tensor as pt

    r = pt.dscalar("rho")
    g = pytensor.function([r], pt.grad(ar1_matrix(r, 1.0, 4).sum(), r), mode=fast_mode())(0.0)
    assert g == pytest.approx(6.0)  # d/drho of sum rho^|i-j| at 0: the 6 lag-one entries


# ---------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------


def test_parse_every_form(known_file, tmp_path):
    path, m = known_file
    for text, kind in (("iid", "iid"), ("diag", "diag"), (" AR1 ", "ar1"), ("cs", "cs"),
                       ("unstructured", "unstructured")):
        st = parse_structure(text, side="col", labels=LABELS)
        assert (st.kind, st.side, st.n, st.k, st.text) == (kind, "col", 5, None, kind)
    import pandas as pd

    assert parse_structure("diag", side="row", labels=pd.Index(LABELS)).labels == LABELS
    st = parse_structure("fa:3", side="row", labels=LABELS)
    assert (st.kind, st.k, st.text) == ("fa", 3, "fa:3")
    st = parse_structure(f"known:{path}", side="row", labels=LABELS)
    assert st.kind == "known" and np.array_equal(st.known, m)
    st2 = parse_structure(f"known:{path.name}", side="row", labels=LABELS, base_dir=path.parent)
    assert st2 == st and hash(st2) == hash(st)
    np.testing.assert_allclose(st.matrix({}, unit_scale=True), m / np.mean(np.diag(m)), rtol=1e-14)
    np.testing.assert_allclose(st.matrix({"row_sd": 2.0}, unit_scale=False), 4.0 * m, rtol=1e-14)


@pytest.mark.parametrize("text,error,match", [
    ("ar2", ModelError, r"'row_structure' must be one of .*got 'ar2' \(did you mean 'ar1'\?\)"),
    ("fa2", ModelError, r"did you mean 'fa:K'\?"),
    ("fa:0", ModelError, r"rank K .* must be from 1 to n - 1 = 4 .*got 'fa:0'"),
    ("fa:5", ModelError, r"rank K .* must be from 1 to n - 1 = 4 \(5 levels\); got 'fa:5'"),
    ("fa:x", ModelError, r"whole number from 1 to 4; got 'fa:x'"),
    ("fa", ModelError, r"needs its rank K"),
    ("iid:2", ModelError, r"'iid' takes no argument"),
    ("known:", ModelError, r"needs the path of a CSV file"),
    ("known:no_such_file.csv", DataError, r"file 'no_such_file.csv' for the 'row_structure' does not exist"),
    (3, ModelError, r"must be one of"),
])
def test_parse_rejects_bad_strings(text, error, match):
    with pytest.raises(error, match=match):
        parse_structure(text, side="row", labels=LABELS)


def test_parse_rejects_bad_side_and_labels():
    with pytest.raises(ModelError, match="side must be 'row' or 'col'"):
        parse_structure("iid", side="column", labels=LABELS)
    with pytest.raises(ModelError, match="at least 2 levels; got 1"):
        parse_structure("iid", side="row", labels=["a"])
    with pytest.raises(ModelError, match="must be unique"):
        parse_structure("iid", side="row", labels=["a", "a"])


def test_priors_are_checked_against_each_parameter_support():
    st = parse_structure("cs", side="row", labels=LABELS)
    priors = st.default_priors(1.0, unit_scale=False)
    assert priors["row_rho"].kwargs == {"lower": -0.25, "upper": 1.0}
    bad = [
        ({"row_rho": Prior.make("normal", mu=0, sigma=1)}, r"'row_rho' must keep it within \(-0.25, 1\)"),
        ({"row_rho": Prior.make("uniform", lower=-0.5, upper=1)}, r"within \(-0.25, 1\)"),
        ({"row_sd": Prior.make("normal", mu=0, sigma=1)}, r"'row_sd' must have positive support"),
        ({"row_sd": Prior.make("uniform", lower=-1, upper=1)}, r"'row_sd' must have positive support"),
    ]
    rng = np.random.default_rng(0)
    for override, match in bad:
        with pytest.raises(ModelError, match=match):
            st.draw(rng, {**priors, **override}, unit_scale=False)
    # a beta rho and a uniform sd from 0 are fine
    ok = {"row_rho": Prior.make("beta", alpha=2, beta=2), "row_sd": Prior.make("uniform", lower=0, upper=3)}
    draw = st.draw(rng, ok, unit_scale=False)
    assert 0 < draw["row_rho"] < 1 and 0 <= draw["row_sd"] <= 3
    with pytest.raises(ModelError, match="must include 'row_rho'"):
        st.draw(rng, {}, unit_scale=True)
    fa = parse_structure("fa:1", side="row", labels=LABELS)
    with pytest.raises(ModelError, match="'row_loadings_scale' must have positive support"):
        fa.draw(rng, {**fa.default_priors(1.0, unit_scale=False),
                      "row_loadings_scale": Prior.make("normal", mu=1, sigma=1)}, unit_scale=False)
    with pytest.raises(ModelError, match="spread must be finite and positive"):
        st.default_priors(0.0, unit_scale=False)


# ---------------------------------------------------------------------------
# the uniform and beta prior families
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("prior", [Prior.make("uniform", lower=-0.5, upper=2.0), Prior.make("beta", alpha=2.0, beta=5.0)])
def test_uniform_and_beta_priors_match_pymc(prior):
    import pymc as pm

    with pm.Model():
        rv = pymc_variable(prior, "x")
    ours = prior.sample(np.random.default_rng(1), 20000)
    theirs = pm.draw(rv, draws=20000, random_seed=2, mode=fast_mode())
    assert stats.ks_2samp(ours, theirs).pvalue > ALPHA
    theirs_dist = pm.draw(pymc_distribution(prior), draws=20000, random_seed=3, mode=fast_mode())
    assert stats.ks_2samp(ours, theirs_dist).pvalue > ALPHA


def test_uniform_and_beta_positive_and_validation():
    assert Prior.make("uniform", lower=0, upper=1).positive
    assert not Prior.make("uniform", lower=-1, upper=1).positive
    assert Prior.make("beta", alpha=1, beta=1).positive
    with pytest.raises(ModelError, match="lower < upper"):
        Prior.make("uniform", lower=1, upper=1)
    with pytest.raises(ModelError, match="'alpha' must be positive"):
        Prior.make("beta", alpha=0, beta=1)
    with pytest.raises(ModelError, match=r"needs parameters \['lower', 'upper'\]"):
        Prior.make("uniform", lower=0)


# ---------------------------------------------------------------------------
# reading a known matrix
# ---------------------------------------------------------------------------


def test_read_known_matrix_reorders_to_the_labels(tmp_path):
    m = spd(4, seed=1)
    file_labels = ["d", "b", "a", "c"]
    # header in another order than the first column: both are reordered
    header_order = ["a", "b", "c", "d"]
    hm = m[:, [file_labels.index(x) for x in header_order]]
    path = tmp_path / "K.csv"
    path.write_text("id," + ",".join(header_order) + "\n" + "\n".join(
        lab + "," + ",".join(repr(float(v)) for v in row) for lab, row in zip(file_labels, hm)) + "\n")
    out = read_labelled_matrix(path, ["a", "b", "c", "d"], what="row_structure")
    order = [file_labels.index(x) for x in "abcd"]
    np.testing.assert_array_equal(out, m[np.ix_(order, order)])


def _bad_cases(tmp_path):
    m = spd(3, seed=2)
    labs = ["a", "b", "c"]
    cases = []

    def case(name, text, error_match, labels=labs):
        p = tmp_path / f"{name}.csv"
        p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
        cases.append((p, labels, error_match))

    def table(labels, rows, header=None):
        header = labels if header is None else header
        return ",".join([""] + header) + "\n" + "\n".join(
            lab + "," + ",".join(str(v) for v in row) for lab, row in zip(labels, rows)) + "\n"

    case("binary", b"PK\x03\x04\x00\xff rest", r"is not a CSV text file in UTF-8")
    case("empty", "\n\n", r"is empty")
    case("missing", table(["a", "b"], m[:2, :2]), r"every label; missing: 'c'")
    case("extra", table(labs + ["z"], spd(4)), r"only the labels of the table; extra: 'z'")
    case("mismatch", table(labs, m, header=["a", "b", "x"]),
         r"square matrix with the same labels in its header and its first column; only in the header: 'x'; only in the first column: 'c'")
    case("duplicate", table(labs, m, header=["a", "a", "c"]), r"'a' appears twice in the header")
    case("notsquare", table(labs[:2], m[:2], header=labs), r"square matrix with the same labels .*; 3 labels in the header, 2 in the first column; only in the header: 'c'")
    case("short_row", ",a,b,c\na,1,0,0\nb,0,1\nc,0,0,1\n", r"square matrix; line 3 \(label 'b'\) has 2 values")
    case("text", table(labs, [[1, 0, 0], [0, "x", 0], [0, 0, 1]]),
         r"must hold numbers; the entry at \(row 'b', column 'b'\) on line 3 is 'x', not a number")
    case("inf", table(labs, [[1, 0, 0], [0, 1, 0], [0, 0, "inf"]]),
         r"finite numbers; the entry at \(row 'c', column 'c'\) on line 4 is 'inf'")
    case("asym", table(labs, [[1, 0.5, 0], [0.2, 1, 0], [0, 0, 1]]),
         r"must be symmetric; the largest asymmetry is 0.3 between \(row 'a', column 'b'\) = 0.5 and \(row 'b', column 'a'\) = 0.2")
    case("notpd", table(labs, [[1, 2, 0], [2, 1, 0], [0, 0, 1]]),
         r"must be positive definite; its smallest eigenvalue is -1")
    return cases


def test_read_known_matrix_rejects_bad_files(tmp_path):
    cases = _bad_cases(tmp_path)
    for path, labels, match in cases:
        with pytest.raises(DataError, match=match) as info:
            read_labelled_matrix(path, labels, what="row_structure")
        message = str(info.value)
        assert message.startswith(f"The ") and path.name in message and "'row_structure'" in message, message
    with pytest.raises(DataError, match="does not exist"):
        read_labelled_matrix(tmp_path / "nope.csv", ["a", "b"], what="row_structure")
