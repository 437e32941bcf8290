"""The seed's inference model as written against twoway's ``additive-sd``.

Same process, same simulated 8 x 12 table (the seed's means and variances,
combined as standard deviations as the seed's simulation does). For each:
wall seconds (model build and compile included), min bulk ESS over the row and
column means and sds, ESS per second, divergences; then the ratio.

The row mean of the seed's model is ``mean_treat[i] + mean(mean_group)`` and
likewise the column mean, the same identified quantity as twoway's
``row_mean`` / ``col_mean``; its sds are ``exp(sd_treat_log)`` and
``exp(sd_group_log)``.

Run: ``.venv/bin/python benchmarks/bench_seed.py [--seed S] [--also-pymc-nuts]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import arviz as az
import numpy as np
import xarray as xr


def seed_model(y: np.ndarray):
    """``model_univar_inf`` from the seed, ported to PyMC 6 (same priors and structure)."""
    import pymc as pm

    n_treatments, n_groups = y.shape

    def noncentered_param(basename, shape, reshape=None):
        sd = pm.HalfNormal(f"{basename}_sd", 1, shape=shape)
        mu = pm.Normal(f"{basename}_mu", 0, 1, shape=shape)
        off = pm.Normal(f"{basename}_offset", 0, 1, shape=shape)
        var = pm.Deterministic(basename, mu + sd * off)
        return var.reshape(reshape) if reshape else var

    with pm.Model() as model:
        mean_treat = noncentered_param("mean_treat", n_treatments, (n_treatments, 1))
        mean_group = noncentered_param("mean_group", n_groups, (1, n_groups))
        sd_treat = pm.math.exp(noncentered_param("sd_treat_log", n_treatments, (n_treatments, 1)))
        sd_group = pm.math.exp(noncentered_param("sd_group_log", n_groups, (1, n_groups)))
        sd_noise = pm.HalfNormal("sd_err", 1.0)
        pm.Normal("Y_obs", mu=mean_treat + mean_group, sigma=sd_treat + sd_group + sd_noise,
                  shape=(n_treatments, n_groups), observed=y)
    return model


def min_ess(quantities: dict[str, np.ndarray]) -> float:
    """Min bulk ESS over arrays of shape (chain, draw, level)."""
    ds = xr.Dataset({k: (("chain", "draw", f"{k}_dim"), v) for k, v in quantities.items()})
    ess = az.ess(ds, method="bulk")
    return float(min(float(ess[k].min()) for k in ess.data_vars))


def run_seed(y: np.ndarray, *, seed: int, nuts_sampler: str | None) -> dict:
    import pymc as pm

    t0 = time.perf_counter()
    model = seed_model(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = {} if nuts_sampler is None else {"nuts_sampler": nuts_sampler}
        trace = pm.sample(500, tune=1000, chains=6, random_seed=seed, progressbar=False, model=model, **kwargs)
    wall = time.perf_counter() - t0
    post = trace["posterior"]
    mt = post["mean_treat"].values  # (chain, draw, N)
    mg = post["mean_group"].values
    q = {
        "row_mean": mt + mg.mean(axis=-1, keepdims=True),
        "col_mean": mg + mt.mean(axis=-1, keepdims=True),
        "row_sd": np.exp(post["sd_treat_log"].values),
        "col_sd": np.exp(post["sd_group_log"].values),
    }
    div = int(trace["sample_stats"]["diverging"].sum())
    return {"wall": wall, "min_ess": min_ess(q), "divergences": div}


def run_twoway(data, *, seed: int, effects: str = "integrate") -> dict:
    import dataclasses

    import twoway

    spec = dataclasses.replace(twoway.preset("additive-sd"), effects=effects)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = twoway.fit(spec, data, seed=seed, progress=False)
    wall = time.perf_counter() - t0
    post = result.posterior
    q = {k: post[k].values for k in ("row_mean", "col_mean", "row_sd", "col_sd")}
    div = int(result.sample_stats["diverging"].sum())
    return {"wall": wall, "min_ess": min_ess(q), "divergences": div}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--also-pymc-nuts", action="store_true",
                        help="also run the seed model with PyMC's own NUTS (nuts_sampler='pymc')")
    args = parser.parse_args()

    from twoway.app.demo import seed_table

    sim = seed_table("additive-sd", seed=args.seed)
    y = sim.data.values[0]
    runs = {}
    import pymc as pm

    runs["seed model, pm.sample default"] = run_seed(y, seed=args.seed, nuts_sampler=None)
    if args.also_pymc_nuts:
        runs["seed model, PyMC NUTS"] = run_seed(y, seed=args.seed, nuts_sampler="pymc")
    runs["twoway additive-sd"] = run_twoway(sim.data, seed=args.seed)
    runs["twoway additive-sd, effects sampled"] = run_twoway(sim.data, seed=args.seed, effects="sample")

    print(f"pymc {pm.__version__}; pm.sample's default NUTS here: "
          f"{'nutpie' if pm.sampling.mcmc.NUTPIE_INSTALLED else 'pymc'}; table 8 x 12, seed {args.seed}")
    print(f"{'run':38s} {'wall s':>8s} {'min ESS':>8s} {'ESS/s':>8s} {'diverg.':>8s}")
    for name, r in runs.items():
        r["ess_per_s"] = r["min_ess"] / r["wall"]
        print(f"{name:38s} {r['wall']:8.2f} {r['min_ess']:8.0f} {r['ess_per_s']:8.1f} {r['divergences']:8d}")
    base = runs["seed model, pm.sample default"]["ess_per_s"]
    for tw_name in ("twoway additive-sd", "twoway additive-sd, effects sampled"):
        tw = runs[tw_name]["ess_per_s"]
        print(f"ratio {tw_name} / seed (pm.sample default), ESS per second: {tw / base:.1f}x")
        if args.also_pymc_nuts:
            print(f"ratio {tw_name} / seed (PyMC NUTS), ESS per second: "
                  f"{tw / runs['seed model, PyMC NUTS']['ess_per_s']:.1f}x")


if __name__ == "__main__":
    main()
