"""Scale: large sparse crossed tables, twoway against its peers in one run.

Cases (``--only NAME``, may be repeated; all by default):

``sparse``
    A crossed table simulated here with NumPy: 2,972 rows x 1,128 columns,
    73,421 observed cells at random (2.2% of the grid), intercept 3, row
    effect sd 0.32, column effect sd 0.52, residual sd 1.18 (the shape of a
    course-ratings table that made ``twoway fit`` run 20 minutes at 1.9 GB).
    Every side runs as its own process, timed from process start to exit,
    its peak memory the child's ``ru_maxrss``:

    * twoway: ``twoway fit data.csv --model crossed --out fit.nc`` (no engine
      named: the chooser takes the sparse path, the fit the laplace engine);
      ESS is the importance ESS of the variance parameters; the fit file is
      read back to check that every effect is in it and for the posterior
      means and 94% intervals of the three sds;
    * Bambi ``value ~ 1 + (1|row) + (1|col)``, default priors and sampler
      (``benchmarks/.venv-bambi``, made by ``benchmarks/peers/setup-bambi.sh``);
    * the crossed model written the usual way in PyMC (non-centred row and
      column effects, twoway's default priors) sampled with nutpie.

    Targets (printed pass/fail): twoway's full posterior (every variance
    parameter and every effect) within 30 s and 1 GB; at least 10x Bambi's ESS
    per second; posterior means of the three sds within 3% of the simulated
    values, and their 94% intervals covering them.
``covariates``
    The same simulated table with two covariates in the mean: ``service``, a
    0/1 number that varies by cell (30% ones, coefficient -0.09), and
    ``group``, a 4-level factor constant within each row (levels g1..g4 at
    random, coefficients 0, -0.05, 0.03, 0.10 against g1). twoway's
    ``twoway fit ... --model crossed --covariates "service + C(group)"`` and the
    same command without ``--covariates`` on the same table, each as a process
    in the same run: wall and peak memory of the fit with covariates against
    the fit without (target <= 1.2x each), the coefficients' posterior means
    and 94% intervals against the simulated values.
``many``
    Only when ``benchmarks/scale_many.py`` exists: its ``run_many_case``.

Run: ``.venv/bin/python benchmarks/bench_scale.py [--only sparse] [--quick] [--seed 1] [--side both|twoway|peers]
[--json FILE]`` (``--quick``: a smaller table and few draws, a smoke test).
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
sys.path.insert(0, str(HERE))
BAMBI_PYTHON = HERE / ".venv-bambi" / "bin" / "python"

SPARSE = {"n_rows": 2972, "n_cols": 1128, "n_obs": 73421, "intercept": 3.0,
          "row_effect_sd": 0.32, "col_effect_sd": 0.52, "sigma": 1.18}
QUICK = {**SPARSE, "n_rows": 900, "n_cols": 300, "n_obs": 9000}
SDS = ("row_effect_sd", "col_effect_sd", "sigma")
TARGETS = {"wall_s": 30.0, "peak_gb": 1.0, "ratio": 10.0, "mean_rel": 0.03}


# -- the table ---------------------------------------------------------------------------------
def sparse_table(truth: dict, seed: int):
    """The long table (rows, cols, values) of ``truth``'s shape: cells at random, each row and column seen."""
    rng = np.random.default_rng(seed)
    N, K, n = truth["n_rows"], truth["n_cols"], truth["n_obs"]
    for _ in range(100):
        cells = rng.choice(N * K, size=n, replace=False)
        i, j = cells // K, cells % K
        if np.unique(i).size == N and np.unique(j).size == K:
            break
    else:  # pragma: no cover - 73,421 cells over 2,972 x 1,128 cover every row and column
        raise RuntimeError("could not cover every row and column")
    a = rng.normal(0.0, truth["row_effect_sd"], N)
    b = rng.normal(0.0, truth["col_effect_sd"], K)
    y = truth["intercept"] + a[i] + b[j] + rng.normal(0.0, truth["sigma"], n)
    return i, j, y


#: The covariates of the ``covariates`` case: coefficients by term.
COVARIATE_COEF = {"service": -0.09, "C(group)[T.g2]": -0.05, "C(group)[T.g3]": 0.03, "C(group)[T.g4]": 0.10}


def covariate_columns(i, j, n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``service`` (n,) 0/1 by cell, ``group`` (n,) g1..g4 by row, and their part of the mean (n,)."""
    rng = np.random.default_rng([seed, 16])
    service = (rng.random(i.size) < 0.3).astype(int)
    row_group = rng.integers(0, 4, n_rows)
    group = np.array(["g1", "g2", "g3", "g4"])[row_group[i]]
    effect = COVARIATE_COEF["service"] * service
    for level in ("g2", "g3", "g4"):
        effect = effect + COVARIATE_COEF[f"C(group)[T.{level}]"] * (group == level)
    return service, group, effect


def write_csv(path: Path, i, j, y, extra: dict | None = None) -> None:
    """Long CSV: ``row,col,value`` with labels r0001.., c0001.."""
    extra = extra or {}
    with open(path, "w") as fh:
        fh.write(",".join(["row", "col", "value", *extra]) + "\n")
        columns = list(extra.values())
        for k, (a, b, v) in enumerate(zip(i, j, y)):
            more = "".join(f",{c[k]}" for c in columns)
            fh.write(f"r{a + 1:04d},c{b + 1:04d},{v:.6f}{more}\n")


# -- children ----------------------------------------------------------------------------------
def run_child(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; its wall seconds (start to exit), peak memory (ru_maxrss, bytes), stdout, stderr, status."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {"wall": wall, "peak_bytes": usage.ru_maxrss * 1024, "stdout": out.read().decode(),
                "stderr": err.read().decode(), "status": proc.returncode}


def twoway_side(csv: Path, work: Path, settings: dict, seed: int, truth: dict) -> dict:
    """``twoway fit`` as a process; the fit read back for ESS, means, intervals and the effects."""
    exe = Path(sys.executable).parent / "twoway"
    out = work / "fit.nc"
    cmd = [str(exe), "fit", str(csv), "--model", "crossed", "--out", str(out), "--seed", str(seed),
           "--chains", str(settings["chains"]), "--draws", str(settings["draws"]), "--quiet", "--no-progress"]
    run = run_child(cmd)
    if run["status"] != 0:
        return {"label": "twoway", "error": run["stderr"].strip().splitlines()[-1:] or ["failed"]}
    from twoway import Fit

    fit = Fit.load(out)
    info = fit.info
    post = fit.posterior
    full = all(n in post for n in ("intercept", "row_effect", "col_effect", *SDS))
    full = full and post["row_effect"].sizes["row"] == truth["n_rows"] and post["col_effect"].sizes["col"] == truth["n_cols"]
    sds = {}
    for n in SDS:
        v = post[n].values.ravel()
        lo, hi = np.quantile(v, [0.03, 0.97])
        sds[n] = {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi)}
    ess = float(info.get("importance_ess", np.nan)) if info.get("method") == "laplace-importance" else _min_ess(post)
    return {"label": f"twoway ({info['engine']}, path {info['likelihood_path']})", "wall": run["wall"],
            "peak_bytes": run["peak_bytes"], "ess": ess, "full_posterior": bool(full), "sds": sds,
            "note": (f"{info.get('factorisations', '?')} factorisations, Pareto k {info.get('pareto_k', float('nan')):.2f}, "
                     f"{info.get('proposals', '?')} proposals -> {settings['chains']} x {settings['draws']} draws; "
                     f"in-process compile {info['compile_seconds']:.1f} s + sampling {info['sampling_seconds']:.1f} s")}


def _min_ess(post) -> float:
    import arviz as az

    ess = az.ess(post[list(SDS)], method="bulk")
    return float(min(float(ess[n]) for n in SDS))


def bambi_side(csv: Path, settings: dict, seed: int) -> dict:
    """Bambi (default priors, default sampler) in its own virtualenv, as a process."""
    if not BAMBI_PYTHON.exists():
        return {"label": "Bambi", "error": ["not run: no benchmarks/.venv-bambi (run benchmarks/peers/setup-bambi.sh)"]}
    cmd = [str(BAMBI_PYTHON), str(HERE / "peers" / "bambi_crossed.py"), str(csv), "--chains", str(settings["chains"]),
           "--draws", str(settings["draws"]), "--tune", str(settings["tune"]), "--seed", str(seed)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = run_child(cmd, env)
    if run["status"] != 0:
        return {"label": "Bambi", "error": run["stderr"].strip().splitlines()[-1:] or ["failed"]}
    out = json.loads(run["stdout"].strip().splitlines()[-1])
    return {"label": f"Bambi {out['versions']['bambi']} ({out['sampler']} NUTS)", "wall": run["wall"],
            "peak_bytes": run["peak_bytes"], "ess": out["min_ess_bulk"],
            "note": f"divergences {out['divergences']}; means "
                    + ", ".join(f"{k} {v:.3f}" for k, v in out["means"].items())}


def pymc_side(csv: Path, settings: dict, seed: int) -> dict:
    """Non-centred PyMC on nutpie, as a process (this script with ``--child-pymc``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-pymc", str(csv), "--seed", str(seed),
           "--chains", str(settings["chains"]), "--draws", str(settings["draws"]), "--tune", str(settings["tune"])]
    run = run_child(cmd)
    if run["status"] != 0:
        return {"label": "PyMC non-centred (nutpie)", "error": run["stderr"].strip().splitlines()[-1:] or ["failed"]}
    out = json.loads(run["stdout"].strip().splitlines()[-1])
    return {"label": "PyMC non-centred (nutpie)", "wall": run["wall"], "peak_bytes": run["peak_bytes"],
            "ess": out["min_ess"], "note": f"divergences {out['divergences']}; means "
                                           + ", ".join(f"{k} {v:.3f}" for k, v in out["means"].items())}


def child_pymc(args) -> None:
    """The non-centred PyMC model on nutpie; prints one JSON line."""
    import warnings

    import nutpie
    import pandas as pd

    from bench_speed import crossed_pymc_model
    from twoway.engines.pymc.compile_modes import sampling_modes
    from twoway.table.data import TwoWayData

    frame = pd.read_csv(args.child_pymc)
    data = TwoWayData.from_long(frame, row="row", col="col", value="value")
    with warnings.catch_warnings(), sampling_modes():
        warnings.simplefilter("ignore")
        compiled = nutpie.compile_pymc_model(crossed_pymc_model(data))
        trace = nutpie.sample(compiled, chains=args.chains, draws=args.draws, tune=args.tune, seed=args.seed,
                              progress_bar=False)
    post = trace["posterior"].to_dataset()
    print(json.dumps({"min_ess": _min_ess(post), "divergences": int(trace["sample_stats"]["diverging"].sum()),
                      "means": {n: float(post[n].mean()) for n in SDS}}))


# -- the case ----------------------------------------------------------------------------------
def run_sparse_case(args) -> dict:
    """The ``sparse`` case: the table, then twoway and its peers as processes; figures and targets."""
    truth = QUICK if args.quick else SPARSE
    tw = {"chains": 2, "draws": 100} if args.quick else {"chains": 4, "draws": 250}
    peer = {"chains": 2, "draws": 200, "tune": 200} if args.quick else {"chains": 4, "draws": 1000, "tune": 1000}
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    csv = work / "ratings.csv"
    write_csv(csv, *sparse_table(truth, args.seed))
    sides = []
    if args.side in ("both", "twoway"):
        sides.append(("twoway", twoway_side(csv, work, tw, args.seed, truth)))
    if args.side in ("both", "peers"):
        sides.append(("bambi", bambi_side(csv, peer, args.seed)))
        sides.append(("pymc", pymc_side(csv, peer, args.seed)))
    figures = {"table": {k: truth[k] for k in ("n_rows", "n_cols", "n_obs")}, "sides": dict(sides)}
    print(f"\n## sparse: {truth['n_rows']} x {truth['n_cols']}, {truth['n_obs']} observed cells "
          f"({truth['n_obs'] / (truth['n_rows'] * truth['n_cols']):.1%})\n")
    print("| side | wall s | peak GB | min ESS | ESS/s | note |")
    print("|---|---:|---:|---:|---:|---|")
    for _, s in sides:
        if "error" in s:
            print(f"| {s['label']} | – | – | – | – | {' '.join(s['error'])} |")
            continue
        s["ess_per_s"] = s["ess"] / s["wall"]
        print(f"| {s['label']} | {s['wall']:.1f} | {s['peak_bytes'] / 1e9:.2f} | {s['ess']:.0f} | "
              f"{s['ess_per_s']:.1f} | {s.get('note', '')} |")
    t = dict(sides).get("twoway")
    if t and "error" not in t:
        checks = _targets(t, dict(sides).get("bambi"), truth)
        figures["targets"] = checks
        print("\ntargets:")
        for name, (ok, text) in checks.items():
            print(f"  {'PASS' if ok else 'FAIL' if ok is not None else 'n/a '}  {name}: {text}")
        print("\nposterior of the sds (mean, 94% interval) against the simulated values:")
        for n in SDS:
            s = t["sds"][n]
            print(f"  {n:14s} {s['mean']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}]  truth {truth[n]:.4f}")
    return figures


def run_covariates_case(args) -> dict:
    """The ``covariates`` case: the sparse table with two covariates, fitted with and without them."""
    truth = QUICK if args.quick else SPARSE
    tw = {"chains": 2, "draws": 100} if args.quick else {"chains": 4, "draws": 250}
    work = Path(tempfile.mkdtemp(prefix="bench_scale_cov_"))
    i, j, y = sparse_table(truth, args.seed)
    service, group, effect = covariate_columns(i, j, truth["n_rows"], args.seed)
    csv = work / "ratings-covariates.csv"
    write_csv(csv, i, j, y + effect, {"service": service, "group": group})
    exe = Path(sys.executable).parent / "twoway"
    sides = {}
    for label, extra in (("without covariates", []), ("with covariates", ["--covariates", "service + C(group)"])):
        out = work / f"fit-{len(extra)}.nc"
        cmd = [str(exe), "fit", str(csv), "--model", "crossed", *extra, "--out", str(out), "--seed", str(args.seed),
               "--chains", str(tw["chains"]), "--draws", str(tw["draws"]), "--quiet", "--no-progress"]
        run = run_child(cmd)
        if run["status"] != 0:
            sides[label] = {"error": (run["stderr"].strip().splitlines() or ["failed"])[-1]}
            continue
        from twoway import Fit

        fit = Fit.load(out)
        side = {"wall": run["wall"], "peak_bytes": run["peak_bytes"], "engine": fit.info.get("engine"),
                "path": fit.info.get("likelihood_path")}
        if "coef" in fit.posterior:
            coef = fit.posterior["coef"]
            side["coef"] = {}
            for t in coef["term"].values:
                v = coef.sel(term=t).values.ravel()
                lo, hi = np.quantile(v, [0.03, 0.97])
                side["coef"][str(t)] = {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi)}
        sides[label] = side
    print(f"\n## covariates: {truth['n_rows']} x {truth['n_cols']}, {truth['n_obs']} observed cells, "
          "service (cell, 0/1) + C(group) (row, 4 levels)\n")
    print("| fit | wall s | peak GB | engine, path |")
    print("|---|---:|---:|---|")
    for label, s in sides.items():
        if "error" in s:
            print(f"| {label} | – | – | {s['error']} |")
        else:
            print(f"| {label} | {s['wall']:.1f} | {s['peak_bytes'] / 1e9:.2f} | {s['engine']}, {s['path']} |")
    a, b = sides.get("without covariates", {}), sides.get("with covariates", {})
    figures = {"sides": sides}
    if "wall" in a and "wall" in b:
        wall_ratio, mem_ratio = b["wall"] / a["wall"], b["peak_bytes"] / a["peak_bytes"]
        figures.update(wall_ratio=wall_ratio, memory_ratio=mem_ratio)
        print(f"\n  {'PASS' if wall_ratio <= 1.2 else 'FAIL'}  wall with / without covariates <= 1.2: {wall_ratio:.2f}")
        print(f"  {'PASS' if mem_ratio <= 1.2 else 'FAIL'}  peak memory with / without <= 1.2: {mem_ratio:.2f}")
        print("\ncoefficients (posterior mean, 94% interval) against the simulated values:")
        for t, c in b.get("coef", {}).items():
            want = COVARIATE_COEF.get(t, float("nan"))
            print(f"  {t:16s} {c['mean']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]  truth {want:+.4f}"
                  f"  {'covered' if c['lo'] <= want <= c['hi'] else 'NOT covered'}")
    return figures


def _targets(t: dict, bambi: dict | None, truth: dict) -> dict:
    checks = {
        "full posterior (every sd and every effect)": (t["full_posterior"], "in the fit file" if t["full_posterior"]
                                                       else "missing variables"),
        f"wall <= {TARGETS['wall_s']:g} s": (t["wall"] <= TARGETS["wall_s"], f"{t['wall']:.1f} s"),
        f"peak memory <= {TARGETS['peak_gb']:g} GB": (t["peak_bytes"] <= TARGETS["peak_gb"] * 1e9,
                                                      f"{t['peak_bytes'] / 1e9:.2f} GB"),
    }
    if bambi and "error" not in bambi:
        ratio = t["ess_per_s"] / bambi["ess_per_s"]
        checks[f"ESS/s >= {TARGETS['ratio']:g}x Bambi's"] = (ratio >= TARGETS["ratio"], f"{ratio:.1f}x")
    else:
        checks[f"ESS/s >= {TARGETS['ratio']:g}x Bambi's"] = (None, "Bambi not run")
    rel = {n: t["sds"][n]["mean"] / truth[n] - 1.0 for n in SDS}
    checks[f"sd means within {TARGETS['mean_rel']:.0%}"] = (
        all(abs(v) <= TARGETS["mean_rel"] for v in rel.values()),
        ", ".join(f"{n} {v:+.1%}" for n, v in rel.items()))
    cover = {n: t["sds"][n]["lo"] <= truth[n] <= t["sds"][n]["hi"] for n in SDS}
    checks["94% intervals cover the truth"] = (all(cover.values()),
                                              ", ".join(f"{n} {'yes' if c else 'no'}" for n, c in cover.items()))
    return checks


def _many_case():
    """``run_many_case`` from benchmarks/scale_many.py when that file exists (engineer B's case)."""
    if not (HERE / "scale_many.py").exists():
        return None
    from scale_many import run_many_case

    def run(args):
        figures = run_many_case(args.quick)
        print("\n## many\n")
        for k, v in figures.items():
            print(f"  {k}: {v}")
        return figures

    return run


CASES = {"sparse": run_sparse_case, "covariates": run_covariates_case}
if _many_case() is not None:
    CASES["many"] = _many_case()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=list(CASES), action="append", help="run only this case (may be repeated)")
    p.add_argument("--quick", action="store_true", help="a smaller table and few draws: a smoke test")
    p.add_argument("--seed", type=int, default=1, help="seed of the table and the samplers (default: 1)")
    p.add_argument("--side", choices=("both", "twoway", "peers"), default="both")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    p.add_argument("--child-pymc", default=None, help=argparse.SUPPRESS)
    p.add_argument("--chains", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--draws", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--tune", type=int, default=1000, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child_pymc:
        child_pymc(args)
        return
    import platform

    print(f"bench_scale: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"seed {args.seed}{', quick' if args.quick else ''}")
    figures = {}
    for name in [c for c in CASES if c in (args.only or list(CASES))]:
        try:
            figures[name] = CASES[name](args)
        except Exception as exc:  # one failing case does not stop the others
            print(f"\n## {name}: FAILED ({type(exc).__name__}: {exc})")
            figures[name] = {"error": f"{type(exc).__name__}: {exc}"}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
