"""The demo: the founding example, simulated, fitted and checked.

The seed's 8 treatments x 12 groups: row means ``-i`` and column means ``-j``
(i, j counted from 0), row variances ``1 + i/8`` and column variances
``1 + j``, and a negligible cell noise. The table is simulated from the
``additive`` model (variances add, as in the question), fitted with the same
model, and the posterior is compared with the truth.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from twoway.app.plots import table_heatmap, trace_plot
from twoway.app.progress import FitLines, Progress
from twoway.app.report import write_report
from twoway.errors import ConvergenceWarning, TwowayError
from twoway.engines.choose import choose
from twoway.fit import compile_model
from twoway.results.recovery import recovery
from twoway.simulate import simulate
from twoway.spec.model import load_model
from twoway.spec.names import public_names
from twoway.table.io.outputs import atomic_output, check_output, write_text_atomic

__all__ = ["seed_parameters", "seed_table", "run_demo", "DemoResult", "DEMO_SEED"]

DEMO_SEED = 20260126
N_ROWS, N_COLS = 8, 12


def seed_parameters() -> dict[str, object]:
    """The seed example's means and scales as twoway parameters.

    Returns
    -------
    dict
        ``intercept`` (scalar), ``row_effect`` (8,), ``col_effect`` (12,),
        ``row_sd`` (8,), ``col_sd`` (12,), ``sigma`` (scalar).
    """
    row_means = -np.arange(N_ROWS, dtype=float)
    col_means = -np.arange(N_COLS, dtype=float)
    return {
        "intercept": float(row_means.mean() + col_means.mean()),
        "row_effect": row_means - row_means.mean(),
        "col_effect": col_means - col_means.mean(),
        "row_sd": np.sqrt(1.0 + np.arange(N_ROWS) / N_ROWS),
        "col_sd": np.sqrt(1.0 + np.arange(N_COLS, dtype=float)),
        "sigma": 1e-4,  # the seed's sd_noise; used by models that have a sigma
    }


def seed_table(model: str = "additive", *, seed: int = DEMO_SEED):
    """Simulate the seed's 8 x 12 table from ``model`` with the seed's parameters.

    Returns
    -------
    Simulation
    """

    spec = load_model(model)
    params = {k: v for k, v in seed_parameters().items() if k in public_names(spec)}
    return simulate(spec, N_ROWS, N_COLS, params=params, seed=seed,
                    row_labels=[f"T{i + 1}" for i in range(N_ROWS)],
                    col_labels=[f"G{j + 1}" for j in range(N_COLS)])


@dataclass(frozen=True)
class DemoResult:
    fit: object
    recovery: pd.DataFrame
    summary: object
    files: dict[str, Path]


def run_demo(out: "str | Path", *, chains: int = 4, draws: int = 1000, tune: int = 1000,
             seed: int = DEMO_SEED, progress: bool | None = None, engine: str | None = None) -> DemoResult:
    """Simulate the seed table, fit ``additive``, write data, fit, figures and an HTML report to ``out``.

    Parameters
    ----------
    out : path
        The folder to write to (made if missing).
    chains, draws, tune, seed : int
        The sampler's settings.
    progress : bool, optional
        None (default): a line per phase on stderr (in a log too), the sampler's bar only when
        stderr is a terminal; True: the lines and the bar; False: nothing.
    engine : str, optional
        The fit's engine (default ``jax``; see :func:`twoway.fit`).

    Returns
    -------
    DemoResult
    """

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TwowayError(f"The demo's output folder {str(out)!r} is a file; give a folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TwowayError(f"The demo's output folder {str(out)!r} cannot be made ({exc.strerror or exc}).") from None
    check_output(out / "fit.nc", what="demo's fit file")  # writable, before any fitting
    said = Progress(enabled=progress is not False)
    sim = seed_table(seed=seed)
    files = {"data": out / "data.csv", "truth": out / "truth.json", "fit": out / "fit.nc",
             "heatmap": out / "table.png", "trace": out / "trace.png", "summary": out / "summary.txt",
             "recovery": out / "recovery.csv"}
    sim.data.to_csv(files["data"])
    sim.write_truth(files["truth"])
    spec = load_model("additive")
    choice = choose(spec, sim.data, engine=engine)
    said.phase("fitting", f"the {spec.label} model ({choice.label}): {chains} chain{'s' if chains != 1 else ''} "
                          f"x {draws} draws after {tune} tuning")
    bars = (sys.stderr.isatty() if progress is None else bool(progress)) and choice.engine.description.progress_bar
    lines = FitLines(said)
    compiled = compile_model(spec, sim.data, engine=engine, progress=False, choice=choice)
    result = compiled.sample(chains=chains, draws=draws, tune=tune, seed=seed, progress=bars, on_progress=lines)
    lines.sampled(result.info)
    lines.writing(files["fit"])
    result.save(files["fit"])
    said.phase("writing the summary, the figures and the report")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        summary = result.summary()
    write_text_atomic(files["summary"], summary.format() + "\n")
    truth = sim.truth_dict()
    rec = recovery(result, truth, names=[n for n in ("row_mean", "col_mean", "row_sd", "col_sd", "sigma") if n in truth])
    with atomic_output(files["recovery"]) as tmp:
        rec.to_csv(tmp)
    table_heatmap(sim.data, files["heatmap"], title="simulated seed table (8 treatments x 12 groups)")
    trace_plot(result, files["trace"])
    write_text_atomic(out / "summary.json", json.dumps(summary.to_dict(), indent=2))
    files["summary_json"] = out / "summary.json"
    files["report"] = write_report(result, out / "report.html", truth=truth,
                                   title="twoway demo: the seed's 8 treatments x 12 groups")
    return DemoResult(fit=result, recovery=rec, summary=summary, files=files)
