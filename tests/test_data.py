"""Tests of twoway.table.data.TwoWayData: constructors, accessors, round trips, bad input."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from twoway.table.data import TwoWayData
from twoway.errors import DataError, TwowayWarning

# ---------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------

GOOD_CSV = """treatment,group,y,err
T2,G1,1.5,0.1
T1,G1,2.0,0.2
T2,G2,3.0,0.3
T1,G2,,
T3,G1,5.0,0.5
T3,G2,6.0,0.6
"""


def write(tmp_path, text, name="data.csv"):
    """Write ``text`` to a file in ``tmp_path`` and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def read(path, **kw):
    """from_csv with the columns of GOOD_CSV unless given."""
    options = {"row": "treatment", "col": "group", "value": "y", "se": "err"}
    options.update(kw)
    return TwoWayData.from_csv(path, **options)


def long_frame():
    """A 2-replicate long table with one absent and one NaN cell."""
    return pd.DataFrame(
        {
            "rep": ["a", "a", "a", "a", "b", "b", "b"],
            "row": [3, 1, 3, 1, 3, 1, 1],
            "col": ["x", "x", "y", "y", "x", "x", "y"],
            "val": [1.0, 2.0, 3.0, np.nan, 5.0, 6.0, 7.0],
        }
    )


def rng_table(seed=0, shape=(2, 4, 5)):
    """Random values and positive standard errors of ``shape``."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape), rng.uniform(0.1, 1.0, size=shape)


# ---------------------------------------------------------------------------
# construction from long tables and CSV
# ---------------------------------------------------------------------------


def test_from_csv_shapes_labels_and_missing(tmp_path):
    data = read(write(tmp_path, GOOD_CSV))
    assert data.values.shape == (1, 3, 2)
    assert data.values.dtype == np.float64
    assert data.row_labels == ("T2", "T1", "T3")  # first appearance, not sorted
    assert data.col_labels == ("G1", "G2")
    assert data.replicate_labels == ("0",)
    np.testing.assert_array_equal(
        data.mask, [[[True, True], [True, False], [True, True]]]
    )
    assert data.values[0, 0, 0] == 1.5 and data.values[0, 2, 1] == 6.0
    assert np.isnan(data.values[0, 1, 1]) and np.isnan(data.se[0, 1, 1])
    assert data.se[0, 0, 1] == 0.3
    assert data.names == {
        "row": "treatment",
        "col": "group",
        "value": "y",
        "se": "err",
        "replicate": None,
    }
    assert (data.n_replicates, data.n_rows, data.n_cols) == (1, 3, 2)
    assert (data.n_cells, data.n_observed) == (6, 5)
    assert data.has_se and not data.is_complete


def test_from_long_replicates_absent_and_nan_cells():
    data = TwoWayData.from_long(long_frame(), row="row", col="col", value="val", replicate="rep")
    assert data.values.shape == (2, 2, 2)
    assert data.replicate_labels == ("a", "b")
    assert data.row_labels == ("3", "1")  # ints become str, first-appearance order
    assert data.col_labels == ("x", "y")
    expected = np.array([[[1.0, 3.0], [2.0, np.nan]], [[5.0, np.nan], [6.0, 7.0]]])
    np.testing.assert_array_equal(data.values, expected)
    np.testing.assert_array_equal(data.mask, ~np.isnan(expected))
    assert data.se is None and not data.has_se
    assert data.names["replicate"] == "rep" and data.names["se"] is None


def test_arrays_are_read_only_copies():
    values, se = rng_table()
    data = TwoWayData.from_array(values, se=se)
    with pytest.raises(ValueError):
        data.values[0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        data.se[0, 0, 0] = 1.0
    values[0, 0, 0] = 99.0  # the caller's array is not shared
    assert data.values[0, 0, 0] != 99.0


def test_csv_blank_lines_bom_spaces_and_trailing_comma(tmp_path):
    text = "\ufeffrow, col ,value,\n\n a ,x,1,\nb,x,2\n\na,y,3,\nb,y,4\n"
    data = TwoWayData.from_csv(write(tmp_path, text), row="row", col="col", value="value")
    assert data.row_labels == ("a", "b")
    np.testing.assert_array_equal(data.values[0], [[1.0, 3.0], [2.0, 4.0]])


def test_na_tokens_are_missing_values(tmp_path):
    text = "r,c,v\na,x,1\na,y,NA\nb,x,nan\nb,y,4\nc,x,5\nc,y,\n"
    data = TwoWayData.from_csv(write(tmp_path, text), row="r", col="c", value="v")
    np.testing.assert_array_equal(data.mask[0], [[True, False], [False, True], [True, False]])


def test_se_where_value_missing_is_ignored(tmp_path):
    text = "r,c,v,s\na,x,1,0.1\na,y,,-3\nb,x,2,0.2\nb,y,3,0.3\n"
    data = TwoWayData.from_csv(write(tmp_path, text), row="r", col="c", value="v", se="s")
    assert np.isnan(data.se[0, 0, 1])
    assert data.se_or_zero()[0, 0, 1] == 0.0


# ---------------------------------------------------------------------------
# accessors and summaries
# ---------------------------------------------------------------------------


def test_observed_values_and_index_in_c_order():
    data = TwoWayData.from_long(long_frame(), row="row", col="col", value="val", replicate="rep")
    r, i, j = data.observed_index()
    np.testing.assert_array_equal(r, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(i, [0, 0, 1, 0, 1, 1])
    np.testing.assert_array_equal(j, [0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(data.observed_values(), [1.0, 3.0, 2.0, 5.0, 6.0, 7.0])
    np.testing.assert_array_equal(data.values[r, i, j], data.observed_values())
    assert r.dtype == np.int64


def test_se_or_zero_without_and_with_se():
    values, se = rng_table()
    assert np.all(TwoWayData.from_array(values).se_or_zero() == 0.0)
    values[0, 1, 2] = np.nan
    out = TwoWayData.from_array(values, se=se).se_or_zero()
    assert out.shape == values.shape and out[0, 1, 2] == 0.0
    assert out[1, 1, 2] == se[1, 1, 2]


def test_location_and_spread():
    data = TwoWayData.from_array([[1.0, 2.0], [3.0, np.nan]])
    assert data.location() == pytest.approx(2.0)
    assert data.spread() == pytest.approx(1.0)
    constant = TwoWayData.from_array([[-4.0, -4.0], [-4.0, -4.0]])
    assert constant.spread() == pytest.approx(4.0)  # sd 0 -> mean |y|
    zeros = TwoWayData.from_array(np.zeros((2, 2)))
    assert zeros.spread() == 1.0
    single = TwoWayData.from_array([[np.nan, 2.0], [-2.0, np.nan]])
    assert single.spread() == pytest.approx(np.std([2.0, -2.0], ddof=1))


def test_summary_is_json_serialisable(tmp_path):
    summary = read(write(tmp_path, GOOD_CSV)).summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["n_observed"] == 5 and summary["n_missing"] == 1
    assert summary["row_labels"] == ["T2", "T1", "T3"]
    assert summary["has_se"] is True
    assert summary["location"] == pytest.approx(np.mean([1.5, 2.0, 3.0, 5.0, 6.0]))


def test_with_values_keeps_labels_and_checks_shape():
    values, se = rng_table()
    data = TwoWayData.from_array(values, se=se, row_labels=list("abcd"))
    new = data.with_values(values + 1.0)
    np.testing.assert_allclose(new.values, values + 1.0)
    assert new.row_labels == data.row_labels
    np.testing.assert_array_equal(new.se, se)
    assert new.names == data.names
    with pytest.raises(DataError, match=r"shape .*\(2, 4, 5\); got \(4, 5\)"):
        data.with_values(values[0])


def test_with_values_nan_makes_cell_missing_and_se_follows():
    values, se = rng_table()
    data = TwoWayData.from_array(values, se=se)
    new_values = values.copy()
    new_values[1, 2, 3] = np.nan
    new = data.with_values(new_values)
    assert not new.mask[1, 2, 3] and np.isnan(new.se[1, 2, 3])


def test_repr_is_short():
    values, _ = rng_table()
    assert repr(TwoWayData.from_array(values)) == (
        "TwoWayData(replicates=2, rows=4, cols=5, observed=40/40, se=no)"
    )


# ---------------------------------------------------------------------------
# from_array
# ---------------------------------------------------------------------------


def test_from_array_defaults_2d_and_3d():
    data2 = TwoWayData.from_array([[1, 2, 3], [4, 5, 6]])
    assert data2.values.shape == (1, 2, 3) and data2.values.dtype == np.float64
    assert data2.row_labels == ("row1", "row2")
    assert data2.col_labels == ("col1", "col2", "col3")
    assert data2.replicate_labels == ("0",)
    assert data2.names == {"row": "row", "col": "col", "value": "value", "se": None, "replicate": None}
    values, se = rng_table()
    data3 = TwoWayData.from_array(values, se=se)
    assert data3.replicate_labels == ("0", "1")
    assert data3.names["se"] == "se"
    np.testing.assert_array_equal(data3.se, se)


def test_from_array_nested_list_with_none_is_missing():
    data = TwoWayData.from_array([[1.0, None], [3.0, 4.0]])
    np.testing.assert_array_equal(data.mask[0], [[True, False], [True, True]])


def test_from_array_dataframe_uses_index_and_columns():
    wide = pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], index=["t2", "t1"], columns=[10, 20])
    se = pd.DataFrame([[0.4, 0.3], [0.2, 0.1]], index=["t1", "t2"], columns=[20, 10])
    data = TwoWayData.from_array(wide, se=se)
    assert data.row_labels == ("t2", "t1") and data.col_labels == ("10", "20")
    np.testing.assert_array_equal(data.se[0], [[0.1, 0.2], [0.3, 0.4]])  # aligned by label


def test_from_array_matches_from_long():
    values, se = rng_table(shape=(2, 3, 4))
    values[0, 1, 2] = np.nan
    data = TwoWayData.from_array(
        values, se=se, row_labels=["a", "b", "c"], col_labels=list("wxyz"), replicate_labels=["p", "q"]
    )
    long = data.to_long()
    assert list(long.columns) == ["replicate", "row", "col", "value", "se"]
    again = TwoWayData.from_long(long, row="row", col="col", value="value", se="se", replicate="replicate")
    np.testing.assert_array_equal(again.values, data.values)
    np.testing.assert_array_equal(again.se, data.se)
    assert again.row_labels == data.row_labels and again.col_labels == data.col_labels
    assert again.replicate_labels == data.replicate_labels


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------


def test_csv_round_trip_is_exact(tmp_path):
    values, se = rng_table(seed=3, shape=(3, 4, 6))
    values[1, 2, 3] = np.nan
    values[2, 0, 0] = np.nan
    data = TwoWayData.from_array(values * 1e3 / 7, se=se, row_labels=["007", "a,b", "x y", "4"])
    path = tmp_path / "out.csv"
    data.to_csv(path)
    again = TwoWayData.from_csv(path, **data.long_options())
    np.testing.assert_array_equal(again.values, data.values)
    np.testing.assert_array_equal(again.se, data.se)
    assert again.row_labels == data.row_labels
    assert again.col_labels == data.col_labels
    assert again.replicate_labels == data.replicate_labels


def test_csv_round_trip_keeps_source_names(tmp_path):
    data = read(write(tmp_path, GOOD_CSV))
    long = data.to_long()
    assert list(long.columns) == ["treatment", "group", "y", "err"]  # no replicate: R == 1
    assert len(long) == data.n_observed
    path = tmp_path / "again.csv"
    data.to_csv(path)
    again = read(path)
    np.testing.assert_array_equal(again.values, data.values)
    np.testing.assert_array_equal(again.se, data.se)
    assert again.row_labels == data.row_labels and again.names == data.names


def test_to_long_has_replicate_column_when_one_was_given():
    frame = pd.DataFrame({"rep": ["only"] * 4, "r": list("aabb"), "c": list("xyxy"), "v": [1.0, 2, 3, 4]})
    data = TwoWayData.from_long(frame, row="r", col="c", value="v", replicate="rep")
    assert list(data.to_long().columns) == ["rep", "r", "c", "v"]


def test_dataset_round_trip():
    values, se = rng_table(seed=5)
    values[0, 3, 4] = np.nan
    data = TwoWayData.from_array(values, se=se, col_labels=list("vwxyz"))
    ds = data.to_dataset()
    assert ds["y"].dims == ("replicate", "row", "col")
    assert list(ds["col"].values) == list("vwxyz")
    assert json.loads(ds.attrs["twoway_names"]) == data.names
    again = TwoWayData.from_dataset(ds)
    np.testing.assert_array_equal(again.values, data.values)
    np.testing.assert_array_equal(again.se, data.se)
    assert again.col_labels == data.col_labels and again.names == data.names
    no_se = TwoWayData.from_dataset(TwoWayData.from_array(values).to_dataset())
    assert no_se.se is None


def test_from_dataset_transposed_dims_and_errors():
    values, _ = rng_table()
    ds = TwoWayData.from_array(values).to_dataset()
    again = TwoWayData.from_dataset(ds.transpose("col", "row", "replicate"))
    np.testing.assert_array_equal(again.values, values)
    with pytest.raises(DataError, match="'y'"):
        TwoWayData.from_dataset(ds.drop_vars("y"))


# ---------------------------------------------------------------------------
# bad input: long tables and CSV files
# ---------------------------------------------------------------------------


def test_missing_column_lists_columns_and_suggests(tmp_path):
    with pytest.raises(DataError, match=r"'grup'.*'treatment', 'group'.*did you mean 'group'\?"):
        read(write(tmp_path, GOOD_CSV), col="grup")


def test_missing_column_without_close_match(tmp_path):
    with pytest.raises(DataError, match=r"column 'plate' given for replicate is not in .*its columns are"):
        read(write(tmp_path, GOOD_CSV), replicate="plate")


def test_same_column_for_two_roles(tmp_path):
    with pytest.raises(DataError, match=r"value and se columns must be different; both are 'y'"):
        read(write(tmp_path, GOOD_CSV), se="y")


def test_non_numeric_value_names_column_row_and_text(tmp_path):
    text = GOOD_CSV.replace("T3,G1,5.0", "T3,G1,five")
    with pytest.raises(DataError, match=r"'y' column must be numeric; data row 5 \(line 6; treatment='T3', group='G1'\) has 'five'"):
        read(write(tmp_path, text))


def test_non_numeric_se(tmp_path):
    text = GOOD_CSV.replace("3.0,0.3", '3.0,"0,3"')  # decimal comma, quoted
    with pytest.raises(DataError, match=r"'err' column must be numeric; data row 3 .* has '0,3'"):
        read(write(tmp_path, text))


def test_non_numeric_in_dataframe():
    frame = long_frame().astype({"val": object})
    frame.loc[2, "val"] = "oops"
    with pytest.raises(DataError, match=r"'val' column must be numeric; data row 3 \(rep='a', row='3', col='y'\) has 'oops'"):
        TwoWayData.from_long(frame, row="row", col="col", value="val", replicate="rep")


@pytest.mark.parametrize("column,text", [("y", "inf"), ("err", "-Infinity")])
def test_infinite_value_or_se(tmp_path, column, text):
    csv = GOOD_CSV.replace("T2,G2,3.0,0.3", f"T2,G2,{text},0.3" if column == "y" else f"T2,G2,3.0,{text}")
    with pytest.raises(DataError, match=rf"'{column}' column must be finite; data row 3 \(line 4; treatment='T2', group='G2'\)"):
        read(write(tmp_path, csv))


@pytest.mark.parametrize("bad", ["-0.5", "0"])
def test_non_positive_se(tmp_path, bad):
    csv = GOOD_CSV.replace("T3,G2,6.0,0.6", f"T3,G2,6.0,{bad}")
    with pytest.raises(DataError, match=rf"'err' column must be positive; data row 6 \(line 7; treatment='T3', group='G2'\) has {float(bad)!r}"):
        read(write(tmp_path, csv))


def test_missing_se_where_value_present(tmp_path):
    # an empty se on a line with a value: no known error for that cell (kept, se 0), as the README says
    csv = GOOD_CSV.replace("T2,G2,3.0,0.3", "T2,G2,3.0,")
    with pytest.warns(TwowayWarning, match="empty on 1 of"):
        data = read(write(tmp_path, csv))
    i, j = data.row_labels.index("T2"), data.col_labels.index("G2")
    assert data.values[0, i, j] == 3.0 and data.se[0, i, j] == 0.0
    assert data.n_observed == np.count_nonzero(~np.isnan(read(write(tmp_path, GOOD_CSV)).values))


def test_duplicate_cell_without_replicate_column(tmp_path):
    csv = GOOD_CSV + "T1,G1,2.5,0.2\n"
    with pytest.raises(DataError) as info:
        read(write(tmp_path, csv))
    message = str(info.value)
    assert "data rows 2 and 7 (lines 3 and 8)" in message
    assert "treatment='T1' and group='G1'" in message
    assert "--replicate" in message and "replicate=" in message


def test_duplicate_cell_with_replicate_column():
    frame = long_frame()
    frame.loc[len(frame)] = ["b", 3, "x", 9.0]
    with pytest.raises(DataError, match=r"\(replicate, row, col\) cell .*data rows 5 and 8 both have rep='b', row='3' and col='x'") as info:
        TwoWayData.from_long(frame, row="row", col="col", value="val", replicate="rep")
    assert "--replicate" not in str(info.value)


def test_row_label_with_no_observed_value(tmp_path):
    csv = GOOD_CSV + "T9,G1,,\nT9,G2,NA,\n"
    with pytest.raises(DataError, match=r"Every row label must have at least one observed value; 'T9' in column 'treatment' has none"):
        read(write(tmp_path, csv))


def test_col_label_with_no_observed_value():
    frame = pd.DataFrame({"r": list("aabbcc"), "c": list("xyxyxz"), "v": [1, 2, 3, 4, 5, np.nan]})
    with pytest.raises(DataError, match=r"Every col label .*; 'z' in column 'c' has none"):
        TwoWayData.from_long(frame, row="r", col="c", value="v")


def test_replicate_with_no_observed_value():
    frame = long_frame()
    frame.loc[len(frame)] = ["c", 1, "x", np.nan]
    with pytest.raises(DataError, match=r"Every replicate table must have at least one observed value; 'c' in column 'rep' has none"):
        TwoWayData.from_long(frame, row="row", col="col", value="val", replicate="rep")


def test_too_few_rows_or_columns(tmp_path):
    one_row = "r,c,v\na,x,1\na,y,2\n"
    with pytest.raises(DataError, match=r"at least 2 rows; column 'r' has 1 distinct label \('a'\)"):
        TwoWayData.from_csv(write(tmp_path, one_row), row="r", col="c", value="v")
    one_col = "r,c,v\na,x,1\nb,x,2\nc,x,3\n"
    with pytest.raises(DataError, match=r"at least 2 columns; column 'c' has 1 distinct label \('x'\)"):
        TwoWayData.from_csv(write(tmp_path, one_col), row="r", col="c", value="v")


def test_empty_label_names_row(tmp_path):
    csv = GOOD_CSV.replace("T3,G1,5.0", ",G1,5.0")
    with pytest.raises(DataError, match=r"'treatment' column must have a label on every data row; data row 5 \(line 6\) has none"):
        read(write(tmp_path, csv))
    frame = long_frame()
    frame.loc[1, "col"] = None
    with pytest.raises(DataError, match=r"'col' column .*data row 2 has none"):
        TwoWayData.from_long(frame, row="row", col="col", value="val")


def test_empty_file_and_header_only(tmp_path):
    with pytest.raises(DataError, match=r"'.*empty\.csv' is empty"):
        read(write(tmp_path, "", "empty.csv"))
    with pytest.raises(DataError, match=r"'.*blank\.csv' is empty"):
        read(write(tmp_path, "\n\n  \n", "blank.csv"))
    with pytest.raises(DataError, match=r"header but no data rows"):
        read(write(tmp_path, "treatment,group,y,err\n"))


def test_empty_dataframe():
    with pytest.raises(DataError, match="The table has no data rows"):
        TwoWayData.from_long(pd.DataFrame({"r": [], "c": [], "v": []}), row="r", col="c", value="v")


def test_not_a_dataframe():
    with pytest.raises(DataError, match="must be a pandas DataFrame; got dict"):
        TwoWayData.from_long({"r": [1]}, row="r", col="c", value="v")


def test_file_does_not_exist(tmp_path):
    with pytest.raises(DataError, match=r"'.*nope\.csv' does not exist"):
        read(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is a directory"):
        read(tmp_path)


def test_binary_files_are_not_csv(tmp_path):
    zip_path = tmp_path / "book.xlsx"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(DataError, match=r"'.*book\.xlsx' is not a CSV text file; it looks like a zip archive"):
        read(zip_path)
    parquet = tmp_path / "t.parquet"
    parquet.write_bytes(b"PAR1\x15\x04\x15\x10" + b"\x00" * 20)
    with pytest.raises(DataError, match=r"'.*t\.parquet' is not a readable Parquet file"):  # a cut one
        read(parquet)
    blob = tmp_path / "blob.csv"
    blob.write_bytes(b"treatment,group\x00\x01\x02binary")
    with pytest.raises(DataError, match="is not a CSV text file; it holds binary data"):
        read(blob)
    utf16 = tmp_path / "u16.csv"
    utf16.write_bytes(GOOD_CSV.encode("utf-16"))
    with pytest.raises(DataError, match="is not a CSV text file"):
        read(utf16)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("r,c,v\n\xe9,x,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="is not a CSV text file in UTF-8"):
        read(latin)


def test_single_column_file_hints_at_separator(tmp_path):
    text = GOOD_CSV.replace(",", "|")  # semicolons and tabs are read (European CSV): see test_outputs.py
    with pytest.raises(DataError, match=r"'treatment\|group\|y\|err', a single column, so the file may not be separated by commas"):
        read(write(tmp_path, text))


def test_line_with_too_many_fields(tmp_path):
    text = GOOD_CSV.replace("T3,G1,5.0,0.5", "T3,G1,5.0,0.5,extra")
    with pytest.raises(DataError, match=r"line 6 has 5 fields but the header has 4"):
        read(write(tmp_path, text))


def test_unclosed_quote_is_a_clear_error(tmp_path):
    text = GOOD_CSV.replace("T3,G1", '"T3,G1')
    with pytest.raises(DataError, match=r"is not valid CSV; line \d+"):
        read(write(tmp_path, text))


# ---------------------------------------------------------------------------
# bad input: arrays
# ---------------------------------------------------------------------------


def test_from_array_wrong_ndim():
    with pytest.raises(DataError, match=r"2-D .* or 3-D .*; got 1-D with shape \(3,\)"):
        TwoWayData.from_array([1.0, 2.0, 3.0])
    with pytest.raises(DataError, match=r"got 4-D"):
        TwoWayData.from_array(np.zeros((1, 2, 2, 2)))


def test_from_array_se_shape_mismatch():
    values, se = rng_table()
    with pytest.raises(DataError, match=r"same shape as the values \(2, 4, 5\); got \(4, 5\)"):
        TwoWayData.from_array(values, se=se[0])


def test_from_array_non_numeric():
    with pytest.raises(DataError, match=r"values must be numeric; entry \(0, 0\) is 'a'"):
        TwoWayData.from_array([["a", "b"], ["c", "d"]])
    with pytest.raises(DataError, match=r"values must be numeric; got an array of dtype <U"):
        TwoWayData.from_array(np.array([["1", "2"], ["3", "4"]]))
    with pytest.raises(DataError, match=r"se\) must be numeric; entry \(0, 1\) is 'zz'"):
        TwoWayData.from_array([[1.0, 2.0], [3.0, 4.0]], se=[[1.0, "zz"], [1.0, 1.0]])
    with pytest.raises(DataError, match=r"values must be numeric; entry \(1, 0\) is 'x'"):
        TwoWayData.from_array([[1.0, 2.0], ["x", 4.0]])
    with pytest.raises(DataError, match="ragged"):
        TwoWayData.from_array([[1.0, 2.0], [3.0]])
    with pytest.raises(DataError, match="must be numeric"):
        TwoWayData.from_array(np.array([[True, False], [True, True]]))


def test_from_array_infinite_values():
    values, _ = rng_table()
    values[1, 2, 3] = -np.inf
    with pytest.raises(DataError, match=r"values must be finite; cell \(replicate '1', row 'row3', col 'col4'\) has -inf"):
        TwoWayData.from_array(values)


@pytest.mark.parametrize("bad,rule", [(0.0, "positive"), (-1.0, "positive"), (np.inf, "finite")])
def test_from_array_bad_se(bad, rule):
    values, se = rng_table()
    se[0, 1, 1] = bad
    with pytest.raises(DataError, match=rf"standard errors must be {rule}; cell \(replicate '0', row 'row2', col 'col2'\)"):
        TwoWayData.from_array(values, se=se)


def test_from_array_label_count_and_duplicates():
    values, _ = rng_table()
    with pytest.raises(DataError, match=r"row_labels must have one label per row \(4\); got 3"):
        TwoWayData.from_array(values, row_labels=["a", "b", "c"])
    with pytest.raises(DataError, match=r"col_labels must be unique; 'x' appears more than once"):
        TwoWayData.from_array(values, col_labels=["x", "y", "x", "z", "w"])
    with pytest.raises(DataError, match=r"replicate_labels must have one label per replicate \(2\); got 1"):
        TwoWayData.from_array(values, replicate_labels=["only"])
    with pytest.raises(DataError, match=r"row_labels must be unique; '1' appears"):
        TwoWayData.from_array(values, row_labels=[1, "1", 2, 3])


def test_from_array_too_small():
    with pytest.raises(DataError, match=r"at least 2 rows; got 1 \('row1'\)"):
        TwoWayData.from_array([[1.0, 2.0]])


def test_from_array_empty_row_is_an_error():
    values, _ = rng_table()
    values[:, 2, :] = np.nan
    with pytest.raises(DataError, match=r"row label must have at least one observed value; row 'row3' has none"):
        TwoWayData.from_array(values)


def test_constructor_validates_directly():
    with pytest.raises(DataError, match=r"3-D array"):
        TwoWayData(np.zeros((2, 2)), None, ("a", "b"), ("x", "y"), ("0",))
    with pytest.raises(DataError, match=r"names must only have the keys"):
        TwoWayData(np.zeros((1, 2, 2)), None, ("a", "b"), ("x", "y"), ("0",), names={"rows": "r"})
    data = TwoWayData(np.ones((1, 2, 2), dtype=int), None, ["a", "b"], ("x", "y"), ("0",))
    assert data.values.dtype == np.float64 and data.row_labels == ("a", "b")
