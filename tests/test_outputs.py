"""Outputs never lost or corrupted (atomic writes, --out checked before any work, self-contained
fit files, a model file's relative paths), and the small things users trip on."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import importlib
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import twoway
from twoway.app.cli import main
from twoway.errors import DataError, FitError, ModelError, TwowayError
from twoway.fit import Fit
from twoway.table.io.outputs import check_output

ROWS = ["r1", "r2", "r3", "r4"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def one_error(status, err, *needles) -> str:
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("twoway: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def write_matrix(path: Path, labels, matrix) -> None:
    lines = ["," + ",".join(labels)]
    lines += [lab + "," + ",".join(repr(float(v)) for v in row) for lab, row in zip(labels, matrix)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def ar1(n: int, rho: float) -> np.ndarray:
    idx = np.arange(n)
    return rho ** np.abs(idx[:, None] - idx[None, :])


@pytest.fixture(scope="module")
def small_fit(tmp_path_factory):
    """A quick fit of a small crossed table, saved once."""
    sim = twoway.simulate("crossed", 4, 5, seed=1)
    fit = twoway.fit("crossed", sim.data, chains=2, draws=100, tune=100, seed=2, progress=False)
    path = tmp_path_factory.mktemp("fit") / "base.nc"
    fit.save(path)
    return path


# ---------------------------------------------------------------------------
# atomic writes: a run killed while writing leaves the previous file whole
# ---------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from twoway.fit import Fit

    fit = Fit.load(sys.argv[1])
    tree = fit.tree.copy()
    post = tree["posterior"].to_dataset()
    post["ballast"] = (("chain", "draw", "ballast"),
                       np.random.default_rng(0).normal(size=(post.sizes["chain"], post.sizes["draw"], 4000)))
    tree["posterior"] = post
    big = Fit(tree)
    print("ready", flush=True)
    while True:
        big.save(sys.argv[2])
""")


def _versions(path: Path) -> str:
    """Which version of the fit ``path`` holds: 'old' or 'new' (raises if it is not a whole fit)."""
    fit = Fit.load(path)
    post = fit.posterior
    if "ballast" not in post:
        return "old"
    assert post["ballast"].shape[-1] == 4000
    np.testing.assert_array_equal(
        post["ballast"].values,
        np.random.default_rng(0).normal(size=(post.sizes["chain"], post.sizes["draw"], 4000)))
    return "new"


def test_a_fit_killed_while_writing_leaves_the_previous_file_whole(small_fit, tmp_path):
    """A real process saving a large fit again and again is SIGKILLed at several moments,
    among them while its temporary file is being written: the target always loads whole."""
    target = tmp_path / "X.nc"
    Fit.load(small_fit).save(target)
    before = target.read_bytes()
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    rng = np.random.default_rng(7)
    seen, mid_write = [], 0
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(small_fit), str(target)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            if attempt < 2:  # wait until a temporary exists: the kill lands while a write is under way
                deadline = time.monotonic() + 30
                while not list(tmp_path.glob(".X.nc.*.tmp")) and time.monotonic() < deadline:
                    time.sleep(0.001)
                time.sleep(float(rng.uniform(0.0, 0.02)))
            else:
                time.sleep(float(rng.uniform(0.0, 0.3)))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        mid_write += bool(list(tmp_path.glob(".X.nc.*.tmp")))
        seen.append(_versions(target))
        if seen[-1] == "old":
            assert target.read_bytes() == before
        twoway.table.io.outputs.remove_stale_temporaries(tmp_path)
    assert mid_write >= 1, "no kill landed while a temporary was being written"
    assert set(seen) <= {"old", "new"}


def test_a_failed_save_leaves_the_previous_file_and_no_temporary(small_fit, tmp_path, monkeypatch):
    target = tmp_path / "f.nc"
    fit = Fit.load(small_fit)
    fit.save(target)
    before = target.read_bytes()

    def broken(self, path, **kwargs):
        Path(path).write_bytes(b"CDF\x01 cut short")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(fit.tree), "to_netcdf", broken)
    with pytest.raises(FitError, match="could not be written.*No space left"):
        fit.save(target)
    assert target.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_saved_files_have_the_usual_permissions(small_fit, tmp_path, suffix):
    path = Fit.load(small_fit).save(tmp_path / f"fit{suffix}")
    mask = os.umask(0o022)
    os.umask(mask)
    want = (0o777 if suffix == ".zarr" else 0o666) & ~mask
    assert path.stat().st_mode & 0o777 == want
    again = Fit.load(small_fit).save(path)  # a zarr store is replaced whole
    assert Fit.load(again).posterior.sizes == Fit.load(small_fit).posterior.sizes
    assert not list(tmp_path.glob(".*"))


def test_saving_a_zarr_store_warns_nothing_but_other_warnings_still_show(small_fit, tmp_path, monkeypatch):
    fit = Fit.load(small_fit)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fit.save(tmp_path / "fit.zarr")
    assert [str(w.message) for w in seen] == []
    assert Fit.load(tmp_path / "fit.zarr").posterior.sizes == fit.posterior.sizes

    def noisy(self, *args, **kwargs):  # only zarr's consolidated-metadata warning is silenced
        warnings.warn("something else about this store", UserWarning)
        warnings.warn("Consolidated metadata is currently not part of the spec", UserWarning)

    monkeypatch.setattr(type(fit.tree), "to_zarr", noisy)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fit.save(tmp_path / "other.zarr")
    assert [str(w.message) for w in seen] == ["something else about this store"]


# ---------------------------------------------------------------------------
# --out checked before any work
# ---------------------------------------------------------------------------


@pytest.fixture()
def table_csv(tmp_path):
    path = tmp_path / "data.csv"
    twoway.simulate("crossed", 4, 5, seed=3).data.to_csv(path)
    return path


def test_fit_refuses_out_equal_to_its_data_file_and_leaves_it_unchanged(capsys, table_csv):
    before = table_csv.read_bytes()
    status, _, err = run_cli(capsys, "fit", table_csv, "--model", "crossed", "--out", table_csv)
    one_error(status, err, "data.csv", "must end in one of")
    assert table_csv.read_bytes() == before


def test_check_output_refuses_an_input_under_another_name(tmp_path, monkeypatch):
    fit_file = tmp_path / "a.nc"
    fit_file.write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    with pytest.raises(TwowayError, match="is an input of this command"):
        check_output("../a.nc", endings=(".nc",), inputs=[fit_file])
    os.symlink(fit_file, tmp_path / "link.nc")
    with pytest.raises(TwowayError, match="is an input of this command"):
        check_output(tmp_path / "link.nc", endings=(".nc",), inputs=[fit_file])


@pytest.mark.parametrize("out, needle", [
    ("/proc/twoway-test/fit.nc", "does not exist"),
    ("/proc/fit.nc", "cannot be written"),
    ("", "needs a name"),
    ("nowhere/fit.nc", "does not exist"),
    ("fit.csv", "must end in one of"),
])
def test_a_bad_out_is_refused_before_any_compiling(capsys, table_csv, monkeypatch, out, needle):
    """No model is compiled and no phase line printed: the refusal comes before the work."""
    fit_module = sys.modules["twoway.fit"]  # the module (twoway.fit is also the function)
    calls = []
    for module in (fit_module, sys.modules["twoway.app.cli"]):  # the command line holds its own name
        monkeypatch.setattr(module, "compile_model", lambda *a, **k: calls.append(a) or 1 / 0)
    monkeypatch.chdir(table_csv.parent)
    status, _, err = run_cli(capsys, "fit", table_csv.name, "--model", "crossed", "--out", out)
    one_error(status, err, needle)
    assert calls == []
    assert "fitting" not in err and "compiling" not in err and "sampling" not in err


def test_a_folder_out_that_is_not_a_zarr_store_is_refused(capsys, table_csv, tmp_path):
    folder = tmp_path / "mine.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    status, _, err = run_cli(capsys, "fit", table_csv, "--model", "crossed", "--out", folder)
    one_error(status, err, "not a zarr store")
    assert (folder / "notes.txt").read_text() == "keep me"


def test_simulate_and_report_check_their_outputs_first(capsys, tmp_path, small_fit):
    status, _, err = run_cli(capsys, "simulate", "--rows", 3, "--cols", 3, "--out", tmp_path / "t.json")
    one_error(status, err, "must end in one of '.csv', '.csv.gz'")
    status, _, err = run_cli(capsys, "simulate", "--rows", 3, "--cols", 3, "--out", tmp_path / "a.csv",
                             "--truth", tmp_path / "a.csv")
    one_error(status, err, "truth file")
    assert not (tmp_path / "a.csv").exists()
    status, _, err = run_cli(capsys, "report", small_fit, "--out", small_fit)
    one_error(status, err, "must end in one of '.html'")
    before = small_fit.read_bytes()
    status, _, err = run_cli(capsys, "report", small_fit, "--out", "/proc/r.html")
    one_error(status, err, "cannot be written")
    assert small_fit.read_bytes() == before


def test_simulate_writes_a_gzipped_table_that_fit_reads(capsys, tmp_path):
    out = tmp_path / "t.csv.gz"
    status, _, err = run_cli(capsys, "simulate", "--rows", 3, "--cols", 4, "--seed", 1, "--out", out)
    assert status == 0, err
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    data = twoway.TwoWayData.from_csv(out, row="row", col="col", value="value")
    assert data.values.shape == (1, 3, 4)


# ---------------------------------------------------------------------------
# self-contained fit files; relative paths in a model file
# ---------------------------------------------------------------------------


def test_relative_known_file_is_resolved_against_the_model_files_folder(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    write_matrix(models / "K.csv", ROWS, ar1(4, 0.5))
    (models / "m.toml").write_text('preset = "crossed"\nrow_effect_cov = "known:K.csv"\n', encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_matrix(elsewhere / "K.csv", ROWS, np.eye(4))  # a decoy beside the working folder
    monkeypatch.chdir(elsewhere)
    spec = twoway.load_model("../models/m.toml")
    assert spec.row_effect_cov == f"known:{models / 'K.csv'}"
    data = twoway.simulate("crossed", 4, 3, seed=1, row_labels=ROWS).data
    plan = twoway.resolve(spec, data)
    np.testing.assert_allclose(plan.inputs["row_effect_cov"], ar1(4, 0.5))


def test_a_missing_known_file_says_where_it_looked(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.toml").write_text('preset = "kronecker"\nrow_structure = "known:sub/K.csv"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    data = twoway.simulate("crossed", 4, 3, seed=1, row_labels=ROWS).data
    with pytest.raises(DataError, match=r"does not exist; looked for '.*models/sub/K\.csv'"):
        twoway.resolve(twoway.load_model("models/m.toml"), data)


def test_plan_inputs_replace_the_files_for_every_kind_of_matrix(tmp_path):
    cols = ["c1", "c2", "c3"]
    data = twoway.simulate("crossed", 4, 3, seed=1, row_labels=ROWS, col_labels=cols).data
    write_matrix(tmp_path / "U.csv", ROWS, ar1(4, 0.3))
    write_matrix(tmp_path / "V.csv", cols, ar1(3, 0.6))
    cells = [f"{r}:{c}" for r in ROWS for c in cols]
    write_matrix(tmp_path / "S.csv", cells, np.kron(ar1(4, 0.2), np.eye(3)) + np.eye(12))
    write_matrix(tmp_path / "K.csv", cols, ar1(3, 0.4))
    specs = [
        twoway.preset("kronecker", row_structure=f"known:{tmp_path / 'U.csv'}",
                      col_structure=f"known:{tmp_path / 'V.csv'}"),
        twoway.preset("crossed", residual="full", covariance=str(tmp_path / "S.csv"), sigma=False),
        twoway.preset("crossed", col_effect_cov=f"known:{tmp_path / 'K.csv'}"),
    ]
    plans = [twoway.resolve(spec, data) for spec in specs]
    assert sorted(plans[0].inputs) == ["col_structure", "row_structure"]
    assert sorted(plans[1].inputs) == ["covariance"]
    assert sorted(plans[2].inputs) == ["col_effect_cov"]
    for name in ("U", "V", "S", "K"):
        (tmp_path / f"{name}.csv").unlink()
    for spec, plan in zip(specs, plans):
        with pytest.raises(DataError, match="does not exist"):
            twoway.resolve(spec, data)
        again = twoway.resolve(spec, data, inputs=plan.inputs)
        assert again.path == plan.path
        for key, matrix in plan.inputs.items():
            np.testing.assert_array_equal(again.inputs[key], matrix)


def test_a_fit_is_compared_from_another_folder_with_its_matrix_and_model_files_gone(capsys, tmp_path, monkeypatch):
    models, work, other = (tmp_path / name for name in ("models", "work", "other"))
    for folder in (models, work, other):
        folder.mkdir()
    rows = [f"r{i}" for i in range(5)]
    write_matrix(models / "K.csv", rows, ar1(5, 0.6))
    (models / "related.toml").write_text('preset = "crossed"\nrow_effect_cov = "known:K.csv"\n',
                                         encoding="utf-8")
    twoway.simulate("crossed", 5, 4, seed=4, row_labels=rows).data.to_csv(work / "d.csv")
    monkeypatch.chdir(work)
    common = ["--chains", 2, "--draws", 100, "--tune", 100, "--seed", 1, "--quiet", "--no-progress"]
    status, _, err = run_cli(capsys, "fit", "d.csv", "--model", "../models/related.toml", "--out", "a.nc", *common)
    assert status == 0, err
    (work / "b.nc").write_bytes((work / "a.nc").read_bytes())  # a second fit of the table to compare with
    (models / "K.csv").unlink()
    (models / "related.toml").unlink()
    monkeypatch.chdir(other)
    fit = Fit.load("../work/a.nc")
    np.testing.assert_allclose(fit.inputs["row_effect_cov"], ar1(5, 0.6))
    assert fit.plan.design is not None
    status, out, err = run_cli(capsys, "compare", "../work/a.nc", "../work/b.nc", "--json")
    assert status == 0, err
    assert '"models"' in out
    status, out, err = run_cli(capsys, "summary", "../work/a.nc")
    assert status == 0, err


# ---------------------------------------------------------------------------
# reading .csv.gz, Parquet, semicolons with decimal commas
# ---------------------------------------------------------------------------

LONG = "row,col,value,se\nA,x,1.5,0.5\nA,y,-2.25,0.25\nB,x,3e-1,0.5\nB,y,4,1\n"
EXPECTED = np.array([[[1.5, -2.25], [0.3, 4.0]]])


def read(path):
    return twoway.TwoWayData.from_csv(path, row="row", col="col", value="value", se="se")


def test_a_gzipped_csv_reads_as_the_plain_one(tmp_path):
    import gzip

    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(LONG.encode()))
    data = read(path)
    np.testing.assert_array_equal(data.values, EXPECTED)
    assert twoway.table.data.csv_header(path) == ["row", "col", "value", "se"]
    bad = tmp_path / "cut.csv.gz"
    bad.write_bytes(gzip.compress(LONG.encode())[:30])
    with pytest.raises(DataError, match="gzip-compressed but cannot be decompressed"):
        read(bad)


def test_semicolons_with_decimal_commas_and_tabs(tmp_path):
    european = tmp_path / "eu.csv"
    european.write_text(LONG.replace(",", ";").replace("1.5", "1,5").replace("-2.25", "-2,25")
                        .replace("0.25", "0,25").replace("3e-1", "3e-1"), encoding="utf-8")
    data = read(european)
    np.testing.assert_array_equal(data.values, EXPECTED)
    np.testing.assert_array_equal(data.se, [[[0.5, 0.25], [0.5, 1.0]]])
    tabs = tmp_path / "t.tsv"
    tabs.write_text(LONG.replace(",", "\t"), encoding="utf-8")
    np.testing.assert_array_equal(read(tabs).values, EXPECTED)
    thousands = tmp_path / "k.csv"  # grouped digits are not guessed at
    thousands.write_text(european.read_text().replace("1,5", "1.234,5"), encoding="utf-8")
    with pytest.raises(DataError, match=r"'value' column must be numeric; data row 1 \(line 2.*'1\.234,5'"):
        read(thousands)


def test_a_parquet_table_and_a_clear_error_without_pyarrow(tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"row": ["A", "A", "B", "B"], "col": ["x", "y", "x", "y"],
                          "value": [1.5, -2.25, 0.3, 4.0], "se": [0.5, 0.25, 0.5, 1.0]})
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    np.testing.assert_array_equal(read(path).values, EXPECTED)
    assert twoway.table.data.csv_header(path) == ["row", "col", "value", "se"]
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    with pytest.raises(DataError, match="needs the package 'pyarrow', which is not installed"):
        read(path)


# ---------------------------------------------------------------------------
# progress lines
# ---------------------------------------------------------------------------


def test_fit_lines_say_each_phase_as_it_starts():
    import io

    from twoway.app.progress import FitLines, Progress

    stream = io.StringIO()
    lines = FitLines(Progress(stream=stream, isatty=False))
    lines("compile")
    lines("sample", compile_seconds=2.5, cache="miss")
    for done in (250, 500, 750, 1000, 2000):  # segments of iterations over all chains
        lines("iterations", done=done, total=2000)
    lines("draw_back")
    lines.sampled({"compile_seconds": 2.5, "sampling_seconds": 1.0})
    lines.writing("f.nc")
    said = stream.getvalue().splitlines()
    assert said[:7] == ["twoway: compiling the model ...", "twoway: compiling done in 2.5 s (cache miss)",
                        "twoway: sampling ...",  # a line each time another tenth of the work is done
                        "twoway: sampling: 12% (250/2000 iterations, warm-up included)",
                        "twoway: sampling: 25% (500/2000 iterations, warm-up included)",
                        "twoway: sampling: 37% (750/2000 iterations, warm-up included)",
                        "twoway: sampling: 50% (1000/2000 iterations, warm-up included)"]
    assert said[7] == "twoway: sampling: 100% (2000/2000 iterations, warm-up included)"
    assert said[8].startswith("twoway: sampling done in ")
    assert said[9:] == ["twoway: drawing the integrated effects back ...", "twoway: writing the fit to f.nc ..."]
    # an engine that tells nothing: the lines come from the fit's info, once
    stream = io.StringIO()
    lines = FitLines(Progress(stream=stream, isatty=False))
    lines("draw_back")
    lines.sampled({"compile_seconds": 12.0, "sampling_seconds": 3.0, "compile_cache": "hit"})
    assert stream.getvalue().splitlines() == ["twoway: compiling done in 12 s (cache hit)",
                                              "twoway: sampling done in 3.0 s"]
    stream = io.StringIO()
    lines = FitLines(Progress(enabled=False, stream=stream))
    lines("compile")
    lines.writing("f.nc")
    assert stream.getvalue() == ""


# ---------------------------------------------------------------------------
# the small things
# ---------------------------------------------------------------------------


def test_shortened_labels_are_never_ambiguous():
    from twoway.table.labels import ELLIPSIS, shorten_labels

    rng = np.random.default_rng(11)
    stems = ["Very long treatment name ", "Treatment group, high dose ", "x" * 40]
    labels = sorted({stem + "".join(rng.choice(list("ABab01 -"), size=int(rng.integers(0, 4))))
                     + rng.choice(["", " (control)", " of the second experiment"]) for stem in stems
                     for _ in range(40)} | {"short", "Very long t…nt name A"})
    for width in (8, 12, 24):
        shown = shorten_labels(labels, width)
        assert len(set(shown)) == len(labels)  # distinct labels stay distinct
        for lab, text in zip(labels, shown):
            if len(lab) <= width:
                assert text == lab
            elif text != lab:  # the start and the end of the label, its middle cut (or whole, to differ)
                head, _, tail = text.partition(ELLIPSIS)
                assert lab.startswith(head) and lab.endswith(tail) and len(text) < len(lab)
        alone = shorten_labels([lab for lab in labels if len(lab) > width][:1], width)
        assert len(alone[0]) == width  # no other label in the way: cut to the width
    assert shorten_labels(["Very long treatment name A", "Very long treatment name B"]) == [
        "Very long tr…ment name A", "Very long tr…ment name B"]


def test_summary_shows_a_modified_preset_and_shortened_labels():
    rows = [f"Very long treatment name {c}" for c in "ABCD"]
    data = twoway.simulate("crossed", 4, 5, seed=1, row_labels=rows).data
    spec = twoway.preset("crossed").with_priors(sigma=twoway.Prior.make("halfnormal", sigma=2.0))
    assert spec.label == "crossed (modified: sigma prior)"
    assert twoway.preset("crossed", row_scale="homo").label == "crossed (modified: row_scale homo)"
    assert twoway.preset("crossed").label == "crossed"
    fit = twoway.fit(spec, data, chains=2, draws=100, tune=100, seed=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", twoway.ConvergenceWarning)  # 100 draws: rough, and said so
        summary = fit.summary()
    text = summary.format()
    assert "model: crossed (modified: sigma prior):" in text
    table = [line for line in text.splitlines() if line.startswith(("row_effect[", "row_mean["))]
    assert len(table) == 8 and table[0].startswith("row_effect[Very long tr…ment name A] ")
    assert not any("Very long treatment name" in line for line in table)
    assert "row_effect[Very long treatment name A]" in summary.to_dict()["parameters"]  # JSON: whole


def test_dof_takes_the_data_file(capsys, tmp_path):
    path = tmp_path / "d.csv"
    sim = twoway.simulate("crossed", 4, 5, 2, seed=1, missing=0.25)
    sim.data.to_csv(path)
    status, out, err = run_cli(capsys, "dof", path, "--model", "crossed", "--json")
    assert status == 0, err
    import json

    got = json.loads(out)
    assert got["total_cells"] == 40 and got["observed_cells"] == sim.data.n_observed < 40
    status, _, err = run_cli(capsys, "dof", path, "--rows", 3, "--cols", 3)
    one_error(status, err, "not both")
    status, _, err = run_cli(capsys, "dof", "--rows", 3)
    one_error(status, err, "a data file, or the table's shape")


def test_obvious_things_or_clear_errors():
    with pytest.raises(ModelError, match=r"options of preset\('crossed'\) must be among .*; got 'foo'\."):
        twoway.preset("crossed", foo=1)
    with pytest.raises(ModelError, match=r"got 'sigmaa' \(did you mean 'sigma'\?\)"):
        twoway.preset("crossed", sigmaa=1.0)
    spec = twoway.preset("crossed", priors={"sigma": {"dist": "halfnormal", "sigma": 1.0}})
    assert dict(spec.priors)["sigma"].kwargs == {"sigma": 1.0}
    with pytest.raises(ModelError, match=r"number of rows must be a whole number; got 2\.5"):
        twoway.simulate("crossed", 2.5, 5)
    with pytest.raises(ModelError, match=r"number of replicates must be a whole number; got '2'"):
        twoway.simulate("crossed", 3, 5, "2")
    with pytest.raises(ModelError, match=r"at least 2 rows, 2 columns and 1 replicate; got 3 x 5 x 0"):
        twoway.simulate("crossed", 3, 5, 0)
    assert twoway.simulate("crossed", 3.0, 4).data.values.shape == (1, 3, 4)
    values = np.array([[1.0, np.nan, 2.0], [3.0, 4.0, 5.0]])
    data = twoway.TwoWayData.from_array(values, se=0.5)
    np.testing.assert_array_equal(data.se, [[[0.5, np.nan, 0.5], [0.5, 0.5, 0.5]]])
    with pytest.raises(DataError, match="same shape as the values"):
        twoway.TwoWayData.from_array(values, se=[0.5, 0.5])


def test_report_truth_must_fit_the_fit(capsys, tmp_path, small_fit):
    import json

    from twoway.results.recovery import check_truth

    fit = Fit.load(small_fit)
    cases = [
        ([1, 2], "holds a list"),
        ({"a": 1}, "must name parameters of the fit"),
        ({"parameters": {}, "diagnostics": {}}, "must name parameters of the fit"),
        ({"truth": {"sigma": "abc"}}, "the true 'sigma' in t.json is 'abc'"),
        ({"row_effect": {"row1": 0.1}}, "lacks 'row2', 'row3', 'row4'"),
        ({"row_effect": {f"row{i}": 0.0 for i in range(1, 6)}}, "has 'row5', not in the fit's table"),
        ({"col_effect": [0.0, 1.0]}, "must have 5 values"),
    ]
    for truth, needle in cases:
        with pytest.raises(DataError, match=re.escape(needle)):
            check_truth(truth, fit, source="t.json")
    good = {"truth": {"sigma": 0.5, "row_effect": {f"row{i}": 0.0 for i in range(1, 5)}, "other": "x"}}
    assert check_truth(good, fit)["sigma"] == 0.5
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"truth": {"row_effect": {"row1": 0.1}}}))
    status, _, err = run_cli(capsys, "report", small_fit, "--truth", path, "--out", tmp_path / "r.html")
    one_error(status, err, "the truth file", "lacks 'row2'")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_jax_draws_do_not_depend_on_the_segment_length(monkeypatch):
    """A chain run in segments (for progress lines) gives the draws of one run: same keys, same states."""
    from twoway.engines.jax import sampler
    from twoway.engines.jax.model import describe, model_args

    data = twoway.simulate("crossed", 4, 5, seed=1).data
    plan = twoway.resolve(twoway.preset("crossed"), data)
    outs, told = [], []
    for segments in (8, 2):
        monkeypatch.setattr(sampler, "SEGMENTS", segments)
        prog = sampler.ChainProgram(describe(plan), 256, quick_compile=True)
        outs.append(prog.run(model_args(plan), 3, 2, 100, 100, cores=1,
                             on_progress=lambda done, total: told.append((segments, done, total))))
    for name in outs[0]["values"]:
        np.testing.assert_array_equal(outs[0]["values"][name], outs[1]["values"][name])
    assert [d for s, d, t in told if s == 8] == [64, 128, 192, 200, 264, 328, 392, 400]
    assert [d for s, d, t in told if s == 2] == [128, 200, 328, 400] and {t for _, _, t in told} == {400}


def test_demo_checks_its_folder_before_fitting(capsys, tmp_path, monkeypatch):
    fit_module = sys.modules["twoway.fit"]
    monkeypatch.setattr(fit_module, "fit", lambda *a, **k: 1 / 0)  # no fitting may start
    monkeypatch.setattr(importlib.import_module("twoway.app.demo"), "compile_model", lambda *a, **k: 1 / 0)
    afile = tmp_path / "a-file"
    afile.write_text("x")
    status, _, err = run_cli(capsys, "demo", "--out", afile)
    one_error(status, err, "is a file")
    status, _, err = run_cli(capsys, "demo", "--out", "/proc/twoway-demo")
    one_error(status, err, "cannot be made")
