"""Simulation-based calibration of the covariance structures (benchmarks/calibration.py).

The default tier runs a small subset (the factor-analytic row structure against compound symmetry on the
columns, the case a user found miscalibrated) and checks that the test has power against a wrong truth;
the whole table (every structure on each side, and the latent, crossed, additive and full models) runs
in the slow tier, at the family-wise false-alarm rate the runner states."""

import importlib.util
import sys
from pathlib import Path

import dataclasses
import numpy as np
import pytest

from twoway.spec.model import preset

ALPHA = 0.01


def _runner():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "calibration.py"
    spec = importlib.util.spec_from_file_location("twoway_calibration", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_holm_and_case_pvalue():
    import pandas as pd

    cal = _runner()
    np.testing.assert_allclose(cal.holm(np.array([0.01, 0.04, 0.03, 0.5])), [0.04, 0.09, 0.09, 0.5])
    p, name = cal.case_pvalue(pd.Series([0.2, 0.004, 0.9], index=["a", "b", "c"]))
    assert (p, name) == (pytest.approx(0.012), "b")
    table = cal.markdown([{"name": "kronecker fa:1", "side": "row", "table": "6 x 5 x 2", "sims": 40, "params": 3,
                           "p_case": 0.002, "worst": "row_psi[row1]", "divergences": 0, "power": 0.834,
                           "needed": 37},
                          {"name": "latent", "side": "-", "table": "6 x 5 x 2", "sims": 40, "params": 3,
                           "p_case": 0.8, "worst": "sigma", "divergences": 0}], alpha=0.01)
    assert ("| kronecker fa:1 | row | 6 x 5 x 2 | 40 | 3 | 83% | 37 | 0.002 | 0.004 | `row_psi[row1]` | 0 | FAIL |"
            in table)
    assert "| latent | - | 6 x 5 x 2 | 40 | 3 | - | - | 0.8 | 0.8 | `sigma` | 0 | pass |" in table
    assert "1 failing" in table


def test_case_power_is_stated_at_the_tables_level():
    """A case's power is its shift test's at alpha / (cases x parameters x 2), and sims_needed reaches 80% there."""
    from twoway.runs.sbc import rank_test_power

    cal = _runner()
    assert cal.case_level(50, 20, 0.01) == pytest.approx(0.01 / 2000)
    needed = cal.sims_needed(100, 50, 20, 0.01)
    assert cal.case_power(needed, 100, 50, 20, 0.01) >= 0.8 > cal.case_power(needed - 5, 100, 50, 20, 0.01)
    assert cal.case_power(40, 100, 50, 20, 0.01) == pytest.approx(rank_test_power(40, 100, 0.01 / 2000, shift=0.5))
    # fewer cases or parameters in the family: fewer replications for the same power
    assert cal.sims_needed(100, 15, 6, 0.01) < needed


def test_fa1_rows_cs_cols_calibrated_and_the_test_has_power(tmp_path):
    cal = _runner()
    spec = dataclasses.replace(preset("kronecker"), row_structure="fa:1", col_structure="cs")
    case = cal.Case("kronecker fa:1 x cs", "row", spec, (4, 3, 2))
    result = cal.run_case(case, 20, seed=5, chains=2, draws=150, tune=200)
    assert result.n_sims == 20
    # a calibrated model passes at family-wise alpha (Bonferroni over the parameters): false alarm <= ALPHA
    assert result.passes(ALPHA), result.format(ALPHA)
    # the same draws against a truth moved by one posterior sd must be rejected
    wrong = result.truth.to_numpy() + result.draws.std(axis=1)
    assert not result.with_truth(wrong).passes(ALPHA)


@pytest.mark.slow
def test_calibration_table_every_structure_and_model(tmp_path):
    cal = _runner()
    rows = []
    for case in cal.cases(tmp_path):
        result = cal.run_case(case, 40, seed=0, work=tmp_path / "work")
        p_case, worst = cal.case_pvalue(result.pvalues)
        rows.append((case.name, case.side, p_case, worst))
    adjusted = cal.holm(np.array([r[2] for r in rows]))
    failing = [(r[0], r[1], r[3], h) for r, h in zip(rows, adjusted) if h < ALPHA]
    assert not failing, failing
