"""The laplace engine on a weakly identified variance: posterior mass near zero against an exact grid.

The case of issue 17: ``crossed`` on a 300 x 100 table, 10% of the cells observed, true row sd 0.05
(col sd 0.5, sigma 1; ``simulate`` seed 2): the row sd is weakly identified and its posterior has
mass near zero that the Laplace curvature on the log scale does not see.

The exact posterior of (row_effect_sd, col_effect_sd, sigma) is computed on a grid of their logs: the
exact log marginal likelihood (``likelihood.paths.marginal_logp``, the effects integrated out) plus the
log priors and the log-Jacobian; a fine axis for the row sd (from 1e-5 up, with 0.01 on the grid, the
mass below 1e-5 from the exponential tail ``p(u) ~ c exp(u)`` of a scale's log), trapezoid weights, and
11 points over +-5 posterior sd for each of the two well identified parameters (the trapezoid rule is
exact to ~1e-8 on a near-Gaussian at that spacing). Then the laplace engine (2 x 1000 draws, 1,000
proposals) with 4 seeds, with the boundary-aware mixture proposal and, for comparison, without it (the
t proposal alone, as before): posterior mean of the row sd, mass below 0.01 (resampled draws), its
Monte Carlo error (importance ESS and resampling), Pareto k, importance ESS and warnings.

Run: ``.venv/bin/python benchmarks/laplace_boundary.py [--seeds 4] [--data-seed 2]``
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np

CASE = {"n_rows": 300, "n_cols": 100, "missing": 0.9,
        "params": {"row_effect_sd": 0.05, "col_effect_sd": 0.5, "sigma": 1.0}}
THRESHOLD = 0.01


def log_posterior_grid(plan, axes: dict[str, np.ndarray]) -> np.ndarray:
    """The exact log posterior of the log variance parameters on a grid (unnormalised).

    Parameters
    ----------
    plan : twoway.plan.Plan
        On the sparse path.
    axes : dict of str to array (n_k,)
        Each variance parameter's log values (every one the plan samples).

    Returns
    -------
    array, shape ``tuple(n_k)``
        ``log p(y | theta) + sum log prior(theta_k) + sum u_k`` at every grid point.
    """
    from twoway.likelihood.paths import marginal_logp
    from twoway.linalg.ops import NUMPY

    mesh = np.meshgrid(*axes.values(), indexing="ij")
    params = {n: np.exp(m).ravel() for n, m in zip(axes, mesh)}
    params.update({k: np.full(mesh[0].size, v) for k, v in plan.constants.items()})
    ll = np.asarray(marginal_logp(NUMPY, plan.spec, plan.layout, plan.design, params, "sparse"))
    lp = ll.reshape(mesh[0].shape)
    for n, m in zip(axes, mesh):
        lp = lp + m + plan.priors[n].logpdf(np.exp(m))
    return lp


def trapezoid_weights(u: np.ndarray) -> np.ndarray:
    """Trapezoid-rule weights (n,) of the increasing points ``u`` (n,)."""
    d = np.diff(u)
    return np.concatenate([[d[0] / 2], (d[:-1] + d[1:]) / 2, [d[-1] / 2]])


def exact_row_sd(plan, centre: dict[str, float], spread: dict[str, float], *, threshold: float = THRESHOLD,
                 lo: float = 1e-5, hi: float = 0.5, n_below: int = 60, n_above: int = 90) -> dict:
    """The exact posterior of ``row_effect_sd``: its mean, mass below ``threshold`` and the grid's edge mass.

    ``centre`` and ``spread`` give the log-scale centre and posterior sd of the other parameters (their
    axes span +-5 sd with 11 points).
    """
    row = np.concatenate([np.linspace(math.log(lo), math.log(threshold), n_below),
                          np.linspace(math.log(threshold), math.log(hi), n_above)[1:]])
    axes = {"row_effect_sd": row}
    for n, c in centre.items():
        axes[n] = c + spread[n] * np.linspace(-5.0, 5.0, 11)
    lp = log_posterior_grid(plan, axes)
    dens = np.exp(lp - lp.max())
    marg = dens  # the marginal of the row sd's log: the others integrated out with trapezoid weights
    for u in reversed(list(axes.values())[1:]):
        marg = marg @ trapezoid_weights(u)
    tail = marg[0]  # p(u) ~ c exp(u) below the grid: its integral is the density at the grid's lowest point
    wr = trapezoid_weights(row)
    total = tail + float(marg @ wr)
    k = n_below  # row[:k] runs up to log(threshold)
    below = (tail + float(marg[:k] @ trapezoid_weights(row[:k]))) / total
    mean = (tail * lo + float((marg * np.exp(row)) @ wr)) / total
    edge = max(float(marg[-1] / marg.max()),
               *(float(np.max(np.take(dens, [0, -1], axis=k)) / dens.max()) for k in range(1, len(axes))))
    return {"mean": mean, "below": below, "tail_below_lo": tail / total, "edge_density": edge,
            "evaluations": int(lp.size)}


def laplace_runs(data, seeds, *, boundary: bool, draws: int = 1000) -> list[dict]:
    """The laplace engine's row-sd posterior for each seed (``boundary=False``: the t proposal alone)."""
    import twoway
    from twoway.engines import laplace

    out = []
    saved = laplace._boundary_shares
    if not boundary:
        laplace._boundary_shares = lambda excess, mass: np.zeros(len(mass))
    try:
        for seed in seeds:
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                f = twoway.fit("crossed", data, engine="laplace", chains=2, draws=draws, seed=seed)
            r = f.posterior["row_effect_sd"].values.ravel()
            below = float(np.mean(r < THRESHOLD))
            ess = f.info["importance_ess"]
            out.append({"seed": seed, "mean": float(r.mean()), "below": below,
                        # Monte Carlo sd of the resampled estimate: the importance ESS, then the resampling
                        "mc_below": math.sqrt(below * (1 - below) * (1 / ess + 1 / r.size)),
                        "mc_mean": float(r.std()) * math.sqrt(1 / ess + 1 / r.size),
                        "pareto_k": f.info["pareto_k"], "ess": ess, "proposals": f.info["proposals"],
                        "share": f.info.get("boundary_share", {}).get("row_effect_sd", 0.0),
                        "seconds": time.perf_counter() - t0,
                        "warnings": [str(w.message) for w in caught if issubclass(w.category, twoway.errors.TwowayWarning)],
                        "fit": f})
    finally:
        laplace._boundary_shares = saved
    return out


def main(argv=None) -> None:
    import twoway
    from twoway.plan import resolve

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--data-seed", type=int, default=2)
    args = ap.parse_args(argv)
    data = twoway.simulate("crossed", CASE["n_rows"], CASE["n_cols"], 1, CASE["params"], seed=args.data_seed,
                           missing=CASE["missing"]).data
    print(f"crossed {CASE['n_rows']} x {CASE['n_cols']}, {data.mask.mean():.1%} observed, true {CASE['params']}, "
          f"data seed {args.data_seed}")
    seeds = list(range(args.seeds))
    rows = {"mixture (now)": laplace_runs(data, seeds, boundary=True),
            "t alone (before)": laplace_runs(data, seeds, boundary=False)}
    f = rows["mixture (now)"][0]["fit"]
    plan = resolve(f.model, data, likelihood="sparse", priors=f.priors)
    others = [n for n in ("col_effect_sd", "sigma")]
    centre = {n: float(np.log(f.posterior[n].values).mean()) for n in others}
    spread = {n: float(np.log(f.posterior[n].values).std()) for n in others}
    t0 = time.perf_counter()
    exact = exact_row_sd(plan, centre, spread)
    print(f"exact grid ({exact['evaluations']} evaluations, {time.perf_counter() - t0:.0f} s): mean "
          f"{exact['mean']:.4f}, mass below {THRESHOLD} {exact['below']:.4f} (below 1e-5: "
          f"{exact['tail_below_lo']:.1e}; density at the grid's edges <= {exact['edge_density']:.1e} of the peak)")
    print()
    print("| proposal | seed | row sd mean (MC sd) | mass below 0.01 (MC sd) | z vs grid | Pareto k | importance ESS "
          "| boundary share | warning |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, runs in rows.items():
        for r in runs:
            z = f"{(r['below'] - exact['below']) / r['mc_below']:+.1f}" if r["mc_below"] > 0 else "n/a"
            warn = "; ".join(w[:70] for w in r["warnings"]) or "none"
            print(f"| {label} | {r['seed']} | {r['mean']:.4f} ({r['mc_mean']:.4f}) | {r['below']:.4f} "
                  f"({r['mc_below']:.4f}) | {z} | {r['pareto_k']:.2f} | {r['ess']:.0f} of {r['proposals']} "
                  f"| {r['share']:.2f} | {warn} |")


if __name__ == "__main__":
    main()
