"""The model is written once: one walk over the plan (:mod:`twoway.engines.walk`) builds the JAX and PyMC models.

* a term added to the walk in one place changes the JAX and the PyMC
  log-densities alike, by the same amount at the same point;
* at random points the two log-densities agree: a JAX point (unconstrained
  theta) is mapped to PyMC's value space through the values the walk builds
  (each PyMC transform's ``forward``), and the two differ only by a constant
  (JAX drops its devices' normalising constants) and, for an LKJ factor, by
  the log-Jacobians of the two libraries' own bijections;
* and, where every site is a prior's parameter or a standard-normal device,
  each equals an independent NumPy log-density: the likelihood
  (:func:`twoway.likelihood.paths.marginal_logp` with NumPy at the structures'
  :meth:`~twoway.spec.structures.Structure.matrix`, or the diagonal normal of
  the observed cells), :meth:`Prior.logpdf` of each prior's parameter, the
  devices' normal densities and each engine's log-Jacobian of its bijections.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import twoway
from twoway import preset, simulate
from twoway.engines import walk as walk_module
from twoway.likelihood.diagonal import diagonal_logp, residual_sd
from twoway.likelihood.paths import marginal_logp
from twoway.linalg.ops import JAX, NUMPY, PYTENSOR
from twoway.plan import resolve

POINTS = 4
RTOL = 1e-10   # rounding: the same numbers summed in another order, by another library

COV_MODULE = '''
import numpy as np


def ar_rows(ops, rho, scale):
    N, K = 4, 3
    d = np.abs(np.subtract.outer(np.arange(N), np.arange(N))).astype(float)
    return scale * scale * ops.kron(rho ** ops.asarray(d), ops.asarray(np.eye(K)))
'''


def kron(row, col, sigma=False, **kw):
    return dataclasses.replace(preset("kronecker"), row_structure=row, col_structure=col, sigma=sigma, **kw)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A known relationship matrix of three columns and a covariance module (4 x 3 tables)."""
    d = tmp_path_factory.mktemp("walk")
    a = np.random.default_rng(0).normal(size=(3, 3))
    m = a @ a.T + 3 * np.eye(3)
    cols = [f"col{j + 1}" for j in range(3)]
    lines = ["," + ",".join(cols)] + [c + "," + ",".join(repr(float(v)) for v in row) for c, row in zip(cols, m)]
    (d / "cols.csv").write_text("\n".join(lines) + "\n")
    (d / "mycov.py").write_text(COV_MODULE)
    return d


def _full(folder):
    P = twoway.Prior
    return twoway.ModelSpec(residual="full", covariance=f"{folder / 'mycov.py'}:ar_rows", row_scale="none",
                            col_scale="none", sigma=True,
                            priors=(("rho", P.make("uniform", lower=-0.9, upper=0.9)),
                                    ("scale", P.make("halfnormal", sigma=1.0))))


# name: (spec, R, whether an independent NumPy log-density is checked too)
MODELS = {
    "additive": (lambda f: preset("additive"), 2, True),
    "crossed": (lambda f: preset("crossed"), 2, True),
    "crossed-cell": (lambda f: preset("crossed", cell_effect="random"), 2, True),
    "latent": (lambda f: preset("latent"), 3, True),
    "kronecker-ar1-cs": (lambda f: kron("ar1", "cs"), 2, True),
    "kronecker-known": (lambda f: kron("iid", f"known:{f / 'cols.csv'}", sigma=True), 2, True),
    "kronecker-fa1-unstructured": (lambda f: kron("fa:1", "unstructured"), 2, False),
    "kronecker-unstructured-fa1": (lambda f: kron("unstructured", "fa:1", sigma=True), 2, False),
    "kronecker-diag-diag": (lambda f: kron("diag", "diag"), 2, False),
    "full": (_full, 1, True),
    "sampled-random": (lambda f: preset("additive", effects="sample"), 2, True),
    "sampled-fixed": (lambda f: preset("crossed", effects="sample", row_effect="fixed"), 2, False),
}


def _plan(name, folder):
    make, R, _ = MODELS[name]
    spec = make(folder)
    return resolve(spec, simulate(spec, 4, 3, R, seed=sum(map(ord, name))).data)


def _engines(plan):
    """(JAX model, its args, PyMC model, PyMC's compiled log-density)."""
    from twoway.engines.jax.model import describe, model_args
    from twoway.engines.pymc.model import build_pymc_model

    model = build_pymc_model(plan).model
    return describe(plan), model_args(plan), model, model.compile_logp(mode="FAST_COMPILE")


def _jax_points(jm, seed):
    rng = np.random.default_rng(seed)
    return [{s: rng.normal(0.0, 0.7, size=shape) for s, shape in jm.sites.items()} for _ in range(POINTS)]


def _jax_at(jm, args, theta):
    """The JAX log-density at ``theta`` and every value the walk kept (devices included), as NumPy."""
    logp, values = jm._run(theta, args)
    return float(logp), {k: np.asarray(v) for k, v in values.items()}


def _pymc_point(model, values):
    """PyMC's value-space point of the values the JAX walk built (each free variable's transform forward)."""
    import pytensor.tensor as pt

    point = {}
    for rv in model.free_RVs:
        x = np.asarray(values[rv.name], dtype=float)
        tr = model.rvs_to_transforms.get(rv)
        point[model.rvs_to_values[rv].name] = x if tr is None else np.asarray(
            tr.forward(pt.as_tensor(x), *rv.owner.inputs).eval())
    return point


def _lkj_jacobians(model, theta, values, point):
    """Sum over LKJ factors of (NumPyro's log-Jacobian - PyMC's log-Jacobian) of their maps to the factor."""
    import jax.numpy as jnp
    import pytensor.tensor as pt
    from numpyro.distributions.transforms import CorrCholeskyTransform

    out = 0.0
    for rv in model.free_RVs:
        if rv.name.endswith("_corr_chol"):
            tr = model.rvs_to_transforms[rv]
            v = point[model.rvs_to_values[rv].name]
            out += float(CorrCholeskyTransform().log_abs_det_jacobian(jnp.asarray(theta[rv.name]), values[rv.name]))
            out -= float(tr.log_jac_det(pt.as_tensor(v), *rv.owner.inputs).eval())
    return out


def _log_jacobian(prior, x, engine: str) -> float:
    """log |dx/du| of the engine's bijection from the real line onto the prior's support, at x."""
    p = prior.kwargs
    if prior.dist == "normal":  # JAX: mu + sigma u; PyMC: no transform
        return np.size(x) * math.log(p["sigma"]) if engine == "jax" else 0.0
    if prior.dist in ("uniform", "beta"):
        lo, hi = (p["lower"], p["upper"]) if prior.dist == "uniform" else (0.0, 1.0)
        return float(np.sum(np.log((x - lo) * (hi - x) / (hi - lo))))
    return float(np.sum(np.log(x)))  # a positive family: x = exp(v), or c exp(u)


def _reference(plan, jm, values, engine: str) -> float:
    """The NumPy log-density at the walk's values, on ``engine``'s unconstrained space."""
    total = 0.0
    for site in jm.sites:
        x = values[site]
        if site in plan.priors:
            total += float(np.sum(plan.priors[site].logpdf(x))) + _log_jacobian(plan.priors[site], x, engine)
        elif site.endswith("_z"):  # a standard-normal device; JAX leaves out the constant
            total += -0.5 * float(np.sum(x * x)) - (0.5 * math.log(2 * math.pi) * x.size if engine == "pymc" else 0)
        else:
            assert site == "_grand_mean", site  # flat, unit Jacobian in PyMC, constant in JAX (left out)
    public = {k: (float(v) if v.ndim == 0 else v) for k, v in values.items() if not k.startswith("_")}
    spec = plan.spec
    if not plan.integrated:
        data = plan.data
        rr, ii, jj = data.observed_index()
        mu = public["intercept"] + public["row_effect"][ii] + public["col_effect"][jj]
        scales = [public[f"{s}_sd"][idx] if f"{s}_sd" in public else None for s, idx in (("row", ii), ("col", jj))]
        sd = residual_sd(data.se_or_zero()[rr, ii, jj], *scales, public.get("sigma"), combine=spec.combine)
        intercept = plan.priors["intercept"].logpdf(public["intercept"])
        return total + float(np.sum(diagonal_logp(data.observed_values(), mu, sd))) + float(intercept)
    params = {**plan.constants, **public}
    for side, unit in (("row", False), ("col", True)):
        st = plan.parts.get(side)
        if st is not None:
            params[f"_{side}_cov"] = st.matrix(public, unit_scale=unit)
    return total + float(marginal_logp(NUMPY, spec, plan.layout, plan.design, params, plan.path))


SLOW_MODELS = ("kronecker-unstructured-fa1",)  # the default tier has fa:1 x unstructured, the same two structures


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n for n in MODELS])
def test_jax_and_pymc_log_densities_agree_at_random_points(name, folder):
    plan = _plan(name, folder)
    jm, args, model, pymc_logp = _engines(plan)
    public = sorted(v.name for v in model.free_RVs + model.deterministics if not v.name.startswith("_"))
    assert public == sorted(jm.names)
    for n, dims in jm.dims.items():
        assert tuple(model.named_vars_to_dims.get(n, ())) == dims
    gaps = []
    for theta in _jax_points(jm, seed=len(name)):
        lj, values = _jax_at(jm, args, theta)
        point = _pymc_point(model, values)
        lp = float(pymc_logp(point))
        assert math.isfinite(lj) and math.isfinite(lp)
        gaps.append(lj - lp - _lkj_jacobians(model, theta, values, point))
        if MODELS[name][2]:
            np.testing.assert_allclose(lj, _reference(plan, jm, values, "jax"), rtol=RTOL)
            np.testing.assert_allclose(lp, _reference(plan, jm, values, "pymc"), rtol=RTOL)
    # the same up to a constant: the normalising constants JAX leaves out
    np.testing.assert_allclose(gaps, gaps[0], rtol=0, atol=RTOL * max(1.0, abs(lj)))


@pytest.mark.parametrize("name", ["crossed", "kronecker-fa1-unstructured", "sampled-fixed"])
def test_a_term_added_in_the_walk_changes_both_engines_alike(name, folder, monkeypatch):
    """One more term in one place of the walk (here after the residual scales) reaches both engines."""
    plan = _plan(name, folder)
    jm, args, model, pymc_logp = _engines(plan)
    points = [_jax_at(jm, args, theta) + (theta,) for theta in _jax_points(jm, seed=7)]
    scales = walk_module._scales

    def with_a_term(b, plan):
        out = scales(b, plan)
        term = out.get("sigma", out.get("row_sd", b.ops.asarray(1.0)))
        b.potential("_extra", 1.25 - 0.5 * b.ops.sum(term * term))
        return out

    monkeypatch.setattr(walk_module, "_scales", with_a_term)
    jm2, args2, model2, pymc_logp2 = _engines(plan)
    assert "_extra" in model2.named_vars and jm2.sites == jm.sites
    for lj, values, theta in points:
        term = values.get("sigma", values.get("row_sd", 1.0))
        expected = 1.25 - 0.5 * float(np.sum(np.square(term)))
        lj2, _ = _jax_at(jm2, args2, theta)
        point = _pymc_point(model, values)
        np.testing.assert_allclose(lj2 - lj, expected, rtol=RTOL, atol=RTOL)
        np.testing.assert_allclose(float(pymc_logp2(point)) - float(pymc_logp(point)), expected, rtol=RTOL, atol=RTOL)


def test_every_model_term_is_in_the_walk():
    """The engines' builders name no model term: parameters, devices and their dims come from the walk."""
    from twoway.engines import startup
    from twoway.engines.jax import model as jax_model
    from twoway.engines.pymc import model as pymc_model

    terms = ("_effect_sd", "_effect_z", "log_sd", "_grand_mean", "loadings", "psi", "rho", "cell_sd", "_cov")
    for module in (jax_model, pymc_model, startup):
        found = [t for t in terms if t in inspect.getsource(module)]
        assert not found, (module.__name__, found)
    walk_source = inspect.getsource(walk_module)
    assert all(t in walk_source for t in terms)


def test_the_ops_siblings_carry_the_same_names():
    names = [sorted(n for n in dir(ops) if not n.startswith("_")) for ops in (NUMPY, PYTENSOR, JAX)]
    assert names[0] == names[1] == names[2]
    x = np.array([0.3, -1.2, 2.0])
    np.testing.assert_allclose(NUMPY.softmax(x), np.exp(x) / np.exp(x).sum(), rtol=1e-15)
    np.testing.assert_allclose(np.asarray(JAX.softmax(x)), NUMPY.softmax(x), rtol=1e-15)
    np.testing.assert_allclose(PYTENSOR.softmax(x).eval(), NUMPY.softmax(x), rtol=1e-15)


def test_start_up_draws_walk_the_model(folder):
    """The start-up check's NumPy builder draws from the priors and sums the log-likelihood: finite for
    every kind of model, -inf with a prior that leaves no finite point."""
    from twoway.engines.startup import _log_density_at_a_draw, check_start

    for name in MODELS:
        plan = _plan(name, folder)
        rng = np.random.default_rng(1)
        assert any(math.isfinite(_log_density_at_a_draw(plan, rng)) for _ in range(5)), name
        check_start(plan, seed=1)
    spec = preset("crossed", effects="sample").with_priors(sigma=twoway.Prior.make("halfnormal", sigma=1e-200))
    plan = resolve(spec, simulate("crossed", 4, 3, 2, seed=1).data)
    with pytest.raises(twoway.FitError, match="prior for 'sigma'"):
        check_start(plan, seed=1)


def test_program_key_of_a_full_callable_is_the_same_in_another_process(folder):
    from twoway.engines.jax.engine import program_key

    plan = _plan("full", folder)
    tests = str(Path(__file__).parent)
    code = (f"import sys; sys.path.insert(0, {tests!r}); import test_walk, pathlib; "
            "from twoway.engines.jax.engine import program_key; "
            f"print(program_key(test_walk._plan('full', pathlib.Path({str(folder)!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == program_key(plan)
    again = resolve(plan.spec, plan.data)  # the module loaded again: another function object, the same key
    assert again.parts["full"].function is not plan.parts["full"].function
    assert program_key(again) == program_key(plan)
