"""What a user does after the fit, timed: checking cases (issue 17).

Run ``python benchmarks/bench_checking.py [--only NAME] [--folder DIR]``; every case prints its
figures and the commands it timed, and returns them as a dict.

Cases:

``compare``
    :func:`case_compare`. A 61 x 12 table (rows: years 1960-2020, columns: months; simulated from a
    Kronecker model with iid years and an unstructured month covariance, a seasonal mean) is fitted
    twice with the jax engine, 2 chains x 500 draws (``twoway fit data.csv --model additive`` and
    ``--model kronecker --row-structure iid --col-structure unstructured``; setup, not timed). Then
    ``twoway compare additive.nc kronecker.nc`` is timed as a process, from its start to its exit,
    twice: cold (the first run after the fits) and warm (the same command again), wall and CPU seconds.
    Target: <= 15 s wall including the process start (before the structured LOO: 677 s). The elpd of each fit is
    checked against the dense computation (one Cholesky of the 732 x 732 covariance of the observed
    cells per draw, conditioned cell by cell: the code compare ran before) on the same draws:
    target |elpd difference| <= 1e-6. ``--dense-draws D`` thins the dense check to D draws per
    chain (evenly spaced; PSIS on both sides over the same draws), which keeps it short on a busy
    machine; the default checks every draw.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
YEARS = [str(y) for y in range(1960, 2021)]


def _twoway() -> list[str]:
    """The twoway command of this checkout (its virtualenv's console script, or ``python -m twoway``)."""
    exe = Path(sys.executable).with_name("twoway")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "twoway"]


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(cmd: list[str]) -> tuple[float, str, float]:
    """Run ``cmd`` as a process: its wall seconds, its standard output and its CPU seconds (user + system)."""
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=str(ROOT))
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done.stdout, _children_cpu() - cpu


def make_table(folder: Path) -> Path:
    """The 61 x 12 table of the ``compare`` case as a CSV (row, col, value), written once."""
    import twoway

    path = folder / "sst_61x12.csv"
    if path.exists():
        return path
    spec = twoway.preset("kronecker", row_structure="iid", col_structure="unstructured")
    sim = twoway.simulate(spec, 61, 12, seed=17, location=15.0, spread=2.0, row_labels=YEARS, col_labels=MONTHS)
    season = 6.0 * np.sin(2 * np.pi * (np.arange(12) - 3) / 12)     # a seasonal cycle on top of the model
    values = sim.data.values[0] + season[None, :]
    lines = ["row,col,value"] + [f"{YEARS[i]},{MONTHS[j]},{float(values[i, j])!r}" for i in range(61) for j in range(12)]
    path.write_text("\n".join(lines) + "\n")
    return path


FITS = {
    "additive": ["--model", "additive"],
    "kronecker": ["--model", "kronecker", "--row-structure", "iid", "--col-structure", "unstructured"],
}


def fit_models(folder: Path, table: Path) -> dict[str, dict]:
    """Fit both models (jax, 2 x 500 draws, seed 1) unless their files exist; their paths and fit walls."""
    out = {}
    for name, options in FITS.items():
        path = folder / f"{name}.nc"
        cmd = _twoway() + ["fit", str(table), *options, "--engine", "jax", "--chains", "2", "--draws", "500",
                           "--seed", "1", "--quiet", "--no-progress", "--out", str(path)]
        wall = None
        if not path.exists():
            wall, _, _ = _run(cmd)
        out[name] = {"path": path, "fit_wall_s": wall, "command": " ".join(cmd)}
    return out


def dense_pointwise(fit, draws: int | None = None):
    """The pre-structured computation: per draw the dense covariance of the observed cells, one Cholesky,
    each cell conditioned on the others (:func:`twoway.results.loo.loo_cell_logpdf`); (chains, kept draws, n)
    and the kept draw positions."""
    from twoway.likelihood.marginal import dense_covariance, point_parameters
    from twoway.linalg.ops import NUMPY
    from twoway.results.loo import _thinned_draws, loo_cell_logpdf

    plan, post, spec = fit.plan, fit.posterior, fit.model
    lay, design = plan.layout, plan.design.dense()
    y = fit.data.observed_values()
    keep = _thinned_draws(post.sizes["draw"], draws)
    mean = np.full(y.size, plan.m0)
    out = np.empty((post.sizes["chain"], keep.size, y.size))
    for c in range(post.sizes["chain"]):
        for k, d in enumerate(keep):
            params = point_parameters(spec, lay, post, c, int(d), plan.constants)
            out[c, k] = loo_cell_logpdf(y, mean, dense_covariance(NUMPY, spec, lay, design, params))
    return out, keep


def _elpd(ll: np.ndarray) -> float:
    """PSIS-LOO elpd of a (chains, draws, n) log-likelihood array (ArviZ)."""
    import arviz_stats
    import xarray as xr

    da = xr.DataArray(ll, dims=("chain", "draw", "cell"), name="y")
    tree = xr.DataTree.from_dict({"posterior": xr.Dataset({"mu": (("chain", "draw"), np.zeros(ll.shape[:2]))}),
                                  "log_likelihood": xr.Dataset({"y": da})})
    return float(arviz_stats.loo(tree, var_name="y").elpd)


def case_compare(folder: str | os.PathLike | None = None, *, dense_draws: int | None = None) -> dict:
    """``twoway compare`` of an additive and a Kronecker (iid x unstructured) fit of a 61 x 12 table.

    Parameters
    ----------
    folder : path, optional
        Where the table and the fits are kept (default ``<tmp>/twoway-bench-checking``); fits found there
        are reused (their fitting is not what is timed).
    dense_draws : int, optional
        Draws per chain for the dense check (default: all).

    Returns
    -------
    dict
        ``compare_cold_s``, ``compare_warm_s`` (process walls) and their CPU seconds (user + system: a
        shared machine stretches the walls), ``target_s`` (15), the fits' walls,
        per fit ``elpd`` (structured, all draws) and the dense check (``elpd_structured``,
        ``elpd_dense`` on the checked draws, their difference, the largest pointwise difference),
        ``compare_output`` and the commands.
    """
    from twoway.fit import Fit
    from twoway.results.loo import pointwise_log_likelihood

    folder = Path(folder) if folder is not None else Path(tempfile.gettempdir()) / "twoway-bench-checking"
    folder.mkdir(parents=True, exist_ok=True)
    table = make_table(folder)
    fits = fit_models(folder, table)
    cmd = _twoway() + ["compare", str(fits["additive"]["path"]), str(fits["kronecker"]["path"])]
    cold, text, cold_cpu = _run(cmd)
    warm, _, warm_cpu = _run(cmd)
    result = {"case": "compare", "command": " ".join(cmd), "compare_cold_s": round(cold, 2),
              "compare_warm_s": round(warm, 2), "compare_cold_cpu_s": round(cold_cpu, 2),
              "compare_warm_cpu_s": round(warm_cpu, 2), "cpus": os.cpu_count(),
              "load_average": [round(x, 2) for x in os.getloadavg()],
              "target_s": 15.0, "reached": max(cold, warm) <= 15.0,
              "fits": {k: {"command": v["command"], "fit_wall_s": v["fit_wall_s"]} for k, v in fits.items()},
              "check": {}}
    for name, info in fits.items():
        fit = Fit.load(info["path"])
        structured = pointwise_log_likelihood(fit, by="cell", conditional=False)
        start = time.perf_counter()
        dense, keep = dense_pointwise(fit, dense_draws)
        dense_s = time.perf_counter() - start
        mine = structured.values[:, keep]
        e_struct, e_dense = _elpd(mine), _elpd(dense)
        result["check"][name] = {
            "elpd_all_draws": round(_elpd(structured.values), 6),
            "draws_checked": int(mine.shape[0] * mine.shape[1]),
            "elpd_structured": e_struct, "elpd_dense": e_dense, "elpd_difference": abs(e_struct - e_dense),
            "max_pointwise_difference": float(np.max(np.abs(mine - dense))), "dense_s": round(dense_s, 1),
            "same_to_1e-6": abs(e_struct - e_dense) <= 1e-6,
        }
    result["compare_output"] = text
    return result


CASES = {"compare": case_compare}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(CASES), help="run only this case (repeatable)")
    parser.add_argument("--folder", default=None, help="where tables and fits are kept (default: <tmp>/twoway-bench-checking)")
    parser.add_argument("--dense-draws", type=int, default=None,
                        help="compare: draws per chain for the dense check (default: all)")
    args = parser.parse_args(argv)
    for name in args.only or list(CASES):
        kwargs = {"dense_draws": args.dense_draws} if name == "compare" else {}
        result = CASES[name](args.folder, **kwargs)
        output = result.pop("compare_output", None)
        print(json.dumps(result, indent=2, default=str))
        if output:
            print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
