"""The modes twoway compiles with give the same log-density as the uncompiled graph.

PyTensor 3.3's ``local_careduce_of_alloc`` rewrite multiplies small shape
constants in int8 (see twoway.engines.pymc.compile_modes); these tests fail if a compile
path of twoway's loses the exclusion while PyTensor still has the fault.
"""

import numpy as np
import pytest
import pytensor
import pytensor.tensor as pt

import twoway
from twoway.engines.pymc.compile_modes import pymc_compile_kwargs, safe_mode, sampling_modes
from twoway.fit import compile_model


def _sum_of_broadcast(mode):
    x = pt.dscalar("x")
    f = pytensor.function([x], pt.sum(pt.alloc(x, 3, 8, 12)), mode=mode)
    return float(f(1.0))


def test_sampling_modes_sum_a_broadcast_scalar_exactly():
    with sampling_modes():
        assert _sum_of_broadcast("NUMBA") == 288.0
    assert _sum_of_broadcast(safe_mode(None)) == 288.0
    assert _sum_of_broadcast(pymc_compile_kwargs()["mode"]) == 288.0


def test_sampling_modes_restores_the_mode_on_error():
    import pytensor.compile.mode as modes

    before = modes.predefined_modes["NUMBA"]
    try:
        with sampling_modes():
            raise KeyError("boom")
    except KeyError:
        pass
    assert modes.predefined_modes["NUMBA"] is before


def test_compile_model_compiles_for_nutpie_in_the_safe_mode(monkeypatch):
    """compile_model hands nutpie a NUMBA mode without the faulty rewrite (nutpie compiles by that name)."""
    import nutpie

    monkeypatch.setattr(nutpie, "compile_pymc_model", lambda model, **kw: _sum_of_broadcast("NUMBA"))
    data = twoway.simulate("additive", 3, 4, seed=1).data
    assert compile_model("additive", data, engine="nutpie", progress=False).compiled[1] == 288.0


def test_pymc_backend_samples_in_the_safe_mode(monkeypatch):
    import pymc as pm

    seen = {}

    def fake_sample(**kwargs):
        seen["value"] = _sum_of_broadcast(kwargs["compile_kwargs"]["mode"])
        raise RuntimeError("stop here")

    monkeypatch.setattr(pm, "sample", fake_sample)
    data = twoway.simulate("additive", 3, 4, seed=1).data
    compiled = compile_model("additive", data, backend="pymc", progress=False)
    try:
        compiled.sample(chains=1, draws=5, tune=5, seed=1)
    except RuntimeError:
        pass
    assert seen["value"] == 288.0


@pytest.mark.slow
def test_nutpie_log_density_of_latent_model_equals_the_graph():
    # the seed's table size: 3 x 8 x 12 = 288 cells, past int8
    spec = twoway.preset("latent")
    sim = twoway.simulate(spec, 8, 12, 3, seed=4)
    compiled = compile_model(spec, sim.data, engine="nutpie", progress=False)
    built, nutpie_model = compiled.compiled
    model = built.model
    reference = model.compile_fn(model.logp(), mode="FAST_COMPILE", point_fn=True)
    rng = np.random.default_rng(0)
    ip = model.initial_point()
    for _ in range(2):
        point = {k: v + rng.normal(0, 0.3, size=np.shape(v)) for k, v in ip.items()}
        x = np.concatenate([np.ravel(point[v.name]) for v in model.value_vars])
        np.testing.assert_allclose(nutpie_model.logp_func(x)[0], reference(point), rtol=1e-10)
