"""The ``twoway`` command line: each sub-command reads, calls the library once, writes.

Errors caused by the input print one line, ``twoway: error: ...``, and exit
with status 2; no traceback. Commands that fit say on stderr what they are
doing, a line per phase (``--no-progress``: nothing). Commands that read fits
(summary, predict, compare, report) size their work first
(:class:`~twoway.app.progress.Estimate`): work that will not fit in memory is
refused in one line before it starts, and large work (a big fit file, seconds of
work or a lot of memory) is said with its size and its phases (``--progress``:
always; ``--no-progress``: never). This module imports no numerical library at
its top, so that ``twoway --help`` can be quick; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from twoway._version import __version__
from twoway.app.progress import Estimate, FitLines, Progress
from twoway.engines.choose import DEFAULT_ENGINE, NUTS_ENGINES, choose  # a light module: names only, no engine imported
from twoway.engines.jax.cache import cache_info, clear_cache
from twoway.errors import ConvergenceWarning, DataError, DegreesOfFreedomWarning, FitError, TwowayError, TwowayWarning
from twoway.fit import Fit, check_draws_memory, check_fit_output, check_sampling_options, compile_model
from twoway.likelihood import memory
from twoway.runs.batch import fit_many, table_files
from twoway.simulate import simulate
from twoway.spec.model import FILE_OPTIONS, degrees_of_freedom, load_model
from twoway.table.data import TwoWayData, csv_header
from twoway.table.io.outputs import atomic_output, check_output

# Deferred imports: twoway.app.demo, twoway.app.report, twoway.results.compare, twoway.results.recovery,
# twoway.runs.sbc (they import pandas or xarray at their top) are imported inside the functions that use
# them, so importing this module stays light.

__all__ = ["main"]


def _model_arg(p: argparse.ArgumentParser, default: str = "additive") -> None:
    p.add_argument("--model", default=default,
                   help="a preset (additive, additive-sd, crossed, crossed-hetero, latent, kronecker, common-effect) "
                        "or a TOML model file (default: %(default)s)")
    p.add_argument("--row-structure", default=None,
                   help="Kronecker row factor: iid, diag, ar1, cs, fa:k, unstructured, known:FILE")
    p.add_argument("--col-structure", default=None, help="Kronecker column factor (as --row-structure)")


def _covariates_arg(p: argparse.ArgumentParser, what: str) -> None:
    """``--covariates FORMULA``: a formula's right-hand side over the table's columns."""
    p.add_argument("--covariates", default=None, metavar="FORMULA",
                   help="covariates in the mean: a formula's right-hand side over the table's columns, such as "
                        "\"dose + C(site)\" (numbers, factors with C() or text columns, interactions a:b, "
                        f"transforms np.log(x)); no intercept term (the model has its own). {what} "
                        "Replaces the model file's 'covariates'")


def _model(args):
    """The model named by --model, with --row-structure / --col-structure and --covariates applied.

    A covariate formula is checked here (its syntax, no intercept term), before any table is read.
    """

    spec = load_model(args.model)
    changes = {k: v for k, v in (("row_structure", getattr(args, "row_structure", None)),
                                 ("col_structure", getattr(args, "col_structure", None))) if v}
    if changes and spec.residual != "kronecker":
        raise TwowayError("--row-structure and --col-structure apply to the kronecker residual "
                          f"(for example --model kronecker); the model {spec.name!r} has a {spec.residual} residual.")
    if getattr(args, "covariates", None) is not None:
        changes["covariates"] = args.covariates
    spec = dataclasses.replace(spec, **changes) if changes else spec
    _covariate_columns(spec)
    return spec


def _covariate_columns(spec) -> tuple[str, ...]:
    """The table columns the model's covariate formula reads (none without one); ModelError for a bad formula."""
    if not spec.covariates:
        return ()
    from twoway.table.covariates import required_variables  # light: formulaic is imported inside

    return tuple(required_variables(spec.covariates))


def _covariate_kwargs(spec) -> dict:
    """``covariates=`` for :meth:`TwoWayData.from_csv`: the formula's columns (nothing without covariates)."""
    names = _covariate_columns(spec)
    return {"covariates": names} if names else {}


class _DefaultEngine(str):
    """The default engine's name, marked as not named by the user: the table may choose the laplace engine."""


def _named_engine(args):
    """The engine the user named, or None for the default (then the table decides)."""
    return None if isinstance(args.engine, _DefaultEngine) else args.engine


def _table_args(p: argparse.ArgumentParser) -> None:
    """The columns of a long table (row, col, value, se, replicate) and what an se of 0 means."""
    p.add_argument("--row", default="row", help="column holding the row label (default: %(default)s)")
    p.add_argument("--col", default="col", help="column holding the column label (default: %(default)s)")
    p.add_argument("--value", default="value", help="column holding the value (default: %(default)s)")
    p.add_argument("--se", default=None,
                   help="column holding known standard errors (default: a column named 'se', if any)")
    p.add_argument("--no-se", action="store_true", help="ignore a column named 'se'")
    p.add_argument("--zero-se", choices=("error", "none"), default="error",
                   help="an se of 0: an error (default), or no known error for that cell, like an empty se")
    p.add_argument("--replicate", default=None,
                   help="column holding the replicate label (default: a column named 'replicate', if any)")


def _engine_args(p: argparse.ArgumentParser) -> None:
    """``--engine`` (``--backend``, its old name, is kept as a hidden alias) and ``--progress``."""
    p.add_argument("--engine", choices=(*NUTS_ENGINES, "laplace"), default=_DefaultEngine(DEFAULT_ENGINE),
                   help="what compiles and samples the model: jax (compiled programs are cached on disk, "
                        "see 'twoway cache'), nutpie, or PyMC's own sampler; or laplace (crossed models with "
                        "iid or known-matrix effects and an independent residual: nested Laplace with "
                        "importance sampling through a sparse Cholesky factor, no compile). Default: "
                        "%(default)s; a large sparse crossed table is fitted by laplace unless an engine is named")
    # Same destination; SUPPRESS keeps it out of --help and leaves the default to --engine.
    p.add_argument("--backend", dest="engine", choices=NUTS_ENGINES, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="report progress on stderr: a line per phase, and progress bars (default: the lines; "
                        "the bars only when stderr is a terminal)")


def _progress_arg(p: argparse.ArgumentParser) -> None:
    """``--progress`` of the commands that read fits: the size of the work, its phases, a bar on a terminal."""
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="report on stderr the size of the work before it starts, a line per phase, and a progress "
                        "bar on a terminal (default: only for large work: a fit file over 64 MiB, or work of more "
                        "than a few seconds or 1 GiB of memory)")


def _worker_args(p: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--scheduler``: where many fits run."""
    p.add_argument("--workers", type=int, default=1,
                   help="fits at a time: 1 runs them here one after another; N > 1 starts a local Dask "
                        "cluster of N worker processes (default: %(default)s)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler (tcp://host:8786) to run the fits on instead")


def _estimand_args(p: argparse.ArgumentParser) -> None:
    """``--ci-prob`` and ``--var``: the intervals' probability, the variables shown."""
    p.add_argument("--ci-prob", type=float, default=0.94,
                   help="probability of the highest-density intervals, in (0, 1) (default: %(default)s)")
    p.add_argument("--var", action="append", default=None, metavar="NAME",
                   help="show this variable, or every variable whose name starts with it; repeatable "
                        "(default: the model's parameters and the row and column means)")


def _contrast_arg(p: argparse.ArgumentParser, default: str = "") -> None:
    """``--contrast SIDE=LABEL``, repeatable."""
    p.add_argument("--contrast", action="append", default=None, metavar="SIDE=LABEL",
                   help="each row (row=LABEL) or column (col=LABEL) mean minus the reference level's, "
                        f"named 'OTHER - LABEL'; repeatable{default}")


def _contrasts(args) -> list[tuple[str, str]] | None:
    """The ``--contrast`` options, each once, in the order first given (``row=A`` twice is one contrast).

    Returns
    -------
    list of (str, str) or None
        ``(side, label)`` pairs; None when no ``--contrast`` was given.
    """
    from twoway.results.contrasts import parse_contrast  # light: pandas and xarray are deferred there

    if not args.contrast:
        return None
    return list(dict.fromkeys(parse_contrast(text) for text in args.contrast))


def _sampling_args(p: argparse.ArgumentParser, *, draws: int = 1000) -> None:
    p.add_argument("--chains", type=int, default=4, help="number of chains (default: %(default)s)")
    p.add_argument("--draws", type=int, default=draws, help="draws per chain kept (default: %(default)s)")
    p.add_argument("--tune", type=int, default=1000, help="tuning draws per chain (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="random seed (same seed, same draws)")
    _engine_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twoway",
        description="Bayesian models of two-way tables (rows x columns), with known and unknown variance.")
    parser.add_argument("--version", action="version", version=f"twoway {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("demo", help="simulate the founding 8 x 12 example, fit it, check recovery")
    p.add_argument("--out", default="demo-output", help="folder for data, fit and figures (default: %(default)s)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--tune", type=int, default=1000)
    p.add_argument("--seed", type=int, default=None, help="seed (default: the demo's fixed seed)")
    _engine_args(p)

    p = sub.add_parser("simulate", help="draw a table from a model, from the prior")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--cols", type=int, required=True)
    p.add_argument("--replicates", type=int, default=1)
    _model_arg(p)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--se", type=float, default=None, help="attach this known standard error to every cell")
    p.add_argument("--missing", type=float, default=0.0, help="fraction of cells to drop at random")
    p.add_argument("--out", required=True, help="CSV file for the table (long form)")
    p.add_argument("--truth", default=None, help="JSON file for the true parameters")
    _covariates_arg(p, "Each variable gets a value per cell, drawn: levels a, b, c for a factor (C(g)), a "
                       "positive number otherwise; they are columns of the table written. The coefficients "
                       "are drawn from their prior.")

    p = sub.add_parser("fit", help="fit a model to a long-form CSV table")
    p.add_argument("data", help="CSV file, one line per cell")
    _table_args(p)
    _model_arg(p)
    _covariates_arg(p, "Its variables are read from the table's columns.")
    _sampling_args(p)
    p.add_argument("--out", required=True, help="file for the fit (.nc, or .zarr)")
    p.add_argument("--quiet", action="store_true", help="do not print the summary")

    p = sub.add_parser("summary", help="summarise a saved fit")
    p.add_argument("fit", help="a fit file written by 'twoway fit'")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _estimand_args(p)
    _contrast_arg(p)
    _progress_arg(p)

    p = sub.add_parser("dof", help="degrees of freedom a model uses on a table: a data file, or its shape",
                       description="Degrees of freedom a model uses on a table. Give the data file (its observed "
                                   "cells are counted) or the shape (--rows, --cols, --replicates: every cell observed).")
    p.add_argument("data", nargs="?", default=None, help="a long-form table file (CSV, .csv.gz, Parquet)")
    p.add_argument("--row", default="row", help="column holding the row label (default: %(default)s)")
    p.add_argument("--col", default="col", help="column holding the column label (default: %(default)s)")
    p.add_argument("--value", default="value", help="column holding the value (default: %(default)s)")
    p.add_argument("--replicate", default=None,
                   help="column holding the replicate label (default: a column named 'replicate', if any)")
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--cols", type=int, default=None)
    p.add_argument("--replicates", type=int, default=None, help="replicate tables (default: 1)")
    _model_arg(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("compare", help="compare fits of one table by leave-one-out predictive density")
    p.add_argument("fits", nargs="+", metavar="FIT", help="two or more fit files of the same table")
    p.add_argument("--by", choices=["cell", "row", "col"], default="cell",
                   help="leave out one cell, or a whole row or column, at a time (default: %(default)s)")
    p.add_argument("--refit", action="store_true",
                   help="refit each model without each cell whose Pareto k is above 0.7 (at most 10 per fit)")
    p.add_argument("--pointwise", action="store_true",
                   help="print every unit's elpd difference between the two best fits (default: the 5 largest)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _progress_arg(p)

    p = sub.add_parser("loo", help="leave-one-out predictive density of one fit (PSIS-LOO)",
                       description="The expected log predictive density of a fit by PSIS leave-one-out: elpd, its "
                                   "standard error, the effective number of parameters p_loo and the units whose "
                                   "Pareto k is above 0.7 (their estimate is rough). 'twoway compare' ranks fits "
                                   "by it.")
    p.add_argument("fit", help="a fit file written by 'twoway fit'")
    p.add_argument("--by", choices=["cell", "row", "col"], default="cell",
                   help="leave out one cell, or a whole row or column, at a time (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _progress_arg(p)

    p = sub.add_parser("ppc", help="posterior predictive checks of one fit: the table's statistics against "
                                   "replicated tables",
                       description="Draw replicated tables from the fitted model and compare the observed table's "
                                   "statistics (mean, sd, row and column means and variances, the cell means' "
                                   "variance, row and column correlations) with theirs: p_value is "
                                   "P(T(y_rep) >= T(y)); values near 0 or 1 mark what the model does not "
                                   "reproduce.")
    p.add_argument("fit", help="a fit file written by 'twoway fit'")
    p.add_argument("--draws", type=int, default=500, help="replicated tables (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the replicated tables (default: %(default)s)")
    p.add_argument("--all", action="store_true",
                   help="print every statistic (default: the overall ones and the 10 most extreme of the others)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _progress_arg(p)

    p = sub.add_parser("report", help="write one self-contained HTML report of one or more fits")
    p.add_argument("fits", nargs="+", metavar="FIT", help="fit files written by 'twoway fit' (of one table)")
    p.add_argument("-o", "--out", default="report.html", help="the HTML file to write (default: %(default)s)")
    p.add_argument("--names", default=None, help="comma-separated names, one per fit (default: the file names)")
    p.add_argument("--truth", default=None, help="JSON of true values (from 'twoway simulate --truth')")
    _estimand_args(p)
    _contrast_arg(p, " (default: for a table of known se with fixed row effects, e.g. the common-effect "
                     "preset, each column against the first column)")
    _progress_arg(p)

    p = sub.add_parser("predict", help="every cell's mean (or a new observation), observed and missing, to a CSV",
                       description="Write one line per cell of the full grid (per replicate table when the fit "
                                   "has several): row, col, (replicate), observed (empty when missing), mean, sd, "
                                   "lower, upper (the highest-density interval) and kind: 'fitted' for observed "
                                   "cells, 'predicted' for missing ones, predicted from the observed cells "
                                   "(exactly, also under Kronecker and full covariances).")
    p.add_argument("fit", help="a fit file written by 'twoway fit'")
    p.add_argument("--out", required=True, help="the CSV file to write")
    p.add_argument("--new-observation", action="store_true",
                   help="predict a new observation of each cell (its noise and known se added), not its mean")
    p.add_argument("--ci-prob", type=float, default=0.94,
                   help="probability of the intervals, in (0, 1) (default: %(default)s)")
    p.add_argument("--new-row", action="append", default=None, metavar="LABEL",
                   help="also predict a row with no data, from the row effects' law; repeatable")
    p.add_argument("--new-col", action="append", default=None, metavar="LABEL",
                   help="also predict a column with no data, from the column effects' law; repeatable")
    p.add_argument("--max-draws", type=int, default=None,
                   help="use this many posterior draws, chosen at random (default: all)")
    p.add_argument("--cells", "--at", dest="at", default=None, metavar="FILE",
                   help="predict the cells of this long table: one line per cell with its row and col (and "
                        "replicate when the fit has several), and the columns the covariates' formula reads; rows "
                        "and columns not in the fitted table are new levels (--at is its older name)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--grid", dest="grid", action="store_const", const=True, default=None,
                       help="predict every cell of the grid, streamed to the output (default: the grid up to "
                            "100,000 cells, the observed cells above)")
    which.add_argument("--observed", dest="grid", action="store_const", const=False,
                       help="predict the observed cells (and the new levels' cells) only")
    p.add_argument("--seed", type=int, default=0, help="seed for the choice of draws (default: %(default)s)")
    _progress_arg(p)

    p = sub.add_parser("sbc", help="simulation-based calibration: simulate from the prior, fit, rank the truth",
                       description="Simulation-based calibration. Exit status 0 when every parameter's ranks "
                                   "pass the uniformity test, 1 when some fail, 2 for bad input.")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--cols", type=int, required=True)
    p.add_argument("--sims", type=int, required=True, help="number of simulated tables to fit")
    p.add_argument("--replicates", type=int, default=1, help="replicate tables per simulation")
    _model_arg(p)
    p.add_argument("--chains", type=int, default=2, help="number of chains (default: %(default)s)")
    p.add_argument("--draws", type=int, default=500, help="draws per chain kept (default: %(default)s)")
    p.add_argument("--tune", type=int, default=500, help="tuning draws per chain (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--se", type=float, default=None, help="attach this known standard error to every cell")
    p.add_argument("--alpha", type=float, default=0.01,
                   help="family-wise false-alarm rate, Bonferroni over parameters (default: %(default)s)")
    _covariates_arg(p, "Their values are drawn once (as 'twoway simulate' draws them) and kept for every "
                       "simulation; the coefficients are drawn from their prior each time and ranked per term.")
    p.add_argument("--out", required=True, help="folder for the results; a rerun with the same settings resumes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _engine_args(p)
    _worker_args(p)

    p = sub.add_parser("fit-many", help="fit one model to many tables (files, or groups of one table), on workers",
                       description="Fit one model to each table: the CSV files in a folder or matching a pattern, "
                                   "or the groups of one long table split by --by. Writes one fit file per table, "
                                   "summary.csv (one row per table: status, error, seconds, diagnostics, posterior "
                                   "mean and sd of the scalar parameters) and config.json into --out. A rerun with "
                                   "the same folder and settings fits only the tables not yet done. Exit status 0 "
                                   "when every table was fitted, 1 when some failed, 2 for bad input.")
    p.add_argument("tables", nargs="+", metavar="TABLES",
                   help="a folder of CSV tables, a glob pattern (quoted), CSV files, or one long table with --by")
    p.add_argument("--by", default=None, metavar="COL", help="split each table into one table per value of COL")
    _table_args(p)
    _model_arg(p)
    _covariates_arg(p, "Its variables are read from each table's columns.")
    _sampling_args(p)
    p.set_defaults(seed=0)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the fit files and summary.csv; a rerun with the same settings resumes")
    _worker_args(p)

    p = sub.add_parser("cache", help="the cache of compiled JAX programs: where it is, how big; clear it",
                       description="The jax engine keeps compiled programs on disk, so the next fit of a table "
                                   "of the same layout starts sooner. The folder is $TWOWAY_CACHE_DIR, else "
                                   "$XDG_CACHE_HOME/twoway/jax, else ~/.cache/twoway/jax.")
    cache_sub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    cache_sub.required = True
    q = cache_sub.add_parser("info", help="print the folder, the number of cached programs and their size")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    cache_sub.add_parser("clear", help="delete the cached programs")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line as ``twoway`` does, without running it (usage errors exit 2)."""
    return build_parser().parse_args(argv)


def _version() -> str:
    return __version__


def cmd_demo(args) -> int:
    from twoway.app.demo import DEMO_SEED, run_demo
    from twoway.results.summary import format_number

    print(f"twoway demo: the seed's 8 treatments x 12 groups, simulated and fitted with 'additive' -> {args.out}/",
          flush=True)
    res = run_demo(args.out, chains=args.chains, draws=args.draws, tune=args.tune,
                   seed=DEMO_SEED if args.seed is None else args.seed, engine=args.engine, progress=args.progress)
    rec = res.recovery
    print("\nrecovery (94% highest-density intervals):")
    print(rec.to_string(float_format=format_number))
    print(f"\ncovered: {int(rec['covered'].sum())} of {len(rec)} true values "
          f"({100 * rec['covered'].mean():.0f}%; about 94% expected)")
    print()
    print(res.summary.format())
    print("\nwrote: " + ", ".join(str(p) for p in res.files.values()))
    return 0


def cmd_simulate(args) -> int:
    spec = _model(args)
    inputs = _model_inputs(args, spec)
    check_output(args.out, endings=TABLE_ENDINGS, inputs=inputs, what="table file")
    if args.truth:
        check_output(args.truth, endings=(".json",), inputs=inputs + [args.out], what="truth file")
    sim = simulate(spec, args.rows, args.cols, args.replicates, seed=args.seed, se=args.se,
                   missing=args.missing)
    sim.data.to_csv(args.out)
    with_cov = f", covariates {', '.join(sim.data.covariates)}" if getattr(sim.data, "covariates", None) else ""
    print(f"wrote a {args.rows} x {args.cols} table"
          f"{f' x {args.replicates} replicates' if args.replicates > 1 else ''} "
          f"({sim.data.n_observed} observed cells{with_cov}) to {args.out}")
    if args.truth:
        sim.write_truth(args.truth)
        print(f"wrote the true parameters to {args.truth}")
    return 0


def _default_columns(args, header: Callable[[], Sequence[str]]) -> tuple[str | None, str | None, list[str]]:
    """The se and replicate columns: as named, else columns named ``se`` / ``replicate``.

    What was chosen without being named is returned as lines for stderr, for the caller to print
    once the table has been read: an error in the table then stays one line.

    Parameters
    ----------
    args : argparse.Namespace
        With ``se``, ``no_se`` and ``replicate``.
    header : callable
        Gives the table's column names; called only when a column is not named.

    Returns
    -------
    se, replicate : str or None
    notes : list of str
        ``twoway: using the column 'se' ...`` lines, one per column chosen by its name.
    """
    if args.se is not None and args.no_se:
        raise TwowayError("Give --se COLUMN or --no-se, not both.")
    se, replicate = args.se, args.replicate
    notes: list[str] = []
    if se is not None and replicate is not None:
        return se, replicate, notes
    columns = header()
    if se is None and not args.no_se and "se" in columns:
        se = "se"
        notes.append("twoway: using the column 'se' as known standard errors (--no-se to ignore it)")
    if replicate is None and "replicate" in columns:
        replicate = "replicate"
        notes.append("twoway: using the column 'replicate' as the replicate label")
    return se, replicate, notes


def _say(lines: Sequence[str]) -> None:
    """Print lines on stderr."""
    for line in lines:
        print(line, file=sys.stderr)


def cmd_fit(args) -> int:
    check_sampling_options(args.chains, args.draws, args.tune, args.seed, args.engine)
    spec = _model(args)
    check_fit_output(args.out, inputs=[args.data] + _model_inputs(args, spec))
    se, replicate, notes = _default_columns(args, lambda: csv_header(args.data))
    data = TwoWayData.from_csv(args.data, row=args.row, col=args.col, value=args.value,
                               se=se, replicate=replicate, zero_se=args.zero_se, **_covariate_kwargs(spec))
    _say(notes)  # only now: an error in the table is one line
    progress = _progress(args)
    chains = f"{args.chains} chain{'s' if args.chains != 1 else ''}"
    engine = _named_engine(args)

    choice = choose(spec, data, engine=engine)  # the engine that will run: the label reads it, never re-derives it
    check_draws_memory(choice.plan, args.chains, args.draws)  # before compiling or sampling, for every engine
    dof = degrees_of_freedom(spec, data.n_rows, data.n_cols, data.n_replicates, n_observed=data.n_observed,
                             n_coef=choice.plan.n_coef)
    if dof.overparameterised:
        print(f"warning: the model uses {dof.n_parameters} parameters on {dof.n_observed} observed cells; "
              "the priors will decide what the data cannot.", file=sys.stderr)
    progress.phase("fitting", f"the {spec.label} model ({choice.label}): {chains} x {args.draws} draws "
                              f"after {args.tune} tuning")
    _say_draws_size(progress, choice.plan, args.chains, args.draws)
    # The phase lines are the CLI's (the same for every engine, in a log too); the library shows only
    # the sampler's own progress bar, on a terminal (engines without a bar report phase lines: not twice).
    bars = _sampler_progress(args) and choice.engine.description.progress_bar

    lines = FitLines(progress)
    compiled = compile_model(spec, data, engine=engine, progress=False, choice=choice)
    result = compiled.sample(chains=args.chains, draws=args.draws, tune=args.tune, seed=args.seed, progress=bars,
                             on_progress=lines)
    lines.sampled(result.info)
    lines.writing(args.out)
    result.save(args.out)
    if not args.quiet:
        print(result.summary().format())
    print(f"\nwrote the fit to {args.out}")
    return 0


def _say_draws_size(progress: Progress, plan, chains: int, draws: int) -> None:
    """Say how much memory the draws will hold when it is large (more than :data:`memory.LARGE_BYTES`)."""
    shape = plan.data.values.shape
    need = memory.draws_bytes_shape(plan.spec, shape, chains, draws, n_cov=plan.n_coef)
    if need > memory.LARGE_BYTES:
        values = memory.draws_values_shape(plan.spec, shape, n_cov=plan.n_coef)
        progress.message(f"the draws will hold about {memory.size_text(need)} ({chains} x {draws:,} draws x "
                         f"{values:,} stored values; {memory.gib(memory.available_memory())} is available)")


# -- commands that read fits: their size said and checked before the work ------------------------------------

#: Fit files larger than this are said as they are read (reading one takes seconds).
READ_SAY_BYTES = 64 * 2**20


def _file_bytes(path: str) -> int:
    """Bytes of a file, or of every file under a folder (a zarr store); 0 when it cannot be read."""
    p = Path(path)
    try:
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size
    except OSError:
        return 0


def _read_fits(paths: Sequence[str], args) -> list:
    """Read fit files; each is said on stderr as it is read when it is large, or always with --progress."""
    said = Progress(enabled=args.progress is not False)
    fits = []
    for path in paths:
        size = _file_bytes(path)
        if args.progress or (args.progress is None and size > READ_SAY_BYTES):
            with said.step("reading", f"{path} ({_bytes(size)})"):
                fits.append(Fit.load(path))
        else:
            fits.append(Fit.load(path))
    return fits


def _before(args, estimates: Sequence[Estimate]) -> Progress:
    """Check that the work fits in memory, then say how big it is; the progress of its phases.

    Every estimate is checked before anything is said, so that a refusal is one line
    (:class:`~twoway.errors.FitError`: what it would need, what is available, what to do
    instead). The estimates are said when large (all of them with ``--progress``, none
    with ``--no-progress``).

    Returns
    -------
    Progress
        Enabled with ``--progress``, or by default when some estimate is large.
    """
    for estimate in estimates:
        estimate.check()
    large = [e for e in estimates if e.large()]
    progress = Progress(enabled=bool(args.progress) or (args.progress is None and bool(large)))
    for estimate in (estimates if args.progress else large):
        progress.message(estimate.line())
    return progress


def _progress_keyword(func: Callable, progress: Progress, label: str) -> dict:
    """``{"progress": callback}`` for a library function that reports its loop through a ``progress`` keyword.

    The callback is ``callback(done, total)`` (:meth:`Progress.counter`: a bar on a terminal, a line
    per tenth in a log); nothing is passed when progress is not shown or ``func`` takes no such keyword.
    """
    import inspect

    if not progress.enabled:
        return {}
    try:
        takes = "progress" in inspect.signature(func).parameters
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return {}
    return {"progress": progress.counter(label)} if takes else {}


def cmd_summary(args) -> int:
    from twoway.app.progress import summary_estimate

    _check_ci_prob(args.ci_prob)
    fit = _read_fits([args.fit], args)[0]
    progress = _before(args, [summary_estimate(fit, name=args.fit)])
    with progress.step("summarising", args.fit):
        summary = fit.summary(var_names=args.var, ci_prob=args.ci_prob, contrasts=_contrasts(args),
                              **_progress_keyword(fit.summary, progress, "summarising:"))
    if args.json:
        out = summary.to_dict()
        keep = ("parameters", "contrasts", "variance_decomposition", "diagnostics", "warnings")
        print(json.dumps({k: out[k] for k in keep if k in out}, indent=2))
    else:
        print(summary.format())
    return 0


def _check_ci_prob(value: float) -> None:
    if not 0 < value < 1:
        raise TwowayError(f"The --ci-prob option must be between 0 and 1; got {value!r}.")


def cmd_predict(args) -> int:
    from twoway.app.progress import predict_estimate
    from twoway.results.predict import prediction_size
    from twoway.table.io.outputs import TABLE_FORMATS, table_writer

    _check_ci_prob(args.ci_prob)
    if args.max_draws is not None and args.max_draws < 1:
        raise TwowayError(f"The --max-draws option must be at least 1; got {args.max_draws!r}.")
    inputs = [args.fit] + ([args.at] if args.at else [])
    out = check_output(args.out, endings=tuple(TABLE_FORMATS), inputs=inputs, what="predictions file")
    if args.at is not None and (args.new_row or args.new_col):
        raise TwowayError("Give the cells to predict with --cells (its rows and columns may be new), or new levels "
                          "with --new-row / --new-col, not both.")
    if args.at is not None and args.grid is not None:
        raise TwowayError("Give the cells to predict with --cells, or ask for the whole grid (--grid) or the "
                          "observed cells (--observed), not both.")
    cells = _cells_table(args.at) if args.at is not None else None
    fit = _read_fits([args.fit], args)[0]
    new_rows, new_cols = args.new_row or (), args.new_col or ()
    progress = _before(args, [predict_estimate(fit, name=args.fit, n_cells=None if cells is None else len(cells),
                                               max_draws=args.max_draws, new_rows=new_rows, new_cols=new_cols)])
    size = prediction_size(fit, cells=cells, grid=args.grid, new_rows=new_rows, new_cols=new_cols,
                           max_draws=args.max_draws)
    progress.message(size.describe())
    with progress.step("predicting", f"the cells of {args.fit}"), table_writer(
            out, what="predictions file",
            advice="predict the observed cells (without --grid), or give the cells wanted with --cells FILE") as write:
        totals = fit.predict(new_observation=args.new_observation, ci_prob=args.ci_prob, max_draws=args.max_draws,
                             seed=args.seed, new_rows=new_rows, new_cols=new_cols, cells=cells, grid=args.grid,
                             sink=write, **_progress_keyword(fit.predict, progress, "predicting:"))
    what = "a new observation of each cell" if args.new_observation else "each cell's mean"
    if cells is not None:
        print(f"wrote {what} at the {totals.lines} cells of {args.at} to {out}")
        return 0
    print(f"wrote {what} ({totals.lines} cells, {totals.predicted} of them missing from the table) to {out}")
    if totals.cells == "observed" and args.grid is None:
        print("twoway: the grid has more cells than these; wrote the observed cells (and new levels' cells); "
              "--grid writes every cell", file=sys.stderr)
    if totals.note:
        print(f"twoway: {totals.note}", file=sys.stderr)
    return 0


def _cells_table(path: str):
    """The long table of cells ``predict --at`` reads: text fields, an empty field as missing (NaN).

    Raises :class:`~twoway.errors.DataError` for a file that cannot be read as a table.
    """
    from twoway.table.io.tables import read_csv

    df, _ = read_csv(path)
    for column in df.columns:
        values = df[column]
        if values.dtype == object:
            df[column] = values.where(values.astype(str).str.strip() != "", None)
    return df


def cmd_dof(args) -> int:
    shape = [v for v in (args.rows, args.cols, args.replicates) if v is not None]
    if args.data is not None:
        if shape:
            raise TwowayError("Give 'twoway dof' a data file or the table's shape (--rows, --cols), not both.")

        replicate = args.replicate
        if replicate is None and "replicate" in csv_header(args.data):
            replicate = "replicate"
        data = TwoWayData.from_csv(args.data, row=args.row, col=args.col, value=args.value, replicate=replicate)
        dof = degrees_of_freedom(_model(args), data.n_rows, data.n_cols, data.n_replicates,
                                 n_observed=data.n_observed)
    else:
        if args.rows is None or args.cols is None:
            raise TwowayError("Give 'twoway dof' a data file, or the table's shape with --rows and --cols.")
        dof = degrees_of_freedom(_model(args), args.rows, args.cols, 1 if args.replicates is None else args.replicates)
    if args.json:
        print(json.dumps(dof.to_dict(), indent=2))
    else:
        print(dof.format())
    return 0


def cmd_compare(args) -> int:
    from twoway.app.progress import loo_estimate
    from twoway.results.compare import compare, pointwise_differences, preferred, unique_names

    if len(args.fits) < 2:
        raise FitError(f"A comparison needs at least 2 fit files; got {len(args.fits)}.")
    fits = _read_fits(args.fits, args)
    names = unique_names([Path(path).stem for path in args.fits])
    progress = _before(args, [loo_estimate(f, name=path, by=args.by) for f, path in zip(fits, args.fits)])
    with progress.step("leave-one-out", f"of {len(fits)} fits, one {args.by} at a time"):
        table = compare(dict(zip(names, fits)), by=args.by, refit=args.refit,
                        **_progress_keyword(compare, progress, "leave-one-out:"))
    sentence = preferred(table)
    diffs = pointwise_differences(table)
    if args.json:
        models = [{"name": str(name), "rank": int(row["rank"]), "elpd": float(row["elpd"]),
                   "se": float(row["se"]), "elpd_diff": float(row["elpd_diff"]), "dse": float(row["dse"]),
                   "weight": float(row["weight"]), "p_loo": float(row["p_loo"]),
                   "pareto_k_bad": int(row["pareto_k_bad"])} for name, row in table.iterrows()]
        print(json.dumps({"by": args.by, "models": models, "preferred": sentence,
                          "warnings": table.attrs.get("warnings", []),
                          "loo_method": table.attrs.get("loo_method", {}),
                          "same": [list(pair) for pair in table.attrs.get("same", [])],
                          "pointwise": [{"unit": str(u), "diff": float(v)} for u, v in diffs["diff"].items()]},
                         indent=2))
    else:
        print(f"leave-one-{args.by}-out comparison (PSIS-LOO; elpd_diff is each fit's elpd minus the best one's; "
              "pareto_k_bad counts units with Pareto k > 0.7):")
        print(table.to_string(float_format=lambda v: f"{v:.2f}"))
        for name, how in table.attrs.get("loo_method", {}).items():
            print(f"  {name}: {how}")
        shown = diffs if args.pointwise else diffs.head(5)
        print()
        print(f"pointwise table: elpd by {args.by}, {table.index[0]} minus {table.index[1]}, largest difference "
              f"first ({len(shown)} of {len(diffs)}{'' if args.pointwise else '; --pointwise prints all'}):")
        print(shown.to_string(float_format=lambda v: f"{v:.2f}"))
        print()
        print(sentence)
    return 0


#: Pareto k above which a unit's leave-one-out estimate is rough (as 'twoway compare' counts them).
K_THRESHOLD = 0.7


def cmd_loo(args) -> int:
    import numpy as np

    from twoway.app.progress import loo_estimate
    from twoway.results.loo import loo

    fit = _read_fits([args.fit], args)[0]
    progress = _before(args, [loo_estimate(fit, name=args.fit, by=args.by)])
    with progress.step("leave-one-out", f"of {args.fit}, one {args.by} at a time"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ArviZ's Pareto k warning: counted below instead
        e = loo(fit, by=args.by, pointwise=True, **_progress_keyword(loo, progress, "leave-one-out:"))
    k = np.asarray(e.pareto_k, dtype=float).ravel()
    bad = int(np.count_nonzero(k > K_THRESHOLD))
    units = {"cell": "cells", "row": "rows", "col": "columns"}[args.by]
    if args.json:
        print(json.dumps({"by": args.by, "elpd": float(e.elpd), "se": float(e.se), "p_loo": float(e.p),
                          "n_units": int(k.size), "pareto_k_bad": bad,
                          "pareto_k_max": float(k.max()) if k.size else 0.0}, indent=2))
        return 0
    print(f"leave-one-{args.by}-out of {args.fit} (PSIS-LOO): elpd {float(e.elpd):.2f} (se {float(e.se):.2f}), "
          f"p_loo {float(e.p):.2f}, {k.size} {units}")
    if bad:
        print(f"{bad} of {k.size} {units} have Pareto k above {K_THRESHOLD}: their predictive densities are rough "
              "and the elpd may be off ('twoway compare --refit' refits without them).")
    return 0


#: The statistics 'twoway ppc' prints besides the overall ones (the most extreme p-values), unless --all.
PPC_SHOWN = 10


def cmd_ppc(args) -> int:
    import numpy as np

    from twoway.app.progress import ppc_estimate
    from twoway.results.ppc import predictive_checks

    if args.draws < 1:
        raise TwowayError(f"The --draws option must be at least 1; got {args.draws!r}.")
    fit = _read_fits([args.fit], args)[0]
    estimate = ppc_estimate(fit, name=args.fit, draws=args.draws)
    progress = _before(args, [estimate])
    with progress.step("predictive checks", f"of {args.fit}: {estimate.size}"):
        table = predictive_checks(fit, draws=args.draws, seed=args.seed,
                                  **_progress_keyword(predictive_checks, progress, "replicated tables:"))
    note = table.attrs.get("note")
    if args.json:
        rows = [{"statistic": str(name), **{c: (None if np.isnan(v) else float(v)) for c, v in row.items()}}
                for name, row in table.iterrows()]
        print(json.dumps({"draws": args.draws, "statistics": rows, **({"note": note} if note else {})}, indent=2))
        return 0
    shown = table
    if not args.all:
        overall = ~table.index.str.contains(r"\[", regex=True)
        p = table["p_value"].to_numpy(dtype=float)
        extremity = np.where(np.isnan(p), -np.inf, np.abs(p - 0.5))
        rest = np.flatnonzero(~overall)
        keep = rest[np.argsort(-extremity[rest], kind="stable")[:PPC_SHOWN]]
        shown = table.iloc[np.sort(np.concatenate([np.flatnonzero(overall), keep]))]
    print(f"posterior predictive checks of {args.fit} ({args.draws} replicated tables; p_value is "
          "P(T(y_rep) >= T(y)), near 0 or 1 where the model does not reproduce the table):")
    print(shown.to_string(float_format=lambda v: f"{v:.4g}"))
    if len(shown) < len(table):
        print(f"({len(shown)} of {len(table)} statistics: the overall ones and the {PPC_SHOWN} most extreme of the "
              "others; --all prints every one)")
    if note:
        print(note)
    return 0


def cmd_report(args) -> int:
    from twoway.app import report
    from twoway.app.progress import report_estimate
    from twoway.app.report import write_report

    check_output(args.out, endings=(".html", ".htm"), inputs=list(args.fits) + [args.truth], what="report")
    if args.names is not None:
        names = [n.strip() for n in args.names.split(",")]
        if len(names) != len(args.fits) or not all(names):
            raise TwowayError(f"The --names option must give one non-empty name per fit ({len(args.fits)}); "
                              f"got {args.names!r}.")
    else:
        names = [Path(path).stem for path in args.fits]
    truth = None
    if args.truth:
        try:
            truth = json.loads(Path(args.truth).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"The truth file {args.truth!r} is not readable JSON ({type(exc).__name__}).") from None
    _check_ci_prob(args.ci_prob)
    fits = _read_fits(args.fits, args)
    if truth is not None:
        from twoway.results.recovery import check_truth

        for fit in fits:
            truth = check_truth(truth, fit, source=f"the truth file {args.truth!r}")
    progress = _before(args, [report_estimate(fits, list(args.fits), ppc_draws=getattr(report, "PPC_DRAWS", 400),
                                              prediction_draws=getattr(report, "PREDICTION_DRAWS", 500))])
    with progress.step("writing the report", f"to {args.out}"):
        path = write_report(fits, args.out, names=names, truth=truth, ci_prob=args.ci_prob, var_names=args.var,
                            contrasts=_contrasts(args), **_progress_keyword(write_report, progress, "report:"))
    print(f"wrote the report to {path}")
    return 0


def cmd_sbc(args) -> int:
    from twoway.runs.sbc import sbc

    if not 0 < args.alpha < 1:
        raise TwowayError(f"The --alpha option must be between 0 and 1; got {args.alpha!r}.")
    spec = _model(args)
    _check_sbc_draws(args, spec)
    # Progress is sbc's own line (one per replication), so that bad options still end in one line on stderr;
    # on by default, in a log too (a line per tenth of the replications), as for fit and fit-many.
    result = sbc(spec, args.rows, args.cols, args.sims, n_replicates=args.replicates, chains=args.chains,
                 draws=args.draws, tune=args.tune, seed=args.seed, out=args.out, se=args.se, engine=args.engine,
                 progress=args.progress is not False, workers=args.workers, scheduler=args.scheduler)
    if args.json:
        print(json.dumps(result.to_dict(args.alpha), indent=2))
    else:
        print(result.format(args.alpha))
        print(f"\nresults in {args.out}/")
    return 0 if result.passes(args.alpha) else 1


def _check_sbc_draws(args, spec) -> None:
    """Before any simulation or compiling: the draws of the fits held at once must fit in memory.

    With ``--workers N`` here, N fits are held at once; on a scheduler's cluster, each machine
    checks its own. Large draws are said (unless ``--no-progress``).
    """
    if min(args.rows, args.cols) < 2 or min(args.replicates, args.chains, args.draws) < 1:
        return  # sbc itself says which option is wrong
    shape = (args.replicates, args.rows, args.cols)
    at_once = args.workers if args.scheduler is None and args.workers > 1 else 1
    n_cov = len(_covariate_columns(spec))  # a lower bound: each variable has one coefficient or more
    memory.check_draws(spec, shape, args.chains, args.draws, n_cov=n_cov, fits_at_once=at_once)
    need = at_once * memory.draws_bytes_shape(spec, shape, args.chains, args.draws, n_cov=n_cov)
    if need > memory.LARGE_BYTES and args.progress is not False:
        fits = f" ({at_once} fits at once)" if at_once > 1 else ""
        Progress().message(f"the draws of each simulation's fit will hold about {memory.size_text(need)}{fits}")


def _check_fit_many_draws(args, spec) -> None:
    """Before any table is read: the draws of the smallest table (2 x 2) must fit in memory, ``--workers`` at once.

    Each table's own draws are checked by its fit before it samples; this refuses, at once and
    in one line, before any table is read or model compiled, draws that no table could hold.
    """
    at_once = args.workers if args.scheduler is None and args.workers > 1 else 1
    least = at_once * memory.draws_bytes_shape(spec, (1, 2, 2), args.chains, args.draws)
    available = memory.available_memory()
    if least > max(available, memory.DRAWS_FLOOR):
        workers = f" x {at_once} fits at once" if at_once > 1 else ""
        raise FitError(f"The draws must fit in memory; got {args.chains} chains x {args.draws} draws{workers}, at "
                       f"least {memory.gib(least)} for the smallest table, and {memory.gib(available)} is "
                       f"available: ask for fewer draws or fewer chains{' or workers' if at_once > 1 else ''}.")


def cmd_fit_many(args) -> int:
    check_sampling_options(args.chains, args.draws, args.tune, args.seed, args.engine)
    spec = _model(args)
    _check_fit_many_draws(args, spec)

    def first_header() -> list[str]:  # columns named se / replicate in the first table, as 'twoway fit' does
        first = table_files(args.tables)[0]
        try:
            return csv_header(first)
        except TwowayError:
            return []  # that table's own job reports what is wrong with it

    se, replicate, notes = _default_columns(args, first_header)
    progress = args.progress is not False
    result = fit_many(args.tables, spec, args.out, by=args.by, row=args.row, col=args.col, value=args.value,
                      se=se, replicate=replicate, zero_se=args.zero_se, chains=args.chains, draws=args.draws,
                      tune=args.tune,
                      seed=args.seed, engine=_named_engine(args), workers=args.workers, scheduler=args.scheduler,
                      progress=progress)
    _say(notes)  # after the run: a bad option or table is then one error line
    summary = result.summary
    n_ok = int((summary["status"] == "ok").sum())
    reused = f" ({len(result.reused)} from an earlier run)" if result.reused else ""
    print(f"fitted {n_ok} of {len(summary)} tables{reused}; fit files and summary.csv in {args.out}/")
    for name, row in summary[summary["status"] != "ok"].iterrows():
        print(f"failed: {name}: {row['error']}")
    return 0 if n_ok == len(summary) else 1


def cmd_cache(args) -> int:
    if args.cache_command == "clear":
        folder = cache_info()["path"]
        removed = clear_cache()
        print(f"removed {removed} cached program{'s' if removed != 1 else ''} from {folder}")
        return 0
    info = cache_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"folder: {info['path']}{'' if info['exists'] else ' (not created yet)'}")
        print(f"entries: {info['entries']} compiled program{'s' if info['entries'] != 1 else ''}")
        print(f"size: {_bytes(info['bytes'])}")
    return 0


def _bytes(n: int) -> str:
    """``512 bytes``, ``7.7 KiB``, ``12.0 MiB``, ``1.5 GiB``."""
    if n < 1024:
        return f"{n} byte{'s' if n != 1 else ''}"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def _progress(args):
    """The phase lines on stderr (compiling, sampling): on unless --no-progress."""

    return Progress(enabled=args.progress is not False)


def _sampler_progress(args) -> bool:
    """Whether the sampler shows its own progress bar: --progress, else when stderr is a terminal."""
    if args.progress is not None:
        return bool(args.progress)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


#: Endings of the table files twoway reads and writes (long form).
TABLE_ENDINGS = (".csv", ".csv.gz")


def _model_inputs(args, spec=None) -> list[str]:
    """The files a command's model options read: the model file and the files it names.

    ``spec``, the model already read from ``args.model``, saves reading the model file again.
    """
    out = []
    for text in (getattr(args, "model", None), getattr(args, "row_structure", None),
                 getattr(args, "col_structure", None)):
        if not text:
            continue
        if text.lower().endswith(".toml"):
            out.append(text)
            try:
                named = spec if spec is not None and text == args.model else load_model(text)
            except TwowayError:
                continue  # reported when the model is read
            for key in FILE_OPTIONS:
                value = getattr(named, key, None)
                if isinstance(value, str) and value.startswith("known:"):
                    out.append(value[len("known:"):])
                elif key == "covariance" and isinstance(value, str) and value.lower().endswith(".csv"):
                    out.append(value)
        elif text.startswith("known:"):
            out.append(text[len("known:"):])
    return out


COMMANDS = {"demo": cmd_demo, "simulate": cmd_simulate, "fit": cmd_fit, "summary": cmd_summary, "dof": cmd_dof,
            "compare": cmd_compare, "loo": cmd_loo, "ppc": cmd_ppc,
            "report": cmd_report, "sbc": cmd_sbc, "fit-many": cmd_fit_many, "predict": cmd_predict, "cache": cmd_cache}


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """twoway's own warnings as one line on stderr (no source line); others as Python shows them."""

    if issubclass(category, TwowayWarning):
        print(f"twoway: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # The summary prints these in words; the CLI need not repeat them as Python warnings.
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", DegreesOfFreedomWarning)
            warnings.showwarning = _one_line_warning
            return COMMANDS[args.command](args)
    except TwowayError as exc:
        print(f"twoway: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into a reader that stopped early (head)
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("twoway: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def run() -> None:
    """Console entry point."""
    sys.exit(main())
