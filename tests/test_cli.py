"""Tests of the ``twoway`` command line (src/twoway/cli.py).

Bad input must end in one line ``twoway: error: ...`` on stderr and exit
status 2, with no traceback, and must be refused before anything is compiled
or sampled (the ``no_sampling`` fixture makes any attempt to sample fail the
test). Only two real fits run in this file: one ``twoway fit`` on a small
simulated table (shared by the ``fit``/``summary`` tests through a
module-scoped fixture) and one ``twoway demo``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twoway.app.cli import main, parse_args
from twoway.table.data import TwoWayData
from twoway.errors import DataError
from twoway.fit import Fit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STAT_KEYS = {"mean", "sd", "hdi_3%", "hdi_97%", "ess_bulk", "ess_tail", "r_hat"}
DIAGNOSTIC_KEYS = {"divergences", "max_r_hat", "min_ess_bulk", "sampling_seconds", "total_seconds"}

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``twoway ARGV`` in this process; return (status, stdout, stderr)."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_error(status: int, out: str, err: str, *needles: str) -> str:
    """Exit 2, stderr exactly one ``twoway: error:`` line holding every needle, no traceback."""
    assert "Traceback" not in err and "Traceback" not in out, err
    assert status == 2, (status, out, err)
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    line = lines[0]
    assert line.startswith("twoway: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def cli_command() -> list[str]:
    """The installed ``twoway`` script next to this Python, else ``python -m twoway.app.cli``."""
    script = Path(sys.executable).parent / "twoway"
    if script.is_file():
        return [str(script)]
    found = shutil.which("twoway")
    if found and Path(found).resolve().parent == Path(sys.executable).resolve().parent:
        return [found]
    return [sys.executable, "-m", "twoway.app.cli"]


def run_subprocess(*argv, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command() + [str(a) for a in argv], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def write(tmp_path: Path, content: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def csv_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").strip("\n").split("\n")


@pytest.fixture(scope="module", autouse=True)
def jax_cache_folder(tmp_path_factory):
    """The jax engine's compilation cache in a temporary folder, not the user's (TWOWAY_CACHE_DIR)."""
    folder = tmp_path_factory.mktemp("jax-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TWOWAY_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture
def no_sampling(monkeypatch):
    """Make compiling or sampling a model fail the test: bad input must be refused before."""
    import importlib

    import nutpie
    import pymc

    def refuse(*args, **kwargs):
        pytest.fail("the command compiled or sampled a model; bad input must be refused before that")

    for module in ("twoway.fit", "twoway.app.cli"):  # every engine; the command line holds its own name
        monkeypatch.setattr(importlib.import_module(module), "compile_model", refuse)
    monkeypatch.setattr(nutpie, "compile_pymc_model", refuse)
    monkeypatch.setattr(nutpie, "sample", refuse)
    monkeypatch.setattr(pymc, "sample", refuse)


# A 3 x 2 table with its own column names and an se column.
HEADER = "treatment,group,y,err\n"
GOOD_LINES = [
    "T1,G1,1.0,0.1",
    "T1,G2,2.0,0.1",
    "T2,G1,3.0,0.1",
    "T2,G2,4.0,0.1",
    "T3,G1,5.0,0.1",
    "T3,G2,6.0,0.1",
]
COLS = ["--row", "treatment", "--col", "group", "--value", "y"]
COLS_SE = COLS + ["--se", "err"]


def table(*lines: str, header: str = HEADER) -> str:
    return header + "".join(line + "\n" for line in lines)


def good_with(replace: dict[int, str] | None = None, extra: tuple[str, ...] = ()) -> str:
    """GOOD_LINES with some lines replaced (by index) and lines appended."""
    lines = list(GOOD_LINES)
    for k, line in (replace or {}).items():
        lines[k] = line
    return table(*lines, *extra)


# ---------------------------------------------------------------------------
# 1. bad data, through main()
# ---------------------------------------------------------------------------

# id -> (file content, column options, words the message must hold)
BAD_DATA = {
    "missing-value-column": (good_with(), ["--row", "treatment", "--col", "group", "--value", "yield"],
                             ["'yield'", "value", "'treatment', 'group', 'y', 'err'"]),
    "misspelled-row-column": (good_with(), ["--row", "treatmnt", "--col", "group", "--value", "y"],
                              ["'treatmnt'", "did you mean 'treatment'"]),
    "misspelled-se-column": (good_with(), COLS + ["--se", "errr"], ["'errr'", "se", "did you mean 'err'"]),
    "missing-replicate-column": (good_with(), COLS + ["--replicate", "batch"], ["'batch'", "replicate"]),
    "default-columns-absent": (good_with(), [], ["'row'", "'treatment', 'group', 'y', 'err'"]),
    "non-numeric-value": (good_with({2: "T2,G1,abc,0.1"}), COLS, ["'y'", "numeric", "'abc'", "line 4",
                                                                  "treatment='T2'", "group='G1'"]),
    "non-numeric-se": (good_with({1: "T1,G2,2.0,small"}), COLS_SE, ["'err'", "numeric", "'small'"]),
    "decimal-comma": (good_with({0: 'T1,G1,"1,5",0.1'}), COLS, ["'y'", "numeric", "'1,5'"]),
    "infinite-value": (good_with({3: "T2,G2,inf,0.1"}), COLS, ["'y'", "finite", "inf", "line 5"]),
    "negative-infinite-value": (good_with({3: "T2,G2,-Infinity,0.1"}), COLS, ["'y'", "finite", "-inf"]),
    "overflowing-value": (good_with({3: "T2,G2,1e400,0.1"}), COLS, ["'y'", "finite", "inf"]),
    "infinite-se": (good_with({3: "T2,G2,4.0,inf"}), COLS_SE, ["'err'", "finite", "inf"]),
    "negative-se": (good_with({4: "T3,G1,5.0,-0.5"}), COLS_SE, ["'err'", "positive", "-0.5", "line 6",
                                                                "treatment='T3'"]),
    "zero-se": (good_with({4: "T3,G1,5.0,0"}), COLS_SE, ["'err'", "positive", "0.0"]),
    # an empty (or NaN) se with a value is no longer an error: no known error for that cell (test_edge_cases.py)
    "duplicate-cell": (good_with(extra=("T1,G1,9.0,0.1",)), COLS,
                       ["(row, col)", "treatment='T1'", "group='G1'", "lines 2 and 8", "--replicate"]),
    "duplicate-cell-in-replicate": (
        table("a,T1,G1,1", "a,T1,G2,2", "a,T2,G1,3", "a,T2,G2,4", "b,T1,G1,5", "b,T1,G1,6",
              header="batch,treatment,group,y\n"),
        COLS + ["--replicate", "batch"], ["(replicate, row, col)", "batch='b'", "treatment='T1'"]),
    "row-with-no-observed-cell": (good_with(extra=("T4,G1,,", "T4,G2,NA,")), COLS,
                                  ["'T4'", "'treatment'", "has none"]),
    "column-with-no-observed-cell": (good_with(extra=("T1,G3,,", "T2,G3,,", "T3,G3,,")), COLS,
                                     ["'G3'", "'group'", "has none"]),
    "one-row": (table("T1,G1,1.0,0.1", "T1,G2,2.0,0.1"), COLS, ["at least 2 rows", "'treatment'", "'T1'"]),
    "one-column": (table("T1,G1,1.0,0.1", "T2,G1,2.0,0.1"), COLS,
                   ["at least 2 columns", "'group'", "'G1'"]),
    "empty-label": (good_with({2: ",G1,3.0,0.1"}), COLS, ["'treatment'", "label", "line 4"]),
    "same-column-twice": (good_with(), ["--row", "treatment", "--col", "group", "--value", "treatment"],
                          ["row", "value", "'treatment'"]),
    "column-twice-in-header": (table("T1,G1,1,1", header="treatment,group,y,y\n"), COLS,
                               ["'y'", "appears 2 times"]),
    "more-fields-than-header": (good_with({1: "T1,G2,2.0,0.1,oops"}), COLS,
                                ["data.csv", "line 3", "5 fields", "header has 4"]),
    # semicolons (with decimal commas) and tabs are read: test_outputs.py; other separators are not
    "bar-separated": (table("T1|G1|1", "T2|G2|2", header="treatment|group|y\n"), COLS,
                      ["'treatment'", "separated by commas"]),
    "unclosed-quote": (good_with({0: 'T1,G1,"1.0,0.1'}), COLS, ["data.csv", "not valid CSV"]),
    "empty-file": ("", COLS, ["data.csv", "empty"]),
    "blank-file": ("\n  \n\n", COLS, ["data.csv", "empty"]),
    "header-only": (HEADER, COLS, ["data.csv", "no data rows"]),
    "zip-file": (b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00" + bytes(range(256)), COLS,
                 ["data.csv", "not a CSV text file", "zip"]),
    "png-file": (PNG_SIGNATURE + b"\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256)), COLS,
                 ["data.csv", "not a CSV text file"]),
    "png-signature-only": (PNG_SIGNATURE, COLS, ["data.csv", "not a CSV text file", "UTF-8"]),
    "utf16-text": (table(*GOOD_LINES).encode("utf-16"), COLS, ["data.csv", "not a CSV text file"]),
    "latin1-text": (table("T\xe91,G1,1,1", *GOOD_LINES[1:]).encode("latin-1"), COLS,
                    ["data.csv", "UTF-8"]),
}


@pytest.mark.parametrize("case", list(BAD_DATA), ids=list(BAD_DATA))
def test_fit_refuses_bad_data(case, tmp_path, capsys, no_sampling):
    content, options, needles = BAD_DATA[case]
    path = write(tmp_path, content)
    out_file = tmp_path / "fit.nc"
    status, out, err = run_cli(capsys, "fit", path, *options, "--out", out_file, "--seed", 1)
    assert_one_error(status, out, err, *needles)
    assert out == ""
    assert not out_file.exists()


def test_fit_refuses_a_file_that_does_not_exist(tmp_path, capsys, no_sampling):
    status, out, err = run_cli(capsys, "fit", tmp_path / "nope.csv", *COLS, "--out", tmp_path / "f.nc")
    assert_one_error(status, out, err, "nope.csv", "does not exist")


def test_fit_refuses_a_directory(tmp_path, capsys, no_sampling):
    (tmp_path / "folder.csv").mkdir()
    status, out, err = run_cli(capsys, "fit", tmp_path / "folder.csv", *COLS, "--out", tmp_path / "f.nc")
    assert_one_error(status, out, err, "folder.csv", "directory")


def test_good_table_is_accepted_by_the_same_checks(tmp_path):
    """The table the bad cases start from is itself fine (so each case fails for its own reason)."""
    path = write(tmp_path, good_with())
    data = TwoWayData.from_csv(path, row="treatment", col="group", value="y", se="err")
    assert (data.n_rows, data.n_cols, data.n_observed) == (3, 2, 6)
    assert data.row_labels == ("T1", "T2", "T3") and data.col_labels == ("G1", "G2")


def test_fit_refuses_an_output_folder_that_does_not_exist(tmp_path, capsys, no_sampling):
    path = write(tmp_path, good_with())
    status, out, err = run_cli(capsys, "fit", path, *COLS, "--out", tmp_path / "nowhere" / "f.nc")
    assert_one_error(status, out, err, "nowhere", "does not exist")


@pytest.mark.parametrize(
    "option, value, needles",
    [("--chains", "0", ["chains", ">= 1", "0"]),
     ("--draws", "0", ["draws", ">= 1"]),
     ("--tune", "-1", ["tune", "-1"]),
     ("--seed", "-5", ["seed", "-5"])],
)
def test_fit_refuses_bad_sampling_options(option, value, needles, tmp_path, capsys, no_sampling):
    path = write(tmp_path, good_with())
    status, out, err = run_cli(capsys, "fit", path, *COLS, "--out", tmp_path / "f.nc", option, value)
    assert "Traceback" not in err
    assert status == 2
    # The table is small enough to be over-parameterised, so a warning line may come first;
    # the error is one line, the last.
    errors = [line for line in err.splitlines() if line.startswith("twoway: error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0]
    for needle in needles:
        assert needle in errors[0]


@pytest.mark.parametrize("argv", [[], ["fit"], ["fit", "x.csv"], ["fit", "x.csv", "--out", "f.nc", "--chains", "two"],
                                  ["fit", "x.csv", "--out", "f.nc", "--backend", "stan"], ["frobnicate"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert "usage: twoway" in err and "error:" in err
    assert "Traceback" not in err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert re.fullmatch(r"twoway \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


# ---------------------------------------------------------------------------
# 2. the same through a real process
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["non-numeric-value", "duplicate-cell", "zip-file"])
def test_subprocess_bad_data_exits_2_without_traceback(case, tmp_path):
    content, options, needles = BAD_DATA[case]
    path = write(tmp_path, content)
    proc = run_subprocess("fit", path, *options, "--out", tmp_path / "fit.nc", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert_one_error(proc.returncode, proc.stdout, proc.stderr, *needles)
    assert not (tmp_path / "fit.nc").exists()


def test_subprocess_missing_file_and_bad_model(tmp_path):
    proc = run_subprocess("fit", "absent.csv", "--out", "fit.nc", cwd=tmp_path)
    assert_one_error(proc.returncode, proc.stdout, proc.stderr, "absent.csv", "does not exist")
    proc = run_subprocess("dof", "--rows", "3", "--cols", "4", "--model", "nonsense", cwd=tmp_path)
    assert_one_error(proc.returncode, proc.stdout, proc.stderr, "'nonsense'", "additive")


def test_subprocess_dof_json_succeeds(tmp_path):
    proc = run_subprocess("dof", "--rows", "4", "--cols", "5", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert json.loads(proc.stdout)["total_cells"] == 20


# ---------------------------------------------------------------------------
# 3. bad models
# ---------------------------------------------------------------------------

# id -> (TOML text, words the message must hold)
BAD_TOML = {
    "unknown-option": ('preset = "additive"\nfoo = 1\n', ["foo", "row_effect"]),
    "bad-combine": ('preset = "additive"\ncombine = "product"\n', ["'combine'", "'product'", "variance"]),
    "bad-effect": ('row_effect = "mixed"\n', ["'row_effect'", "'mixed'", "random"]),
    "bad-scale": ('col_scale = "heteroscedastic"\n', ["'col_scale'", "'heteroscedastic'"]),
    "non-boolean-sigma": ('preset = "additive"\nsigma = "yes"\n', ["'sigma'", "true or false"]),
    "unknown-preset-in-file": ('preset = "multiplicative"\n', ["'multiplicative'", "additive-sd"]),
    "unknown-prior-family": ('preset = "additive"\n[priors]\nrow_effect_sd = { dist = "gamma", sigma = 1 }\n',
                             ["'gamma'", "halfnormal"]),
    "negative-prior-sigma": ('preset = "additive"\n[priors]\nrow_effect_sd = { dist = "halfnormal", sigma = -1 }\n',
                             ["'sigma'", "positive", "-1"]),
    "zero-prior-scale": ('preset = "additive"\n[priors]\ncol_effect_sd = { dist = "exponential", scale = 0 }\n',
                         ["'scale'", "positive"]),
    "prior-for-absent-parameter": ('preset = "additive"\n[priors]\nsigma = { dist = "halfnormal", sigma = 1 }\n',
                                   ["'sigma'", "parameters of this model"]),
    "prior-wrong-parameter-name": ('preset = "additive"\n[priors]\nrow_effect_sd = { dist = "halfnormal", scale = 1 }\n',
                                   ["halfnormal", "'sigma'", "'scale'"]),
    "prior-not-a-table": ('preset = "additive"\n[priors]\nrow_effect_sd = 3\n', ["'row_effect_sd'", "dist"]),
    "priors-not-a-table": ('preset = "additive"\npriors = 5\n', ["'priors'"]),
    "invalid-toml": ('preset = "additive\ncombine = \n', ["model.toml", "not valid TOML"]),
    "not-utf8": (b'preset = "add\xe9tive"\n', ["model.toml", "not valid TOML"]),
}


@pytest.mark.parametrize("case", list(BAD_TOML), ids=list(BAD_TOML))
def test_fit_refuses_bad_model_file(case, tmp_path, capsys, no_sampling):
    text, needles = BAD_TOML[case]
    model = write(tmp_path, text, "model.toml")
    data = write(tmp_path, good_with())
    status, out, err = run_cli(capsys, "fit", data, *COLS, "--model", model, "--out", tmp_path / "f.nc")
    assert_one_error(status, out, err, *needles)
    assert not (tmp_path / "f.nc").exists()


@pytest.mark.parametrize("case", ["unknown-option", "bad-combine", "unknown-prior-family",
                                  "prior-for-absent-parameter", "invalid-toml"])
def test_dof_and_simulate_refuse_bad_model_file(case, tmp_path, capsys):
    text, needles = BAD_TOML[case]
    model = write(tmp_path, text, "model.toml")
    assert_one_error(*run_cli(capsys, "dof", "--rows", 4, "--cols", 5, "--model", model), *needles)
    out_csv = tmp_path / "sim.csv"
    assert_one_error(*run_cli(capsys, "simulate", "--rows", 4, "--cols", 5, "--seed", 1,
                              "--model", model, "--out", out_csv), *needles)
    assert not out_csv.exists()


@pytest.mark.parametrize(
    "model, needles",
    [("multiplicative", ["'multiplicative'", "additive", ".toml"]),
     ("Additive", ["'Additive'"]),
     ("model.txt", ["'model.txt'", ".toml"]),
     ("absent.toml", ["'absent.toml'", "does not exist"])],
)
def test_fit_refuses_unknown_preset_or_model_file(model, needles, tmp_path, capsys, no_sampling):
    data = write(tmp_path, good_with())
    status, out, err = run_cli(capsys, "fit", data, *COLS, "--model", model, "--out", tmp_path / "f.nc")
    assert_one_error(status, out, err, *needles)


def test_bad_model_is_reported_before_bad_data(tmp_path, capsys, no_sampling):
    """Both are wrong: the model is read first, and only its error is printed."""
    data = write(tmp_path, good_with({0: "T1,G1,abc,0.1"}))
    status, out, err = run_cli(capsys, "fit", data, *COLS, "--model", "nonsense", "--out", tmp_path / "f.nc")
    assert_one_error(status, out, err, "'nonsense'")


def test_fit_refuses_real_line_prior_for_a_scale(tmp_path, capsys, no_sampling):
    model = write(tmp_path, 'preset = "additive"\n[priors]\n'
                            'row_effect_sd = { dist = "normal", mu = 0, sigma = 1 }\n', "model.toml")
    data = write(tmp_path, good_with())
    status, out, err = run_cli(capsys, "fit", data, *COLS, "--model", model, "--out", tmp_path / "f.nc",
                               "--chains", 1, "--draws", 5, "--tune", 5)
    assert "Traceback" not in err
    assert status == 2
    assert err.strip().splitlines()[-1].startswith("twoway: error:")
    assert "'row_effect_sd'" in err and "positive family" in err


def test_dof_refuses_real_line_prior_for_a_scale(tmp_path, capsys):
    model = write(tmp_path, 'preset = "additive"\n[priors]\n'
                            'row_effect_sd = { dist = "normal", mu = 0, sigma = 1 }\n', "model.toml")
    assert_one_error(*run_cli(capsys, "dof", "--rows", 4, "--cols", 5, "--model", model),
                     "'row_effect_sd'", "positive")


def test_non_numeric_prior_parameter_is_a_clean_error(tmp_path, capsys):
    model = write(tmp_path, 'preset = "additive"\n[priors]\n'
                            'row_effect_sd = { dist = "halfnormal", sigma = "wide" }\n', "model.toml")
    assert_one_error(*run_cli(capsys, "dof", "--rows", 4, "--cols", 5, "--model", model),
                     "'sigma'", "'wide'")


# ---------------------------------------------------------------------------
# 4. dof
# ---------------------------------------------------------------------------


def additive_count(n: int, k: int) -> int:
    """additive: intercept, random effects (+ sd), hetero scales (+ loc, scale), no sigma."""
    return 1 + (n + 1) + (k + 1) + (n + 2) + (k + 2)


def test_dof_text_additive_sd_8_by_12(capsys):
    status, out, err = run_cli(capsys, "dof", "--rows", 8, "--cols", 12, "--model", "additive-sd")
    assert status == 0 and err == ""
    rows = {}
    for line in out.splitlines():
        m = re.fullmatch(r"\s*(.*?)\s+(-?\d+)", line)
        if m:
            rows[m.group(1)] = int(m.group(2))
    assert rows["total cells"] == 96
    assert rows["observed cells"] == 96
    expected_parts = {"intercept": 1, "row_effect": 8, "row_effect_sd": 1, "col_effect": 12,
                      "col_effect_sd": 1, "row_sd": 8, "row_log_sd_loc": 1, "row_log_sd_scale": 1,
                      "col_sd": 12, "col_log_sd_loc": 1, "col_log_sd_scale": 1, "sigma": 1}
    for name, count in expected_parts.items():
        assert rows[name] == count, name
    assert rows["parameters used"] == additive_count(8, 12) + 1 == 48
    assert rows["remaining"] == 96 - 48
    assert "WARNING" not in out


@pytest.mark.parametrize("n, k, r", [(8, 12, 1), (3, 5, 1), (4, 4, 3), (2, 2, 1), (6, 3, 2)])
def test_dof_json_counts(n, k, r, capsys):
    status, out, err = run_cli(capsys, "dof", "--rows", n, "--cols", k, "--replicates", r, "--json")
    assert status == 0 and err == ""
    d = json.loads(out)
    assert set(d) == {"total_cells", "observed_cells", "parameters", "used", "remaining"}
    assert d["total_cells"] == d["observed_cells"] == n * k * r
    assert d["used"] == sum(d["parameters"].values()) == additive_count(n, k)
    assert "sigma" not in d["parameters"]
    assert d["parameters"]["row_effect"] == n and d["parameters"]["col_sd"] == k
    assert d["used"] + d["remaining"] == d["observed_cells"]

    status, out, _ = run_cli(capsys, "dof", "--rows", n, "--cols", k, "--replicates", r, "--json",
                             "--model", "additive-sd")
    d_sd = json.loads(out)
    assert d_sd["parameters"]["sigma"] == 1
    assert d_sd["used"] == d["used"] + 1
    assert d_sd["used"] + d_sd["remaining"] == d_sd["observed_cells"]


def test_dof_2_by_2_is_overparameterised(capsys):
    status, out, err = run_cli(capsys, "dof", "--rows", 2, "--cols", 2)
    assert status == 0
    assert additive_count(2, 2) == 15
    assert re.search(r"^parameters used\s+15$", out, re.M)
    assert re.search(r"^remaining\s+-11$", out, re.M)
    warning_lines = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert len(warning_lines) == 1 and "more parameters than observed cells" in warning_lines[0]
    d = json.loads(run_cli(capsys, "dof", "--rows", 2, "--cols", 2, "--json")[1])
    assert d["used"] == 15 and d["remaining"] == -11


def test_dof_5_by_6_is_not_overparameterised(capsys):
    """additive needs 2N + 2K + 7 parameters: 29 on a 5 x 6 table, one fewer than its 30 cells."""
    status, out, _ = run_cli(capsys, "dof", "--rows", 5, "--cols", 6)
    assert status == 0
    assert re.search(r"^remaining\s+1$", out, re.M) and "WARNING" not in out


def test_dof_with_a_toml_model(tmp_path, capsys):
    model = write(tmp_path, 'preset = "additive"\nrow_effect = "fixed"\ncol_effect = "none"\n'
                            'row_scale = "homo"\ncol_scale = "none"\nsigma = true\n'
                            '[priors]\nsigma = { dist = "halfnormal", sigma = 0.5 }\n', "model.toml")
    status, out, err = run_cli(capsys, "dof", "--rows", 6, "--cols", 4, "--model", model, "--json")
    assert status == 0, err
    d = json.loads(out)
    assert d["parameters"] == {"intercept": 1, "row_effect": 5, "row_sd": 1, "sigma": 1}
    assert d["used"] == 8 and d["remaining"] == 24 - 8


@pytest.mark.parametrize("argv, needles", [
    (["--rows", "1", "--cols", "5"], ["at least 2 rows", "1 x 5"]),
    (["--rows", "5", "--cols", "0"], ["columns", "0"]),
    (["--rows", "3", "--cols", "3", "--replicates", "0"], ["replicates", "0"]),
])
def test_dof_refuses_bad_sizes(argv, needles, capsys):
    assert_one_error(*run_cli(capsys, "dof", *argv), *needles)


# ---------------------------------------------------------------------------
# 5. simulate
# ---------------------------------------------------------------------------


def simulate(capsys, tmp_path, name, *options):
    path = tmp_path / name
    status, out, err = run_cli(capsys, "simulate", *options, "--out", path)
    assert status == 0, err
    return path, out


def test_simulate_writes_a_table_that_reads_back(tmp_path, capsys):
    path, out = simulate(capsys, tmp_path, "sim.csv", "--rows", 8, "--cols", 12, "--seed", 7)
    assert re.search(r"8 x 12 table \(96 observed cells\)", out)
    lines = csv_lines(path)
    assert lines[0] == "row,col,value"
    assert len(lines) == 1 + 96
    data = TwoWayData.from_csv(path, row="row", col="col", value="value")
    assert (data.n_replicates, data.n_rows, data.n_cols) == (1, 8, 12)
    assert data.n_observed == 96 and not data.has_se
    assert data.row_labels == tuple(f"row{i}" for i in range(1, 9))
    assert data.col_labels == tuple(f"col{j}" for j in range(1, 13))
    assert np.isfinite(data.values).all() and np.std(data.values) > 0


def test_simulate_is_reproducible_by_seed(tmp_path, capsys):
    a, _ = simulate(capsys, tmp_path, "a.csv", "--rows", 4, "--cols", 5, "--seed", 11)
    b, _ = simulate(capsys, tmp_path, "b.csv", "--rows", 4, "--cols", 5, "--seed", 11)
    c, _ = simulate(capsys, tmp_path, "c.csv", "--rows", 4, "--cols", 5, "--seed", 12)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    va = pd.read_csv(a)["value"].to_numpy()
    vc = pd.read_csv(c)["value"].to_numpy()
    assert not np.allclose(va, vc)


def test_simulate_replicates(tmp_path, capsys):
    path, out = simulate(capsys, tmp_path, "rep.csv", "--rows", 3, "--cols", 4, "--replicates", 3, "--seed", 2)
    assert "x 3 replicates" in out and "(36 observed cells)" in out
    lines = csv_lines(path)
    assert lines[0] == "replicate,row,col,value"
    assert len(lines) == 1 + 36
    data = TwoWayData.from_csv(path, row="row", col="col", value="value", replicate="replicate")
    assert (data.n_replicates, data.n_rows, data.n_cols) == (3, 3, 4)
    assert data.replicate_labels == ("0", "1", "2")
    # the replicate tables differ from one another
    assert not np.allclose(data.values[0], data.values[1])
    # read without the replicate column, the cells repeat
    with pytest.raises(DataError, match="replicate"):
        TwoWayData.from_csv(path, row="row", col="col", value="value")


def test_fit_without_replicate_option_on_replicated_table(tmp_path, capsys, no_sampling):
    path, _ = simulate(capsys, tmp_path, "rep.csv", "--rows", 3, "--cols", 4, "--replicates", 2, "--seed", 2)
    # a column named "replicate" is taken by default; under another name it must be given
    path.write_text(path.read_text().replace("replicate,", "batch,", 1))
    status, out, err = run_cli(capsys, "fit", path, "--out", tmp_path / "f.nc")
    assert_one_error(status, out, err, "row='row1'", "col='col1'", "--replicate")


def test_simulate_missing_fraction(tmp_path, capsys):
    path, out = simulate(capsys, tmp_path, "miss.csv", "--rows", 10, "--cols", 12, "--seed", 5,
                         "--missing", 0.2)
    reported = int(re.search(r"\((\d+) observed cells\)", out).group(1))
    assert len(csv_lines(path)) - 1 == reported
    data = TwoWayData.from_csv(path, row="row", col="col", value="value")
    assert data.n_observed == reported
    assert (data.n_rows, data.n_cols) == (10, 12)
    dropped = 1 - reported / 120
    assert 0.1 < dropped < 0.3
    assert reported < 120


def test_simulate_known_se(tmp_path, capsys):
    path, _ = simulate(capsys, tmp_path, "se.csv", "--rows", 3, "--cols", 4, "--seed", 1, "--se", 0.5)
    assert csv_lines(path)[0] == "row,col,value,se"
    data = TwoWayData.from_csv(path, row="row", col="col", value="value", se="se")
    assert data.has_se
    assert np.all(data.se[data.mask] == 0.5)


def test_simulate_se_and_missing_together(tmp_path, capsys):
    path, out = simulate(capsys, tmp_path, "both.csv", "--rows", 5, "--cols", 6, "--replicates", 2,
                         "--seed", 3, "--se", 0.25, "--missing", 0.3)
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["replicate", "row", "col", "value", "se"]
    assert frame["value"].notna().all() and (frame["se"] == 0.25).all()
    assert f"({len(frame)} observed cells)" in out


def test_simulate_truth_json(tmp_path, capsys):
    truth_path = tmp_path / "truth.json"
    path, out = simulate(capsys, tmp_path, "sim.csv", "--rows", 4, "--cols", 5, "--seed", 9,
                         "--model", "additive-sd", "--truth", truth_path)
    assert str(truth_path) in out
    doc = json.loads(truth_path.read_text(encoding="utf-8"))
    assert set(doc) == {"model", "truth"}
    assert doc["model"]["name"] == "additive-sd"
    assert doc["model"]["combine"] == "sd" and doc["model"]["sigma"] is True
    truth = doc["truth"]
    data = TwoWayData.from_csv(path, row="row", col="col", value="value")
    for name in ("row_effect", "row_sd", "row_mean"):
        assert list(truth[name]) == list(data.row_labels), name
    for name in ("col_effect", "col_sd", "col_mean"):
        assert list(truth[name]) == list(data.col_labels), name
    for name in ("intercept", "row_effect_sd", "col_effect_sd", "sigma", "row_log_sd_loc", "row_log_sd_scale"):
        assert isinstance(truth[name], float), name
    assert truth["sigma"] >= 0
    assert all(v > 0 for v in truth["row_sd"].values())
    # row_mean[i] = intercept + row_effect[i] + mean_j col_effect[j]
    col_bar = np.mean(list(truth["col_effect"].values()))
    for label, value in truth["row_mean"].items():
        assert value == pytest.approx(truth["intercept"] + truth["row_effect"][label] + col_bar)


def test_simulate_truth_without_sigma_for_additive(tmp_path, capsys):
    truth_path = tmp_path / "truth.json"
    simulate(capsys, tmp_path, "sim.csv", "--rows", 3, "--cols", 3, "--seed", 1, "--truth", truth_path)
    doc = json.loads(truth_path.read_text(encoding="utf-8"))
    assert doc["model"]["name"] == "additive" and doc["model"]["sigma"] is False
    assert "sigma" not in doc["truth"]


@pytest.mark.parametrize("options, needles", [
    (["--missing", "1.0"], ["missing", "1.0"]),
    (["--missing", "-0.1"], ["missing", "-0.1"]),
    (["--rows", "1"], ["at least 2 rows"]),
    (["--replicates", "0"], ["1 replicate"]),
    (["--se", "0"], ["standard errors", "positive"]),
    (["--se", "-1"], ["standard errors", "positive"]),
    (["--se", "nan"], ["standard errors", "finite"]),
    (["--model", "nope"], ["'nope'"]),
])
def test_simulate_refuses_bad_options(options, needles, tmp_path, capsys):
    out_csv = tmp_path / "sim.csv"
    argv = ["simulate", "--rows", "4", "--cols", "5", "--seed", "1", "--out", str(out_csv)] + options
    assert_one_error(*run_cli(capsys, *argv), *needles)
    assert not out_csv.exists()


def test_simulate_refuses_missing_output_folder(tmp_path, capsys):
    status, out, err = run_cli(capsys, "simulate", "--rows", 3, "--cols", 3, "--seed", 1,
                               "--out", tmp_path / "nowhere" / "sim.csv")
    assert_one_error(status, out, err, "nowhere", "does not exist")


# ---------------------------------------------------------------------------
# 6. a real fit, then summary
# ---------------------------------------------------------------------------

ROW_LABELS = [f"T{i}" for i in range(1, 6)]
COL_LABELS = [f"G{j}" for j in range(1, 7)]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Simulate a 5 x 6 table, relabel it, fit it once through the CLI (nutpie, 2 x 200 draws, seed 1)."""
    folder = tmp_path_factory.mktemp("fit")
    sim = folder / "sim.csv"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["simulate", "--rows", "5", "--cols", "6", "--seed", "3", "--se", "0.3",
                     "--out", str(sim)]) == 0
    frame = pd.read_csv(sim)
    frame = pd.DataFrame({
        "treatment": frame["row"].map(dict(zip([f"row{i}" for i in range(1, 6)], ROW_LABELS))),
        "group": frame["col"].map(dict(zip([f"col{j}" for j in range(1, 7)], COL_LABELS))),
        "y": frame["value"],
        "err": frame["se"],
    })
    data_path = folder / "table.csv"
    frame.to_csv(data_path, index=False)
    fit_path = folder / "fit.nc"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["fit", str(data_path), "--row", "treatment", "--col", "group", "--value", "y",
                       "--se", "err", "--chains", "2", "--draws", "200", "--tune", "200", "--seed", "1",
                       "--engine", "nutpie", "--out", str(fit_path)])
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue(), "path": fit_path,
            "data_path": data_path, "frame": frame}


def expected_parameter_keys() -> set[str]:
    scalars = {"intercept", "row_effect_sd", "col_effect_sd", "row_log_sd_loc", "row_log_sd_scale",
               "col_log_sd_loc", "col_log_sd_scale"}
    per_row = {f"{name}[{lab}]" for name in ("row_effect", "row_sd", "row_mean") for lab in ROW_LABELS}
    per_col = {f"{name}[{lab}]" for name in ("col_effect", "col_sd", "col_mean") for lab in COL_LABELS}
    return scalars | per_row | per_col


def test_fit_succeeds_and_prints_a_summary(fitted):
    assert fitted["status"] == 0, fitted["stderr"]
    assert "Traceback" not in fitted["stderr"]
    # 29 parameters on 30 cells: no over-parameterisation warning
    assert "warning:" not in fitted["stderr"]
    out = fitted["stdout"]
    assert f"wrote the fit to {fitted['path']}" in out
    assert "r_hat" in out and "diagnostics:" in out
    assert "row_mean[T1]" in out and "col_sd[G6]" in out
    assert fitted["path"].is_file()


def test_summary_json_shape(fitted, capsys):
    status, out, err = run_cli(capsys, "summary", fitted["path"], "--json")
    assert status == 0, err
    doc = json.loads(out)
    assert {"parameters", "diagnostics"} <= set(doc) <= {"parameters", "diagnostics", "warnings",
                                                         "variance_decomposition"}
    params = doc["parameters"]
    assert set(params) == expected_parameter_keys()
    for name, stats in params.items():
        assert set(stats) == STAT_KEYS, name
        for key in STAT_KEYS:
            assert isinstance(stats[key], float), (name, key, stats[key])
        assert stats["hdi_3%"] <= stats["mean"] <= stats["hdi_97%"], name
        assert stats["sd"] > 0 and stats["ess_bulk"] > 0 and stats["r_hat"] > 0.9, name
    diag = doc["diagnostics"]
    assert set(diag) == DIAGNOSTIC_KEYS
    assert isinstance(diag["divergences"], int) and diag["divergences"] >= 0
    assert diag["max_r_hat"] == pytest.approx(max(s["r_hat"] for s in params.values()))
    assert diag["min_ess_bulk"] == pytest.approx(min(s["ess_bulk"] for s in params.values()))
    assert 0 < diag["sampling_seconds"] <= diag["total_seconds"]
    if "warnings" in doc:
        assert isinstance(doc["warnings"], list) and all(isinstance(w, str) for w in doc["warnings"])


@pytest.mark.filterwarnings("ignore::twoway.errors.ConvergenceWarning")
def test_summary_json_matches_the_library(fitted, capsys):
    status, out, _ = run_cli(capsys, "summary", fitted["path"], "--json")
    assert status == 0
    doc = json.loads(out)
    lib = Fit.load(fitted["path"]).summary().to_dict()
    assert doc["parameters"].keys() == lib["parameters"].keys()
    for name in ("intercept", "row_mean[T3]", "col_sd[G2]"):
        assert doc["parameters"][name]["mean"] == pytest.approx(lib["parameters"][name]["mean"])


def test_summary_text(fitted, capsys):
    status, out, err = run_cli(capsys, "summary", fitted["path"])
    assert status == 0 and "Traceback" not in err
    assert "model: additive" in out
    assert "engine: nutpie" in out and "2 chains x 200 draws after 200 tuning; seed 1" in out
    assert "diagnostics:" in out and "divergences" in out
    for label in ROW_LABELS + COL_LABELS:
        assert f"[{label}]" in out


def test_fit_file_loads_with_the_table_and_settings(fitted):
    fit = Fit.load(fitted["path"])
    post = fit.posterior
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 200
    assert [str(v) for v in post["row_effect"].coords["row"].values] == ROW_LABELS
    assert [str(v) for v in post["col_effect"].coords["col"].values] == COL_LABELS
    info = fit.info
    assert (info["engine"], info["seed"], info["chains"], info["draws"], info["tune"]) == \
        ("nutpie", 1, 2, 200, 200)
    assert fit.model.name == "additive"
    data = fit.data
    assert data.row_labels == tuple(ROW_LABELS) and data.col_labels == tuple(COL_LABELS)
    frame = fitted["frame"]
    expected = frame.pivot(index="treatment", columns="group", values="y").loc[ROW_LABELS, COL_LABELS]
    np.testing.assert_allclose(data.values[0], expected.to_numpy())
    assert data.has_se and np.allclose(data.se[data.mask], 0.3)


def test_fit_recovers_the_order_of_row_means(fitted):
    """Loose sanity: the posterior row means follow the observed row averages."""
    post = Fit.load(fitted["path"]).posterior
    fitted_means = post["row_mean"].mean(("chain", "draw")).to_numpy()
    observed = fitted["frame"].groupby("treatment")["y"].mean().loc[ROW_LABELS].to_numpy()
    assert np.corrcoef(fitted_means, observed)[0, 1] > 0.8


# ---------------------------------------------------------------------------
# 7. summary of something that is not a fit
# ---------------------------------------------------------------------------


def test_summary_refuses_a_csv(tmp_path, capsys):
    path = write(tmp_path, good_with())
    for extra in ([], ["--json"]):
        status, out, err = run_cli(capsys, "summary", path, *extra)
        assert_one_error(status, out, err, "data.csv", "not a twoway fit")
        assert out == ""


def test_summary_refuses_a_missing_file(tmp_path, capsys):
    assert_one_error(*run_cli(capsys, "summary", tmp_path / "absent.nc", "--json"), "absent.nc", "does not exist")


def test_summary_refuses_an_empty_file_and_a_folder(tmp_path, capsys):
    write(tmp_path, b"", "empty.nc")
    assert_one_error(*run_cli(capsys, "summary", tmp_path / "empty.nc"), "empty.nc", "not a twoway fit")
    (tmp_path / "folder").mkdir()
    assert_one_error(*run_cli(capsys, "summary", tmp_path / "folder"), "folder", "not a twoway fit")


def test_summary_refuses_a_netcdf_that_is_not_a_fit(tmp_path, capsys):
    import xarray as xr

    path = tmp_path / "other.nc"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(path, engine="h5netcdf")
    assert_one_error(*run_cli(capsys, "summary", path, "--json"), "other.nc", "not a twoway fit")


def test_subprocess_summary_of_a_csv(tmp_path):
    path = write(tmp_path, good_with())
    proc = run_subprocess("summary", path, "--json", cwd=tmp_path)
    assert_one_error(proc.returncode, proc.stdout, proc.stderr, "not a twoway fit")


# ---------------------------------------------------------------------------
# 8. demo
# ---------------------------------------------------------------------------


def test_demo(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    status, out, err = run_cli(capsys, "demo", "--out", out_dir, "--draws", 200, "--tune", 200, "--chains", 2)
    assert status == 0, err
    assert "Traceback" not in err
    # stderr is not a terminal here: the phase lines are still said, as --help promises
    for line in ("twoway: fitting the additive model", "twoway: compiling done in", "twoway: sampling done in",
                 f"twoway: writing the fit to {out_dir / 'fit.nc'} ..."):
        assert line in err, (line, err)

    # the recovery table: a header with a 'covered' column, one line per true value
    lines = out.splitlines()
    start = lines.index("recovery (94% highest-density intervals):")
    header = lines[start + 1].split()
    assert header == ["true", "mean", "low", "high", "covered", "error"]
    m = re.search(r"covered: (\d+) of (\d+) true values", out)
    assert m, out
    covered, total = int(m.group(1)), int(m.group(2))
    assert total == 8 + 12 + 8 + 12  # row_mean, col_mean, row_sd, col_sd
    assert covered >= 0.75 * total
    assert sum(line.startswith("row_mean[T") for line in lines[start:]) >= 8
    assert "diagnostics:" in out and "max R-hat" in out and "divergences" in out

    for name in ("data.csv", "truth.json", "fit.nc", "table.png", "trace.png"):
        assert (out_dir / name).is_file(), name
        assert str(out_dir / name) in out
    for name in ("table.png", "trace.png"):
        assert (out_dir / name).read_bytes()[:8] == PNG_SIGNATURE, name

    data = TwoWayData.from_csv(out_dir / "data.csv", row="row", col="col", value="value")
    assert data.row_labels == tuple(f"T{i}" for i in range(1, 9))
    assert data.col_labels == tuple(f"G{j}" for j in range(1, 13))
    truth = json.loads((out_dir / "truth.json").read_text(encoding="utf-8"))
    assert truth["model"]["name"] == "additive"
    assert truth["truth"]["row_mean"]["T1"] == pytest.approx(-5.5)
    fit = Fit.load(out_dir / "fit.nc")
    assert fit.posterior.sizes["draw"] == 200 and fit.posterior.sizes["chain"] == 2


@pytest.fixture
def captured_fit(monkeypatch):
    """Replace compiling with a recorder of the table (and options) it would compile, then stop."""
    import importlib

    fit_module = importlib.import_module("twoway.fit")
    seen = {}

    class Stop(Exception):
        pass

    def record(spec, data, **kwargs):
        seen["spec"], seen["data"], seen["kwargs"] = spec, data, kwargs
        raise Stop

    for module in (fit_module, importlib.import_module("twoway.app.cli")):  # the command line holds its own name
        monkeypatch.setattr(module, "compile_model", record)
    return seen, Stop


def test_fit_reads_the_replicate_and_se_columns_simulate_writes(tmp_path, capsys, captured_fit):
    seen, Stop = captured_fit
    table = tmp_path / "t.csv"
    status, _, _ = run_cli(capsys, "simulate", "--model", "crossed", "--rows", 4, "--cols", 3, "--replicates", 2,
                           "--se", 0.3, "--seed", 1, "--out", table)
    assert status == 0
    with pytest.raises(Stop):
        main(["fit", str(table), "--model", "crossed", "--out", str(tmp_path / "f.nc")])
    err = capsys.readouterr().err
    assert "column 'replicate'" in err and "column 'se'" in err
    assert seen["data"].n_replicates == 2 and seen["data"].has_se
    with pytest.raises(Stop):
        main(["fit", str(table), "--model", "crossed", "--no-se", "--out", str(tmp_path / "f.nc")])
    assert not seen["data"].has_se and seen["data"].n_replicates == 2


def test_fit_refuses_se_and_no_se_together(tmp_path, capsys, no_sampling):
    table = tmp_path / "t.csv"
    table.write_text("row,col,value,se\na,x,1.0,0.1\na,y,2.0,0.1\nb,x,3.0,0.1\nb,y,4.0,0.1\n")
    status, out, err = run_cli(capsys, "fit", table, "--se", "se", "--no-se", "--out", tmp_path / "f.nc")
    assert_one_error(status, out, err, "--no-se")


# ---------------------------------------------------------------------------
# 9. --engine (and its old name --backend), --progress
# ---------------------------------------------------------------------------

FITTING_COMMANDS = {
    "fit": ["fit", "t.csv", "--out", "f.nc"],
    "demo": ["demo"],
    "sbc": ["sbc", "--rows", "3", "--cols", "3", "--sims", "2", "--out", "o"],
    "fit-many": ["fit-many", "tables", "--out", "o"],
}


@pytest.mark.parametrize("command", list(FITTING_COMMANDS))
def test_engine_defaults_to_jax(command):
    args = parse_args(FITTING_COMMANDS[command])
    assert args.engine == "jax" and args.progress is None
    assert not hasattr(args, "backend")


@pytest.mark.parametrize("command", list(FITTING_COMMANDS))
@pytest.mark.parametrize("option", ["--engine", "--backend"])
@pytest.mark.parametrize("engine", ["jax", "nutpie", "pymc"])
def test_engine_and_its_alias_backend(command, option, engine):
    assert parse_args(FITTING_COMMANDS[command] + [option, engine]).engine == engine


def test_the_last_of_engine_and_backend_wins():
    argv = FITTING_COMMANDS["fit"]
    assert parse_args(argv + ["--backend", "pymc", "--engine", "nutpie"]).engine == "nutpie"
    assert parse_args(argv + ["--engine", "nutpie", "--backend", "pymc"]).engine == "pymc"


@pytest.mark.parametrize("option", ["--engine", "--backend"])
def test_unknown_engine_is_a_usage_error(option, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(FITTING_COMMANDS["fit"] + [option, "stan"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'stan'" in err and "jax" in err


@pytest.mark.parametrize("command", list(FITTING_COMMANDS))
def test_help_shows_engine_and_progress_not_backend(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--engine {jax,nutpie,pymc,laplace}" in out and "--progress, --no-progress" in out
    assert "--backend" not in out


@pytest.mark.parametrize("extra, expected", [([], None), (["--progress"], True), (["--no-progress"], False)])
def test_progress_option(extra, expected):
    assert parse_args(FITTING_COMMANDS["fit"] + extra).progress is expected


def test_fit_passes_the_engine_to_the_library(tmp_path, capsys, captured_fit):
    seen, Stop = captured_fit
    path = write(tmp_path, good_with())
    # no engine named: None, the library then takes jax, or laplace for a table on the sparse path
    for extra, engine in (([], None), (["--engine", "pymc"], "pymc"), (["--backend", "nutpie"], "nutpie")):
        with pytest.raises(Stop):
            main(["fit", str(path), *COLS, "--out", str(tmp_path / "f.nc"), *extra])
        assert seen["kwargs"]["engine"] == engine
        assert "backend" not in seen["kwargs"]
    err = capsys.readouterr().err
    assert "twoway: fitting the additive model (nutpie): 4 chains x 1000 draws after 1000 tuning ...\n" in err


def test_no_progress_says_nothing_about_phases(tmp_path, capsys, captured_fit):
    seen, Stop = captured_fit
    path = write(tmp_path, good_with())
    with pytest.raises(Stop):
        main(["fit", str(path), *COLS, "--out", str(tmp_path / "f.nc"), "--engine", "nutpie", "--no-progress"])
    assert "twoway: fitting" not in capsys.readouterr().err


def test_fit_with_the_jax_engine_reports_phases_and_reuses_the_cache(tmp_path):
    """Two `twoway fit` processes, the jax engine by default: the second compile comes from the cache."""
    path = write(tmp_path, good_with())
    cache = tmp_path / "cache"
    env = {**os.environ, "TWOWAY_CACHE_DIR": str(cache)}
    errs = []
    for k in range(2):
        proc = subprocess.run(cli_command() + ["fit", str(path), *COLS_SE, "--out", str(tmp_path / f"f{k}.nc"),
                                               "--chains", "1", "--draws", "50", "--tune", "50", "--seed", "1",
                                               "--quiet"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr
        errs.append(proc.stderr)
    for k, (err, cache_note) in enumerate(zip(errs, ["cache miss", "cache hit"])):
        lines = [line for line in err.splitlines() if line.startswith("twoway: ")]  # not the dof warning
        assert lines[0] == "twoway: fitting the additive model (jax): 1 chain x 50 draws after 50 tuning ...", err
        assert lines[1] == "twoway: compiling the model ...", err
        assert re.fullmatch(rf"twoway: compiling done in ([\d.]+ s|\d+ min \d+ s) \({cache_note}\)", lines[2]), err
        assert lines[3:6] == ["twoway: sampling ...",  # 100 iterations in segments of 64
                              "twoway: sampling: 64% (64/100 iterations, warm-up included)",
                              "twoway: sampling: 100% (100/100 iterations, warm-up included)"], err
        assert re.fullmatch(r"twoway: sampling done in ([\d.]+ s|\d+ min \d+ s)", lines[6]), err
        assert lines[7:] == ["twoway: drawing the integrated effects back ...",
                             f"twoway: writing the fit to {tmp_path / f'f{k}.nc'} ..."], err
        assert "\r" not in err  # not a terminal: lines, no redrawn bar
    assert any(name.endswith("-cache") for name in os.listdir(cache))
    assert os.listdir(cache / "programs")  # the stored chain program the second run loaded
    # a cache folder that cannot be made: one warning line, the fit goes on without a cache
    (tmp_path / "a-file").write_text("not a folder")
    env = {**os.environ, "TWOWAY_CACHE_DIR": str(tmp_path / "a-file" / "cache")}
    proc = subprocess.run(cli_command() + ["fit", str(path), *COLS_SE, "--out", str(tmp_path / "f2.nc"),
                                           "--chains", "1", "--draws", "50", "--tune", "50", "--seed", "1", "--quiet"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("twoway: ")]
    assert any(line.startswith("twoway: warning: The cache folder must be a folder twoway can create")
               for line in lines), proc.stderr
    assert any(re.fullmatch(r"twoway: compiling done in [\d.]+ s \(no compile cache\)", line) for line in lines)
    assert "TwowayWarning" not in proc.stderr and "compile(" not in proc.stderr  # one line, no source echo


# ---------------------------------------------------------------------------
# 10. start-up: `twoway --help` imports nothing heavy
# ---------------------------------------------------------------------------

HEAVY = ("pymc", "pytensor", "jax", "nutpie", "numba", "arviz", "matplotlib", "scipy", "xarray", "pandas")  # numpy (0.1 s) is the package's one eager import
# Imported through twoway/__init__.py (twoway.table.data, twoway.fit ...), not by the CLI itself.


def imported_after(code: str) -> set[str]:
    """The HEAVY modules in sys.modules after running ``code`` in a fresh Python."""
    proc = subprocess.run([sys.executable, "-c", code + f"\nimport sys\nprint(' '.join(m for m in {HEAVY!r} "
                                                        "if m in sys.modules))"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_cli_module_itself_imports_nothing_heavy():
    """cli.py alone (the package's __init__ bypassed): building the parser and --help import nothing heavy."""
    package = Path(__import__("twoway").__file__).resolve().parent
    code = (f"import sys, types\npkg = types.ModuleType('twoway'); pkg.__path__ = [{str(package)!r}]\n"
            "pkg.__version__ = '0'; sys.modules['twoway'] = pkg\n"
            "import contextlib, io\nfrom twoway.app.cli import main\n"
            "for argv in (['--help'], ['fit', '--help'], ['cache', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try: main(argv)\n"
            "        except SystemExit: pass\n")
    assert imported_after(code) == set()


@pytest.mark.parametrize("module", HEAVY)
def test_import_twoway_cli_does_not_import(module):
    assert module not in imported_after("import twoway.app.cli")


def test_twoway_help_exits_0():
    proc = subprocess.run(cli_command() + ["--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: twoway") and "cache" in proc.stdout and proc.stderr == ""


# ---------------------------------------------------------------------------
# 10. what a user can trust: progress in a log, contrasts once, one-line errors, small units
# ---------------------------------------------------------------------------


def test_sbc_prints_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    import twoway.runs.sbc as sbc_module

    def fail(*args, **kwargs):  # no fitting: each replication fails at once, the progress lines still come
        raise RuntimeError("no fitting in this test")

    monkeypatch.setattr(sbc_module, "_replication", fail)
    argv = ["sbc", "--rows", 3, "--cols", 3, "--sims", 2, "--draws", 10, "--tune", 10]
    status, out, err = run_cli(capsys, *argv, "--out", tmp_path / "on")
    assert status == 2
    assert "twoway: sbc replications [" in err and "0/2" in err and "2/2" in err, err
    assert "twoway: sim_00000 failed: RuntimeError: no fitting in this test" in err
    status, out, err = run_cli(capsys, *argv, "--out", tmp_path / "off", "--no-progress")
    assert_one_error(status, out, err, "2 of 2 SBC replications failed")


@pytest.mark.parametrize("extra, said", [([], True), (["--no-progress"], False)])
def test_demo_says_its_phases_unless_told_not_to(extra, said, tmp_path, capsys, monkeypatch):
    import twoway.app.demo as demo_module

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(demo_module, "compile_model", stop)
    with pytest.raises(Stop):
        main(["demo", "--out", str(tmp_path / "demo"), "--draws", "50", *extra])
    err = capsys.readouterr().err
    assert ("twoway: fitting the additive model (jax): 4 chains x 50 draws after 1000 tuning ..." in err) is said


def test_summary_prints_a_contrast_given_twice_once(fitted, capsys):
    status, out, err = run_cli(capsys, "summary", fitted["path"], "--contrast", "row=T1", "--contrast", "col=G2",
                               "--contrast", "row=T1", "--contrast", "col=G2")
    assert status == 0, err
    assert out.count("contrasts: each row mean minus the mean of row 'T1'") == 1
    assert out.count("contrasts: each column mean minus the mean of column 'G2'") == 1
    assert out.index("mean of row 'T1'") < out.index("mean of column 'G2'")  # in the order first given
    assert sum(line.startswith("T2 - T1 ") for line in out.splitlines()) == 1
    status, out, err = run_cli(capsys, "summary", fitted["path"], "--json", "--contrast", "row=T1",
                               "--contrast", "row=T1")
    assert status == 0 and len(json.loads(out)["contrasts"]) == len(ROW_LABELS) - 1


@pytest.mark.parametrize("bad_line, needle", [("T2,G1,abc,0.1", "'abc'"), ("T2,G1,3.0,-1", "se")])
def test_an_error_in_a_table_with_an_se_column_is_one_line(bad_line, needle, tmp_path, capsys, no_sampling):
    path = write(tmp_path, "row,col,value,se\n" + "\n".join(GOOD_LINES[:2] + [bad_line] + GOOD_LINES[3:]) + "\n")
    status, out, err = run_cli(capsys, "fit", path, "--out", tmp_path / "f.nc")
    assert_one_error(status, out, err, needle)


def test_fit_many_with_an_se_column_and_a_bad_option_is_one_line(tmp_path, capsys, no_sampling):
    write(tmp_path, "row,col,value,se\n" + "\n".join(GOOD_LINES) + "\n")
    status, out, err = run_cli(capsys, "fit-many", tmp_path / "data.csv", "--by", "nowhere", "--out", tmp_path / "o")
    assert_one_error(status, out, err, "nowhere")


def test_values_in_small_units_print_with_their_digits(tmp_path, capsys):
    """A table in units of 1e-12: the text summary shows the numbers (scientific), not 0.000."""
    scale = 1e-12
    lines = [f"s{i},{t},{v * scale!r},{se * scale!r}" for i, t, v, se in
             [(1, "A", 0.0, 0.2), (1, "B", 1.0, 0.2), (2, "A", 0.5, 0.25), (2, "B", 1.6, 0.25), (3, "A", 0.1, 0.3),
              (3, "B", 1.2, 0.3)]]
    path = write(tmp_path, "row,col,value,se\n" + "\n".join(lines) + "\n")
    status, out, err = run_cli(capsys, "fit", path, "--model", "common-effect", "--chains", 2, "--draws", 200,
                               "--seed", 1, "--no-progress", "--out", tmp_path / "f.nc")
    assert status == 0, err
    status, out, err = run_cli(capsys, "summary", tmp_path / "f.nc", "--contrast", "col=A")
    assert status == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("col_effect[")}
    rows.update({"B - A": line.split()[3:] for line in out.splitlines() if line.startswith("B - A ")})
    assert set(rows) == {"col_effect[A]", "col_effect[B]", "B - A"}, out
    mean, sd = float(rows["B - A"][0]), float(rows["B - A"][1])
    assert mean == pytest.approx(1.07e-12, rel=0.2) and 1e-14 < sd < 1e-12
    assert re.fullmatch(r"-?\d\.\d{3}e-1[234]", rows["B - A"][0]), rows["B - A"]
    assert "0.000    0.000" not in out
    doc = json.loads(run_cli(capsys, "summary", tmp_path / "f.nc", "--json", "--contrast", "col=A")[1])
    assert float(rows["B - A"][0]) == pytest.approx(doc["contrasts"]["B - A"]["mean"], rel=1e-3)
