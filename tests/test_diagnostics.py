"""NumPy diagnostics (twoway.results.diagnostics) and statistics (twoway.results.stats) against ArviZ: R-hat, bulk/tail ESS, HDI, summary labels."""

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import xarray as xr

from twoway.results import diagnostics as dg
from twoway.results import stats as st

az = pytest.importorskip("arviz")
azs = pytest.importorskip("arviz_stats")

RTOL = 1e-9  # the two agree to rounding error (about 1e-14); the brief asks 1e-6


def _ar1(rng, chains, draws, rho, shape=()):
    e = rng.normal(size=(chains, draws, *shape))
    x = np.empty_like(e)
    x[:, 0] = e[:, 0] / np.sqrt(1 - rho**2)
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + e[:, t]
    return x


def _cases():
    rng = np.random.default_rng(20240611)
    shifted = rng.normal(size=(4, 400, 5)) + np.array([0.0, 0.0, 0.0, 0.8])[:, None, None]
    return {
        "iid": rng.normal(size=(4, 500, 6)),
        "ar1_0.9": _ar1(rng, 4, 500, 0.9, (6,)),
        "ar1_0.99_odd": _ar1(rng, 3, 301, 0.99, (3,)),
        "shifted_means": shifted,
        "heavy_tails": rng.standard_cauchy(size=(4, 333, 5)),
        "student_t2": rng.standard_t(2, size=(2, 1000, 4)),
        "one_chain": rng.normal(size=(1, 200, 3)),
        "five_draws": rng.normal(size=(2, 5, 3)),
        "ties": rng.integers(0, 3, size=(4, 100, 3)).astype(float),
        "constant": np.full((4, 100, 2), 1.5),
        "matrix": _ar1(rng, 4, 200, 0.5, (3, 2)),
    }


CASES = _cases()


def _close(mine, ref):
    np.testing.assert_allclose(np.asarray(mine, dtype=float), np.asarray(ref, dtype=float), rtol=RTOL,
                               atol=0, equal_nan=True)


@pytest.mark.parametrize("name", list(CASES))
def test_rhat_matches_arviz(name):
    x = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ArviZ divides 0 by 0 on constant chains
        ref = azs.rhat(x)
    _close(dg.rhat(x), ref)


@pytest.mark.parametrize("name", list(CASES))
def test_ess_bulk_matches_arviz(name):
    x = CASES[name]
    _close(dg.ess_bulk(x), azs.ess(x, method="bulk"))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("prob", [(0.05, 0.95), 0.89, (0.1, 0.8)])
def test_ess_tail_matches_arviz(name, prob):
    x = CASES[name]
    _close(dg.ess_tail(x, prob), azs.ess(x, method="tail", prob=prob))


def test_ess_tail_default_is_the_papers_5_and_95_percent():
    x = CASES["ar1_0.9"]
    _close(dg.ess_tail(x), azs.ess(x, method="tail", prob=(0.05, 0.95)))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("prob", [0.94, 0.5, 0.89, 1.0])
def test_hdi_matches_arviz(name, prob):
    x = CASES[name]
    pooled = x.reshape(-1, *x.shape[2:])
    ref = azs.hdi(pooled, prob, axis=0)
    mine = st.hdi(x, prob)
    assert mine.shape == (*x.shape[2:], 2)
    np.testing.assert_array_equal(mine, ref)  # the same draws are picked


def test_shapes_and_scalars():
    x = CASES["matrix"]
    assert dg.rhat(x).shape == dg.ess_bulk(x).shape == dg.ess_tail(x).shape == (3, 2)
    one = x[:, :, 0, 0]
    assert isinstance(dg.rhat(one), float) and isinstance(dg.ess_bulk(one), float)
    assert dg.rhat(one) == pytest.approx(dg.rhat(x)[0, 0], rel=1e-12)
    assert st.hdi(one, 0.9).shape == (2,)
    with pytest.raises(ValueError, match="chains, draws"):
        dg.rhat(np.zeros(10))
    with pytest.raises(ValueError, match="interval probability"):
        st.hdi(one, 0.0)


def test_edge_cases_like_arviz():
    rng = np.random.default_rng(7)
    const = np.full((4, 100), 2.0)
    assert np.isnan(dg.rhat(const))
    assert dg.ess_bulk(const) == dg.ess_tail(const) == 400.0  # ArviZ: the number of draws
    assert np.isnan(dg.rhat(rng.normal(size=(1, 100))))  # one chain: no R-hat, but an ESS
    assert np.isfinite(dg.ess_bulk(rng.normal(size=(1, 100))))
    short = rng.normal(size=(4, 3))  # fewer than 4 draws a chain
    assert np.isnan(dg.rhat(short)) and np.isnan(dg.ess_bulk(short)) and np.isnan(dg.ess_tail(short))
    x = rng.normal(size=(4, 100, 3))
    x[2, 50, 0] = np.nan  # one nan: that component only is nan
    x[:, :, 1] = np.nan
    for f in (dg.rhat, dg.ess_bulk, dg.ess_tail):
        out = f(x)
        assert np.isnan(out[:2]).all() and np.isfinite(out[2])
    _close(dg.rhat(x), azs.rhat(x))
    _close(dg.ess_bulk(x), azs.ess(x, method="bulk"))
    y = rng.normal(size=(4, 100))
    y[0, 0] = np.inf  # ranks handle infinities
    _close(dg.rhat(y), azs.rhat(y))
    _close(dg.ess_bulk(y), azs.ess(y, method="bulk"))


def test_ndtri_matches_scipy():
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.uniform(size=20000), np.logspace(-300, -1, 500), 1 - np.logspace(-16, -1, 200),
                        [0.075, 0.5, 0.925, 0.5 - 0.425, 0.5 + 0.425]])
    ref = special.ndtri(p)
    np.testing.assert_allclose(dg.ndtri(p), ref, rtol=1e-14, atol=1e-300)
    assert dg.ndtri(0.0) == -np.inf and dg.ndtri(1.0) == np.inf
    assert np.isnan(dg.ndtri([np.nan, -0.1, 1.1])).all()


def _dataset(rng):
    return xr.Dataset(
        {
            "intercept": (("chain", "draw"), rng.normal(size=(4, 200))),
            "row_effect": (("chain", "draw", "row"), _ar1(rng, 4, 200, 0.7, (3,))),
            "cov": (("chain", "draw", "row", "col"), rng.normal(size=(4, 200, 3, 2))),
            "plain": (("chain", "draw", "k"), rng.standard_t(3, size=(4, 200, 2))),
        },
        coords={"row": ["row1", "row2", "row3"], "col": ["c1", "c2"]},
    )


def test_summary_table_matches_az_summary():
    ds = _dataset(np.random.default_rng(11))
    ref = az.summary(ds, kind="all", ci_kind="hdi", ci_prob=0.94, round_to="none")
    # az.summary takes the tail ESS at rcParams["stats.ci_prob"] (0.89: the 11% and 89% quantiles)
    mine = st.summary_table(ds, None, 0.94, tail_prob=az.rcParams["stats.ci_prob"])
    assert mine.index.equals(ref.index)
    assert mine.index[0] == "intercept" and "row_effect[row2]" in mine.index and "cov[row1, c2]" in mine.index
    assert "plain[1]" in mine.index
    assert list(mine.columns) == ["mean", "sd", "hdi94_lb", "hdi94_ub", "ess_bulk", "ess_tail", "r_hat"]
    for col in mine.columns:
        np.testing.assert_allclose(mine[col].to_numpy(), ref[col].to_numpy(dtype=float), rtol=RTOL, atol=1e-14)
    # the default tail ESS is at 5% and 95%
    default = st.summary_table(ds, ["row_effect"], 0.94)
    _close(default["ess_tail"], dg.ess_tail(ds["row_effect"].values))


def test_summary_table_subset_order_and_other_dim_order():
    ds = _dataset(np.random.default_rng(12))
    ds["cov_t"] = ds["cov"].transpose("chain", "draw", "col", "row")
    names = ["cov_t", "intercept"]
    ref = az.summary(ds[names], kind="all", ci_kind="hdi", ci_prob=0.8, round_to="none")
    mine = st.summary_table(ds, names, 0.8)
    assert mine.index.equals(ref.index)
    assert list(mine.columns[2:4]) == ["hdi80_lb", "hdi80_ub"]
    np.testing.assert_allclose(mine["mean"].to_numpy(), ref["mean"].to_numpy(dtype=float), rtol=RTOL, atol=1e-14)
    np.testing.assert_allclose(mine["r_hat"].to_numpy(), ref["r_hat"].to_numpy(dtype=float), rtol=RTOL)
    # draw-major storage is read the right way round
    swapped = ds[["intercept"]].transpose("draw", "chain")
    np.testing.assert_allclose(st.summary_table(swapped)["r_hat"].to_numpy(),
                               st.summary_table(ds, ["intercept"])["r_hat"].to_numpy(), rtol=1e-12)


def test_summary_path_imports_neither_arviz_nor_scipy():
    code = textwrap.dedent("""
        import sys, types
        import numpy as np, xarray as xr
        rng = np.random.default_rng(0)
        post = xr.Dataset({
            "intercept": (("chain", "draw"), rng.normal(size=(2, 50))),
            "row_effect": (("chain", "draw", "row"), rng.normal(size=(2, 50, 3))),
        }, coords={"row": ["a", "b", "c"]})
        before = set(sys.modules)
        import twoway.results.summary
        from twoway.results.stats import summary_table
        table = summary_table(post, None, 0.9)
        fit = types.SimpleNamespace(
            posterior=post, parameter_names=["intercept", "row_effect"],
            sample_stats=xr.Dataset({"diverging": (("chain", "draw"), np.zeros((2, 50), bool))}),
            info={"sampling_seconds": 1.0, "total_seconds": 2.0, "likelihood_path": "direct", "engine": "jax",
                  "chains": 2, "draws": 50, "tune": 50, "seed": 1},
            model=types.SimpleNamespace(describe=lambda: "fake"), priors={},
            data=types.SimpleNamespace(n_replicates=1, mask=np.ones((1, 2, 2), bool), row_labels=('a', 'b'),
                                       col_labels=('x', 'y')))
        from twoway.engines.description import description_from_info
        fit.description = description_from_info(fit.info)  # what Fit.description gives
        fit.engine = fit.info["engine"]
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = twoway.results.summary.summarize(fit, decomposition=False)  # the fake fit has no table
        assert list(s.table.columns) == ["mean", "sd", "hdi_3%", "hdi_97%", "ess_bulk", "ess_tail", "r_hat"]
        assert list(s.table.index) == ["intercept", "row_effect[a]", "row_effect[b]", "row_effect[c]"]
        new = sorted(m for m in set(sys.modules) - before
                     if m.split(".")[0] in ("arviz", "arviz_base", "arviz_stats", "arviz_plots", "scipy",
                                            "xarray_einstats"))
        assert not new, new
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


def test_long_parameters_print_shortened_with_a_line_saying_how_to_see_them():
    import pandas as pd

    from twoway.results.summary import PRINT_HEAD, FitSummary

    names = ["intercept"] + [f"row_effect[r{i}]" for i in range(100)] + [f"col_effect[c{j}]" for j in range(5)]
    table = pd.DataFrame({"mean": np.arange(len(names), dtype=float)}, index=pd.Index(names, name="parameter"))
    d = {"divergences": 0, "max_r_hat": 1.0, "min_ess_bulk": 500.0, "sampling_seconds": 1.0, "total_seconds": 1.0}
    text = FitSummary(table=table, diagnostics=d).format(long=40)
    assert f"row_effect[r{PRINT_HEAD - 1}]" in text and f"row_effect[r{PRINT_HEAD}]" not in text
    assert f"row_effect: {100 - PRINT_HEAD:,} more entries not printed" in text
    assert "col_effect[c4]" in text and "intercept" in text            # short parameters whole
    assert "r99" in FitSummary(table=table, diagnostics=d).format(long=0)  # 0 prints every row
    assert "r99" in FitSummary(table=table, diagnostics=d, chosen=True).format()  # chosen variables whole
    assert len(FitSummary(table=table, diagnostics=d).to_dict()["parameters"]) == len(names)  # JSON keeps all
