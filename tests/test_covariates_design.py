"""Tests of covariates in the mean: the table's covariate columns and the design of a formula over them.

twoway.table.covariates (required_variables, covariate_design, CovariateDesign.design_for) and
TwoWayData.covariates (reading from CSV / frames / arrays, round trips through to_long, to_dataset,
netCDF and zarr files, with_values).
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from twoway.errors import DataError, ModelError
from twoway.table.covariates import (
    CovariateDesign,
    FactorLevels,
    covariate_design,
    required_variables,
)
from twoway.table.data import TwoWayData

# ---------------------------------------------------------------------------
# a small table: 4 rows x 3 columns, one covariate of each kind
# ---------------------------------------------------------------------------

ROWS = ["r1", "r2", "r3", "r4"]
COLS = ["c1", "c2", "c3"]


def long_frame(seed: int = 0, replicates: int = 1) -> pd.DataFrame:
    """One line per cell: dose (per row), site (per column, text), x (per cell), z (per column, numbers as text)."""
    rng = np.random.default_rng(seed)
    lines = []
    for r in range(replicates):
        for i, row in enumerate(ROWS):
            for j, col in enumerate(COLS):
                lines.append({
                    "rep": f"R{r}", "row": row, "col": col, "value": rng.normal(),
                    "dose": float(i + 1), "site": "aba"[j], "x": rng.normal(), "z": str(2 * j + 1),
                    "w": rng.normal() + i,  # varies within rows and across replicates
                })
    return pd.DataFrame(lines)


COVARIATES = ["dose", "site", "x", "z", "w"]


def table(df: pd.DataFrame | None = None, **kw) -> TwoWayData:
    df = long_frame() if df is None else df
    options = {"row": "row", "col": "col", "value": "value", "covariates": COVARIATES}
    options.update(kw)
    return TwoWayData.from_long(df, **options)


@pytest.fixture(scope="module")
def data() -> TwoWayData:
    return table()


# ---------------------------------------------------------------------------
# the table's covariate columns
# ---------------------------------------------------------------------------


def test_covariates_are_kept_in_observed_order_with_their_types(data):
    df = long_frame()
    assert set(data.covariates) == set(COVARIATES)
    _, i, j = data.observed_index()
    # lines of long_frame are in (row, col) order already; the covariate of cell (i, j) is that line's
    line = i * 3 + j
    np.testing.assert_array_equal(data.covariates["x"], df["x"].to_numpy()[line])
    assert data.covariates["dose"].dtype == np.float64
    assert data.covariates["z"].dtype == np.float64  # numbers written as text read as numbers
    assert data.covariates["site"].dtype == object and list(data.covariates["site"][:3]) == ["a", "b", "a"]
    assert not data.covariates["x"].flags.writeable
    assert "covariates=5" in repr(data)
    assert data.summary()["covariates"] == COVARIATES


def test_lines_in_any_order_give_covariates_in_cell_order():
    df = long_frame()
    shuffled = df.iloc[np.random.default_rng(1).permutation(len(df))].reset_index(drop=True)

    def by_cell(data):
        _, i, j = data.observed_index()
        cells = zip(np.asarray(data.row_labels)[i], np.asarray(data.col_labels)[j], strict=True)
        return dict(zip(cells, data.covariates["x"], strict=True))

    assert by_cell(table(shuffled)) == by_cell(table(df))


def test_types_of_covariate_columns():
    df = long_frame()
    df["flag"] = df["x"] > 0
    df["big"] = df["x"]
    df.loc[3, "big"] = np.inf
    data = table(df, covariates=["flag"])
    assert set(data.covariates["flag"]) == {"True", "False"}  # booleans are a factor
    with pytest.raises(DataError, match=r"'big' must be finite; data row 4 \(row='r2', col='c1'\) has inf"):
        table(df, covariates=["big"])


def test_csv_missing_covariate_names_the_line_and_cell(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("row,col,value,dose,site\nA,X,1.0,1,a\nA,Y,,,\nB,X,2.0,2,b\nB,Y,3.0,,a\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"'dose' must have a value .*line 5; row='B', col='Y'.*fill it in or drop that line"):
        TwoWayData.from_csv(path, row="row", col="col", value="value", covariates=["dose", "site"])
    # a line with a missing value needs no covariate (line 3 above)
    path.write_text("row,col,value,dose,site\nA,X,1.0,1,a\nA,Y,,,\nB,X,2.0,2,b\nB,Y,3.0,3,a\n", encoding="utf-8")
    data = TwoWayData.from_csv(path, row="row", col="col", value="value", covariates=["dose", "site"])
    np.testing.assert_array_equal(data.covariates["dose"], [1.0, 2.0, 3.0])
    assert list(data.covariates["site"]) == ["a", "b", "a"]


def test_unknown_covariate_column_suggests_the_closest(tmp_path):
    with pytest.raises(DataError, match=r"'dos' given for a covariate is not in the table.*did you mean 'dose'\?"):
        table(covariates=["dos"])
    with pytest.raises(DataError, match=r"list of column names; got the string 'dose'"):
        table(covariates="dose")
    with pytest.raises(DataError, match=r"'value' is the value column"):
        table(covariates=["value"])


def test_semicolon_csv_reads_decimal_commas_in_covariates(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("row;col;value;dose\nA;X;1,5;0,25\nA;Y;2,0;1\nB;X;3,0;2,5\nB;Y;4,0;3\n", encoding="utf-8")
    data = TwoWayData.from_csv(path, row="row", col="col", value="value", covariates=["dose"])
    np.testing.assert_allclose(data.covariates["dose"], [0.25, 1.0, 2.5, 3.0])


def test_replicates_have_covariates_per_line():
    df = long_frame(replicates=2)
    data = table(df, replicate="rep")
    assert data.n_replicates == 2 and data.covariates["w"].shape == (24,)
    np.testing.assert_array_equal(data.covariates["w"], df["w"].to_numpy())  # lines are in C order already


def test_to_long_and_csv_round_trip_keep_covariates(tmp_path, data):
    long = data.to_long()
    assert list(long.columns) == ["row", "col", "value", *COVARIATES]
    path = tmp_path / "out.csv"
    data.to_csv(path)
    again = TwoWayData.from_csv(path, **data.long_options())
    for name in COVARIATES:
        np.testing.assert_array_equal(again.covariates[name], data.covariates[name])


@pytest.mark.parametrize("engine", ["h5netcdf", "zarr"])
def test_dataset_round_trip_through_fit_files_keeps_covariates(tmp_path, engine):
    data = table(long_frame(replicates=2), replicate="rep")
    ds = data.to_dataset()
    assert ds.sizes["cell"] == data.n_observed
    back = TwoWayData.from_dataset(ds)
    tree = xr.DataTree.from_dict({"observed_data": ds})
    if engine == "h5netcdf":
        path = tmp_path / "fit.nc"
        tree.to_netcdf(path, engine="h5netcdf")
    else:
        path = tmp_path / "fit.zarr"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr 3: consolidated metadata is not in its spec
            tree.to_zarr(path, mode="w")
    with xr.open_datatree(path, engine=engine) as opened:
        loaded = TwoWayData.from_dataset(opened["observed_data"].to_dataset())
    for table_ in (back, loaded):
        assert list(table_.covariates) == COVARIATES
        for name in COVARIATES:
            np.testing.assert_array_equal(table_.covariates[name], data.covariates[name])
        assert table_.covariates["site"].dtype == object and isinstance(table_.covariates["site"][0], str)
        np.testing.assert_array_equal(table_.values, data.values)


def test_with_values_keeps_covariates_drops_them_with_cells_and_refuses_new_cells(data):
    same = data.with_values(data.values + 1.0)
    np.testing.assert_array_equal(same.covariates["x"], data.covariates["x"])
    values = data.values.copy()
    values[0, 1, 2] = np.nan
    fewer = data.with_values(values)
    keep = fewer.mask[data.mask]
    np.testing.assert_array_equal(fewer.covariates["x"], data.covariates["x"][keep])
    with pytest.raises(DataError, match=r"cell \(row 'r2', col 'c3'\) has a value but no covariates"):
        fewer.with_values(data.values)


def test_from_array_takes_covariates_on_the_grid_or_per_observed_cell():
    values = np.array([[1.0, 2.0, np.nan], [4.0, 5.0, 6.0]])
    grid = np.array([[10.0, 20.0, np.nan], [40.0, 50.0, 60.0]])
    data = TwoWayData.from_array(values, covariates={"g": grid, "h": ["a", "b", "a", "b", "a"]})
    np.testing.assert_array_equal(data.covariates["g"], [10, 20, 40, 50, 60])
    assert list(data.covariates["h"]) == ["a", "b", "a", "b", "a"]
    grid[1, 1] = np.nan
    with pytest.raises(DataError, match=r"'g' must have a value at every observed cell; cell \(row 'row2', col 'col2'\)"):
        TwoWayData.from_array(values, covariates={"g": grid})
    with pytest.raises(DataError, match=r"one value per observed cell \(5\)"):
        TwoWayData.from_array(values, covariates={"h": ["a", "b"]})
    with pytest.raises(DataError, match=r"'value' has the name of the table's value column"):
        TwoWayData.from_array(values, covariates={"value": np.ones(5)})


def test_from_dataset_reads_grid_variables_as_covariates():
    values = np.arange(6.0).reshape(1, 2, 3)
    ds = TwoWayData.from_array(values).to_dataset()
    ds["temp"] = (("replicate", "row", "col"), values * 10)
    data = TwoWayData.from_dataset(ds, covariates=["temp"])
    np.testing.assert_array_equal(data.covariates["temp"], np.arange(6.0) * 10)
    with pytest.raises(DataError, match=r"variable 'tmp' for that covariate"):
        TwoWayData.from_dataset(ds, covariates=["tmp"])


# ---------------------------------------------------------------------------
# the design: terms, levels and X
# ---------------------------------------------------------------------------


def test_numeric_term_and_where_terms_live(data):
    d = covariate_design("dose + x + C(site) + w", data)
    assert isinstance(d, CovariateDesign)
    assert d.terms == ("dose", "x", "C(site)[T.b]", "w")
    assert d.level == ("row", "cell", "col", "cell")
    assert d.variables == ("dose", "x", "site", "w")
    assert d.X.shape == (data.n_observed, 4) and d.X.dtype == np.float64 and not d.X.flags.writeable
    np.testing.assert_array_equal(d.X[:, 0], data.covariates["dose"])
    np.testing.assert_array_equal(d.X[:, 1], data.covariates["x"])
    np.testing.assert_array_equal(d.X[:, 2], data.covariates["site"] == "b")
    np.testing.assert_allclose(d.scale, d.X.std(axis=0))
    assert d.describe() == ["dose: constant within each row", "x: varies by cell",
                            "C(site)[T.b]: constant within each column", "w: varies by cell"]


def test_levels_with_replicates_and_missing_cells():
    df = long_frame(replicates=2)
    df.loc[5, "value"] = np.nan  # a missing cell: no covariate needed there
    df.loc[5, "w"] = np.nan
    df["per_row"] = df["row"].map({r: float(k) for k, r in enumerate(ROWS)})
    df["per_rep"] = df["rep"].map({"R0": 0.0, "R1": 1.0}) + df["per_row"]  # constant in a row within a replicate only
    data = table(df, replicate="rep", covariates=COVARIATES + ["per_row", "per_rep"])
    d = covariate_design("per_row + C(z) + per_rep + w", data)
    assert d.level == ("row", "col", "col", "cell", "cell")
    assert d.X.shape == (23, 5)


def test_factor_treatment_coding_and_chosen_reference(data):
    d = covariate_design("C(z)", data)  # numbers as a factor: whole numbers keep no decimals
    assert d.terms == ("C(z)[T.3]", "C(z)[T.5]")
    assert d.factors["z"] == FactorLevels(levels=("1", "3", "5"), reference="1",
                                          terms={"3": "C(z)[T.3]", "5": "C(z)[T.5]"})
    chosen = covariate_design("C(z, Treatment(5))", data)
    assert chosen.factors["z"].reference == "5"
    assert chosen.terms == ("C(z, Treatment(5))[T.1]", "C(z, Treatment(5))[T.3]")
    np.testing.assert_array_equal(chosen.X[:, 0], data.covariates["z"] == 1)
    base = covariate_design("C(site, contr.treatment(base='b'))", data)
    assert base.factors["site"].reference == "b" and base.factors["site"].terms == {
        "a": "C(site, contr.treatment(base='b'))[T.a]"}
    text = covariate_design("site", data)  # a text column is a factor without C()
    assert text.terms == ("site[T.b]",) and text.factors["site"].levels == ("a", "b")


def test_interactions(data):
    d = covariate_design("x:w", data)
    assert d.terms == ("x:w",)
    np.testing.assert_allclose(d.X[:, 0], data.covariates["x"] * data.covariates["w"])
    star = covariate_design("x*C(site)", data)
    assert star.terms == ("x", "C(site)[T.b]", "x:C(site)[T.b]")
    np.testing.assert_allclose(star.X[:, 2], data.covariates["x"] * (data.covariates["site"] == "b"))


def test_transforms_and_splines(data):
    d = covariate_design("np.log(dose) + center(x) + scale(w)", data)
    x, w = data.covariates["x"], data.covariates["w"]
    np.testing.assert_allclose(d.X[:, 0], np.log(data.covariates["dose"]))
    np.testing.assert_allclose(d.X[:, 1], x - x.mean())
    np.testing.assert_allclose(d.X[:, 2], (w - w.mean()) / w.std(ddof=1))
    spline = covariate_design("bs(x, df=3)", data)
    assert spline.terms == ("bs(x, df=3)[1]", "bs(x, df=3)[2]", "bs(x, df=3)[3]")
    natural = covariate_design("cr(x, df=3, constraints='center')", data)
    assert natural.X.shape == (data.n_observed, 3)


def test_required_variables_lists_columns_not_functions():
    assert required_variables("np.log(x) + center(y) + bs(z, df=3) + a*b + C(g, contr.treatment(base='b'))"
                              " + Q('my var') + `c d`") == ("x", "y", "z", "a", "b", "g", "my var", "c d")
    assert required_variables("~ dose + C(site, Treatment('b'))") == ("dose", "site")


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("formula", ["1 + x", "0 + x", "x - 1", "x + 0", "-1 + x"])
def test_intercept_terms_are_refused(formula, data):
    with pytest.raises(ModelError, match=r"no intercept term in the formula \(the model has its own\)"):
        required_variables(formula)
    with pytest.raises(ModelError, match=r"no intercept term"):
        covariate_design(formula, data)


def test_syntax_errors_say_where():
    with pytest.raises(ModelError, match=r"'x \+ \(y' is not valid at character 5 \(x \+ »\(«y\): could not find"):
        required_variables("x + (y")
    with pytest.raises(ModelError, match=r"not valid at character 3"):
        required_variables("x +")
    with pytest.raises(ModelError, match=r"right-hand side only"):
        required_variables("y ~ x")
    with pytest.raises(ModelError, match=r"at least one term"):
        required_variables("")
    with pytest.raises(ModelError, match=r"must be a string"):
        required_variables(3)


def test_column_not_in_table_suggests_the_closest(data):
    with pytest.raises(DataError, match=r"reads the column 'dos', which is not in the table; .*did you mean 'dose'\?"):
        covariate_design("dos + x", data)
    bare = TwoWayData.from_array(np.arange(6.0).reshape(2, 3))
    with pytest.raises(DataError, match=r"no covariate columns \(read them with covariates="):
        covariate_design("x", bare)


def test_single_level_factor_and_constant_terms_are_refused(data):
    df = long_frame()
    df["one"] = "u"
    df["three"] = 3.0
    many = table(df, covariates=COVARIATES + ["one", "three"])
    with pytest.raises(ModelError, match=r"factor 'one' has a single level 'u'"):
        covariate_design("x + C(one)", many)
    with pytest.raises(ModelError, match=r"factor 'one' has a single level"):
        covariate_design("one", many)
    with pytest.raises(ModelError, match=r"term 'three' is constant \(3\) over the observed cells"):
        covariate_design("x + three", many)
    with pytest.raises(ModelError, match=r"term 'I\(x \* 0\)' is constant \(0\)"):
        covariate_design("x + I(x * 0)", many)


def test_collinear_terms_are_named_with_their_relation():
    df = long_frame()
    df["x2"] = 2 * df["x"]
    df["dd"] = 3 * df["dose"] - 1
    data = table(df, covariates=COVARIATES + ["x2", "dd"])
    with pytest.raises(ModelError, match=r"terms 'x' and 'x2' are collinear over the observed cells \(x2 = 2 x\)"):
        covariate_design("x + x2", data)
    with pytest.raises(ModelError, match=r"terms 'dose', 'dd' and the intercept are collinear .*\(dd = 3 dose - 1\)"):
        covariate_design("x + dose + dd", data)
    # a natural spline's basis sums to one: collinear with the intercept
    with pytest.raises(ModelError, match=r"and the intercept are collinear"):
        covariate_design("cr(x, df=3)", data)
    # without an intercept in the model the spline is fine
    assert covariate_design("cr(x, df=3)", data, intercept=False).X.shape[1] == 3
    # too few cells for the terms
    with pytest.raises(ModelError, match=r"collinear"):
        covariate_design("bs(x, df=12)", data)


def test_non_finite_transform_names_the_cell_and_other_errors(data):
    with pytest.raises(DataError, match=r"term 'np.log\(x\)' is nan at cell \(row '.*', col '.*'\)"):
        covariate_design("np.log(x)", data)
    with pytest.raises(ModelError, match=r"cannot be evaluated on the table's cells: .*name 'foo' is not defined"):
        covariate_design("foo(x)", data)
    with pytest.raises(ModelError, match=r"factor 'site' must use treatment coding"):
        covariate_design("C(site, Sum)", data)


# ---------------------------------------------------------------------------
# design_for: new cells
# ---------------------------------------------------------------------------


def test_design_for_reproduces_X_and_encodes_new_cells(data):
    d = covariate_design("center(x) + C(z, Treatment(5)) + bs(dose, df=3) + x:w", data)
    np.testing.assert_allclose(d.design_for(data.covariates), d.X, rtol=0, atol=1e-12)
    np.testing.assert_allclose(d.design_for(data.to_long()), d.X, rtol=0, atol=1e-12)
    new = pd.DataFrame({"x": [0.5, 1.0], "z": ["3", 1], "dose": [1.0, 2.5], "w": [2.0, 0.0]})
    X = d.design_for(new)
    assert X.shape == (2, d.X.shape[1])
    mean_x = data.covariates["x"].mean()
    np.testing.assert_allclose(X[:, 0], [0.5 - mean_x, 1.0 - mean_x])  # the fitted table's centre
    np.testing.assert_array_equal(X[:, 1:3], [[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(X[:, -1], [1.0, 0.0])
    # a design survives pickling (plans travel to worker processes)
    again = pickle.loads(pickle.dumps(d))
    np.testing.assert_allclose(again.design_for(new), X)


def test_design_for_errors_name_the_problem(data):
    d = covariate_design("x + C(site)", data)
    with pytest.raises(DataError, match=r"reads the column 'site', which is not in the new cells; .*did you mean 'sit'\?"):
        d.design_for({"x": [1.0], "sit": ["a"]})
    with pytest.raises(DataError, match=r"'x' must have a value on every data row; data row 2 has none"):
        d.design_for({"x": [1.0, np.nan], "site": ["a", "b"]})
    with pytest.raises(DataError, match=r"'site' must have a value on every data row; data row 1 has none"):
        d.design_for({"x": [1.0], "site": [None]})
    with pytest.raises(DataError, match=r"factor 'site' has the level 'c' at data row 2 of the new cells.*'a', 'b'"):
        d.design_for({"x": [1.0, 2.0], "site": ["a", "c"]})
    with pytest.raises(DataError, match=r"same length"):
        d.design_for({"x": [1.0, 2.0], "site": ["a"]})
    with pytest.raises(DataError, match=r"'x' must be numeric; data row 1 has 'u'"):
        d.design_for({"x": ["u"], "site": ["a"]})
    logs = covariate_design("np.log(dose)", data)
    with pytest.raises(DataError, match=r"'np.log\(dose\)' is -?inf at data row 1 of the new cells"):
        logs.design_for({"dose": [0.0]})
