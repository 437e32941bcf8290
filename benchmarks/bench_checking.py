"""What a user does after the fit, timed: checking cases (issue 17).

Run ``.venv/bin/python benchmarks/bench_checking.py [--only NAME] [--folder DIR] [--out TABLE.md]``
(``--only`` may be repeated; all cases by default). Every case prints its figures and the commands it
ran, and returns them as a dict; at the end one table (case, what, value, target, pass/fail) is printed,
and written as markdown to ``--out`` (for RESULTS.md to quote), with the exact commands under it.

Cases:

``big``
    :func:`case_big`. The crossed table of ``benchmarks/bench_scale.py``'s ``sparse`` case (its
    ``SPARSE`` shape and ``sparse_table``, seed 1: 2,972 rows x 1,128 columns, 73,421 observed cells)
    written once as a long CSV ``ratings.csv`` (row, col, value) and fitted as a process, ``twoway fit
    ratings.csv --model crossed --engine laplace --out big.nc --seed 1 --quiet --no-progress`` (setup: timed and reported, not a
    target; reused when ``big.nc`` exists). Then each of ``twoway loo big.nc``, ``twoway ppc big.nc``,
    ``twoway predict big.nc --out pred.csv`` (the observed cells: the default above 100,000 grid cells),
    ``twoway summary big.nc`` and ``twoway report big.nc --out report.html`` runs as its own process
    under ``/usr/bin/time -f "%e %M"``: wall seconds from start to exit and peak resident memory (the
    process's maximum resident set: that of the largest of it and the children it waited for, not their
    sum; without ``/usr/bin/time``, ``os.wait4`` of that process). Targets: each
    <= 60 s (summary <= 3 s) and <= 1.5 GB; the fit file <= 60 MB. A command that runs past
    ``--timeout`` seconds (default 600) is stopped and reported as timed out.
``weak``
    :func:`case_weak`. The weakly identified row sd of ``benchmarks/laplace_boundary.py`` (``crossed``
    on 300 x 100, 10% observed, true row sd 0.05, data seed 2), with its functions: the laplace engine
    (2 x 1000 draws, the boundary-aware proposals; ``--weak-seeds`` seeds, default 2) against the exact
    grid posterior: the mass of the row sd below 0.01 from each, their difference in Monte Carlo sds
    (target |z| <= 3), and whether the fit warned (a warning naming ``--engine jax`` is reported; it is
    not required when the mass is right).
``calibration``
    :func:`case_calibration`. Reads ``benchmarks/calibration.md`` (nothing is rerun): the smallest
    power against a 0.5-sd shift over the cases (target >= 80%), that every case passes, and the
    verdicts of the wrong-prior cases (each must be caught).
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
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # bench_scale and laplace_boundary, reused
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


# -- big: everything after the fit of a 73,421-cell crossed table --------------------------------------
#: The big case's targets: seconds and peak GB per command (summary: 3 s), and the fit file's MB.
BIG_TARGETS = {"wall_s": 60.0, "summary_wall_s": 3.0, "peak_gb": 1.5, "file_mb": 60.0}
#: The commands timed after the fit, by name: their arguments after ``twoway``, the fit file as ``{fit}``.
BIG_COMMANDS = {
    "loo": ["loo", "{fit}"],
    "ppc": ["ppc", "{fit}"],
    "predict": ["predict", "{fit}", "--out", "{folder}/pred.csv"],
    "summary": ["summary", "{fit}"],
    "report": ["report", "{fit}", "--out", "{folder}/report.html"],
}
TIME = "/usr/bin/time"


def timed(cmd: list[str], timeout: float) -> dict:
    """Run ``cmd`` as a process (under ``/usr/bin/time`` when there is one): its wall seconds (start to
    exit), peak resident memory in bytes (its own, not the largest of all children so far), status,
    standard output and error; ``timed_out`` when it ran past ``timeout`` seconds (then stopped, with
    its process group)."""
    with tempfile.NamedTemporaryFile(suffix=".time") as tf, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as err:
        full = [TIME, "-f", "%e %M", "-o", tf.name, *cmd] if os.path.exists(TIME) else list(cmd)
        start = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=err, cwd=str(ROOT), start_new_session=True)
        timed_out, peak_kb = False, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if not timed_out and full[0] == TIME:
            fields = Path(tf.name).read_text().split()  # "Command exited with non-zero status N" may come first
            if len(fields) >= 2:
                wall, peak_kb = float(fields[-2]), int(fields[-1])
        if peak_kb is None:  # no /usr/bin/time, or stopped: this process's own peak (wait4)
            peak_kb = usage.ru_maxrss
        out.seek(0)
        err.seek(0)
        return {"wall_s": round(wall, 2), "peak_gb": round(peak_kb * 1024 / 1e9, 3), "status": proc.returncode,
                "timed_out": timed_out, "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}


def make_big_table(folder: Path, seed: int = 1) -> Path:
    """bench_scale's ``sparse`` table (its ``SPARSE`` shape, ``sparse_table``, ``write_csv``) as
    ``ratings.csv``, written once."""
    from bench_scale import SPARSE, sparse_table, write_csv

    path = folder / "ratings.csv"
    if not path.exists():
        part = path.with_suffix(".part")
        write_csv(part, *sparse_table(SPARSE, seed))
        part.replace(path)
    return path


def case_big(folder: str | os.PathLike | None = None, *, timeout: float = 600.0) -> dict:
    """loo, ppc, predict, summary and report of the laplace fit of a 2,972 x 1,128 table (73,421 cells),
    each a process: wall seconds and peak memory against the targets, and the fit file's size.

    Parameters
    ----------
    folder : path, optional
        Where the table and the fit are kept (default ``<tmp>/twoway-bench-checking``); reused when there.
    timeout : float
        Seconds after which a command is stopped and reported as timed out (default 600).

    Returns
    -------
    dict
        ``fit`` (its command, wall and peak, or None when the file was reused), ``file_mb``, and per
        command (``loo``, ``ppc``, ``predict``, ``summary``, ``report``) its ``command``, ``wall_s``,
        ``peak_gb``, ``status``, ``timed_out`` and ``error`` (the last line of its standard error when
        it failed); ``rows`` for the table.
    """
    from bench_scale import SPARSE

    folder = _folder(folder)
    table = make_big_table(folder)
    fit_path = folder / "big.nc"
    def fit_command(out: Path) -> list[str]:
        return _twoway() + ["fit", str(table), "--model", "crossed", "--engine", "laplace", "--out", str(out),
                            "--seed", "1", "--quiet", "--no-progress"]

    fit_cmd = fit_command(fit_path)
    result: dict = {"case": "big", "table": {k: SPARSE[k] for k in ("n_rows", "n_cols", "n_obs")},
                    "fit": {"command": " ".join(fit_cmd), "wall_s": None, "peak_gb": None}, "commands": {}}
    if not fit_path.exists():
        part = fit_path.with_suffix(".part.nc")  # written aside, renamed when complete: a stopped run leaves no big.nc
        part.unlink(missing_ok=True)
        run = timed(fit_command(part), max(timeout, 1800.0))
        if run["status"] or run["timed_out"]:
            raise RuntimeError(f"the big fit failed ({run['status']}): {run['stderr'][-2000:]}")
        part.replace(fit_path)
        result["fit"].update(wall_s=run["wall_s"], peak_gb=run["peak_gb"])
    result["file_mb"] = round(fit_path.stat().st_size / 1e6, 1)
    rows = []
    fit = result["fit"]
    rows.append(("big", "fit (setup)", _wall_peak(fit["wall_s"], fit["peak_gb"]) if fit["wall_s"] is not None
                 else "reused", "-", None))
    for name, args in BIG_COMMANDS.items():
        cmd = _twoway() + [a.format(fit=fit_path, folder=folder) for a in args]
        run = timed(cmd, timeout)
        entry = {"command": " ".join(cmd), **{k: run[k] for k in ("wall_s", "peak_gb", "status", "timed_out")}}
        limit = BIG_TARGETS["summary_wall_s" if name == "summary" else "wall_s"]
        target = f"<= {limit:g} s, <= {BIG_TARGETS['peak_gb']:g} GB"
        if run["timed_out"]:
            value, ok = f"timed out after {timeout:g} s", False
        elif run["status"]:
            entry["error"] = (run["stderr"].strip().splitlines() or ["failed"])[-1]
            value, ok = f"failed ({run['status']}): {entry['error'][:80]}", False
        else:
            value = _wall_peak(run["wall_s"], run["peak_gb"])
            ok = run["wall_s"] <= limit and run["peak_gb"] <= BIG_TARGETS["peak_gb"]
        result["commands"][name] = entry
        rows.append(("big", f"twoway {name}", value, target, ok))
        print(f"big: {name}: {value}", flush=True)
    rows.append(("big", "fit file size", f"{result['file_mb']:.1f} MB", f"<= {BIG_TARGETS['file_mb']:g} MB",
                 result["file_mb"] <= BIG_TARGETS["file_mb"]))
    result["rows"] = rows
    result["all_commands"] = [fit["command"]] + [e["command"] for e in result["commands"].values()]
    return result


def _wall_peak(wall: float, peak_gb: float) -> str:
    return f"{wall:.1f} s, {peak_gb:.2f} GB"


def _folder(folder) -> Path:
    out = Path(folder) if folder is not None else Path(tempfile.gettempdir()) / "twoway-bench-checking"
    out.mkdir(parents=True, exist_ok=True)
    return out


# -- weak: a weakly identified row sd, laplace against the exact grid -----------------------------------
def case_weak(folder: str | os.PathLike | None = None, *, seeds: int = 2) -> dict:
    """The posterior mass of a weakly identified row sd below 0.01: laplace fits against the exact grid
    (``benchmarks/laplace_boundary.py``'s case and functions).

    Parameters
    ----------
    folder : path, optional
        Unused (nothing is written); for the common signature.
    seeds : int
        Laplace fits (seeds 0, 1, ...; default 2).

    Returns
    -------
    dict
        ``exact`` (the grid's mean and mass below 0.01), per seed ``below`` (laplace), ``mc_sd`` (the Monte
        Carlo sd of the difference: the estimate's were it right, from the exact mass, the importance ESS and
        the resampling), ``z`` (the difference in those sds), ``pareto_k``, ``ess``, ``warnings``;
        ``rows`` for the table.
    """
    from laplace_boundary import CASE, THRESHOLD, exact_row_sd, laplace_runs

    import twoway
    from twoway.plan import resolve

    data = twoway.simulate("crossed", CASE["n_rows"], CASE["n_cols"], 1, CASE["params"], seed=2,
                           missing=CASE["missing"]).data
    start = time.perf_counter()
    runs = laplace_runs(data, list(range(seeds)), boundary=True)
    for r in runs:
        r["n_draws"] = int(r["fit"].posterior["row_effect_sd"].size)
    fit_s = time.perf_counter() - start
    first = runs[0]["fit"]
    plan = resolve(first.model, data, likelihood="sparse", priors=first.priors)
    others = ("col_effect_sd", "sigma")
    centre = {n: float(np.log(first.posterior[n].values).mean()) for n in others}
    spread = {n: float(np.log(first.posterior[n].values).std()) for n in others}
    start = time.perf_counter()
    exact = exact_row_sd(plan, centre, spread)
    grid_s = time.perf_counter() - start
    result = {"case": "weak", "table": f"crossed {CASE['n_rows']} x {CASE['n_cols']}, {data.mask.mean():.0%} observed",
              "truth": CASE["params"], "threshold": THRESHOLD, "fit_s": round(fit_s, 1), "grid_s": round(grid_s, 1),
              "exact": {"mean": exact["mean"], "below": exact["below"]}, "seeds": []}
    rows = [("weak", f"exact grid: mass of row sd below {THRESHOLD:g}", f"{exact['below']:.4f}", "-", None)]
    p = exact["below"]
    for r in runs:
        # the Monte Carlo sd of the difference: of the resampled estimate were it right (the exact mass, the
        # importance ESS, then the resampling; the grid's own error is ~1e-8), as tests/test_laplace_boundary.py
        mc = math.sqrt(p * (1.0 - p) * (1.0 / r["ess"] + 1.0 / r["n_draws"]))
        z = (r["below"] - p) / mc
        jax = [w for w in r["warnings"] if "--engine jax" in w]
        result["seeds"].append({**{k: r[k] for k in ("seed", "mean", "below", "pareto_k", "ess", "warnings")},
                                "mc_sd": mc, "z": z})
        warned = f"warned ({jax[0][:60]}...)" if jax else "no warning"
        what = (f"laplace seed {r['seed']}: mass below {THRESHOLD:g} (MC sd of the difference); "
                f"Pareto k {r['pareto_k']:.2f}, importance ESS {r['ess']:.0f}; {warned}")
        rows.append(("weak", what,
                     f"{r['below']:.4f} ({mc:.4f}), z {z:+.1f}", r"\|z\| <= 3", abs(z) <= 3.0))
    result["rows"] = rows
    result["all_commands"] = [(f"laplace_boundary.laplace_runs(data, {list(range(seeds))}, boundary=True); "
                               "laplace_boundary.exact_row_sd(plan, centre, spread)")]
    return result


# -- calibration: the SBC table's power and wrong-prior verdicts, read back ----------------------------
def _markdown_tables(text: str) -> list[list[dict]]:
    """Every markdown table of ``text``: a list of rows, each a dict by header."""
    tables, lines = [], text.splitlines()
    k = 0
    while k < len(lines):
        if lines[k].startswith("|") and k + 1 < len(lines) and re.match(r"^\|[-:| ]+\|$", lines[k + 1].strip()):
            head = [c.strip() for c in lines[k].strip().strip("|").split("|")]
            rows, k = [], k + 2
            while k < len(lines) and lines[k].startswith("|"):
                rows.append(dict(zip(head, (c.strip() for c in lines[k].strip().strip("|").split("|")))))
                k += 1
            tables.append(rows)
        else:
            k += 1
    return tables


def case_calibration(folder: str | os.PathLike | None = None, *, path: str | os.PathLike | None = None) -> dict:
    """``benchmarks/calibration.md`` read back: the smallest power, every case's verdict and the wrong priors'.

    Returns
    -------
    dict
        ``min_power`` (a fraction) and its case, ``cases``, ``failing``, ``wrong_prior`` (case: verdict);
        ``rows`` for the table.
    """
    path = Path(path) if path is not None else HERE / "calibration.md"
    tables = _markdown_tables(path.read_text())
    main_table = next(t for t in tables if t and any(k.startswith("power") for k in t[0]))
    power_key = next(k for k in main_table[0] if k.startswith("power"))
    powers = [(float(r[power_key].rstrip("%")) / 100, f"{r['structure']} {r['side']}".replace(" -", ""))
              for r in main_table if r[power_key].rstrip("%").replace(".", "").isdigit()]
    low = min(p for p, _ in powers)
    at_low = [c for p, c in powers if p == low]
    low_case = at_low[0] if len(at_low) == 1 else f"{len(at_low)} cases at it"
    failing = [f"{r['structure']} {r['side']}" for r in main_table if r["verdict"].lower() != "pass"]
    wrong = next((t for t in tables if t and "case" in t[0] and "verdict" in t[0]), [])
    verdicts = {r["case"]: r["verdict"] for r in wrong}
    result = {"case": "calibration", "source": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
              "cases": len(main_table), "cases_with_power": len(powers), "min_power": low, "min_power_case": low_case,
              "failing": failing, "wrong_prior": verdicts}
    rows = [("calibration", f"smallest power vs a 0.5-sd shift ({len(powers)} of {len(main_table)} cases; {low_case})",
             f"{low:.0%}", ">= 80%", len(powers) == len(main_table) and low >= 0.8 - 1e-9),
            ("calibration", "cases failing calibration", str(len(failing)), "0", not failing)]
    for name, verdict in verdicts.items():
        rows.append(("calibration", f"wrong prior: {name}", verdict, "FAIL (caught)", verdict.startswith("FAIL")))
    result["rows"] = rows
    result["all_commands"] = [f"(read {result['source']}; not rerun)"]
    return result


def table_markdown(results: list[dict]) -> str:
    """The one table of a run (case, what, value, target, pass/fail) and the commands under it."""
    import platform

    lines = [(f"{platform.node()}: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end "
              f"(a shared machine stretches the walls); {time.strftime('%Y-%m-%d %H:%M')}"), "",
             "| case | what | value | target | result |", "|---|---|---|---|---|"]
    for r in results:
        for case, what, value, target, ok in r.get("rows", []):
            verdict = "-" if ok is None else "pass" if ok else "FAIL"
            lines.append(f"| {case} | {what} | {value} | {target} | {verdict} |")
    lines.append("")
    lines.append("Commands:")
    lines.append("")
    for r in results:
        for c in r.get("all_commands", []):
            lines.append(f"    {c}")
    return "\n".join(lines) + "\n"


CASES = {"big": case_big, "weak": case_weak, "calibration": case_calibration, "compare": case_compare}


def _compare_rows(result: dict) -> None:
    """The compare case's lines of the table."""
    walls = f"cold {result['compare_cold_s']:.1f} s, warm {result['compare_warm_s']:.1f} s"
    result["rows"] = [("compare", "twoway compare additive.nc kronecker.nc", walls, "<= 15 s", result["reached"])]
    for name, c in result["check"].items():
        result["rows"].append(("compare", f"{name}: |elpd structured - dense| ({c['draws_checked']} draws)",
                               f"{c['elpd_difference']:.1e}", "<= 1e-6", c["same_to_1e-6"]))
    result["all_commands"] = [f["command"] for f in result["fits"].values()] + [result["command"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(CASES), help="run only this case (repeatable)")
    parser.add_argument("--folder", default=None, help="where tables and fits are kept (default: <tmp>/twoway-bench-checking)")
    parser.add_argument("--out", default=None, help="also write the table (and the commands) to this markdown file")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="big: seconds after which a command is stopped and reported as timed out (default: 600)")
    parser.add_argument("--weak-seeds", type=int, default=2, help="weak: laplace fits, one per seed (default: 2)")
    parser.add_argument("--dense-draws", type=int, default=None,
                        help="compare: draws per chain for the dense check (default: all)")
    args = parser.parse_args(argv)
    options = {"big": {"timeout": args.timeout}, "weak": {"seeds": args.weak_seeds},
               "compare": {"dense_draws": args.dense_draws}}
    results = []
    for name in [c for c in CASES if c in (args.only or list(CASES))]:
        try:
            result = CASES[name](args.folder, **options.get(name, {}))
        except Exception as exc:  # noqa: BLE001 - one failing case does not stop the others
            result = {"case": name, "error": f"{type(exc).__name__}: {exc}",
                      "rows": [(name, "the case", f"failed: {type(exc).__name__}: {str(exc)[:200]}", "-", False)]}
        if name == "compare" and "error" not in result:
            _compare_rows(result)
        output = result.pop("compare_output", None)
        print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "all_commands")}, indent=2,
                         default=str))
        if output:
            print(output)
        results.append(result)
    text = table_markdown(results)
    print()
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
