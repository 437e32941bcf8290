"""twoway's covariance models against the same models written the usual way in PyMC.

Same process, same simulated data, each side timed from model building to the
last draw (compiling included). For each run: wall seconds, min bulk ESS over
the variance parameters, ESS per second, divergences; then the ratio
twoway / baseline of ESS per second.

1. ``crossed``: random row and column intercepts with one residual sd, on a
   complete 24 x 6 table and on a 200 x 50 table with 3 replicates and 10%
   missing cells. twoway's ``crossed`` preset (effects integrated out) against
   the textbook PyMC model (latent effects sampled, non-centred, likelihood on
   the observed cells only) compiled and sampled with nutpie, with twoway's
   default priors for that table. Quantities: row_effect_sd, col_effect_sd,
   sigma.
2. ``kronecker``: ar1 rows x unstructured columns on 100 x 8 with 5
   replicates. twoway's ``kronecker`` preset against ``pm.MatrixNormal``
   written by hand (rowcov the ar1 matrix of rho and sd, colchol from
   ``pm.LKJCholeskyCov``, effects sampled non-centred, one MatrixNormal per
   replicate), nutpie. Quantities:
   the ones identified in both models, ``row_rho`` and the diagonal of the
   total covariance ``U[0,0] * V[j,j]`` (twoway: ``row_sd^2 * col_sd[j]^2``;
   baseline: ``row_sd^2 * col_chol_stds[j]^2``); the Kronecker scale itself is
   not identified in the baseline.
3. ``latent``: the seed's ``model_latent_var`` ported to PyMC 6 (see
   :func:`seed_latent_model`) sampled as the seed does, ``pm.sample(500,
   tune=1000, chains=6)`` (nutpie in PyMC 6) and with PyMC's own NUTS, against
   twoway's ``latent`` preset on the seed's 8 x 12 table with 3 replicates
   (``twoway.app.demo.seed_parameters()``: the seed's means, shock sds and noise sd
   1e-4). Quantities: the row and column shock sds and the noise sd.

Settings (the same on both sides, except the latent case, where the seed's
model keeps the seed's own settings): crossed, both tables, 4 chains x 1000
draws after 1000 tuning; kronecker, 4 x 200 after 200; latent, twoway 4 x 1000 after 1000. Before the first case, a
one-parameter model is compiled untimed so that numba's start-up cost falls
on neither side.
Every model, baselines included, is compiled with the PyTensor modes of
:mod:`twoway.engines.pymc.compile_modes` (a rewrite that miscompiles sums over broadcast
scalars left out); the latent case also prints how far nutpie's compiled
log-density of the seed's model is off without that. ``--chains``,
``--draws`` and ``--tune`` override them for every run.

Run: ``.venv/bin/python benchmarks/bench_covariance.py [--only crossed|kronecker|latent]
[--seed S] [--draws D] [--tune T] [--chains C] [--no-pymc-nuts] [--latent-sigma S]``
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import warnings

import arviz as az
import numpy as np
import xarray as xr


# ---------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------


def means(quantities: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Posterior means of arrays of shape (chain, draw, ...)."""
    return {k: np.asarray(v, dtype=float).mean(axis=(0, 1)) for k, v in quantities.items()}


def min_ess(quantities: dict[str, np.ndarray]) -> tuple[float, str]:
    """Min bulk ESS over arrays of shape (chain, draw, ...), and which quantity had it."""
    data = {}
    for name, v in quantities.items():
        v = np.asarray(v, dtype=float)
        v = v.reshape(v.shape[0], v.shape[1], -1)
        data[name] = (("chain", "draw", f"{name}_dim"), v)
    ess = az.ess(xr.Dataset(data), method="bulk")
    lows = {k: float(ess[k].min()) for k in ess.data_vars}
    worst = min(lows, key=lows.get)
    return lows[worst], worst


def _posterior(trace) -> xr.Dataset:
    post = trace["posterior"]
    return post.to_dataset() if hasattr(post, "to_dataset") else post


def _stats(trace) -> xr.Dataset:
    stats = trace["sample_stats"]
    return stats.to_dataset() if hasattr(stats, "to_dataset") else stats


def _divergences(trace) -> int:
    return int(_stats(trace)["diverging"].sum())


def _steps(trace) -> str:
    """Mean leapfrog steps per kept draw and the share of draws at the maximum tree depth."""
    st = _stats(trace)
    steps = st["n_steps"] if "n_steps" in st else st.get("tree_size")
    at_max = st["maxdepth_reached"] if "maxdepth_reached" in st else st.get("reached_max_treedepth")
    out = f"{float(steps.mean()):.1f} leapfrog steps per draw" if steps is not None else ""
    if at_max is not None:
        out += f", {100 * float(at_max.mean()):.0f}% of draws at max tree depth"
    return out


def run_twoway(spec, data, settings: dict, seed: int, quantities) -> dict:
    import twoway

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = twoway.fit(spec, data, chains=settings["chains"], draws=settings["draws"],
                            tune=settings["tune"], seed=seed, progress=False)
    wall = time.perf_counter() - t0
    q = quantities(result.posterior)
    ess, worst = min_ess(q)
    info = result.info
    return {"wall": wall, "min_ess": ess, "worst": worst, "divergences": _divergences(result.tree), "means": means(q),
            "note": f"build + compile {info['compile_seconds']:.1f} s, sampling {info['sampling_seconds']:.1f} s, "
                    f"{_steps(result.tree)}, likelihood path {info['likelihood_path']}",
            "fit": result}


def run_baseline(build, settings: dict, seed: int, quantities, *, sampler: str) -> dict:
    """``sampler``: 'nutpie' (compile_pymc_model + nutpie.sample), or 'pm.sample' / 'pymc' (pm.sample's
    default NUTS, or nuts_sampler='pymc')."""
    import pymc as pm
    from twoway.engines.pymc.compile_modes import pymc_compile_kwargs, sampling_modes

    t0 = time.perf_counter()
    model = build()
    note = ""
    # the baselines get the same PyTensor modes as twoway (see twoway.engines.pymc.compile_modes): a correct log-density
    with warnings.catch_warnings(), sampling_modes():
        warnings.simplefilter("ignore")
        if sampler == "nutpie":
            import nutpie

            compiled = nutpie.compile_pymc_model(model)
            t_compiled = time.perf_counter()
            trace = nutpie.sample(compiled, chains=settings["chains"], draws=settings["draws"],
                                  tune=settings["tune"], seed=seed, progress_bar=False)
            note = f"build + compile {t_compiled - t0:.1f} s, sampling {time.perf_counter() - t_compiled:.1f} s, "
        else:
            kwargs = {} if sampler == "pm.sample" else {"nuts_sampler": sampler, "compile_kwargs": pymc_compile_kwargs()}
            trace = pm.sample(settings["draws"], tune=settings["tune"], chains=settings["chains"],
                              random_seed=seed, progressbar=False, model=model, **kwargs)
    wall = time.perf_counter() - t0
    q = quantities(_posterior(trace))
    ess, worst = min_ess(q)
    note += _steps(trace)
    return {"wall": wall, "min_ess": ess, "worst": worst, "divergences": _divergences(trace), "means": means(q),
            "note": note}


def settings_text(s: dict) -> str:
    return f"{s['chains']} chains x {s['draws']} draws, {s['tune']} tuning"


def report(title: str, runs: dict[str, dict], *, baseline: str, twoway_run: str, target: float,
           quantities: str, others: tuple[str, ...] = ()) -> list[dict]:
    print()
    print(f"== {title}")
    print(f"   ESS over: {quantities}")
    print(f"{'run':46s} {'settings':34s} {'wall s':>8s} {'min ESS':>8s} {'ESS/s':>8s} {'diverg.':>8s}  lowest")
    for name, r in runs.items():
        r["ess_per_s"] = r["min_ess"] / r["wall"]
        print(f"{name:46s} {settings_text(r['settings']):34s} {r['wall']:8.2f} {r['min_ess']:8.0f} "
              f"{r['ess_per_s']:8.2f} {r['divergences']:8d}  {r['worst']}")
    for name, r in runs.items():
        if r.get("note"):
            print(f"   {name}: {r['note']}")
    for name, r in runs.items():
        text = "; ".join(f"{k} " + np.array2string(np.asarray(v), separator=", ", max_line_width=10**6,
                                                     formatter={"float_kind": lambda x: f"{x:.3g}"})
                         for k, v in r["means"].items())
        print(f"   posterior means, {name}: {text}")
    rows = []
    tw = runs[twoway_run]
    for base in (baseline,) + others:
        ratio = tw["ess_per_s"] / runs[base]["ess_per_s"]
        ok = ratio >= target and tw["divergences"] == 0
        print(f"ratio twoway / {base}, ESS per second: {ratio:.1f}x  (target {target:g}x and zero divergences: "
              f"{'reached' if ok else 'NOT reached'})")
        rows.append({"title": title, "baseline": base, "ratio": ratio, "reached": ok})
    return rows


# ---------------------------------------------------------------------------
# 1. crossed random intercepts
# ---------------------------------------------------------------------------


CROSSED_TRUTH = {"intercept": 2.0, "row_effect_sd": 1.0, "col_effect_sd": 0.7, "sigma": 0.5}


def crossed_pymc_model(data):
    """The crossed random-intercept model the usual way: latent effects sampled, non-centred,
    likelihood on the observed cells only; priors = twoway's defaults for this table."""
    import pymc as pm
    import twoway
    from twoway.plan import resolve

    pri = model_priors(twoway.preset("crossed"), data)
    rr, ii, jj = np.nonzero(np.isfinite(data.values))
    y = data.values[rr, ii, jj]
    assert np.all(np.isfinite(y))
    _, n_rows, n_cols = data.values.shape
    with pm.Model() as model:
        intercept = pm.Normal("intercept", pri["intercept"].kwargs["mu"], pri["intercept"].kwargs["sigma"])
        row_sd = pm.HalfNormal("row_effect_sd", pri["row_effect_sd"].kwargs["sigma"])
        col_sd = pm.HalfNormal("col_effect_sd", pri["col_effect_sd"].kwargs["sigma"])
        z_row = pm.Normal("z_row", 0.0, 1.0, shape=n_rows)
        z_col = pm.Normal("z_col", 0.0, 1.0, shape=n_cols)
        row_effect = pm.Deterministic("row_effect", row_sd * z_row)
        col_effect = pm.Deterministic("col_effect", col_sd * z_col)
        sigma = pm.HalfNormal("sigma", pri["sigma"].kwargs["sigma"])
        mu = intercept + row_effect[ii] + col_effect[jj]
        pm.Normal("y", mu=mu, sigma=sigma, observed=y)
    return model


def crossed_quantities(post) -> dict:
    return {k: post[k].values for k in ("row_effect_sd", "col_effect_sd", "sigma")}


def bench_crossed(args) -> list[dict]:
    import twoway

    rows = []
    cases = [
        ("24 x 6, complete", dict(n_rows=24, n_cols=6, n_replicates=1, missing=0.0),
         {"chains": 4, "draws": 1000, "tune": 1000}),
        ("200 x 50 x 3 replicates, 10% missing", dict(n_rows=200, n_cols=50, n_replicates=3, missing=0.1),
         {"chains": 4, "draws": 1000, "tune": 1000}),
    ]
    for label, shape, settings in cases:
        settings = override(settings, args)
        sim = twoway.simulate("crossed", shape["n_rows"], shape["n_cols"], shape["n_replicates"],
                              params=CROSSED_TRUTH, seed=args.seed, missing=shape["missing"])
        data = sim.data
        runs = {}
        runs["PyMC latent effects, nutpie"] = run_baseline(
            lambda: crossed_pymc_model(data), settings, args.seed, crossed_quantities, sampler="nutpie")
        runs["twoway crossed"] = run_twoway("crossed", data, settings, args.seed, crossed_quantities)
        for r in runs.values():
            r["settings"] = settings
        n_obs = int(np.isfinite(data.values).sum())
        rows += report(f"crossed random intercepts, {label} ({n_obs} observed cells), seed {args.seed}", runs,
                       baseline="PyMC latent effects, nutpie", twoway_run="twoway crossed", target=30,
                       quantities="row_effect_sd, col_effect_sd, sigma (same names in both models)")
        print(f"   truth: {CROSSED_TRUTH}")
    return rows


# ---------------------------------------------------------------------------
# 2. kronecker: ar1 rows x unstructured columns
# ---------------------------------------------------------------------------


KRON_TRUTH = {"intercept": 1.0, "row_effect_sd": 0.8, "col_effect_sd": 0.6, "row_rho": 0.6, "row_sd": 1.0}


def kron_spec():
    import twoway

    return dataclasses.replace(twoway.preset("kronecker"), row_structure="ar1", col_structure="unstructured")


def kron_pymc_model(data):
    """Matrix-normal residual written by hand: rowcov = row_sd^2 rho^|i-j|, colchol from
    LKJCholeskyCov, intercept and effects sampled explicitly (non-centred); one
    MatrixNormal observed per replicate (PyMC 6.4's MatrixNormal has no batched logp). Priors as close to twoway's as the
    parameterisation allows: intercept and effect sds twoway's defaults for the table,
    row_rho uniform(-1, 1), row_sd halfnormal(s), LKJ eta 2 with halfnormal(1) column sds
    (the column factor has no fixed scale here)."""
    import pymc as pm
    import pytensor.tensor as pt
    from twoway.plan import resolve

    pri = model_priors(kron_spec(), data)
    s = data.spread()
    Y = data.values
    assert np.all(np.isfinite(Y))
    _, n_rows, n_cols = Y.shape
    lag = np.abs(np.subtract.outer(np.arange(n_rows), np.arange(n_rows)))
    eye = np.eye(n_rows)
    with pm.Model() as model:
        intercept = pm.Normal("intercept", pri["intercept"].kwargs["mu"], pri["intercept"].kwargs["sigma"])
        row_effect_sd = pm.HalfNormal("row_effect_sd", pri["row_effect_sd"].kwargs["sigma"])
        col_effect_sd = pm.HalfNormal("col_effect_sd", pri["col_effect_sd"].kwargs["sigma"])
        row_effect = row_effect_sd * pm.Normal("z_row", 0.0, 1.0, shape=n_rows)
        col_effect = col_effect_sd * pm.Normal("z_col", 0.0, 1.0, shape=n_cols)
        rho = pm.Uniform("row_rho", -1.0, 1.0)
        row_sd = pm.HalfNormal("row_sd", s)
        # rho^|i-j| off the diagonal, 1 on it (no 0 * rho^-1 in the gradient)
        rowcov = row_sd**2 * (eye + (1.0 - eye) * rho ** np.maximum(lag, 1).astype(float))
        colchol, _, col_stds = pm.LKJCholeskyCov("col_chol", n=n_cols, eta=2.0,
                                                 sd_dist=pm.HalfNormal.dist(1.0), compute_corr=True)
        pm.Deterministic("col_stds", col_stds)
        mu = intercept + row_effect[:, None] + col_effect[None, :]
        # PyMC 6.4's MatrixNormal.logp takes two-dimensional values only: one per replicate
        for r in range(Y.shape[0]):
            pm.MatrixNormal(f"y_{r}", mu=mu, rowcov=rowcov, colchol=colchol, observed=Y[r])
    return model


def kron_quantities_twoway(post) -> dict:
    total = post["row_sd"].values[..., None] ** 2 * post["col_sd"].values ** 2
    return {"row_rho": post["row_rho"].values, "U00*Vjj": total}


def kron_quantities_pymc(post) -> dict:
    total = post["row_sd"].values[..., None] ** 2 * post["col_stds"].values ** 2
    return {"row_rho": post["row_rho"].values, "U00*Vjj": total}


def bench_kronecker(args) -> list[dict]:
    import twoway

    # the MatrixNormal baseline takes ~1.3 s per draw of 4 chains on 2 cores: 200/200 keeps the script short
    settings = override({"chains": 4, "draws": 200, "tune": 200}, args)
    spec = kron_spec()
    sim = twoway.simulate(spec, 100, 8, 5, params=KRON_TRUTH, seed=args.seed)
    data = sim.data
    runs = {}
    runs["pm.MatrixNormal by hand, nutpie"] = run_baseline(
        lambda: kron_pymc_model(data), settings, args.seed, kron_quantities_pymc, sampler="nutpie")
    runs["twoway kronecker ar1 x unstructured"] = run_twoway(spec, data, settings, args.seed, kron_quantities_twoway)
    for r in runs.values():
        r["settings"] = settings
    rows = report(f"kronecker ar1 (rows) x unstructured (cols), 100 x 8 x 5 replicates, seed {args.seed}", runs,
                  baseline="pm.MatrixNormal by hand, nutpie", twoway_run="twoway kronecker ar1 x unstructured",
                  target=3,
                  quantities="row_rho and the diagonal of the total covariance U[0,0]*V[j,j], j = 1..8 "
                             "(twoway row_sd^2*col_sd[j]^2; baseline row_sd^2*col_chol_stds[j]^2)")
    true_total = KRON_TRUTH["row_sd"] ** 2 * np.diag(sim.truth["col_cov"])
    print(f"   truth: row_rho {KRON_TRUTH['row_rho']}, U00*Vjj {np.round(true_total, 3).tolist()}")
    return rows


# ---------------------------------------------------------------------------
# 3. the seed's latent model
# ---------------------------------------------------------------------------


def seed_latent_model(y: np.ndarray):
    """The seed's ``model_latent_var`` ported to PyMC 6, with replicate tables.

    As written in the seed: ``noncentered_param`` (HalfNormal(1) sd, Normal(0, 1) mu,
    Normal(0, 1) offset) for the treatment and group means and for the log shock sds;
    ``sd_err ~ HalfNormal(1)``; shocks ``z = offset * sd`` with Normal(0, 1) offsets;
    ``Y ~ Normal(mean_treat + mean_group + z_treat + z_group, sd_err)``.
    The port's one change: with R replicate tables the shocks are drawn afresh per
    replicate, offsets of shape (R, N) and (R, K) (the seed's single table has R = 1),
    which is the model twoway's ``latent`` preset fits.
    """
    import pymc as pm

    n_rep, n_treatments, n_groups = y.shape

    def noncentered_param(basename, shape, reshape=None):
        sd = pm.HalfNormal(f"{basename}_sd", 1, shape=shape)
        mu = pm.Normal(f"{basename}_mu", 0, 1, shape=shape)
        off = pm.Normal(f"{basename}_offset", 0, 1, shape=shape)
        var = pm.Deterministic(basename, mu + sd * off)
        return var.reshape(reshape) if reshape else var

    with pm.Model() as model:
        mean_treat = noncentered_param("mean_treat", n_treatments, (n_treatments, 1))
        mean_group = noncentered_param("mean_group", n_groups, (1, n_groups))
        sd_treat = pm.math.exp(noncentered_param("sd_treat_log", n_treatments))
        sd_group = pm.math.exp(noncentered_param("sd_group_log", n_groups))
        sd_noise = pm.HalfNormal("sd_err", 1.0)
        z_treat = pm.Deterministic("z_treat", pm.Normal("_z_treat_offset", 0, 1, shape=(n_rep, n_treatments)) * sd_treat)
        z_group = pm.Deterministic("z_group", pm.Normal("_z_group_offset", 0, 1, shape=(n_rep, n_groups)) * sd_group)
        mean_mat = (mean_treat + mean_group)[None] + (z_treat[:, :, None] + z_group[:, None, :])
        pm.Normal("Y_obs", mu=mean_mat, sigma=sd_noise, shape=y.shape, observed=y)
    return model


def latent_quantities_seed(post) -> dict:
    return {"row shock sd": np.exp(post["sd_treat_log"].values), "col shock sd": np.exp(post["sd_group_log"].values),
            "noise sd": post["sd_err"].values}


def latent_quantities_twoway(post) -> dict:
    return {"row shock sd": post["row_sd"].values, "col shock sd": post["col_sd"].values,
            "noise sd": post["sigma"].values}


def bench_latent(args) -> list[dict]:
    import twoway
    import twoway.app.demo
    from twoway.spec.names import public_names

    seed_settings = override({"chains": 6, "draws": 500, "tune": 1000}, args)
    tw_settings = override({"chains": 4, "draws": 1000, "tune": 1000}, args)
    spec = twoway.preset("latent")
    params = {k: v for k, v in twoway.app.demo.seed_parameters().items() if k in public_names(spec)}
    if args.latent_sigma is not None:
        params["sigma"] = args.latent_sigma
    sim = twoway.simulate("latent", 8, 12, 3, params=params, seed=args.seed)
    y = sim.data.values
    runs = {}
    runs["seed latent model, pm.sample default"] = run_baseline(
        lambda: seed_latent_model(y), seed_settings, args.seed, latent_quantities_seed, sampler="pm.sample")
    runs["seed latent model, pm.sample default"]["settings"] = seed_settings
    others = ()
    if args.pymc_nuts:
        runs["seed latent model, PyMC NUTS"] = run_baseline(
            lambda: seed_latent_model(y), seed_settings, args.seed, latent_quantities_seed, sampler="pymc")
        runs["seed latent model, PyMC NUTS"]["settings"] = seed_settings
        others = ("seed latent model, PyMC NUTS",)
    runs["twoway latent"] = run_twoway("latent", sim.data, tw_settings, args.seed, latent_quantities_twoway)
    runs["twoway latent"]["settings"] = tw_settings
    import pymc as pm

    default = "nutpie" if pm.sampling.mcmc.NUTPIE_INSTALLED else "pymc"
    rows = report(f"the seed's latent model, 8 x 12 x 3 replicates (seed's means and sds, sigma {params['sigma']:g}), "
                  f"seed {args.seed}; pm.sample's default NUTS here: {default}", runs,
                  baseline="seed latent model, pm.sample default", twoway_run="twoway latent", target=30,
                  quantities="row shock sds (8), column shock sds (12), noise sd "
                             "(seed: exp(sd_treat_log), exp(sd_group_log), sd_err; twoway: row_sd, col_sd, sigma)",
                  others=others)
    print(f"   truth: row shock sd {np.round(params['row_sd'], 3).tolist()}, col shock sd "
          f"{np.round(params['col_sd'], 3).tolist()}, noise sd {params['sigma']:g}")
    offset = miscompiled_offset(seed_latent_model(y))
    print(f"   without twoway.engines.pymc.compile_modes, nutpie's compiled log-density of the seed's model differs from its graph "
          f"by {offset:.6g} at the initial point (the baselines here are compiled with the exclusion)")
    return rows


# ---------------------------------------------------------------------------


def override(settings: dict, args) -> dict:
    out = dict(settings)
    for key in ("chains", "draws", "tune"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    return out


def warm_up() -> None:
    """Compile and sample a one-parameter model, so that numba's one-time start-up cost (a few
    seconds) falls on neither side of the first comparison."""
    import nutpie
    import pymc as pm

    with pm.Model() as model:
        pm.Normal("x")
    nutpie.sample(nutpie.compile_pymc_model(model), chains=1, draws=10, tune=10, progress_bar=False)


def miscompiled_offset(model) -> float:
    """Compiled (nutpie, standard NUMBA mode) minus uncompiled log-density of ``model`` at its initial point."""
    import nutpie

    compiled = nutpie.compile_pymc_model(model)
    ip = model.initial_point()
    x = np.concatenate([np.ravel(ip[v.name]) for v in model.value_vars])
    reference = model.compile_fn(model.logp(), mode="FAST_COMPILE", point_fn=True)
    return float(compiled.logp_func(x)[0]) - float(reference(ip))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("crossed", "kronecker", "latent"), action="append",
                        help="run only this case (may be given more than once)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulated tables and of the samplers")
    parser.add_argument("--chains", type=int, default=None, help="override the chains of every run (both sides)")
    parser.add_argument("--draws", type=int, default=None, help="override the draws of every run (both sides)")
    parser.add_argument("--tune", type=int, default=None, help="override the tuning draws of every run (both sides)")
    parser.add_argument("--no-pymc-nuts", dest="pymc_nuts", action="store_false",
                        help="latent case: skip the second baseline with PyMC's own NUTS")
    parser.add_argument("--latent-sigma", type=float, default=None,
                        help="latent case: the true noise sd (default: the seed's, 1e-4)")
    args = parser.parse_args()
    cases = args.only or ["crossed", "kronecker", "latent"]

    import nutpie
    import pymc as pm
    import pytensor

    load = os.getloadavg()
    print(f"pymc {pm.__version__}, pytensor {pytensor.__version__}, nutpie {nutpie.__version__}; "
          f"{os.cpu_count()} cores; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    t0 = time.perf_counter()
    warm_up()
    print(f"numba warmed up (a one-parameter model compiled, untimed) in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    rows = []
    if "crossed" in cases:
        rows += bench_crossed(args)
    if "kronecker" in cases:
        rows += bench_kronecker(args)
    if "latent" in cases:
        rows += bench_latent(args)
    load = os.getloadavg()
    print()
    print(f"total {time.perf_counter() - t0:.0f} s; load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for r in rows:
        print(f"  {'reached    ' if r['reached'] else 'NOT reached'} {r['ratio']:7.1f}x  {r['title']} vs {r['baseline']}")


if __name__ == "__main__":
    main()
