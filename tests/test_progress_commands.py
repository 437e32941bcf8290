"""Progress, estimates and memory refusals of the commands that take time (issue 17).

* summary, predict, compare and report say on stderr, when it is not a terminal, how big their work
  is and a line per phase (``--progress``; by default only when the work is large);
* work that will not fit in memory is refused in one line before it starts, saying what it would
  need, what is available and what to do instead;
* draws that will not fit in memory are refused before anything is compiled or sampled, for every
  engine (``fit``, the library's :func:`twoway.fit`, ``sbc``, ``fit-many``).
"""

from __future__ import annotations

import importlib
import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import twoway
from twoway.app.cli import main
from twoway.app.progress import Estimate, Progress, loo_estimate, predict_estimate, report_estimate
from twoway.errors import FitError, TwowayWarning
from twoway.likelihood import memory
from twoway.results.workers import default_workers
from twoway.table.data import TwoWayData

from test_trust import one_error, run_cli  # the CLI run in-process, and its one-line errors

fit_module = importlib.import_module("twoway.fit")  # the module (``twoway.fit`` is also the function)
N, K = 8, 5


def _table() -> TwoWayData:
    rng = np.random.default_rng(17)
    y = 1.0 + rng.normal(0, 1, N)[:, None] + rng.normal(0, 1, K)[None, :] + rng.normal(0, 0.5, (N, K))
    return TwoWayData.from_array(y)


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """Two laplace fits (crossed, 1 chain x 100 draws) of one 8 x 5 table, saved: (folder, [paths])."""
    folder = tmp_path_factory.mktemp("progress")
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TwowayWarning)
        for seed in (1, 2):
            f = twoway.fit("crossed", _table(), engine="laplace", chains=1, draws=100, seed=seed)
            paths.append(f.save(folder / f"f{seed}.nc"))
    return folder, paths


run = run_cli


def _fake_report(monkeypatch, seen: dict) -> None:
    """write_report replaced by one that records its call and writes a page (the figures are not the point)."""
    import twoway.app.report as report

    def fake(fits, path, **kwargs):
        seen.update(kwargs, n_fits=len(fits))
        Path(path).write_text("<html></html>")
        return Path(path)

    monkeypatch.setattr(report, "write_report", fake)


# -- 1. the lines of each command in a log ---------------------------------------------------------------------
COMMANDS = {
    "summary": (["summary", "{f1}"], "summary of", ["summarising {f1} ...", "summarising done in"]),
    "predict": (["predict", "{f1}", "--out", "{folder}/p.csv"], "predictions of",
                ["predicting the cells of {f1} ...", "predicting done in"]),
    "compare": (["compare", "{f1}", "{f2}"], "leave-one-cell-out of",
                ["leave-one-out of 2 fits, one cell at a time ...", "leave-one-out done in"]),
    "report": (["report", "{f1}", "{f2}", "--out", "{folder}/r.html"], "report (2 fits, 200 draws in all)",
               ["writing the report to {folder}/r.html ...", "writing the report done in"]),
    "loo": (["loo", "{f1}"], "leave-one-cell-out of", ["leave-one-out of {f1}, one cell at a time ...",
                                                       "leave-one-out done in"]),
    "ppc": (["ppc", "{f1}", "--draws", "20"], "predictive checks of",
            ["predictive checks of {f1}: 20 replicated tables of 40 observed cells ...",
             "predictive checks done in"]),
}


def _fake_loo(monkeypatch) -> None:
    """results.loo.loo replaced by a fixed result (the lines are the point, not the densities)."""
    import types

    import twoway.results.loo as loo_module

    def fake(fit, *, by="cell", conditional=None, pointwise=True):
        return types.SimpleNamespace(elpd=-50.0, se=5.0, p=4.0, pareto_k=np.array([0.1] * 39 + [0.8]))

    monkeypatch.setattr(loo_module, "loo", fake)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_says_its_size_and_phases_on_stderr_when_it_is_not_a_terminal(command, fits, capsys,
                                                                                   monkeypatch):
    folder, (f1, f2) = fits
    argv, estimate, phases = COMMANDS[command]
    names = {"f1": f1, "f2": f2, "folder": folder}
    if command == "report":
        _fake_report(monkeypatch, {})
    if command == "loo":
        _fake_loo(monkeypatch)
    status, out, err = run(capsys, *[a.format(**names) for a in argv], "--progress")
    assert status == 0, err
    lines = [line for line in err.splitlines() if not line.startswith("twoway: warning:")]
    assert all(line.startswith("twoway: ") for line in lines), err
    assert "\r" not in err  # a log: lines, no bar redrawn in place
    assert f"twoway: reading {f1} (" in err and "twoway: reading done in" in err
    said = [line for line in lines if estimate in line]
    assert said and " of memory and " in said[0] and " operations (" in said[0], err
    for phase in phases:
        assert f"twoway: {phase.format(**names)}" in err, (phase, err)


@pytest.mark.parametrize("extra", [[], ["--no-progress"]])
def test_small_work_says_nothing_unless_asked(extra, fits, capsys):
    folder, (f1, _) = fits
    status, out, err = run(capsys, "summary", f1, *extra)
    assert status == 0 and err == ""
    status, out, err = run(capsys, "predict", f1, "--out", folder / "quiet.csv", *extra)
    assert status == 0 and err == ""


def test_large_work_is_said_by_default_and_never_with_no_progress(fits, capsys, monkeypatch):
    folder, (f1, f2) = fits
    monkeypatch.setattr(memory, "LARGE_FLOPS", 1.0)  # every piece of work counts as large
    status, out, err = run(capsys, "predict", f1, "--out", folder / "large.csv")
    assert status == 0, err
    lines = err.splitlines()
    assert lines[0].startswith(f"twoway: predictions of {f1} (40 cells from 100 draws): about "), err
    assert "twoway: predicting done in" in err and "reading" not in err  # a small file is read without a word
    status, out, err = run(capsys, "predict", f1, "--out", folder / "large.csv", "--no-progress")
    assert status == 0 and err == ""


def test_a_big_fit_file_is_said_as_it_is_read(fits, capsys, monkeypatch):
    import twoway.app.cli as cli

    folder, (f1, _) = fits
    monkeypatch.setattr(cli, "READ_SAY_BYTES", 100)
    status, out, err = run(capsys, "summary", f1)
    assert status == 0
    assert err.splitlines()[0].startswith(f"twoway: reading {f1} (") and "twoway: reading done in" in err
    assert "summarising" not in err  # the work itself is small


def test_the_results_loops_get_a_counter_when_they_take_one(fits, capsys, monkeypatch):
    """A results function with a ``progress`` keyword gets ``progress(done, total)``: a line per tenth in a log;
    nothing when progress is not shown."""
    folder, (f1, _) = fits
    real = fit_module.Fit.predict
    given = []

    def counting(self, *, progress=None, **kwargs):
        given.append(progress is not None)
        for k in range(1, 5):
            if progress is not None:
                progress(k, 4)
        return real(self, **kwargs)

    monkeypatch.setattr(fit_module.Fit, "predict", counting)
    status, out, err = run(capsys, "predict", f1, "--out", folder / "counted.csv", "--progress")
    assert status == 0, err
    assert [line for line in err.splitlines() if "predicting: " in line] == [
        f"twoway: predicting: {25 * k}% ({k}/4)" for k in range(1, 5)]
    status, out, err = run(capsys, "predict", f1, "--out", folder / "counted.csv")
    assert status == 0 and err == "" and given == [True, False]


def test_loo_and_ppc_print_their_results(fits, capsys, monkeypatch):
    import json

    folder, (f1, _) = fits
    _fake_loo(monkeypatch)
    status, out, err = run(capsys, "loo", f1)
    assert status == 0 and err == ""
    assert f"leave-one-cell-out of {f1} (PSIS-LOO): elpd -50.00 (se 5.00), p_loo 4.00, 40 cells" in out
    assert "1 of 40 cells have Pareto k above 0.7" in out
    status, out, err = run(capsys, "loo", f1, "--json")
    assert json.loads(out) == {"by": "cell", "elpd": -50.0, "se": 5.0, "p_loo": 4.0, "n_units": 40,
                               "pareto_k_bad": 1, "pareto_k_max": 0.8}
    status, out, err = run(capsys, "ppc", f1, "--draws", 20, "--json")
    assert status == 0
    stats = {row["statistic"]: row for row in json.loads(out)["statistics"]}
    assert len(stats) == 2 + 2 * N + 2 * K + 3 and 0 <= stats["mean"]["p_value"] <= 1
    status, out, err = run(capsys, "ppc", f1, "--draws", 20)
    assert status == 0 and "(15 of 31 statistics: the overall ones and the 10 most extreme" in out


def test_the_counter_draws_a_bar_on_a_terminal():
    stream = io.StringIO()
    tell = Progress(stream=stream, isatty=True).counter("draws")
    for k in range(5):
        tell(k, 4)
    assert stream.getvalue().count("\r") == 5 and stream.getvalue().endswith("100% (4/4)\n")  # 0% to 100%


# -- 2. refusals of work that will not fit in memory -----------------------------------------------------------
def _small_machine(monkeypatch, n_bytes: int = 1000) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda: n_bytes)
    monkeypatch.setattr(memory, "DRAWS_FLOOR", 0)


def test_predictions_that_will_not_fit_are_refused_in_one_line_before_any_work(fits, capsys, monkeypatch):
    folder, (f1, _) = fits

    def never(*args, **kwargs):
        raise AssertionError("predict ran")

    monkeypatch.setattr(fit_module.Fit, "predict", never)
    _small_machine(monkeypatch)
    out_file = folder / "refused.csv"
    status, out, err = run(capsys, "predict", f1, "--out", out_file)
    one_error(status, err, f"The predictions of {f1} (40 cells from 100 draws) would need about",
              "is available", "--at FILE", "--max-draws")
    assert not out_file.exists()


@pytest.mark.parametrize("command", ["summary", "compare", "report"])
def test_other_commands_refuse_work_that_will_not_fit(command, fits, capsys, monkeypatch):
    folder, (f1, f2) = fits
    _small_machine(monkeypatch)
    argv = {"summary": [f1], "compare": [f1, f2], "report": [f1, f2, "--out", folder / "refused.html"]}[command]
    status, out, err = run(capsys, command, *argv)
    one_error(status, err, "would need about", "1000 bytes is available")
    assert not (folder / "refused.html").exists()


@pytest.mark.parametrize("dense", [True, False])
def test_estimates_of_leave_one_out(dense, fits, monkeypatch):
    """The moments' own word on a dense covariance (``uses_dense``) decides the dense part of the estimate."""
    from twoway.app import progress as progress_module
    from twoway.results import moments

    folder, (f1, _) = fits
    f = fit_module.Fit.load(f1)
    monkeypatch.setattr(moments, "uses_dense", lambda fit, conditional: dense, raising=False)
    monkeypatch.setattr(progress_module, "distinct_draws", lambda fit: 60)
    e = loo_estimate(f, name="a")
    S, n = 100, N * K
    assert e.task == "leave-one-cell-out of a"
    assert e.size == f"{S} draws x {n} cells" + (f", a dense {n} x {n} covariance per draw" if dense else "") + \
        ", 60 distinct covariances"
    # a row of densities per distinct covariance (the effects integrated out), and a dense matrix where dense
    assert e.bytes >= memory.pointwise_bytes(60, n, copies=1) + (memory.dense_check_bytes(n) if dense else 8 * 8 * n)
    # a density per draw and cell; per distinct covariance the effects' inverse (the laws shared among the
    # worker processes), and a dense factor where dense
    h = progress_module._effects_left(f, conditional=False)
    assert 0 < h <= N + K + 1
    expected = memory.cells_check_flops(S, n) + 60 * memory.law_flops(n, h) / default_workers()
    assert e.flops == expected + (memory.dense_check_flops(60, n) if dense else 0.0)
    assert memory.dense_check_flops(60, n) == 3.0 * 60 * n**3
    assert not e.large()


def test_estimates_of_predictions_and_reports(fits):
    folder, (f1, _) = fits
    f = fit_module.Fit.load(f1)
    S, n = 100, N * K
    whole = predict_estimate(f, name="a")
    assert whole.size == f"{n} cells from {S} draws"
    assert predict_estimate(f, name="a", n_cells=4000 * n).bytes > whole.bytes
    assert predict_estimate(f, name="a", new_rows=["new"]).size == f"{n + K} cells from {S} draws"
    one = report_estimate([f], ["a"])
    both = report_estimate([f, f], ["a", "b"])
    assert both.flops > 2 * one.flops and both.bytes >= one.bytes and both.size == "2 fits, 200 draws in all"
    big = Estimate("leave-one-cell-out of x", "10 draws", 2 * memory.LARGE_BYTES, 1.0)
    assert big.large() and "about 2.0 GiB of memory and 1.0e+00 operations (under a second)" in big.line()


# -- 3. draws that will not fit: refused before compiling or sampling ------------------------------------------
def _no_compiling(monkeypatch) -> None:
    import twoway.app.cli as cli

    def never(*args, **kwargs):
        raise AssertionError("compiled")

    monkeypatch.setattr(cli, "compile_model", never)
    monkeypatch.setattr(fit_module, "compile_choice", never)


@pytest.mark.parametrize("engine", [None, "laplace", "jax"])
def test_huge_draws_are_refused_in_one_line_before_compiling(engine, fits, capsys, monkeypatch):
    folder, _ = fits
    _no_compiling(monkeypatch)
    table = folder / "t.csv"
    _table().to_csv(table)
    named = [] if engine is None else ["--engine", engine]
    status, out, err = run(capsys, "fit", table, "--model", "crossed", *named, "--draws", 20_000_000,
                           "--out", folder / "huge.nc")
    one_error(status, err, "The draws must fit in memory", "4 chains x 20000000 draws", "GiB", "is available",
              "fewer draws")
    assert not (folder / "huge.nc").exists()


@pytest.mark.parametrize("engine", ["laplace", "jax", "nutpie", "pymc"])
def test_the_library_refuses_draws_before_compiling_for_every_engine(engine, monkeypatch):
    _no_compiling(monkeypatch)
    with pytest.raises(FitError, match=r"^The draws must fit in memory; got 2 chains x 20000000 draws"):
        twoway.fit("crossed", _table(), engine=engine, chains=2, draws=20_000_000)


def test_large_draws_are_said_before_sampling(fits, capsys, monkeypatch):
    folder, _ = fits
    monkeypatch.setattr(memory, "LARGE_BYTES", 1000)

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    import twoway.app.cli as cli

    monkeypatch.setattr(cli, "compile_model", stop)
    table = folder / "t2.csv"
    _table().to_csv(table)
    with pytest.raises(Stop):
        main(["fit", str(table), "--model", "crossed", "--draws", "100", "--out", str(folder / "g.nc")])
    err = capsys.readouterr().err
    assert "twoway: the draws will hold about " in err and "4 x 100 draws x" in err and "is available" in err


def test_sbc_and_fit_many_refuse_huge_draws_before_anything_runs(fits, capsys, monkeypatch):
    folder, _ = fits
    _no_compiling(monkeypatch)
    status, out, err = run(capsys, "sbc", "--rows", 4, "--cols", 3, "--sims", 2, "--draws", 10**9,
                           "--workers", 2, "--out", folder / "sbc")
    one_error(status, err, "The draws must fit in memory", "2 fits at once x 2 chains x 1000000000 draws",
              "fewer workers")
    assert not (folder / "sbc").exists()
    table = folder / "t3.csv"
    _table().to_csv(table)
    status, out, err = run(capsys, "fit-many", table, "--draws", 10**10, "--out", folder / "many")
    one_error(status, err, "The draws must fit in memory", "for the smallest table", "fewer draws")
    assert not (folder / "many").exists()


@pytest.mark.parametrize("command", ["loo", "compare"])
def test_leave_one_out_counts_its_draws_in_a_log(command, fits, capsys):
    """The draws done are counted (a line per tenth when stderr is a log), over both fits for compare."""
    folder, (f1, f2) = fits
    argv = [command, f1] + ([f2] if command == "compare" else [])
    status, out, err = run(capsys, *argv, "--progress")
    assert status == 0, err
    counts = [line for line in err.splitlines() if line.startswith("twoway: leave-one-out: ") and "%" in line]
    assert counts and counts[-1].startswith("twoway: leave-one-out: 100%"), err
    total = 2 * 100 if command == "compare" else 100
    assert counts[-1].endswith(f"({total}/{total})"), counts


def test_predictive_checks_count_their_replicated_tables(fits):
    """``progress(done, total)`` after each chunk of replicated tables, ending at the total; the same table."""
    from twoway.results import ppc

    folder, (f1, _) = fits
    f = fit_module.Fit.load(f1)
    seen = []
    counted = ppc.predictive_checks(f, draws=60, progress=lambda d, t: seen.append((d, t)))
    plain = ppc.predictive_checks(f, draws=60)
    assert seen and seen[-1] == (60, 60) and all(t == 60 for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    pd.testing.assert_frame_equal(counted, plain)


@pytest.mark.parametrize("by", ["row", "col"])
def test_leaving_out_whole_rows_or_columns_counts_each_units_block(by, fits, monkeypatch):
    """Each law factors one block per unit: the estimate adds their work (cells per unit from the table)."""
    from twoway.app import progress as progress_module

    folder, (f1, _) = fits
    f = fit_module.Fit.load(f1)
    monkeypatch.setattr(progress_module, "distinct_draws", lambda fit: 60)
    cell = loo_estimate(f, name="a", by="cell", conditional=False)
    unit = loo_estimate(f, name="a", by=by, conditional=False)
    _, ii, jj = f.data.observed_index()
    sizes = np.bincount(ii if by == "row" else jj)
    assert sizes.size == (N if by == "row" else K)
    assert unit.flops == pytest.approx(cell.flops + 60 * memory.unit_blocks_flops(sizes) / default_workers())
    assert memory.unit_blocks_flops([25]) == memory.UNIT_BLOCK_FLOPS + 625 * memory.UNIT_BLOCK_PAIR_FLOPS
