"""What a user can trust: things that used to pass without a word.

An empty se among cells that have one, a disconnected design (contrasts from the
priors alone), an empty model file, a cache folder that is a file, and a fit
without a seed (now recorded, so the fit can be redone). Tested at the command
line where the user meets them; two small fits run here.
"""

from __future__ import annotations

import io
import sys
import warnings

import numpy as np
import pytest

from twoway.app.cli import main
from twoway.errors import ModelError, TwowayWarning
from twoway.fit import Fit, compile_model
from twoway.results.contrasts import contrasts
from twoway.table.connectivity import components
from twoway.table.data import TwoWayData

# studies s1, s2 compare A with B; s3, s4 compare C with D; nothing links the pairs.
# s2's B has no se while every other cell has one.
DISCONNECTED = """row,col,value,se
s1,A,0.10,0.2
s1,B,0.50,0.2
s2,A,0.30,0.2
s2,B,0.90,
s3,C,-0.50,0.2
s3,D,0.20,0.2
s4,C,-0.20,0.2
s4,D,0.60,0.2
"""


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def one_error(status: int, err: str, *needles: str) -> str:
    assert status == 2, err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("twoway: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def disconnected_fit(tmp_path_factory):
    """``twoway fit`` (crossed, no --seed) on the disconnected table: (folder, fit path, stdout, stderr)."""
    folder = tmp_path_factory.mktemp("trust")
    (folder / "t.csv").write_text(DISCONNECTED)
    path = folder / "f.nc"
    mp = pytest.MonkeyPatch()
    out, err = io.StringIO(), io.StringIO()
    mp.setattr(sys, "stdout", out)
    mp.setattr(sys, "stderr", err)
    try:
        status = main(["fit", str(folder / "t.csv"), "--model", "crossed", "--chains", "2", "--draws", "100",
                       "--tune", "150", "--out", str(path)])
    finally:
        mp.undo()
    assert status == 0, err.getvalue()
    return folder, path, out.getvalue(), err.getvalue()


# -- 1. an empty se among cells with one ---------------------------------------------------------


def test_cli_fit_says_which_cell_has_no_se(disconnected_fit):
    _, _, _, err = disconnected_fit
    said = [line for line in err.splitlines() if "column is empty on" in line]
    assert len(said) == 1, err  # one warning per table
    line = said[0]
    assert line.startswith("twoway: warning: ")
    assert "empty on 1 of 8 observed cells" in line
    assert "data row 4 (line 5; row='s2', col='B')" in line
    assert "variance is the model's unknown part alone" in line
    assert "--zero-se none" in line


def test_an_explicit_zero_se_with_zero_se_none_is_quiet(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(DISCONNECTED.replace("s2,B,0.90,", "s2,B,0.90,0"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TwowayWarning)
        data = TwoWayData.from_csv(path, row="row", col="col", value="value", se="se", zero_se="none")
    assert data.se[0, 1, 1] == 0.0
    path.write_text("row,col,value,se\n" + "".join(f"r{i},c{j},{i + j},\n" for i in range(2) for j in range(2)))
    with warnings.catch_warnings():  # no se anywhere: a table without known errors, nothing to say
        warnings.simplefilter("error", TwowayWarning)
        TwoWayData.from_csv(path, row="row", col="col", value="value", se="se")


def test_a_wide_array_names_the_first_cells_and_the_count():
    values = np.arange(12.0).reshape(4, 3)
    se = np.full((4, 3), 0.5)
    se[1, :] = np.nan
    se[3, :2] = np.nan
    values[3, 2] = np.nan  # a missing cell's empty se is not counted
    with pytest.warns(TwowayWarning) as record:
        data = TwoWayData.from_array(values, se=se, row_labels=list("abcd"))
    said = [str(w.message) for w in record if issubclass(w.category, TwowayWarning)]
    assert len(said) == 1
    assert "empty on 5 of 11 observed cells" in said[0]
    assert "cell (row 'b', col 'col1'); cell (row 'b', col 'col2'); cell (row 'b', col 'col3') and 2 more" in said[0]
    assert data.se[0, 1, 0] == 0.0 and data.se[0, 0, 0] == 0.5


# -- 2. a disconnected design ---------------------------------------------------------------------


def test_components_of_a_bipartite_design():
    mask = ~np.isnan(TwoWayData.from_array([[1, 2, np.nan, np.nan], [3, 4, np.nan, np.nan],
                                            [np.nan, np.nan, 5, 6], [np.nan, np.nan, 7, 8]]).values)
    parts = components(mask, list("pqrs"), list("ABCD"))
    assert parts.n == 2 and not parts.connected
    assert parts.row == (0, 0, 1, 1) and parts.col == (0, 0, 1, 1)
    assert parts.describe() == "part 1: rows 'p', 'q' with columns 'A', 'B'; part 2: rows 'r', 's' with columns 'C', 'D'"
    linked = mask.copy()
    linked[0, 1, 2] = True  # one cell joins the parts
    assert components(linked).connected
    # a chain through cells: r0-c0, r1-c0, r1-c1 ... connected although most cells are missing
    chain = np.eye(5, dtype=bool) | np.eye(5, k=1, dtype=bool)
    assert components(chain).n == 1


def test_cli_summary_flags_contrasts_from_the_prior_alone(disconnected_fit, capsys):
    _, path, fit_out, _ = disconnected_fit
    assert "note: the design is disconnected (part 1: rows 's1', 's2' with columns 'A', 'B'; " in fit_out
    status, out, err = run_cli(capsys, "summary", path, "--contrast", "col=A")
    assert status == 0, err
    warned = [line for line in err.splitlines() if "come from the priors alone" in line]
    assert len(warned) == 1 and "'C', 'D' against 'A'" in warned[0], err
    rows = {line.split()[0] + " " + line.split()[2]: line.split()[-1] for line in out.splitlines()
            if line.split()[:3] in (["B", "-", "A"], ["C", "-", "A"], ["D", "-", "A"])}
    assert rows == {"B A": "False", "C A": "True", "D A": "True"}, out
    assert "prior_only" in out


def test_contrasts_flag_the_levels_of_the_other_part(disconnected_fit):
    _, path, _, _ = disconnected_fit
    fit = Fit.load(path)
    with pytest.warns(TwowayWarning, match="rows 's1', 's2' against 's3' come from the priors alone"):
        c = contrasts(fit, row="s3")  # s4 is linked to s3; s1, s2 are not
    assert c.prior_only == ("s1 - s3", "s2 - s3")
    assert list(c.summary["prior_only"]) == [True, True, False]
    assert list(c.summary.index) == ["s1 - s3", "s2 - s3", "s4 - s3"]


def test_cli_refuses_contrasts_across_parts_with_fixed_effects(tmp_path, capsys):
    csv = tmp_path / "t.csv"
    csv.write_text(DISCONNECTED.replace("s2,B,0.90,", "s2,B,0.90,0.2"))
    status, _, err = run_cli(capsys, "fit", csv, "--model", "common-effect", "--draws", "50", "--seed", "3",
                             "--out", tmp_path / "f.nc")
    assert status == 0, err
    status, _, err = run_cli(capsys, "summary", tmp_path / "f.nc", "--contrast", "col=A")
    one_error(status, err, "disconnected", "part 1: rows 's1', 's2' with columns 'A', 'B'",
              "part 2: rows 's3', 's4' with columns 'C', 'D'", "'C', 'D'", "fixed")
    status, _, err = run_cli(capsys, "summary", tmp_path / "f.nc", "--contrast", "col=C")
    one_error(status, err, "the columns 'A', 'B' cannot be compared with the reference 'C'")
    with pytest.raises(ModelError, match="disconnected"):
        contrasts(Fit.load(tmp_path / "f.nc"), row="s1")


# -- 3. an empty model file -----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"])
def test_cli_refuses_an_empty_model_file(tmp_path, capsys, text):
    model = tmp_path / "empty.toml"
    model.write_text(text)
    csv = tmp_path / "t.csv"
    csv.write_text(DISCONNECTED)
    status, _, err = run_cli(capsys, "dof", csv, "--model", model)
    one_error(status, err, "empty.toml", "must set a preset or model options", 'preset = "crossed"')


# -- 5. the seed of a fit without --seed ----------------------------------------------------------


def test_cli_fit_without_seed_records_the_seed_used(disconnected_fit, capsys):
    folder, path, fit_out, _ = disconnected_fit
    first = Fit.load(path)
    seed = first.info["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**31
    assert "seed None" not in fit_out and f"seed {seed}" in fit_out
    again = folder / "again.nc"
    status, _, err = run_cli(capsys, "fit", folder / "t.csv", "--model", "crossed", "--chains", "2", "--draws",
                             "100", "--tune", "150", "--seed", seed, "--out", again)
    assert status == 0, err
    redone = Fit.load(again)
    assert redone.info["seed"] == seed
    for name in ("intercept", "sigma", "row_effect", "col_mean"):
        np.testing.assert_array_equal(redone.posterior[name].values, first.posterior[name].values)


def test_two_fits_without_seed_draw_different_seeds():
    compiled = compile_model("common-effect", TwoWayData.from_array(np.arange(9.0).reshape(3, 3) ** 1.5, se=0.3))
    a = compiled.sample(chains=1, draws=20, tune=0, progress=False)
    b = compiled.sample(chains=1, draws=20, tune=0, progress=False)
    assert a.info["seed"] != b.info["seed"]
    assert not np.array_equal(a.posterior["row_effect"].values, b.posterior["row_effect"].values)
    c = compiled.sample(chains=1, draws=20, tune=0, progress=False, seed=a.info["seed"])
    np.testing.assert_array_equal(a.posterior["row_effect"].values, c.posterior["row_effect"].values)
