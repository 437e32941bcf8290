"""Tests of many fits on an executor (src/twoway/batch.py), ``twoway fit-many`` and SBC through it.

Cost: one real two-worker local Dask cluster (processes, one thread each)
shared by the module; tiny tables (4 x 3) and short chains (2 x 60 draws);
one ``twoway fit-many`` subprocess killed with SIGKILL part way; two ``twoway
sbc`` subprocesses on one folder.

Every fit here, fit-many and SBC alike, uses one model: ``additive`` with the
priors SBC fixes for 4 x 3 tables (:data:`SPEC`, and the same spec as a TOML
file for the command line), so that every process compiles or loads one chain
program (in memory per process, on disk in the test session's compile cache).
That keeps the module fast, and it keeps clear of a JAX-engine problem seen
while writing it: a process that loads a *second* stored chain program from
the compile cache folder fails when running it (``JaxRuntimeError: NOT_FOUND:
Function ... not found``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from processes import kill_after_results

import twoway
from twoway.runs.batch import (BatchProgress, Outcome, fit_many, job_seed, run_jobs, safe_names)
from twoway.app.cli import main
from twoway.errors import DataError, FitError, TwowayError
from twoway.fit import Fit
from twoway.table.io.outputs import folder_lock
from twoway.runs.sbc import sbc, sbc_spec

SETTINGS = dict(chains=2, draws=60, tune=60)
#: The one model of this module: what SBC fits on 4 x 3 tables of ``additive``.
SPEC = sbc_spec("additive", 4, 3)
SEED = 20261129
N_GOOD = 4


def _settings_argv() -> list[str]:
    return [f"--{k}={v}" for k, v in SETTINGS.items()]


def _write_tables(folder: Path, n: int, *, bad: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        twoway.simulate("additive", 4, 3, seed=100 + i).data.to_csv(folder / f"trait {i}.csv")
    if bad:
        (folder / "broken.csv").write_text("row,col,value\nr1,c1,1.5\nr1,c2,oops\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    """:data:`SPEC` as a TOML model file, for the command line."""
    lines = ['preset = "additive"', "", "[priors]"]
    for name, prior in SPEC.to_dict()["priors"].items():
        fields = ", ".join(f"{k} = {json.dumps(v)}" for k, v in prior.items())
        lines.append(f"{name} = {{ {fields} }}")
    path = tmp_path_factory.mktemp("model") / "additive_fixed.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert twoway.load_model(path).to_dict() == SPEC.to_dict()
    return str(path)


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> Path:
    return _write_tables(tmp_path_factory.mktemp("tables") / "in", N_GOOD)


@pytest.fixture(scope="module")
def serial_run(tables, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "fits"
    fitted: list[str] = []
    result = fit_many(tables, SPEC, out, seed=SEED, progress=False, on_result=fitted.append, **SETTINGS)
    return out, result, fitted


@pytest.fixture(scope="module")
def cluster():
    """A real local Dask cluster: 2 worker processes, one thread each; its scheduler address."""
    import logging

    from distributed import LocalCluster

    from twoway.engines.jax.cache import ENV_VAR

    env = {ENV_VAR: os.environ[ENV_VAR], "PYTHONWARNINGS": "ignore"}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR, env=env) as lc:
        yield lc.scheduler_address


# ---------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------


def test_safe_names_are_distinct_and_file_safe():
    names = safe_names(["site A/1", "site_A_1", "Site_a_1", "..", "x" * 300, "ok-1.2"])
    assert names[:3] == ["site_A_1", "site_A_1-2", "Site_a_1-3"]
    assert names[3] == "table" and len(names[4]) == 100 and names[5] == "ok-1.2"
    assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") for n in names)


def test_job_seed_depends_on_run_seed_and_name_only():
    assert job_seed(1, "a") == job_seed(1, "a")
    seeds = {job_seed(1, "a"), job_seed(1, "b"), job_seed(2, "a"), job_seed(1, 0), job_seed(1, 1)}
    assert len(seeds) == 5 and all(0 <= s < 2**32 for s in seeds)


def _square_or_fail(x):
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x * x


def test_serial_jobs_record_failures_and_go_on(capsys):
    import io

    stream = io.StringIO()
    bar = BatchProgress(3, "things", stream=stream)
    got = list(run_jobs(_square_or_fail, [("a", (2,)), ("b", (-1,)), ("c", (3,))], progress=bar))
    assert [o.name for o in got] == ["a", "b", "c"]
    assert [o.value for o in got] == [4, None, 9]
    assert got[1] == Outcome("b", False, None, "ValueError: negative: -1", got[1].seconds)
    text = stream.getvalue()
    assert "b failed: ValueError: negative: -1" in text
    assert text.strip().splitlines()[-1].startswith("twoway: things [") and "3/3: 2 done, 1 failed, 0 running" in text
    with pytest.raises(FitError, match="distinct"):
        list(run_jobs(_square_or_fail, [("a", (1,)), ("a", (2,))]))
    with pytest.raises(FitError, match="'workers' option"):
        list(run_jobs(_square_or_fail, [("a", (1,))], workers=0))


def test_serial_run_does_not_import_dask():
    code = ("import sys, twoway.runs.batch as b\n"
            "list(b.run_jobs(abs, [('a', (-1,))]))\n"
            "print('distributed' in sys.modules, 'dask' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


# ---------------------------------------------------------------------------
# fit-many: serial, failures, the folder
# ---------------------------------------------------------------------------


def test_fit_many_writes_one_fit_per_table_and_a_summary(serial_run, tables):
    out, result, fitted = serial_run
    names = ["broken"] + [f"trait_{i}" for i in range(N_GOOD)]
    assert sorted(fitted) == names
    summary = pd.read_csv(out / "summary.csv", index_col="name", keep_default_na=False)
    assert sorted(summary.index) == names
    bad = summary.loc["broken"]
    assert bad["status"] == "failed" and "numeric" in bad["error"] and "oops" in bad["error"]
    assert bad["fit_file"] == ""
    good = summary.drop(index="broken")
    assert (good["status"] == "ok").all() and (good["error"] == "").all()
    assert result.failed == ["broken"]
    for name in good.index:
        fit = Fit.load(out / f"{name}.nc")
        post = fit.posterior
        assert post.sizes["chain"] == 2 and post.sizes["draw"] == 60
        assert fit.info["seed"] == job_seed(SEED, name) == int(good.loc[name, "seed"])
        # the summary's numbers are the fit's
        assert float(good.loc[name, "intercept_mean"]) == pytest.approx(float(post["intercept"].mean()), rel=1e-12)
        assert float(good.loc[name, "sigma_mean" if "sigma" in post else "row_effect_sd_mean"]) > 0
        assert int(good.loc[name, "n_rows"]) == 4 and int(good.loc[name, "n_cols"]) == 3
        assert float(good.loc[name, "seconds"]) > 0 and np.isfinite(float(good.loc[name, "max_r_hat"]))
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "fit-many" and config["draws"] == 60 and config["seed"] == SEED


def test_fit_many_rerun_reuses_finished_tables(serial_run, tables, monkeypatch):
    out, result, _ = serial_run
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*.nc")}
    fitted: list[str] = []
    again = fit_many(tables, SPEC, out, seed=SEED, progress=False, on_result=fitted.append, **SETTINGS)
    assert fitted == ["broken"]  # a failed table is tried again; the fitted ones are kept
    assert sorted(again.reused) == [f"trait_{i}" for i in range(N_GOOD)]
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*.nc")} == before
    pd.testing.assert_frame_equal(again.summary.drop(columns="seconds"), result.summary.drop(columns="seconds"))


def test_fit_many_refuses_other_settings_changed_tables_and_foreign_records(serial_run, tables, tmp_path):
    out, _, _ = serial_run
    with pytest.raises(FitError, match="another configuration .*draws"):
        fit_many(tables, SPEC, out, seed=SEED, progress=False, chains=2, draws=61, tune=60)
    with pytest.raises(FitError, match="another configuration .*seed"):
        fit_many(tables, SPEC, out, seed=SEED + 1, progress=False, **SETTINGS)
    # a configuration with no result beside it (a run stopped before its first result) binds nothing
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.json").write_text(json.dumps({"kind": "fit-many", "draws": 1}))
    only_broken = [tables / "broken.csv"]
    done = fit_many(only_broken, SPEC, fresh, seed=SEED, progress=False, **SETTINGS)
    assert done.failed == ["broken"] and json.loads((fresh / "config.json").read_text())["draws"] == 60
    with pytest.raises(FitError, match="another configuration .*draws"):  # now it holds a result
        fit_many(only_broken, SPEC, fresh, seed=SEED, progress=False, chains=2, draws=61, tune=60)
    before = sorted(p.name for p in tables.iterdir())
    with pytest.raises(DataError, match="outside the output folder"):  # its own summary.csv is no table
        fit_many(tables, SPEC, tables, seed=SEED, progress=False, **SETTINGS)
    assert sorted(p.name for p in tables.iterdir()) == before
    # a copy of the folder whose table and record were changed
    import shutil

    copy_in, copy_out = tmp_path / "in", tmp_path / "fits"
    shutil.copytree(tables, copy_in)
    shutil.copytree(out, copy_out)
    (copy_in / "trait 0.csv").write_text((copy_in / "trait 0.csv").read_text().replace(",", ", ", 3))
    with pytest.raises(FitError, match="trait 0.csv' changed since its fit"):
        fit_many(copy_in, SPEC, copy_out, seed=SEED, progress=False, **SETTINGS)
    shutil.copy(tables / "trait 0.csv", copy_in / "trait 0.csv")
    record = copy_out / "jobs" / "trait_1.json"
    rec = json.loads(record.read_text())
    record.write_text(json.dumps({**rec, "config_digest": "0" * 16}))
    with pytest.raises(FitError, match="trait_1.json' was made with another configuration"):
        fit_many(copy_in, SPEC, copy_out, seed=SEED, progress=False, **SETTINGS)


def test_fit_many_folder_is_locked(serial_run, tables):
    out, _, _ = serial_run
    with folder_lock(out):
        with pytest.raises(TwowayError, match="in use by another twoway run"):
            fit_many(tables, SPEC, out, seed=SEED, progress=False, **SETTINGS)


def test_cli_fit_many_by_column_and_errors(tmp_path, capsys, model_file):
    frames = []
    for i, site in enumerate(["site A/1", "site B"]):
        df = twoway.simulate("additive", 4, 3, seed=200 + i).data.to_long()
        frames.append(df.assign(site=site))
    long = tmp_path / "long.csv"
    pd.concat(frames).to_csv(long, index=False)
    out = tmp_path / "by"
    status = main(["fit-many", str(long), "--by", "site", "--out", str(out), "--seed", "3", "--no-progress",
                   "--model", model_file, *_settings_argv()])
    text, err = capsys.readouterr()
    assert status == 0, err
    assert "fitted 2 of 2 tables" in text
    assert sorted(p.name for p in out.glob("*.nc")) == ["site_A_1.nc", "site_B.nc"]
    summary = pd.read_csv(out / "summary.csv", index_col="name")
    assert summary.loc["site_B", "source"] == f"{long}[site=site B]"
    assert summary.loc["site_A_1", "seed"] == job_seed(3, "site_A_1")
    # the group's table is the one that was fitted
    fit = Fit.load(out / "site_B.nc")
    assert np.allclose(np.sort(fit.data.observed_values()), np.sort(frames[1]["value"].to_numpy()))
    status = main(["fit-many", str(long), "--by", "plot", "--out", str(tmp_path / "x"), *_settings_argv()])
    _, err = capsys.readouterr()
    assert status == 2 and err.startswith("twoway: error: The 'by' column 'plot' must be a column")
    status = main(["fit-many", str(tmp_path / "none*.csv"), "--out", str(tmp_path / "y")])
    _, err = capsys.readouterr()
    assert status == 2 and "matches no file" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------
# the same numbers on two Dask workers
# ---------------------------------------------------------------------------


def _posterior_arrays(path: Path) -> dict[str, np.ndarray]:
    post = Fit.load(path).posterior
    return {k: post[k].values for k in post.data_vars}


def test_dask_fit_many_gives_the_serial_numbers(serial_run, tables, cluster, tmp_path):
    out_serial, serial, _ = serial_run
    out = tmp_path / "dask"
    result = fit_many(tables, SPEC, out, seed=SEED, progress=False, scheduler=cluster, **SETTINGS)
    assert result.failed == ["broken"]
    for name in serial.fit_files:
        a, b = _posterior_arrays(out_serial / f"{name}.nc"), _posterior_arrays(out / f"{name}.nc")
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")
    cols = [c for c in serial.summary.columns if c.endswith(("_mean", "_sd"))] + ["seed", "status", "error"]
    pd.testing.assert_frame_equal(result.summary[cols], serial.summary[cols])


def test_dask_sbc_gives_the_serial_numbers(cluster, tmp_path, monkeypatch):
    import importlib

    import twoway.runs.sbc as sbc_module

    fit_module = importlib.import_module("twoway.fit")
    compiles = []
    real = fit_module.compile_model

    def counting(*args, **kwargs):
        compiles.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "compile_model", counting)
    monkeypatch.setattr(sbc_module, "compile_model", counting)  # sbc holds its own name of it
    monkeypatch.setattr(sbc_module, "_COMPILED", {})
    opts = dict(seed=SEED, progress=False, n_thin=20, **SETTINGS)
    serial = sbc("additive", 4, 3, 4, out=tmp_path / "serial", **opts)
    assert len(compiles) == 1  # one compile for the 4 replications of this process
    fitted: list[int] = []
    dask = sbc("additive", 4, 3, 4, out=tmp_path / "dask", scheduler=cluster, on_replication=fitted.append, **opts)
    assert sorted(fitted) == [0, 1, 2, 3]
    np.testing.assert_array_equal(dask.draws, serial.draws)
    pd.testing.assert_frame_equal(dask.ranks, serial.ranks)
    pd.testing.assert_frame_equal(dask.truth, serial.truth)
    for i in range(4):  # each stored replication carries the folder's configuration digest
        rec = json.loads((tmp_path / "dask" / f"sim_{i:05d}.json").read_text())
        assert rec["config_digest"] == json.loads((tmp_path / "serial" / f"sim_{i:05d}.json").read_text())[
            "config_digest"]


# ---------------------------------------------------------------------------
# killed part way, resumed
# ---------------------------------------------------------------------------


def test_killed_fit_many_resumes_without_redoing_finished_tables(tmp_path, model_file):
    n_tables = 10
    tables = _write_tables(tmp_path / "in", n_tables, bad=False)
    out = tmp_path / "fits"
    jobs = out / "jobs"
    argv = [sys.executable, "-m", "twoway", "fit-many", str(tables), "--out", str(out), "--seed", str(SEED),
            "--no-progress", "--model", model_file, *_settings_argv()]
    returncode = kill_after_results(argv, jobs, "*.json", timeout=180, poll=0.01)
    assert returncode == -signal.SIGKILL
    done = sorted(p.stem for p in jobs.glob("*.json"))
    assert 2 <= len(done) < n_tables, "fit-many finished before it could be killed"
    kept = [out / f"{n}.nc" for n in done] + [jobs / f"{n}.json" for n in done]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in kept}
    fitted: list[str] = []
    result = fit_many(tables, SPEC, out, seed=SEED, progress=False, on_result=fitted.append, **SETTINGS)
    names = [f"trait_{i}" for i in range(n_tables)]
    assert sorted(fitted + done) == names  # each table fitted exactly once over the two runs
    assert sorted(result.reused) == done
    for p, value in before.items():
        assert (p.read_bytes(), p.stat().st_mtime_ns) == value, f"{p.name} was rewritten"
    assert (result.summary["status"] == "ok").all() and sorted(result.summary.index) == names
    assert not list(out.glob(".*.tmp")) and not list(jobs.glob(".*.tmp"))
    # the resumed run's tables are the ones an uninterrupted run gives (seeds from the table names)
    for name in fitted[:1]:
        assert Fit.load(out / f"{name}.nc").info["seed"] == job_seed(SEED, name)


# ---------------------------------------------------------------------------
# the SBC folder lock, two real processes
# ---------------------------------------------------------------------------


def _sbc_argv(out: Path, draws: int) -> list[str]:
    return [sys.executable, "-m", "twoway", "sbc", "--rows", "4", "--cols", "3", "--sims", "200",
            "--chains", "2", "--draws", str(draws), "--tune", "60", "--seed", "1", "--out", str(out)]


def test_second_sbc_run_on_a_folder_fails_at_once(tmp_path):
    """While one ``twoway sbc`` holds a folder, a second one fails at once, with other or the same settings."""
    out = tmp_path / "sbc"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.Popen(_sbc_argv(out, 60), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        lock = out / ".twoway.lock"
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip() == f"pid {first.pid}"):
            assert first.poll() is None, "the first SBC run ended early"
            assert time.monotonic() < deadline, "the first SBC run did not take the folder in 120 s"
            time.sleep(0.01)
        for draws in (70, 60):  # other settings, then the same ones
            second = subprocess.run(_sbc_argv(out, draws), capture_output=True, text=True, env=env, timeout=120)
            assert second.returncode == 2
            assert second.stderr.strip().splitlines()[-1].startswith("twoway: error: The SBC folder")
            assert f"in use by another twoway run (pid {first.pid})" in second.stderr
        assert first.poll() is None  # the first run goes on
        config = json.loads((out / "config.json").read_text())
        assert config["draws"] == 60  # the second runs wrote nothing
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_cli_workers_start_a_local_cluster(tables, serial_run, tmp_path, capsys, model_file):
    out_serial, serial, _ = serial_run
    out = tmp_path / "w2"
    status = main(["fit-many", str(tables), "--out", str(out), "--seed", str(SEED), "--workers", "2",
                   "--model", model_file, *_settings_argv()])
    _, err = capsys.readouterr()
    assert status == 1 and "broken failed" in err and "5/5: 4 done, 1 failed, 0 running" in err
    for name in serial.fit_files:
        a, b = _posterior_arrays(out_serial / f"{name}.nc"), _posterior_arrays(out / f"{name}.nc")
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_the_progress_line_says_how_long_is_left(monkeypatch):
    """After a job, the pace so far times the jobs left; nothing before the first or after the last."""
    import io

    from twoway.runs import batch

    clock = iter([0.0, 10.0, 20.0, 30.0, 40.0])
    monkeypatch.setattr(batch.time, "perf_counter", lambda: next(clock))
    stream = io.StringIO()
    bar = BatchProgress(4, "fits", stream=stream)              # started at 0 s
    assert "left" not in bar._text(1)                           # 10 s: nothing done yet
    bar.done = 1
    assert bar._text(1).endswith("20 s, about 60 s left")       # 20 s a fit, 3 to go
    bar.done = 3
    assert bar._text(1).endswith("30 s, about 10 s left")
    bar.done = 4
    assert bar._text(0).endswith("40 s")
