"""Degenerate tables end in one line and exit status 2, before any sampler runs: no noise, no spread,
values whose squares overflow, draws that would not fit in memory."""

import numpy as np
import pytest

import twoway
from twoway.app.cli import main
from twoway.engines.startup import additive_residuals, check_table
from twoway.errors import DataError, FitError
from twoway.fit import check_draws_memory
from twoway.likelihood import memory
from twoway.plan import resolve
from twoway.spec.model import preset
from twoway.table.data import TwoWayData

N, K = 6, 5


def _additive() -> np.ndarray:
    """y = i + 2 j: exactly additive, no noise."""
    return np.arange(N)[:, None] + 2.0 * np.arange(K)[None, :]


def _write(path, y, se=None):
    lines = ["row,col,value" + (",se" if se is not None else "")]
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            if not np.isnan(y[i, j]):
                lines.append(f"r{i},c{j},{float(y[i, j])!r}" + (f",{float(se[i, j])!r}" if se is not None else ""))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _cli(capsys, tmp_path, y, *extra):
    data = _write(tmp_path / "t.csv", y)
    rc = main(["fit", data, "--out", str(tmp_path / "f.nc"), "--quiet", "--no-progress", "--draws", "20",
               "--tune", "20", *extra])
    err = capsys.readouterr().err
    return rc, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("twoway: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "RuntimeWarning" not in err, err
    return lines[0]


# -- no noise -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, engine", [("crossed", None), ("additive", None), ("crossed-hetero", None),
                                           ("latent", None), ("crossed", "pymc"), ("crossed", "laplace")])
def test_noise_free_table_is_refused_before_sampling(model, engine):
    data = TwoWayData.from_array(_additive())
    with pytest.raises(DataError, match=r"^The table must have some noise.*; got values that are exactly"):
        twoway.fit(model, data, draws=20, tune=20, chains=1, seed=1, engine=engine)


def test_noise_free_table_is_one_line_exit_2(capsys, tmp_path):
    rc, err = _cli(capsys, tmp_path, _additive(), "--model", "crossed")
    assert rc == 2
    assert "some noise" in _one_error_line(err) and "--se" in err


def test_noise_free_with_missing_cells_and_replicates_is_refused():
    y = np.stack([_additive(), _additive()])
    y[0, 0, 1] = y[1, 2, 3] = y[0, 4, 0] = np.nan
    data = TwoWayData.from_array(y)
    with pytest.raises(DataError, match="some noise"):
        check_table(data)
    assert np.max(np.abs(additive_residuals(data))) < 1e-12


def test_tables_with_noise_or_known_se_everywhere_are_not_refused():
    rng = np.random.default_rng(3)
    sd = float(np.std(_additive()))
    check_table(TwoWayData.from_array(_additive() + rng.normal(0, 1e-6 * sd, (N, K))))  # small, real noise
    check_table(TwoWayData.from_array(_additive(), se=np.full((N, K), 0.1)))           # known variance
    check_table(TwoWayData.from_array(np.full((N, K), 3.0), se=np.full((N, K), 0.1)))
    se = np.full((N, K), 0.1)
    se[0, 0] = np.nan  # one cell with no known error: its variance is the unknown scale's alone
    with pytest.raises(DataError, match="some noise"):
        check_table(TwoWayData.from_array(_additive(), se=se))


def test_additive_residuals_are_the_least_squares_ones_on_an_incomplete_table():
    rng = np.random.default_rng(4)
    y = rng.normal(size=(N, K))
    y[0, :3] = y[1:4, 0] = np.nan
    data = TwoWayData.from_array(y)
    _, i, j = data.observed_index()
    X = np.concatenate([np.ones((i.size, 1)), np.eye(N)[i], np.eye(K)[j]], axis=1)
    v = data.observed_values()
    expected = v - X @ np.linalg.lstsq(X, v, rcond=None)[0]
    got = additive_residuals(data)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.linalg.norm(got) >= np.linalg.norm(expected) * (1 - 1e-12)


# -- no spread -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["laplace", "jax", "pymc"])
def test_constant_table_is_refused_for_every_engine(engine):
    with pytest.raises(DataError, match=r"^The table must vary.*; got the same value, 3, in all 30"):
        twoway.fit("crossed", TwoWayData.from_array(np.full((N, K), 3.0)), draws=20, tune=20, chains=1,
                   engine=engine)


def test_constant_table_with_laplace_is_one_line_exit_2(capsys, tmp_path):
    rc, err = _cli(capsys, tmp_path, np.full((N, K), 3.0), "--model", "crossed", "--engine", "laplace")
    assert rc == 2
    assert "spread 0" in _one_error_line(err)


# -- values whose squares overflow -----------------------------------------------------------------------------
def test_values_beyond_1e150_are_refused_when_the_table_is_built():
    y = (_additive() + 1.0) * 1e300
    with pytest.raises(DataError, match=r"^The table's values must be at most 1e\+150.*; got .*Rescale"):
        TwoWayData.from_array(y)
    with pytest.raises(DataError, match=r"^The table's standard errors must be at most"):
        TwoWayData.from_array(_additive(), se=np.full((N, K), 1e200))
    with pytest.raises(DataError, match=r"^The table's values must vary by more than 1e-150"):
        TwoWayData.from_array(_additive() * 1e-200)
    TwoWayData.from_array(_additive() * 1e140)  # large, but squares still fit
    TwoWayData.from_array(np.zeros((N, K)))      # constant: refused only when fitted


def test_huge_values_are_one_line_exit_2_without_numpy_warnings(capsys, tmp_path):
    rng = np.random.default_rng(1)
    rc, err = _cli(capsys, tmp_path, (_additive() + rng.normal(size=(N, K))) * 1e300)
    assert rc == 2
    assert "Rescale" in _one_error_line(err)
    assert "overflow encountered" not in err


# -- draws that would not fit in memory ------------------------------------------------------------------------
def _noisy():
    return _additive() + np.random.default_rng(2).normal(size=(N, K))


def test_draws_beyond_the_memory_available_are_refused(monkeypatch):
    plan = resolve(preset("crossed"), TwoWayData.from_array(_noisy()))
    values = memory.draws_values(plan.spec, plan.data)
    assert values >= 1 + 2 * (N + K) + 3  # intercept, effects, row and column means, sds and sigma
    assert memory.draws_bytes(plan.spec, plan.data, 4, 1000) == 2 * 8 * 4 * 1000 * values
    monkeypatch.setattr(memory, "available_memory", lambda: 10 * 2**20)
    check_draws_memory(plan, 4, 1000)  # 4 x 1000 x ~70 x 16 bytes: a few MiB, under the floor never refused
    assert memory.draws_bytes(plan.spec, plan.data, 4, 100_000) > memory.DRAWS_FLOOR
    with pytest.raises(FitError, match=r"^The draws must fit in memory; got 4 chains x 100000 draws .* fewer draws"):
        check_draws_memory(plan, 4, 100_000)


def test_huge_draws_are_one_line_exit_2(capsys, tmp_path):
    rc, err = _cli(capsys, tmp_path, _noisy(), "--model", "crossed", "--engine", "laplace",
                   "--draws", "100000000000")
    assert rc == 2
    line = _one_error_line(err)
    assert "100000000000 draws" in line and "GiB" in line and "is available" in line
