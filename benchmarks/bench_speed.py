"""Speed of twoway against its peers, run side by side in one invocation.

Every case runs twoway and its peer on the same table in the same run and
reports, per side, wall seconds, the minimum bulk ESS over the case's variance
parameters, ESS per second and divergences, then the ratio of ESS per second
(twoway / peer) against the case's target.

Cases (``--only NAME``, may be repeated; all by default, in this order):

``crossed-cli``
    Crossed random intercepts on a 24 x 6 table with one observation per cell
    (lme4's Penicillin shape: 24 plates x 6 samples), simulated at lme4's
    Penicillin estimates (:data:`PENICILLIN`). twoway:
    ``twoway fit data.csv --model crossed --engine E --out fit.nc`` as a
    subprocess, process start to saved fit, cold (an empty compile cache,
    ``TWOWAY_CACHE_DIR`` a fresh folder) and warm (the same command again with
    that cache). Peer: Bambi's ``y ~ 1 + (1|plate) + (1|sample)`` with its
    default priors and default sampler, in its own virtualenv
    (``benchmarks/.venv-bambi``, made by ``benchmarks/peers/setup-bambi.sh``)
    through ``benchmarks/peers/bambi_crossed.py``, also timed as a process.
``covariates-cli``
    The same 24 x 6 crossed table with two covariates in the mean: ``x``, a
    number that varies by cell (coefficient 0.4 per unit), and ``batch``, a
    two-level factor constant within each plate (plates ``a``..``l`` in batch
    ``A``, the others in ``B``; coefficient 0.8 for ``B``). twoway:
    ``twoway fit ... --covariates "x + C(batch)"``, cold and warm, against the
    same command without covariates on the table without them, warm, in the
    same run: covariates must cost little (warm <= 3 s, the wall of the fit
    without them). No peer.
``crossed``
    The same table in this process: ``twoway.fit("crossed", ...)`` twice, the
    first call cold in the process (what a script pays), the second warm
    (what a session pays), against the crossed model written the usual way in
    PyMC (non-centred plate and sample effects) compiled and sampled with
    nutpie. Target 30x for the cold call.
``seed``
    The seed's 8 x 12 table (``twoway.app.demo.seed_table("additive-sd")``: the
    seed's means and variances) fitted with twoway's ``additive-sd`` against
    the seed's own model as written (``bench_seed.seed_model``) sampled with
    ``pm.sample()``'s default sampler and the seed's settings (6 chains x 500
    draws, 1000 tuning). ESS over the row and column means and sds, as in
    ``bench_seed.py``. Target 10x.
``kronecker``
    Kronecker ar1 (rows) x unstructured (columns) on 100 x 8 with 5
    replicates against ``pm.MatrixNormal`` written by hand and sampled with
    nutpie, as in ``bench_covariance.py``. ESS over ``row_rho`` and the
    identified diagonal ``U[0,0] V[j,j]``. Target 3x.
``sbc``
    Simulation-based calibration of ``crossed`` on 24 x 6 tables, 200
    replications of 2 chains x 500 draws (``twoway.runs.sbc.sbc``): wall seconds.
    No peer.
``demo``
    ``twoway demo --out DIR`` as a subprocess, twice with one fresh compile
    cache: the first (cold) and the second (warm, what ``make demo`` costs
    once set up). No peer.

Variance parameters of the crossed cases: ``row_effect_sd``,
``col_effect_sd``, ``sigma`` (Bambi: ``1|plate_sigma``, ``1|sample_sigma``,
``sigma``). A case is *reached* when its ratio meets the target and twoway
had no divergences.

In-process fits also start from an empty compile cache: the script points
``TWOWAY_CACHE_DIR`` at a fresh temporary folder unless it is already set.
One case that fails is reported as FAILED in the table; the others still run.

The table is simulated here with NumPy for the crossed and Kronecker cases
(the same numbers whatever twoway's simulator does), so peer figures stay
comparable between versions of twoway.

Run: ``.venv/bin/python benchmarks/bench_speed.py [--only CASE] [--quick] [--seed S]
[--twoway-engine jax|nutpie|pymc] [--side both|twoway|peers] [--json FILE]``
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import json
import os
import platform
import string
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # bench_seed and bench_covariance, reused below

#: lme4's estimates for the Penicillin data (``diameter ~ 1 + (1|plate) + (1|sample)``, REML).
PENICILLIN = {"intercept": 22.97, "row_effect_sd": 0.8467, "col_effect_sd": 1.9316, "sigma": 0.5499}
#: Kronecker case: effects, ar1 rows, and the mean column variance (the row factor carries the scale).
KRON_TRUTH = {"intercept": 1.0, "row_effect_sd": 0.8, "col_effect_sd": 0.6, "row_rho": 0.6, "row_sd": 1.0}
#: Targets of the ratio twoway / peer of ESS per second, by case.
TARGETS = {"crossed": 30.0, "seed": 10.0, "kronecker": 3.0, "bambi": 100.0}
CROSSED_SDS = ("row_effect_sd", "col_effect_sd", "sigma")
CASES = ("crossed-cli", "covariates-cli", "crossed", "seed", "kronecker", "sbc", "demo")
BAMBI_PYTHON = HERE / ".venv-bambi" / "bin" / "python"


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One side of a comparison.

    Attributes
    ----------
    label : str
        What ran (``twoway crossed, library, cold``, ``Bambi, PyMC NUTS``, ...).
    wall : float or None
        Wall seconds; None when the run did not happen.
    ess : float or None
        Minimum bulk ESS over the case's quantities; None when not measured.
    divergences : int or None
        Divergent transitions after tuning, all chains.
    settings : str
        Chains, draws and tuning.
    note : str
        Anything else worth printing (compile / sampling split, sampler, means).
    """

    label: str
    wall: float | None = None
    ess: float | None = None
    divergences: int | None = None
    settings: str = ""
    note: str = ""

    @property
    def ess_per_s(self) -> float | None:
        """Minimum bulk ESS per wall second, or None."""
        if self.wall is None or self.ess is None:
            return None
        return self.ess / self.wall


@dataclasses.dataclass
class Row:
    """One line of the final table: a twoway run, its peer, the ratio and the target.

    Attributes
    ----------
    case : str
    engine : str
        twoway's engine in this run.
    twoway : Run or None
    peer : Run or None
    target : float or None
        Target of the ratio of ESS per second; None where there is none.
    wall_target : float or None
        Target of twoway's wall seconds (at most); None where there is none.
    """

    case: str
    engine: str
    twoway: Run | None = None
    peer: Run | None = None
    target: float | None = None
    wall_target: float | None = None

    @property
    def ratio(self) -> float | None:
        """twoway's ESS per second over the peer's, or None."""
        a = self.twoway.ess_per_s if self.twoway else None
        b = self.peer.ess_per_s if self.peer else None
        return None if a is None or not b else a / b

    @property
    def reached(self) -> bool | None:
        """Every target of the row is met (the ratio with no twoway divergences, the wall time); None without one."""
        checks = []
        if self.target is not None and self.ratio is not None:
            checks.append(self.ratio >= self.target and not self.twoway.divergences)
        if self.wall_target is not None and self.twoway is not None and self.twoway.wall is not None:
            checks.append(self.twoway.wall <= self.wall_target)
        return all(checks) if checks else None

    @property
    def target_text(self) -> str:
        parts = []
        if self.target is not None:
            parts.append(f"ratio >= {self.target:g}x")
        if self.wall_target is not None:
            parts.append(f"wall <= {self.wall_target:g} s")
        return ", ".join(parts) or "–"


def settings_text(s: dict) -> str:
    """``4 x 1000 (+1000 tuning)`` for a settings dict."""
    return f"{s['chains']} x {s['draws']} (+{s['tune']} tuning)"


def sampling(args, chains: int, draws: int, tune: int, *, quick: dict | None = None) -> dict:
    """Sampler settings of a case; ``--quick`` replaces them by ``quick`` (default 4 x 200, 200 tuning)."""
    if args.quick:
        return dict(quick or {"chains": 4, "draws": 200, "tune": 200})
    return {"chains": chains, "draws": draws, "tune": tune}


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------


def penicillin_table(seed: int) -> pd.DataFrame:
    """A 24 x 6 crossed table at lme4's Penicillin estimates, one value per cell.

    Parameters
    ----------
    seed : int

    Returns
    -------
    pandas.DataFrame (144, 3)
        Columns ``plate`` (``a``..``x``), ``sample`` (``A``..``F``) and ``y``.
    """
    rng = np.random.default_rng(seed)
    plates, samples = list(string.ascii_lowercase[:24]), list("ABCDEF")
    plate_effect = rng.normal(0.0, PENICILLIN["row_effect_sd"], len(plates))
    sample_effect = rng.normal(0.0, PENICILLIN["col_effect_sd"], len(samples))
    noise = rng.normal(0.0, PENICILLIN["sigma"], (len(plates), len(samples)))
    y = PENICILLIN["intercept"] + plate_effect[:, None] + sample_effect[None, :] + noise
    i, j = np.indices(y.shape)
    return pd.DataFrame({"plate": np.asarray(plates)[i.ravel()], "sample": np.asarray(samples)[j.ravel()],
                         "y": y.ravel()})


#: The covariates of the ``covariates-cli`` case and their coefficients.
COVARIATE_COEF = {"x": 0.4, "C(batch)[T.B]": 0.8}


def covariates_table(seed: int) -> pd.DataFrame:
    """:func:`penicillin_table` plus a cell-level number ``x`` and a plate-level factor ``batch`` in the mean.

    Returns
    -------
    pandas.DataFrame (144, 5)
        Columns ``plate``, ``sample``, ``y``, ``x`` and ``batch`` (``A`` for plates a..l, ``B`` for m..x).
    """
    frame = penicillin_table(seed)
    rng = np.random.default_rng([seed, 16])
    x = rng.normal(0.0, 1.0, len(frame))
    batch = np.where(frame["plate"] < "m", "A", "B")
    frame["x"] = np.round(x, 4)
    frame["batch"] = batch
    frame["y"] = frame["y"] + COVARIATE_COEF["x"] * frame["x"] + COVARIATE_COEF["C(batch)[T.B]"] * (batch == "B")
    return frame


def crossed_data(frame: pd.DataFrame):
    """:class:`twoway.TwoWayData` of :func:`penicillin_table`'s frame."""
    import twoway

    return twoway.TwoWayData.from_long(frame, row="plate", col="sample", value="y")


def kronecker_table(seed: int, n_rows: int = 100, n_cols: int = 8, n_replicates: int = 5) -> tuple[pd.DataFrame, dict]:
    """Replicate tables with ar1 rows x unstructured columns, random row and column effects.

    ``y[r] = intercept + row_effect[:, None] + col_effect[None, :] + L_U Z[r] L_V'``
    with ``U = row_sd^2 rho^|i-i'|`` and V a fixed random covariance (seeded)
    scaled to unit mean variance.

    Parameters
    ----------
    seed : int
    n_rows, n_cols, n_replicates : int

    Returns
    -------
    frame : pandas.DataFrame
        Long table, columns ``replicate``, ``row``, ``col``, ``y``.
    truth : dict
        ``row_rho``, ``row_sd`` and ``col_cov`` (n_cols, n_cols).
    """
    rng = np.random.default_rng(seed)
    t = KRON_TRUTH
    lag = np.abs(np.subtract.outer(np.arange(n_rows), np.arange(n_rows)))
    row_cov = t["row_sd"] ** 2 * t["row_rho"] ** lag
    loadings = rng.normal(size=(n_cols, 2))
    col_cov = loadings @ loadings.T + np.eye(n_cols)
    col_cov /= np.mean(np.diag(col_cov))
    row_effect = rng.normal(0.0, t["row_effect_sd"], n_rows)
    col_effect = rng.normal(0.0, t["col_effect_sd"], n_cols)
    lu, lv = np.linalg.cholesky(row_cov), np.linalg.cholesky(col_cov)
    z = rng.normal(size=(n_replicates, n_rows, n_cols))
    y = t["intercept"] + row_effect[None, :, None] + col_effect[None, None, :] + lu @ z @ lv.T
    r, i, j = np.indices(y.shape)
    frame = pd.DataFrame({"replicate": (r.ravel() + 1).astype(str), "row": (i.ravel() + 1).astype(str),
                          "col": (j.ravel() + 1).astype(str), "y": y.ravel()})
    frame["row"] = "r" + frame["row"].str.zfill(3)
    frame["col"] = "c" + frame["col"]
    return frame, {"row_rho": t["row_rho"], "row_sd": t["row_sd"], "col_cov": col_cov}


def default_priors(data) -> tuple[float, float]:
    """Location m and spread s of the observed values, which scale twoway's default priors.

    The PyMC baselines use twoway's defaults (README, "Priors"): intercept
    normal(m, 2.5 s), effect sds halfnormal(s), sigma halfnormal(s / 2).
    """
    return data.location(), data.spread()


# ---------------------------------------------------------------------------
# the PyMC baselines
# ---------------------------------------------------------------------------


def crossed_pymc_model(data):
    """Crossed random intercepts the usual way: non-centred plate and sample effects, twoway's default priors.

    Parameters
    ----------
    data : twoway.TwoWayData
        A single (1, N, K) table; missing cells are left out of the likelihood.

    Returns
    -------
    pymc.Model
    """
    import pymc as pm

    m, s = default_priors(data)
    rr, ii, jj = np.nonzero(np.isfinite(data.values))
    _, n_rows, n_cols = data.values.shape
    with pm.Model() as model:
        intercept = pm.Normal("intercept", m, 2.5 * s)
        row_sd = pm.HalfNormal("row_effect_sd", s)
        col_sd = pm.HalfNormal("col_effect_sd", s)
        sigma = pm.HalfNormal("sigma", s / 2)
        row_effect = row_sd * pm.Normal("row_offset", 0.0, 1.0, shape=n_rows)
        col_effect = col_sd * pm.Normal("col_offset", 0.0, 1.0, shape=n_cols)
        pm.Normal("y", intercept + row_effect[ii] + col_effect[jj], sigma, observed=data.values[rr, ii, jj])
    return model


def kronecker_pymc_model(data):
    """``pm.MatrixNormal`` with ar1 rows and LKJ columns, effects sampled (non-centred), one per replicate.

    The model of ``bench_covariance.kron_pymc_model`` with its priors written
    out: intercept and effect sds twoway's defaults, ``row_rho``
    uniform(-1, 1), ``row_sd`` halfnormal(s), LKJ(eta 2) correlation with
    halfnormal(1) column sds (the column factor's scale is not fixed).

    Parameters
    ----------
    data : twoway.TwoWayData
        Complete (R, N, K) tables.

    Returns
    -------
    pymc.Model
    """
    import pymc as pm

    m, s = default_priors(data)
    y = data.values
    n_rep, n_rows, n_cols = y.shape
    lag = np.abs(np.subtract.outer(np.arange(n_rows), np.arange(n_rows)))
    off_diagonal = 1.0 - np.eye(n_rows)
    with pm.Model() as model:
        intercept = pm.Normal("intercept", m, 2.5 * s)
        row_effect = pm.HalfNormal("row_effect_sd", s) * pm.Normal("row_offset", 0.0, 1.0, shape=n_rows)
        col_effect = pm.HalfNormal("col_effect_sd", s) * pm.Normal("col_offset", 0.0, 1.0, shape=n_cols)
        rho = pm.Uniform("row_rho", -1.0, 1.0)
        row_sd = pm.HalfNormal("row_sd", s)
        # rho^|i-j| off the diagonal, 1 on it (no rho^0 in the gradient)
        row_cov = row_sd**2 * (np.eye(n_rows) + off_diagonal * rho ** np.maximum(lag, 1).astype(float))
        col_chol, _, col_stds = pm.LKJCholeskyCov("col_chol", n=n_cols, eta=2.0,
                                                  sd_dist=pm.HalfNormal.dist(1.0), compute_corr=True)
        pm.Deterministic("col_stds", col_stds)
        mu = intercept + row_effect[:, None] + col_effect[None, :]
        for r in range(n_rep):  # PyMC 6.4's MatrixNormal takes one matrix per variable
            pm.MatrixNormal(f"y_{r}", mu=mu, rowcov=row_cov, colchol=col_chol, observed=y[r])
    return model


def run_nutpie(build: Callable, quantities: Callable, settings: dict, seed: int, label: str) -> Run:
    """Build, compile (twoway's safe PyTensor modes) and sample a PyMC model with nutpie, timed as a whole.

    Parameters
    ----------
    build : callable
        Returns the pymc.Model.
    quantities : callable
        Posterior dataset -> dict of (chain, draw, ...) arrays for the ESS.
    settings : dict
        ``chains``, ``draws``, ``tune``.
    seed : int
    label : str

    Returns
    -------
    Run
    """
    import nutpie
    from bench_covariance import min_ess
    from twoway.engines.pymc.compile_modes import sampling_modes

    t0 = time.perf_counter()
    with warnings.catch_warnings(), sampling_modes():
        warnings.simplefilter("ignore")
        compiled = nutpie.compile_pymc_model(build())
        t_compiled = time.perf_counter()
        trace = nutpie.sample(compiled, chains=settings["chains"], draws=settings["draws"], tune=settings["tune"],
                              seed=seed, progress_bar=False)
    wall = time.perf_counter() - t0
    post = trace["posterior"].to_dataset()
    q = quantities(post)
    ess, worst = min_ess(q)
    return Run(label, wall, ess, int(trace["sample_stats"]["diverging"].sum()), settings_text(settings),
               f"build + compile {t_compiled - t0:.1f} s, sampling {wall - (t_compiled - t0):.1f} s; "
               f"lowest ESS: {worst}; means {posterior_means(q)}")


# ---------------------------------------------------------------------------
# twoway
# ---------------------------------------------------------------------------


def engine_option(function: Callable, engine: str) -> dict:
    """The keyword that picks twoway's engine: ``engine=`` where ``function`` has it, else ``backend=``."""
    params = inspect.signature(function).parameters
    if "engine" in params:
        return {"engine": engine}
    if "backend" in params:
        return {"backend": engine}
    if engine != "nutpie":
        raise ValueError(f"{function.__module__}.{function.__name__} has no engine option; cannot run {engine!r}.")
    return {}


def cli_engine_args(twoway_exe: Path, command: str, engine: str) -> list[str]:
    """``--engine E`` where ``twoway COMMAND --help`` lists it, else ``--backend E``, else nothing."""
    help_text = subprocess.run([str(twoway_exe), command, "--help"], capture_output=True, text=True).stdout
    if "--engine" in help_text:
        return ["--engine", engine]
    if "--backend" in help_text:
        return ["--backend", engine]
    return []


def posterior_means(q: dict) -> str:
    """Posterior means of each quantity, short."""
    parts = []
    for name, v in q.items():
        mean = np.asarray(v, dtype=float).mean(axis=(0, 1))
        parts.append(f"{name} " + (f"{float(mean):.3g}" if mean.ndim == 0 else
                                   "[" + ", ".join(f"{x:.3g}" for x in np.ravel(mean)) + "]"))
    return "; ".join(parts)


def describe_fit(fit, quantities: Callable, wall: float, label: str, settings: dict) -> Run:
    """A :class:`Run` from a twoway fit: ESS of ``quantities``, divergences, compile and sampling seconds."""
    from bench_covariance import min_ess

    q = quantities(fit.posterior)
    ess, worst = min_ess(q)
    info = fit.info
    parts = [f"{k.replace('_seconds', '')} {info[k]:.1f} s" for k in ("compile_seconds", "sampling_seconds")
             if isinstance(info.get(k), (int, float))]
    if info.get("likelihood_path"):
        parts.append(f"path {info['likelihood_path']}")
    parts += [f"lowest ESS: {worst}", f"means {posterior_means(q)}"]
    return Run(label, wall, ess, int(fit.sample_stats["diverging"].sum()), settings_text(settings), "; ".join(parts))


def run_twoway(model, data, engine: str, settings: dict, seed: int, quantities: Callable, label: str) -> Run:
    """``twoway.fit(model, data, engine=...)`` timed from the call to the returned fit."""
    import twoway

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = twoway.fit(model, data, seed=seed, progress=False, **settings, **engine_option(twoway.fit, engine))
    return describe_fit(fit, quantities, time.perf_counter() - t0, label, settings)


def crossed_quantities(post) -> dict:
    """The crossed preset's variance parameters (same names in the PyMC baseline)."""
    return {k: post[k].values for k in CROSSED_SDS}


def twoway_exe() -> Path:
    """The ``twoway`` command of the virtualenv running this script."""
    return Path(sys.executable).with_name("twoway")


def timed_process(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``cmd``, raise with its stderr on failure; wall seconds from start to exit."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done


# ---------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------


def case_crossed_cli(args, work: Path) -> list[Row]:
    """1a/1b: ``twoway fit`` on the command line, cold and warm, against Bambi as a process."""
    settings = sampling(args, 4, 1000, 1000)
    frame = penicillin_table(args.seed)
    csv = work / "penicillin.csv"
    frame.to_csv(csv, index=False)
    rows = [Row("crossed 24x6, CLI cold", args.engine, target=TARGETS["bambi"], wall_target=8.0),
            Row("crossed 24x6, CLI warm", args.engine, target=TARGETS["bambi"], wall_target=3.0)]
    if args.side in ("both", "twoway"):
        import twoway

        exe = twoway_exe()
        env = {**os.environ, "TWOWAY_CACHE_DIR": str(work / "cli-cache")}
        cmd = [str(exe), "fit", str(csv), "--row", "plate", "--col", "sample", "--value", "y", "--model", "crossed",
               "--chains", str(settings["chains"]), "--draws", str(settings["draws"]),
               "--tune", str(settings["tune"]), "--seed", str(args.seed), "--quiet",
               *cli_engine_args(exe, "fit", args.engine)]
        for row, name in zip(rows, ("cold", "warm")):
            out = work / f"cli-{name}.nc"
            wall, _ = timed_process([*cmd, "--out", str(out)], env)
            fit = twoway.Fit.load(out)
            row.twoway = describe_fit(fit, crossed_quantities, wall, f"twoway fit (CLI, {name} cache)", settings)
            row.twoway.note = f"process start to saved fit; {row.twoway.note}"
    if args.side in ("both", "peers"):
        peer = run_bambi(csv, settings, args.seed)
        for row in rows:
            row.peer = peer
    return rows


def case_covariates_cli(args, work: Path) -> list[Row]:
    """``twoway fit --covariates`` on the command line, cold and warm, against the same fit without covariates."""
    settings = sampling(args, 4, 1000, 1000)
    rows = [Row("crossed 24x6 + 2 covariates, CLI cold", args.engine, wall_target=8.0),
            Row("crossed 24x6 + 2 covariates, CLI warm", args.engine, wall_target=3.0),
            Row("crossed 24x6, no covariates, CLI warm (same run)", args.engine, wall_target=3.0)]
    if args.side not in ("both", "twoway"):
        return rows
    import twoway

    frame = covariates_table(args.seed)
    csv = work / "penicillin-covariates.csv"
    frame.to_csv(csv, index=False)
    plain = work / "penicillin-plain.csv"
    frame[["plate", "sample", "y"]].to_csv(plain, index=False)
    exe = twoway_exe()
    env = {**os.environ, "TWOWAY_CACHE_DIR": str(work / "covariates-cache")}
    base = [str(exe), "fit", "--row", "plate", "--col", "sample", "--value", "y", "--model", "crossed",
            "--chains", str(settings["chains"]), "--draws", str(settings["draws"]), "--tune", str(settings["tune"]),
            "--seed", str(args.seed), "--quiet", *cli_engine_args(exe, "fit", args.engine)]
    runs = [(rows[0], [str(csv), "--covariates", "x + C(batch)"], "cold"),
            (rows[1], [str(csv), "--covariates", "x + C(batch)"], "warm"),
            (None, [str(plain)], "cold"),
            (rows[2], [str(plain)], "warm")]
    for row, extra, name in runs:
        out = work / f"cov-{len(extra)}-{name}.nc"
        wall, _ = timed_process([base[0], base[1], *extra, *base[2:], "--out", str(out)], env)
        if row is None:
            continue
        fit = twoway.Fit.load(out)
        row.twoway = describe_fit(fit, crossed_quantities, wall, f"twoway fit (CLI, {name} cache)", settings)
        note = f"process start to saved fit; {row.twoway.note}"
        if "coef" in fit.posterior:
            coef = fit.posterior["coef"]
            means = ", ".join(f"{t} {float(coef.sel(term=t).mean()):.3f} (truth {COVARIATE_COEF.get(t, float('nan')):g})"
                              for t in coef["term"].values)
            note += f"; coef {means}"
        row.twoway.note = note
    return rows


def run_bambi(csv: Path, settings: dict, seed: int) -> Run:
    """Bambi's ``y ~ 1 + (1|plate) + (1|sample)`` in ``benchmarks/.venv-bambi``, timed as a process."""
    label = "Bambi (default sampler), process"
    if not BAMBI_PYTHON.exists():
        return Run(label, note="not run: no benchmarks/.venv-bambi (run benchmarks/peers/setup-bambi.sh)")
    cmd = [str(BAMBI_PYTHON), str(HERE / "peers" / "bambi_crossed.py"), str(csv), "--row", "plate",
           "--col", "sample", "--value", "y", "--chains", str(settings["chains"]), "--draws", str(settings["draws"]),
           "--tune", str(settings["tune"]), "--seed", str(seed)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    wall, done = timed_process(cmd, env)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return Run(f"Bambi {out['versions']['bambi']} ({out['sampler']} NUTS), process", wall, out["min_ess_bulk"],
               out["divergences"], settings_text(settings),
               f"process start to exit; build + sample {out['wall']:.1f} s, imports {out['import_seconds']:.1f} s; "
               f"ESS {', '.join(f'{k} {v:.0f}' for k, v in out['ess_bulk'].items())}; "
               f"means {', '.join(f'{k} {v:.3g}' for k, v in out['means'].items())}; "
               f"log-density as sampled minus safe-mode {out['logp_offset']:.4g}")


def case_crossed(args, work: Path) -> list[Row]:
    """1c/1d/3: twoway in this process (first call cold, second warm) against PyMC non-centred on nutpie."""
    settings = sampling(args, 4, 1000, 1000)
    frame = penicillin_table(args.seed)
    cold = Row("crossed 24x6, library, cold in process", args.engine, target=TARGETS["crossed"])
    warm = Row("crossed 24x6, library, warm (2nd fit)", args.engine, target=None, wall_target=1.0)
    if args.side in ("both", "twoway"):
        data = crossed_data(frame)
        cold.twoway = run_twoway("crossed", data, args.engine, settings, args.seed, crossed_quantities,
                                 "twoway.fit, first in process")
        warm.twoway = run_twoway("crossed", data, args.engine, settings, args.seed, crossed_quantities,
                                 "twoway.fit, second in process")
    if args.side in ("both", "peers"):
        from bench_covariance import miscompiled_offset

        data = crossed_data(frame)
        warm_up_numba()
        peer = run_nutpie(lambda: crossed_pymc_model(data), crossed_quantities, settings, args.seed,
                          "PyMC non-centred, nutpie")
        offset = miscompiled_offset(crossed_pymc_model(data))
        peer.note += f"; without twoway.engines.pymc.compile_modes its compiled log-density is off by {offset:.4g}"
        cold.peer = warm.peer = peer
    return [cold, warm]


def case_seed(args, work: Path) -> list[Row]:
    """2: twoway ``additive-sd`` against the seed's model as written under ``pm.sample()``'s defaults."""
    from twoway.app.demo import seed_table

    tw_settings = sampling(args, 4, 1000, 1000)
    seed_settings = sampling(args, 6, 500, 1000, quick={"chains": 6, "draws": 200, "tune": 300})
    sim = seed_table("additive-sd", seed=args.seed)
    row = Row("seed 8x12 additive-sd", args.engine, target=TARGETS["seed"])
    if args.side in ("both", "twoway"):
        row.twoway = run_twoway("additive-sd", sim.data, args.engine, tw_settings, args.seed,
                                lambda post: {k: post[k].values for k in ("row_mean", "col_mean", "row_sd", "col_sd")},
                                "twoway additive-sd")
    if args.side in ("both", "peers"):
        row.peer = run_seed_model(sim.data.values[0], seed_settings, args.seed)
    return [row]


def run_seed_model(y: np.ndarray, settings: dict, seed: int) -> Run:
    """The seed's ``model_univar_inf`` (``bench_seed.seed_model``) under ``pm.sample()``'s default sampler."""
    import pymc as pm
    from bench_covariance import min_ess
    from bench_seed import seed_model

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trace = pm.sample(settings["draws"], tune=settings["tune"], chains=settings["chains"], random_seed=seed,
                          progressbar=False, model=seed_model(y))
    wall = time.perf_counter() - t0
    post = trace["posterior"]
    mt, mg = post["mean_treat"].values, post["mean_group"].values
    q = {"row_mean": mt + mg.mean(axis=-1, keepdims=True), "col_mean": mg + mt.mean(axis=-1, keepdims=True),
         "row_sd": np.exp(post["sd_treat_log"].values), "col_sd": np.exp(post["sd_group_log"].values)}
    ess, worst = min_ess(q)
    sampler = "nutpie" if pm.sampling.mcmc.NUTPIE_INSTALLED else "pymc"
    return Run(f"seed model, pm.sample() default ({sampler})", wall, ess,
               int(trace["sample_stats"]["diverging"].sum()), settings_text(settings),
               f"lowest ESS: {worst}; means {posterior_means(q)}")


def kronecker_spec():
    """twoway's ``kronecker`` preset with ar1 rows and unstructured columns."""
    import twoway

    return twoway.preset("kronecker", row_structure="ar1", col_structure="unstructured")


def case_kronecker(args, work: Path) -> list[Row]:
    """4: twoway Kronecker ar1 x unstructured against ``pm.MatrixNormal`` on nutpie, 100 x 8 x 5."""
    import twoway

    n = args.kronecker_draws
    settings = sampling(args, 4, n, n, quick={"chains": 4, "draws": 100, "tune": 100})
    frame, truth = kronecker_table(args.seed)
    data = twoway.TwoWayData.from_long(frame, row="row", col="col", value="y", replicate="replicate")
    row = Row("kronecker ar1 x unstructured 100x8x5", args.engine, target=TARGETS["kronecker"])

    def twoway_q(post):
        return {"row_rho": post["row_rho"].values,
                "U00*Vjj": post["row_sd"].values[..., None] ** 2 * post["col_sd"].values ** 2}

    def pymc_q(post):
        return {"row_rho": post["row_rho"].values,
                "U00*Vjj": post["row_sd"].values[..., None] ** 2 * post["col_stds"].values ** 2}

    if args.side in ("both", "twoway"):
        row.twoway = run_twoway(kronecker_spec(), data, args.engine, settings, args.seed, twoway_q,
                                "twoway kronecker")
    if args.side in ("both", "peers"):
        warm_up_numba()
        row.peer = run_nutpie(lambda: kronecker_pymc_model(data), pymc_q, settings, args.seed,
                              "pm.MatrixNormal, nutpie")
    diag = truth["row_sd"] ** 2 * np.diag(truth["col_cov"])
    print(f"   kronecker truth: row_rho {truth['row_rho']}, U00*Vjj {np.round(diag, 3).tolist()}", flush=True)
    return [row]


def case_sbc(args, work: Path) -> list[Row]:
    """5: SBC of ``crossed`` on 24 x 6 tables with twoway (wall seconds; no peer)."""
    row = Row("SBC crossed 24x6", args.engine, wall_target=60.0)
    if args.side == "peers":
        return [row]
    from twoway.runs.sbc import sbc

    n_sims = 10 if args.quick else args.sbc_sims
    draws = 100 if args.quick else 500
    settings = {"chains": 2, "draws": draws, "tune": draws}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sbc("crossed", 24, 6, n_sims, seed=args.seed, progress=False, **settings,
                     **engine_option(sbc, args.engine))
    wall = time.perf_counter() - t0
    diag = result.diagnostics
    row.twoway = Run(f"twoway.runs.sbc, {n_sims} tables", wall, None, int(diag["divergences"].sum()),
                     settings_text(settings),
                     f"{wall / n_sims:.2f} s per table; uniformity test {'passes' if result.passes() else 'FAILS'}; "
                     f"median min ESS {float(diag['min_ess_bulk'].median()):.0f}")
    return [row]


def case_demo(args, work: Path) -> list[Row]:
    """6: ``twoway demo`` as a process, twice with one fresh compile cache (cold, then warm)."""
    rows = [Row("demo, cold cache", args.engine), Row("demo, warm (make demo once set up)", args.engine, wall_target=5.0)]
    if args.side == "peers":
        return rows
    env = {**os.environ, "TWOWAY_CACHE_DIR": str(work / "demo-cache")}
    extra = ["--draws", "200", "--tune", "200"] if args.quick else []
    for row, name in zip(rows, ("cold", "warm")):
        wall, _ = timed_process([str(twoway_exe()), "demo", "--out", str(work / f"demo-{name}"), *extra], env)
        row.twoway = Run(f"twoway demo ({name})", wall, note="process start to exit; engine: the demo's default")
    return rows


# ---------------------------------------------------------------------------
# running and printing
# ---------------------------------------------------------------------------


_NUMBA_WARM = False


def warm_up_numba() -> None:
    """Once per process, compile and sample a one-parameter model untimed (``bench_covariance.warm_up``),
    so numba's one-time start-up does not fall on the first nutpie baseline."""
    global _NUMBA_WARM
    if not _NUMBA_WARM:
        from bench_covariance import warm_up

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warm_up()
        _NUMBA_WARM = True


def fmt(x: float | int | None, spec: str) -> str:
    """``x`` formatted, or an en dash for None."""
    return "–" if x is None else format(x, spec)


def markdown_table(rows: list[Row]) -> str:
    """The results as one Markdown table."""
    head = ("| case | twoway engine | twoway wall s | twoway ESS | twoway ESS/s | twoway div. | peer | peer wall s "
            "| peer ESS | peer ESS/s | peer div. | ratio | target | reached |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        tw, pe = r.twoway or Run(""), r.peer or Run("")
        reached = {None: "–", True: "yes", False: "no"}[r.reached]
        lines.append(f"| {r.case} | {r.engine} | {fmt(tw.wall, '.2f')} | {fmt(tw.ess, '.0f')} | "
                     f"{fmt(tw.ess_per_s, '.1f')} | {fmt(tw.divergences, 'd')} | {pe.label or '–'} | "
                     f"{fmt(pe.wall, '.2f')} | {fmt(pe.ess, '.0f')} | {fmt(pe.ess_per_s, '.1f')} | "
                     f"{fmt(pe.divergences, 'd')} | {fmt(r.ratio, '.1f') + ('x' if r.ratio else '')} | "
                     f"{r.target_text} | {reached} |")
    return "\n".join(lines)


def print_notes(rows: list[Row]) -> None:
    """Settings and notes of every run, each once."""
    seen = set()
    for r in rows:
        for side in (r.twoway, r.peer):
            if side is None or id(side) in seen:
                continue
            seen.add(id(side))
            print(f"- {r.case} / {side.label} [{side.settings or '-'}]: {side.note}")


def environment_line() -> str:
    """Versions, cores and load, for the record."""
    import importlib.metadata as md

    versions = []
    for pkg in ("twoway", "pymc", "pytensor", "nutpie", "jax", "arviz"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    load = os.getloadavg()
    return (f"{datetime.datetime.now().isoformat(timespec='minutes')}; Python {platform.python_version()}; "
            f"{', '.join(versions)}; {os.cpu_count()} cores; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=CASES, action="append", help="run only this case (may be repeated)")
    parser.add_argument("--quick", action="store_true", help="few draws everywhere: a smoke test, not a benchmark")
    parser.add_argument("--seed", type=int, default=1, help="seed of the tables and the samplers (default: 1)")
    parser.add_argument("--twoway-engine", dest="engine", default="jax",
                        help="twoway's engine (engine= / --engine; backend= / --backend where the code has no "
                             "engine option yet) (default: %(default)s)")
    parser.add_argument("--side", choices=("both", "twoway", "peers"), default="both",
                        help="run both sides, or only twoway, or only the peers (default: %(default)s)")
    parser.add_argument("--kronecker-draws", type=int, default=1000,
                        help="kronecker case: draws and tuning per chain, both sides (default: %(default)s)")
    parser.add_argument("--sbc-sims", type=int, default=200, help="sbc case: replications (default: %(default)s)")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cases = [c for c in CASES if c in (args.only or CASES)]
    functions = {"crossed-cli": case_crossed_cli, "covariates-cli": case_covariates_cli, "crossed": case_crossed, "seed": case_seed,
                 "kronecker": case_kronecker, "sbc": case_sbc, "demo": case_demo}
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        work = Path(tmp)
        # in-process fits start from an empty compile cache too: "cold in process" means cold
        os.environ.setdefault("TWOWAY_CACHE_DIR", str(work / "process-cache"))
        print(environment_line(), flush=True)
        print(f"cases {', '.join(cases)}; twoway engine {args.engine}; side {args.side}; seed {args.seed}"
              f"{'; QUICK (smoke test)' if args.quick else ''}", flush=True)
        t0 = time.perf_counter()
        import_start = time.perf_counter()
        import twoway  # noqa: F401  (timed once, outside every case)

        print(f"import twoway: {time.perf_counter() - import_start:.1f} s", flush=True)
        rows: list[Row] = []
        for name in cases:
            start = time.perf_counter()
            try:
                rows += functions[name](args, work)
            except Exception as exc:  # one failing case must not lose the figures of the others
                traceback.print_exc()
                rows.append(Row(f"{name}: FAILED ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})",
                                args.engine))
            print(f"   case {name} done in {time.perf_counter() - start:.0f} s", flush=True)
        print()
        print(markdown_table(rows))
        print()
        print_notes(rows)
        print(f"\ntotal {time.perf_counter() - t0:.0f} s; {environment_line()}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{**dataclasses.asdict(r), "ratio": r.ratio, "reached": r.reached,
              "twoway_ess_per_s": r.twoway.ess_per_s if r.twoway else None,
              "peer_ess_per_s": r.peer.ess_per_s if r.peer else None} for r in rows], indent=1))


if __name__ == "__main__":
    main()
