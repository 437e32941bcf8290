"""Tests of simulation-based calibration (src/twoway/runs/sbc.py) and ``twoway sbc``.

The statistical tests are seeded. A calibrated setup passes the uniformity
tests with probability at least 1 - alpha = 0.99 (family-wise over the
parameters, Bonferroni; the rank tests are exact), so a correct
model fails ``test_additive_is_calibrated`` at most 1% of the time for a
fresh seed; with the fixed seed the outcome is reproducible. The power test
ranks the same draws against true values shifted by one posterior standard
deviation, which any sound test must reject.

Cost: one SBC run of ``additive`` (36 fits), started as ``twoway sbc`` in a
subprocess, killed, and resumed in this process (one compile in each), shared
by the tests through a module-scoped fixture; and the ``crossed`` run when
that preset exists.
"""

from __future__ import annotations

import importlib
import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from processes import kill_after_results

import twoway
from twoway.app.cli import main
from twoway.errors import FitError
from twoway.runs.sbc import (SBCResult, default_bins, load_sbc, rank_statistics, sbc, sbc_spec,
                        uniformity_pvalues)

ALPHA = 0.01  # family-wise false-alarm rate of every pass/fail assertion below
SETTINGS = dict(chains=2, draws=300, tune=300)
N_SIMS = 36
SEED = 20260126


@dataclass
class KilledRun:
    """What happened to the shared SBC folder: a killed run, then a resumed one."""

    out: Path
    result: SBCResult
    n_done: int  # replications finished when the first run was killed
    returncode: int  # of the killed run
    before: dict[str, tuple[bytes, int]]  # file name -> (contents, mtime) after the kill
    fitted: list[int]  # replications the resumed run fitted itself


@pytest.fixture(scope="module")
def additive_run(tmp_path_factory) -> KilledRun:
    """SBC of ``additive`` on 4 x 5 tables, killed once and resumed (one compile per process).

    ``twoway sbc`` runs in a subprocess until at least 2 replications are on
    disk and is then killed with SIGKILL; :func:`sbc` is called in this process
    with the same folder and settings and completes the N_SIMS replications.
    Replication i depends only on (seed, i), so the result is the same as that
    of one uninterrupted run.
    """
    out = tmp_path_factory.mktemp("sbc") / "additive"
    argv = [sys.executable, "-m", "twoway.app.cli", "sbc", "--rows", "4", "--cols", "5", "--sims", str(N_SIMS),
            "--seed", str(SEED), "--out", str(out)] + [f"--{k}={v}" for k, v in SETTINGS.items()]
    returncode = kill_after_results(argv, out, "sim_*.json", timeout=240, poll=0.02)
    files = sorted(out.glob("sim_*.json"))
    before = {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}
    fitted: list[int] = []
    result = sbc("additive", 4, 5, N_SIMS, seed=SEED, out=out, progress=False, on_replication=fitted.append,
                 **SETTINGS)
    return KilledRun(out=out, result=result, n_done=len(files), returncode=returncode, before=before,
                     fitted=fitted)


@pytest.fixture
def no_compile(monkeypatch):
    """Fail the test if anything compiles a model (a resumed run must not need to)."""
    fit_module = importlib.import_module("twoway.fit")  # the package attribute twoway.fit is the function

    def refuse(*args, **kwargs):
        raise AssertionError("a model was compiled")

    monkeypatch.setattr(fit_module, "compile_model", refuse)
    monkeypatch.setattr(importlib.import_module("twoway.runs.sbc"), "compile_model", refuse)  # sbc's own name


# ---------------------------------------------------------------------------
# pure statistics
# ---------------------------------------------------------------------------


def test_rank_statistics_counts_draws_below_truth():
    draws = np.arange(10, dtype=float).reshape(1, 10, 1) * np.ones((2, 1, 3))
    truth = np.array([[-1.0, 4.5, 20.0], [0.5, 9.0, 3.0]])
    assert rank_statistics(draws, truth).tolist() == [[0, 5, 10], [1, 9, 3]]


def test_uniformity_test_accepts_uniform_and_rejects_piled_up_ranks():
    n_draws = 99
    uniform = pd.DataFrame({"a": np.arange(100) % 100, "b": (np.arange(100) * 37) % 100})
    p = uniformity_pvalues(uniform, n_draws, 10)
    assert (p > 0.99).all()
    piled = pd.DataFrame({"a": np.zeros(100, dtype=int), "b": np.full(100, n_draws)})
    assert (uniformity_pvalues(piled, n_draws, 10) < 1e-20).all()
    assert default_bins(36) == 7 and default_bins(1000) == 10 and default_bins(4) == 2


def test_bins_cover_unequal_rank_ranges():
    # 101 rank values in 10 bins: expected counts follow each bin's width, so exact uniformity gives p = 1
    ranks = pd.DataFrame({"a": np.arange(101)})
    assert uniformity_pvalues(ranks, 100, 10)["a"] == pytest.approx(1.0)


def test_sbc_spec_fixes_every_prior():
    spec = sbc_spec("additive")
    assert set(spec.prior_overrides) == set(spec.parameter_names())
    assert str(spec.prior_overrides["row_effect_sd"]) == "halfnormal(sigma=1)"
    assert str(spec.prior_overrides["intercept"]) == "normal(mu=0, sigma=2.5)"


# ---------------------------------------------------------------------------
# calibration and power
# ---------------------------------------------------------------------------


def test_additive_is_calibrated(additive_run):
    """SBC of ``additive`` on 4 x 5 tables passes at family-wise alpha = 0.01 (Bonferroni)."""
    result = additive_run.result
    assert isinstance(result, SBCResult)
    assert result.n_sims == N_SIMS and result.n_draws == 100
    assert result.ranks.shape == (N_SIMS, len(result.parameters))
    assert result.ranks.index.tolist() == list(range(N_SIMS))
    assert ((result.ranks >= 0) & (result.ranks <= result.n_draws)).all().all()
    for name in ("intercept", "row_effect[row1]", "col_effect[col5]", "row_sd[row4]", "col_effect_sd",
                 "row_log_sd_scale"):
        assert name in result.parameters
    assert not any(p.startswith(("row_mean", "col_mean")) for p in result.parameters)
    assert result.threshold(ALPHA) == pytest.approx(ALPHA / len(result.parameters))
    assert result.passes(ALPHA), result.format(ALPHA)
    assert "PASS" in result.format(ALPHA)


def test_shifted_truth_is_rejected(additive_run):
    """Power: ranks against true values moved up by one posterior sd must fail the same test."""
    result = additive_run.result
    shifted = result.truth.to_numpy() + result.draws.std(axis=1)
    wrong = result.with_truth(shifted)
    assert not wrong.passes(ALPHA)
    assert len(wrong.failing(ALPHA)) >= len(result.parameters) // 2, wrong.format(ALPHA)
    assert "FAIL" in wrong.format(ALPHA)
    # the shifted truth sits above most draws, so its ranks pile up high
    assert wrong.ranks.to_numpy().mean() > result.ranks.to_numpy().mean()


@pytest.mark.skipif("crossed" not in twoway.PRESETS, reason="the 'crossed' preset does not exist yet")
def test_crossed_is_calibrated(tmp_path):
    """SBC of ``crossed`` on 4 x 5 tables passes at family-wise alpha = 0.01 (Bonferroni)."""
    result = sbc("crossed", 4, 5, N_SIMS, seed=SEED, out=tmp_path / "crossed", progress=False, **SETTINGS)
    assert "sigma" in result.parameters and "row_effect[row1]" in result.parameters
    assert result.passes(ALPHA), result.format(ALPHA)


@pytest.mark.slow  # Kronecker calibration in the default tier: test_calibration.py (fa:1 x cs)
def test_kronecker_is_calibrated_with_its_structure_priors_fixed(tmp_path):
    """SBC of a Kronecker model (ar1 rows x cs columns) on 5 x 3 x 2 tables passes at family-wise
    alpha = 0.01 (Bonferroni): the structures' priors are fixed from the table's shape, so the
    simulated and the fitted prior agree (they scale with the data otherwise)."""
    spec = twoway.preset("kronecker", row_structure="ar1", col_structure="cs")
    fixed = sbc_spec(spec, 5, 3)
    assert {"row_rho", "row_sd", "col_rho"} <= set(fixed.prior_overrides)
    result = sbc(spec, 5, 3, N_SIMS, n_replicates=2, seed=SEED, out=tmp_path / "kron", progress=False, **SETTINGS)
    assert {"row_rho", "col_rho", "row_sd"} <= set(result.parameters)
    # the column factor's unit diagonal is fixed by construction: not ranked
    assert "col_cov[col1, col1]" not in result.parameters and "col_cov[col1,col1]" not in result.parameters
    assert result.passes(ALPHA), result.format(ALPHA)


# ---------------------------------------------------------------------------
# files, resuming, refusing
# ---------------------------------------------------------------------------


def test_files_are_written_and_read_back(additive_run, no_compile):
    out, result = additive_run.out, additive_run.result
    config = json.loads((out / "config.json").read_text())
    assert config["n_rows"] == 4 and config["n_cols"] == 5 and config["draws"] == 300
    assert config["model"]["priors"]["intercept"] == {"dist": "normal", "mu": 0.0, "sigma": 2.5}
    files = sorted(out.glob("sim_*.json"))
    assert [f.name for f in files] == [f"sim_{i:05d}.json" for i in range(N_SIMS)]
    assert not list(out.glob(".*tmp"))
    loaded = load_sbc(out)
    pd.testing.assert_frame_equal(loaded.ranks, result.ranks)
    again = sbc("additive", 4, 5, N_SIMS, seed=SEED, out=out, progress=False, **SETTINGS)
    assert again.reused == tuple(range(N_SIMS))
    pd.testing.assert_frame_equal(again.ranks, result.ranks)


def test_other_configuration_is_refused(additive_run, no_compile):
    out = additive_run.out
    def stamps():  # the lock file records each run's process, refused or not
        return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".twoway.lock"}

    before = stamps()
    with pytest.raises(FitError, match="another configuration .*draws"):
        sbc("additive", 4, 5, N_SIMS, seed=SEED, out=out, progress=False, chains=2, draws=200, tune=300)
    with pytest.raises(FitError, match="another configuration .*n_rows"):
        sbc("additive", 5, 5, N_SIMS, seed=SEED, out=out, progress=False, **SETTINGS)
    assert stamps() == before


def test_bad_options_are_refused(tmp_path, no_compile):
    with pytest.raises(FitError, match="'n_sims' option"):
        sbc("additive", 4, 5, 1, out=tmp_path / "x")
    with pytest.raises(FitError, match="'n_rows' option"):
        sbc("additive", 1, 5, 10)
    with pytest.raises(FitError, match="does not exist"):
        sbc("additive", 4, 5, 10, out=tmp_path / "missing" / "x")
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "sim_00000.json").write_text("{}")
    with pytest.raises(FitError, match="no config.json"):
        sbc("additive", 4, 5, 10, out=stray)


def test_corrupt_replication_file_is_named(additive_run, tmp_path, no_compile):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((additive_run.out / "config.json").read_bytes())
    (broken / "sim_00000.json").write_text('{"index": 0, "ran')
    with pytest.raises(FitError, match="sim_00000.json' cannot be read .*delete it"):
        sbc("additive", 4, 5, N_SIMS, seed=SEED, out=broken, progress=False, **SETTINGS)


def test_files_that_are_not_json_objects_are_named(tmp_path):
    """A configuration or replication file holding JSON that is not an object is refused with its name."""
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(FitError, match="config.json' is not a JSON object; use a new folder"):
        load_sbc(folder)
    (folder / "config.json").write_text('{"seed": 1}')
    (folder / "sim_00000.json").write_text('"ranks"')
    with pytest.raises(FitError, match="sim_00000.json' is not a JSON object; delete it"):
        load_sbc(folder)


def test_resume_after_kill_keeps_finished_replications(additive_run):
    """A run killed (SIGKILL) after 2+ replications; the rerun reuses every finished one and fits only the rest."""
    run = additive_run
    assert run.returncode == -signal.SIGKILL
    assert 2 <= run.n_done < N_SIMS, "the first run finished before it could be killed"
    names = sorted(run.before)
    assert names == [f"sim_{i:05d}.json" for i in range(run.n_done)]
    for i, name in enumerate(names):  # every file the killed run left is whole
        rec = json.loads(run.before[name][0])
        assert rec["index"] == i
        assert len(rec["ranks"]) == len(rec["parameters"]) == len(rec["truth"])
        assert np.array(rec["draws"]).shape == (rec["n_draws"], len(rec["parameters"]))
    assert run.fitted == list(range(run.n_done, N_SIMS))  # only the missing replications were fitted
    assert run.result.reused == tuple(range(run.n_done))
    assert run.result.ranks.index.tolist() == list(range(N_SIMS))
    after = {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in run.out.glob("sim_*.json")}
    assert len(after) == N_SIMS
    for name, value in run.before.items():
        assert after[name] == value, f"{name} was rewritten"
    assert not list(run.out.glob(".*.tmp"))  # a half-written file of the killed run is cleaned up


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def _cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_prints_the_table_and_verdict(additive_run, capsys, no_compile):
    out, result = additive_run.out, additive_run.result
    args = ["sbc", "--rows", 4, "--cols", 5, "--sims", N_SIMS, "--chains", 2, "--draws", 300, "--tune", 300,
            "--seed", SEED, "--out", out]
    verdict = result.passes(ALPHA)  # asserted in test_additive_is_calibrated; here: the CLI reports it
    status, text, err = _cli(capsys, *args)
    assert status == (0 if verdict else 1), err
    assert "p_value" in text and "row_sd[row1]" in text and ("PASS" if verdict else "FAIL") in text
    status, text, err = _cli(capsys, *args, "--json")
    assert status == (0 if verdict else 1), err
    payload = json.loads(text)
    assert payload["passes"] is verdict and payload["n_sims"] == N_SIMS and payload["reused"] == N_SIMS
    assert set(payload["p_values"]) == set(result.parameters)
    assert payload["threshold"] == pytest.approx(ALPHA / len(result.parameters))


def test_cli_errors_exit_2(additive_run, capsys, no_compile):
    out = additive_run.out
    status, text, err = _cli(capsys, "sbc", "--rows", 4, "--cols", 5, "--sims", N_SIMS, "--draws", 100,
                             "--out", out)
    assert status == 2 and "Traceback" not in err
    assert err.startswith("twoway: error: ") and "another configuration" in err and len(err.strip().splitlines()) == 1
    status, text, err = _cli(capsys, "sbc", "--rows", 4, "--cols", 5, "--sims", 1, "--out", out.parent / "y")
    assert status == 2 and "'n_sims'" in err
