"""twoway.table.io: the one reader of labelled matrices (known matrices, full covariances) and the table readers."""

from pathlib import Path

import numpy as np
import pytest

import twoway.spec.covariance
import twoway.spec.structures
import twoway.plan
from twoway.spec.covariance import load_full_covariance
from twoway.table.data import TwoWayData
from twoway.errors import DataError
from twoway.table.io import tables
from twoway.table.io.matrices import read_labelled_matrix
from twoway.spec.structures import parse_structure

ROWS, COLS = ["a", "b", "c"], ["x", "y"]
CELLS = [f"{r}:{c}" for r in ROWS for c in COLS]


def spd(n: int, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a @ a.T + n * np.eye(n)


def write(path: Path, matrix, rows=None, cols=None, corner: str = "") -> Path:
    """A CSV file of ``matrix``; with labels when ``rows`` is given (``cols`` defaults to ``rows``)."""
    fmt = lambda v: v if isinstance(v, str) else f"{v:.17g}"  # noqa: E731
    if rows is None:
        lines = [",".join(fmt(v) for v in row) for row in matrix]
    else:
        cols = rows if cols is None else cols
        lines = [",".join([corner] + list(cols))]
        lines += [",".join([lab] + [fmt(v) for v in row]) for lab, row in zip(rows, matrix)]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------
# the reader
# ---------------------------------------------------------------------------


def test_reorders_rows_and_columns_to_the_labels_each_in_its_own_order(tmp_path):
    m = spd(4, seed=1)
    labels = ["p", "q", "r", "s"]
    row_order, col_order = [2, 0, 3, 1], [1, 3, 0, 2]
    path = write(tmp_path / "K.csv", m[np.ix_(row_order, col_order)],
                 rows=[labels[i] for i in row_order], cols=[labels[j] for j in col_order], corner="id")
    out = read_labelled_matrix(path, labels, what="row_structure")
    assert out.dtype == np.float64 and out.shape == (4, 4)
    np.testing.assert_array_equal(out, m)
    reversed_ = read_labelled_matrix(path, labels[::-1], what="row_structure")
    np.testing.assert_array_equal(reversed_, m[::-1, ::-1])


def test_numbers_only_is_taken_in_the_order_of_the_labels_and_only_when_allowed(tmp_path):
    m = spd(6, seed=2)
    path = write(tmp_path / "cov.csv", m)
    np.testing.assert_array_equal(read_labelled_matrix(path, CELLS, what="covariance", numbers_only=True), m)
    with pytest.raises(DataError, match="every label; missing: .a:x."):  # read as labelled: numbers for labels
        read_labelled_matrix(path, CELLS, what="covariance")


def test_makes_a_nearly_symmetric_matrix_exactly_symmetric(tmp_path):
    m = spd(3, seed=3)
    m[0, 1] += 1e-12
    out = read_labelled_matrix(write(tmp_path / "K.csv", m, rows=ROWS), ROWS, what="row_structure")
    np.testing.assert_array_equal(out, out.T)


def _bad(tmp_path: Path) -> list:
    m = spd(3, seed=4)
    cases = []

    def case(name, text, match, labels=ROWS, **options):
        p = tmp_path / f"{name}.csv"
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
        cases.append((p, labels, options, match))

    def labelled(rows, matrix, cols=None):
        return write(tmp_path / "tmp.csv", matrix, rows=rows, cols=cols).read_text()

    case("nul", b"a,b\x00,c\n", r"is not a CSV text file in UTF-8; it holds binary data")
    case("quote", ',a,b,c\na,"1,0,0\n', r"is not valid CSV; line \d+")
    case("blank", "\n \n", r"is empty\.")
    case("no_header_labels", "id\na,1\n", r"must have a header line of labels; line 1 has none")
    case("header_only", ",a,b,c\n", r"has a header but no rows of numbers")
    case("duplicate_row", labelled(["a", "a", "c"], m, cols=ROWS), r"'a' appears twice in the first column")
    case("empty_label", labelled(ROWS, m, cols=["a", "", "c"]), r"must name every row and column; the header has an empty label")
    case("short_row", ",a,b,c\na,1,0,0\nb,0,1\nc,0,0,1\n", r"must hold a square matrix; line 3 \(label 'b'\) has 2 values")
    case("mismatch", labelled(ROWS, m, cols=["a", "b", "z"]),
         r"same labels in its header and its first column; only in the header: 'z'; only in the first column: 'c'")
    case("missing", labelled(ROWS[:2], m[:2, :2]), r"must have a row and a column for every label; missing: 'c'")
    case("extra", labelled(ROWS + ["w"], spd(4)), r"must have only the labels of the table; extra: 'w'")
    case("empty_entry", labelled(ROWS, [[1, 0, 0], [0, "", 0], [0, 0, 1]]),
         r"must hold numbers; the entry at \(row 'b', column 'b'\) on line 3 is empty")
    case("text", labelled(ROWS, [[1, 0, 0], [0, 1, "one"], [0, 0, 1]]),
         r"must hold numbers; the entry at \(row 'b', column 'c'\) on line 3 is 'one', not a number")
    case("nan", labelled(ROWS, [[1, 0, 0], [0, 1, 0], [0, 0, "nan"]]),
         r"must hold finite numbers; the entry at \(row 'c', column 'c'\) on line 4 is 'nan'")
    case("asym", labelled(ROWS, [[2, 0.5, 0], [0.1, 2, 0], [0, 0, 2]]),
         r"must be symmetric; the largest asymmetry is 0.4 between \(row 'a', column 'b'\) = 0.5 "
         r"and \(row 'b', column 'a'\) = 0.1")
    case("singular", labelled(ROWS, np.ones((3, 3))), r"must be positive definite; its smallest eigenvalue is")
    case("numbers_wrong_size", "1,0\n0,1\n", r"must hold a 3 x 3 matrix \(one row and one column per label\); got 2 x 2",
         numbers_only=True)
    case("numbers_ragged", "1,0,0\n0,1\n0,0,1\n", r"must hold a 3 x 3 matrix .*; got 3 lines of 2 to 3 values",
         numbers_only=True)
    case("numbers_text", "1,0,0\n0,1,0\n0,0,x\n",
         r"must hold numbers; the entry at \(row 'c', column 'c'\) on line 3 is 'x', not a number", numbers_only=True)
    case("own_wording", labelled(["a", "b"], m[:2, :2]), r"lacks the cells c \(labels are 'row:col'\)\.$",
         missing="lacks the cells {plain} (labels are 'row:col').")
    return cases


def test_refuses_each_bad_file_with_its_message_naming_the_file_and_what_it_is_for(tmp_path):
    for path, labels, options, match in _bad(tmp_path):
        with pytest.raises(DataError, match=match) as info:
            read_labelled_matrix(path, labels, what="col_structure", **options)
        message = str(info.value)
        assert message.startswith(f"The file '{path}' for the 'col_structure' ") or \
            message.startswith(f"The matrix in the file '{path}' for the 'col_structure' "), message
    with pytest.raises(DataError, match=r"file '.*nope\.csv' for the 'covariance' does not exist; "
                                         r"looked for '.*nope\.csv'\.$"):
        read_labelled_matrix(tmp_path / "nope.csv", ROWS, what="covariance")
    with pytest.raises(DataError, match=r"is a directory, not a CSV file"):
        read_labelled_matrix(tmp_path, ROWS, what="covariance")


# ---------------------------------------------------------------------------
# both callers go through it
# ---------------------------------------------------------------------------


@pytest.fixture
def spy(monkeypatch):
    """Replace the reader where each caller looks it up; record the calls, then read for real."""
    calls = []

    def reader(path, labels, **options):
        calls.append((Path(path).name, list(labels), options))
        return read_labelled_matrix(path, labels, **options)

    import twoway.table.io.matrices

    for module in (twoway.spec.structures, twoway.spec.covariance, twoway.table.io.matrices, twoway.plan):
        monkeypatch.setattr(module, "read_labelled_matrix", reader)
    return calls


def test_known_file_of_a_structure_goes_through_the_reader(tmp_path, spy):
    m = spd(3, seed=5)
    write(tmp_path / "K.csv", m[::-1, ::-1], rows=ROWS[::-1])
    st = parse_structure("known:K.csv", side="row", labels=ROWS, base_dir=tmp_path)
    assert spy == [("K.csv", ROWS, {"what": "row_structure"})]
    np.testing.assert_array_equal(st.known, m)
    # the known relationship of a random effect (plan.known_relationships) takes the same function
    from twoway.plan import known_relationships

    spec = twoway.ModelSpec(row_effect_cov=f"known:{tmp_path / 'K.csv'}")
    data = twoway.TwoWayData.from_array(np.zeros((3, 2)), row_labels=ROWS)
    np.testing.assert_array_equal(known_relationships(spec, data)["row"], m)
    assert spy[-1][:2] == ("K.csv", ROWS) and spy[-1][2]["what"] == "row_effect_cov"


def test_full_covariance_file_goes_through_the_reader(tmp_path, spy):
    m = spd(6, seed=6)
    order = [4, 1, 5, 0, 3, 2]
    path = write(tmp_path / "cov.csv", m[np.ix_(order, order)], rows=[CELLS[k] for k in order])
    full = load_full_covariance(str(path), ROWS, COLS)
    assert [(name, labels, options["what"], options["numbers_only"]) for name, labels, options in spy] == \
        [("cov.csv", CELLS, "covariance", True)]
    np.testing.assert_array_equal(full.matrix, m)
    assert full.function is None and full.parameters == ()
    numbers = load_full_covariance(str(write(tmp_path / "plain.csv", m)), ROWS, COLS)
    np.testing.assert_array_equal(numbers.matrix, m)


def test_full_covariance_keeps_its_own_words_for_missing_and_extra_cells(tmp_path):
    m = spd(6, seed=7)
    path = write(tmp_path / "cov.csv", m, rows=CELLS)
    with pytest.raises(DataError, match=r"'covariance' lacks the cells d:x, d:y \(labels are 'row:col'\)"):
        load_full_covariance(str(path), ROWS + ["d"], COLS)
    with pytest.raises(DataError, match=r"'covariance' has cells that are not in the table: c:x, c:y\.$"):
        load_full_covariance(str(path), ROWS[:2], COLS)
    with pytest.raises(DataError, match=r"must hold a 6 x 6 matrix \(one row and one column per cell of the table, "
                                        r"row-major\); got 4 x 4"):
        load_full_covariance(str(write(tmp_path / "small.csv", spd(4))), ROWS, COLS)
    with pytest.raises(DataError, match=r"matrix in the file '.*cov\.csv' for the 'covariance' must be symmetric"):
        bad = m.copy()
        bad[0, 5] += 1.0
        load_full_covariance(str(write(tmp_path / "cov.csv", bad, rows=CELLS)), ROWS, COLS)


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------


def test_csv_reading_gives_the_fields_of_the_table(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("row,col,value\n\nr1,c1,1.5\nr1,c2,\nr2,c1,2\nr2,c2,3,\n")
    df, lines = tables.read_csv(path)
    assert list(df.columns) == ["row", "col", "value"] and lines.tolist() == [3, 4, 5, 6]
    fields = tables.long_table(df, roles={"row": "row", "col": "col", "value": "value", "se": None,
                                          "replicate": None}, lines=lines, source=str(path))
    assert fields["row_labels"] == ("r1", "r2") and fields["col_labels"] == ("c1", "c2") and fields["se"] is None
    np.testing.assert_array_equal(fields["values"], [[[1.5, np.nan], [2.0, 3.0]]])
    data = TwoWayData.from_csv(path, row="row", col="col", value="value")
    np.testing.assert_array_equal(data.values, fields["values"])
    assert tables.csv_header(path) == ["row", "col", "value"]
