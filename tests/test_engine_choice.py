"""The engine is chosen in one place; a fit gives back the plan it was sampled with; results read the
engine's description, never its name; the sparse design stays sparse and refuses a dense twin that
will not fit in memory."""

import dataclasses
import json
import warnings

import numpy as np
import pytest

import twoway
from twoway import ModelSpec, preset, simulate
from twoway.app.cli import main
from twoway.engines.description import LAPLACE, NUTS, EngineDescription, description_from_info
from twoway.engines.choose import choose
from twoway.errors import ConvergenceWarning, FitError, ModelError
from twoway.fit import Fit
from twoway.likelihood import memory
from twoway.likelihood.sparse import SparseDesign
from twoway.plan import resolve
from twoway.table.data import TwoWayData

TRUTH = {"row_effect_sd": 0.5, "col_effect_sd": 0.8, "sigma": 1.0}


def _crossed(seed=2, rows=30, cols=12):
    return simulate("crossed", rows, cols, 1, TRUTH, seed=seed, missing=0.5).data


def _nma_table(seed: int = 11):
    """Studies x treatments with known se and fixed effects: nothing left to sample (the exact engine)."""
    rng = np.random.default_rng(seed)
    N, K = 8, 5
    y = 0.7 + rng.normal(0, 1, N)[:, None] + np.array([0.0, 0.5, -0.3, 1.0, 0.2])[None, :] + rng.normal(0, 0.2, (N, K))
    return TwoWayData.from_array(y, se=rng.uniform(0.1, 0.4, (N, K)))


def _with_info(fit: Fit, **changes) -> Fit:
    """The same fit with entries of its info changed (None: removed), as an older or another engine's file."""
    tree = fit.tree.copy()
    info = json.loads(tree.attrs["twoway_info"])
    for key, value in changes.items():
        if value is None:
            info.pop(key, None)
        else:
            info[key] = value
    tree.attrs["twoway_info"] = json.dumps(info)
    return Fit(tree)


def _small_memory(monkeypatch, n_bytes=1000):
    monkeypatch.setattr(memory, "available_memory", lambda: n_bytes)


# -- 1. a fit gives back the plan it was sampled with -----------------------------------------------------
def test_a_fit_on_the_forced_sparse_path_gives_that_plan_back_also_after_loading(tmp_path):
    data = _crossed()
    assert resolve(preset("crossed"), data).path != "sparse"  # auto would not take it on this small table
    f = twoway.fit("crossed", data, engine="laplace", chains=1, draws=100, seed=3)
    assert f.info["likelihood"] == "sparse" and f.info["likelihood_path"] == "sparse"
    assert f.plan.path == "sparse" and isinstance(f.plan.design, SparseDesign)
    assert f.plan is f.plan  # resolved once per Fit
    loaded = Fit.load(f.save(tmp_path / "f.nc"))
    assert loaded.plan.path == "sparse" and loaded.plan.likelihood == "sparse"
    # an older file that did not record the option: its recorded path decides
    old = _with_info(loaded, likelihood=None, description=None)
    assert old.plan.path == "sparse"


def test_a_fit_on_the_forced_dense_path_gives_that_plan_back(tmp_path):
    f = twoway.fit(preset("common-effect"), _nma_table(), chains=2, draws=50, seed=1, likelihood="dense")
    assert f.info["method"] == "exact" and f.description.draws_independent
    assert f.info["likelihood"] == "dense" and f.plan.path == "dense"
    assert Fit.load(f.save(tmp_path / "f.nc")).plan.path == "dense"
    assert _with_info(f, likelihood=None).plan.path == "dense"  # older file: the recorded path
    auto = twoway.fit(preset("common-effect"), _nma_table(), chains=2, draws=50, seed=1)
    assert auto.plan.path != "dense" and auto.plan.path == auto.info["likelihood_path"]


# -- 2. the engine chosen in one place; the CLI names the engine that runs ---------------------------------
def test_choice_returns_the_engine_and_the_plan_it_samples(monkeypatch):
    data = _crossed()
    c = choose(preset("crossed"), data)
    assert (c.name, c.label, c.likelihood, c.named) == ("jax", "jax", "auto", False)
    c = choose(preset("crossed"), data, engine="laplace")
    assert (c.name, c.plan.path, c.likelihood) == ("laplace", "sparse", "sparse")
    with pytest.raises(FitError, match="laplace engine fits the sparse likelihood path"):
        choose(preset("crossed"), data, engine="laplace", likelihood="dense")
    with pytest.raises(FitError, match="cannot trace the sparse likelihood path"):
        choose(preset("crossed"), data, engine="jax", likelihood="sparse")
    assert choose(preset("common-effect"), _nma_table(), engine="pymc").label == "exact"  # nothing to sample
    # the memory fallback: a dense design that does not fit takes the sparse path, and laplace with it
    _small_memory(monkeypatch)
    c = choose(preset("crossed"), data)
    assert (c.name, c.plan.path, c.likelihood) == ("laplace", "sparse", "auto")


def test_cli_label_is_the_engine_used_when_the_memory_fallback_applies(tmp_path, capsys, monkeypatch):
    data = _crossed()
    rows, cols = data.row_labels, data.col_labels
    lines = ["row,col,value"] + [f"{rows[i]},{cols[j]},{float(data.values[0, i, j])!r}"
                                 for i in range(data.n_rows) for j in range(data.n_cols) if data.mask[0, i, j]]
    table = tmp_path / "t.csv"
    table.write_text("\n".join(lines) + "\n")
    _small_memory(monkeypatch)  # a dense design no longer fits: the table is planned on the sparse path
    out = tmp_path / "f.nc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = main(["fit", str(table), "--model", "crossed", "--chains", "1", "--draws", "100", "--seed", "1",
                       "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert status == 0, err
    fitted = Fit.load(out)
    assert fitted.engine == "laplace" and fitted.info["likelihood_path"] == "sparse"
    assert f"the crossed model ({fitted.engine}):" in err, err


# -- 3. results read the description, never the name ---------------------------------------------------------
def test_engines_describe_themselves_and_old_fits_get_their_methods_description():
    from twoway.engines.choose import get_engine
    from twoway.engines.exact import ExactEngine

    assert get_engine("laplace").description == LAPLACE and not LAPLACE.chains_comparable
    assert get_engine("jax").description.method == "nuts" and ExactEngine.description.draws_independent
    assert description_from_info({"method": "laplace-importance"}) == LAPLACE
    assert description_from_info({}) == NUTS
    assert EngineDescription.from_dict(LAPLACE.to_dict()) == LAPLACE


def test_summary_rules_come_from_the_description_not_the_name():
    """A made-up engine's description (no such name anywhere) changes what the summary does."""
    from twoway.runs.batch import fit_diagnostics

    base = twoway.fit(preset("common-effect"), _nma_table(), chains=2, draws=50, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = base.summary(decomposition=False)
    assert np.isfinite(plain.diagnostics["max_r_hat"]) and "independent draws" in plain.header[1]
    fake = dataclasses.replace(
        LAPLACE, method="made-up", chains_comparable=False,
        how="sampled by a made-up engine: {chains} x {draws}, {proposals} proposals")
    other = _with_info(base, engine="made-up", method="made-up", description=fake.to_dict(),
                       importance_ess=7.0, pareto_k=0.9, factorisations=10, proposals=20)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ConvergenceWarning)
        s = other.summary(decomposition=False)
    assert any("Pareto k = 0.90" in str(w.message) for w in seen)
    assert s.header[1] == "sampled by a made-up engine: 2 x 50, 20 proposals"
    assert np.isnan(s.diagnostics["max_r_hat"])  # chains not comparable: R-hat compares nothing
    assert s.diagnostics["min_ess_bulk"] == 7.0 and s.diagnostics["pareto_k"] == 0.9
    assert not any("R-hat" in w or "one chain" in w for w in s.warnings)
    # fit-many's summary.csv applies the same rules
    d = fit_diagnostics(other)
    assert np.isnan(d["max_r_hat"]) and d["min_ess_bulk"] == 7.0 and d["pareto_k"] == 0.9
    assert fit_diagnostics(base)["max_r_hat"] == pytest.approx(plain.diagnostics["max_r_hat"])


def test_the_pareto_k_warning_uses_the_threshold_the_fit_stores():
    """The summary judges Pareto k against the engine's own threshold (``pareto_k_threshold`` in the fit's
    info, as the laplace engine stores it: 0.67 for 1,000 proposals), and 0.7 when the fit has none."""
    base = twoway.fit(preset("common-effect"), _nma_table(), chains=2, draws=50, seed=1)
    desc = dataclasses.replace(LAPLACE, method="made-up", chains_comparable=False).to_dict()

    def k_notes(**info):
        fit = _with_info(base, engine="made-up", method="made-up", description=desc, importance_ess=500.0,
                         factorisations=10, proposals=1000, **info)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return [w for w in fit.summary(decomposition=False).warnings if "Pareto k" in w]

    assert any("Pareto k = 0.68 > 0.67" in w for w in k_notes(pareto_k=0.68, pareto_k_threshold=2 / 3))
    assert not k_notes(pareto_k=0.68)                          # an older file: no threshold stored, 0.7
    assert any("> 0.70" in w for w in k_notes(pareto_k=0.75))
    assert not k_notes(pareto_k=0.75, pareto_k_threshold=0.8)  # the stored threshold, not 0.7


def test_the_draw_back_follows_the_description():
    """The effects are drawn back unless the engine's description says it drew them itself."""
    from twoway.engines.exact import ExactEngine
    from twoway.fit import _make_fit

    data = _nma_table()
    plan = resolve(preset("common-effect"), data)
    raw = ExactEngine().sample(None, plan, chains=1, draws=5, tune=0, seed=1, progress=False, cores=1)
    info = {"seed": 1, "compile_seconds": 0.0, "sampling_seconds": 0.0}
    drawn = _make_fit(raw, plan, dict(info), ExactEngine.description)
    assert "col_effect" in drawn.posterior
    own = dataclasses.replace(ExactEngine.description, draws_effects=True)  # claims to draw them: none added
    assert "col_effect" not in _make_fit(raw, plan, dict(info), own).posterior


# -- 4. the sparse design stays sparse ------------------------------------------------------------------------
def test_sparse_design_is_sparse_and_refuses_a_dense_twin_that_does_not_fit(monkeypatch):
    data = _crossed()
    plan = resolve(preset("crossed"), data, likelihood="sparse")
    design = plan.design
    for name in ("E", "base_cov", "bases", "prior", "covariance", "without_effects"):
        assert not hasattr(design, name), name  # asked for by name only: design.dense()
    _small_memory(monkeypatch)
    with pytest.raises(ModelError, match=r"dense design of the 43 integrated effects of this 30 x 12 table would "
                                         r"need about .* GiB of memory; 0\.0 GiB is available\. The sparse path"):
        design.dense()
    assert design._dense is None
    monkeypatch.undo()
    dense = design.dense()
    assert dense.E.shape == (42, 43) and dense.dense() is dense
    assert design.relationship_scale("row") == dense.relationship_scale("row") == 1.0


def test_memory_guards_live_in_their_own_module():
    from twoway.likelihood import sparse

    spec, data = preset("crossed"), _crossed()
    assert memory.dense_path_bytes(spec, data) > memory.dense_design_bytes(spec, data) > 0
    assert not hasattr(sparse, "available_memory") and not hasattr(sparse, "dense_path_bytes")


def test_integrated_model_on_sampled_effects_records_its_option():
    spec = ModelSpec(effects="sample")
    data = simulate("additive", 4, 3, 1, seed=1).data
    c = choose(spec, data, likelihood="dense")
    assert c.plan.path == "dense" and c.plan.likelihood == "dense"
