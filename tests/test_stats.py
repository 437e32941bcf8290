"""One highest-density interval: the summary's, the contrasts', the recovery table's and the report's agree."""

import types

import numpy as np
import pytest
import xarray as xr

from twoway.app.report import INTERVAL, _interval
from twoway.results.contrasts import contrasts
from twoway.results.recovery import recovery
from twoway.results.stats import hdi, interval_names, statistics_table


def _posterior(seed: int = 5, chains: int = 3, draws: int = 257) -> xr.Dataset:
    """Skewed, heavy-tailed and tied draws, so that a different index rule would show."""
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {
            "intercept": (("chain", "draw"), rng.standard_t(3, size=(chains, draws))),
            "row_effect_sd": (("chain", "draw"), rng.lognormal(0.0, 1.0, size=(chains, draws))),
            "row_mean": (("chain", "draw", "row"), np.round(rng.gamma(2.0, size=(chains, draws, 4)), 1)),
        },
        coords={"chain": np.arange(chains), "draw": np.arange(draws), "row": ["a", "b", "c", "d"]},
    )


@pytest.mark.parametrize("name", ["intercept", "row_effect_sd", "row_mean"])
def test_report_recovery_and_summary_intervals_agree(name):
    post = _posterior()
    table = statistics_table(post, [name], INTERVAL)
    lo_name, hi_name = interval_names(INTERVAL)
    _, low, high = _interval(post[name])
    np.testing.assert_array_equal(low, table[lo_name].to_numpy())
    np.testing.assert_array_equal(high, table[hi_name].to_numpy())
    da = post[name]
    truth = {name: np.zeros(da.sizes.get("row", 1)) if "row" in da.dims else 0.0}
    rec = recovery(types.SimpleNamespace(posterior=post), truth, prob=INTERVAL)
    np.testing.assert_array_equal(rec["low"].to_numpy(), table[lo_name].to_numpy())
    np.testing.assert_array_equal(rec["high"].to_numpy(), table[hi_name].to_numpy())


@pytest.mark.parametrize("prob", [0.5, 0.94, 0.99, 1.0])
def test_hdi_of_flat_draws_is_the_hdi_of_one_chain(prob):
    x = _posterior()["row_mean"].values
    flat = x.reshape(-1, x.shape[-1])
    np.testing.assert_array_equal(hdi(flat[None], prob), hdi(x, prob))


def test_contrast_intervals_are_the_hdi_of_the_differences():
    post = _posterior()
    table = types.SimpleNamespace(mask=np.ones((1, 4, 2), bool), row_labels=("a", "b", "c", "d"), col_labels=("x", "y"))
    fit = types.SimpleNamespace(posterior=post, data=table)  # a complete (connected) table
    c = contrasts(fit, row="a", ci_prob=0.8)
    diff = post["row_mean"].values[..., 1:] - post["row_mean"].values[..., :1]
    lo_name, hi_name = interval_names(0.8)
    expected = hdi(diff, 0.8)
    np.testing.assert_array_equal(c.summary[lo_name].to_numpy(), expected[:, 0])
    np.testing.assert_array_equal(c.summary[hi_name].to_numpy(), expected[:, 1])


@pytest.mark.parametrize("prob", [0.3, 0.89, 0.94, 1.0])
def test_hdi_matches_arviz_stats(prob):
    azs = pytest.importorskip("arviz_stats")
    for name, da in _posterior(seed=8).data_vars.items():
        x = da.values
        ref = azs.hdi(x.reshape(-1, *x.shape[2:]), prob, axis=0)
        np.testing.assert_array_equal(hdi(x, prob), ref, err_msg=name)


def test_printed_tables_show_ess_whole_and_r_hat_to_three_decimals():
    import pandas as pd

    from twoway.results.summary import table_text

    table = pd.DataFrame({"mean": [3.14159e-12, 25.6417], "ess_bulk": [463.34, 1200.6], "r_hat": [1.00213, 0.99704]},
                         index=["tiny", "big"])
    text = table_text(table)
    assert "3.142e-12" in text and "25.64" in text
    assert "463 " in text and "463.3" not in text and "1201" in text
    assert "1.002" in text and "0.997" in text and "0.9970" not in text
