"""The ``twoway`` command line: each sub-command reads, calls the library once, writes.

Errors caused by the input print one line, ``twoway: error: ...``, and exit
with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence

from twoway.errors import ConvergenceWarning, DegreesOfFreedomWarning, TwowayError

__all__ = ["main"]


def _model_arg(p: argparse.ArgumentParser, default: str = "additive") -> None:
    p.add_argument("--model", default=default,
                   help="a preset (additive, additive-sd) or a TOML model file (default: %(default)s)")


def _sampling_args(p: argparse.ArgumentParser, *, draws: int = 1000) -> None:
    p.add_argument("--chains", type=int, default=4, help="number of chains (default: %(default)s)")
    p.add_argument("--draws", type=int, default=draws, help="draws per chain kept (default: %(default)s)")
    p.add_argument("--tune", type=int, default=1000, help="tuning draws per chain (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="random seed (same seed, same draws)")
    p.add_argument("--backend", choices=["nutpie", "pymc"], default="nutpie",
                   help="sampler (default: %(default)s)")


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

    p = sub.add_parser("fit", help="fit a model to a long-form CSV table")
    p.add_argument("data", help="CSV file, one line per cell")
    p.add_argument("--row", default="row", help="column holding the row label (default: %(default)s)")
    p.add_argument("--col", default="col", help="column holding the column label (default: %(default)s)")
    p.add_argument("--value", default="value", help="column holding the value (default: %(default)s)")
    p.add_argument("--se", default=None, help="column holding known standard errors")
    p.add_argument("--replicate", default=None, help="column holding the replicate label")
    _model_arg(p)
    _sampling_args(p)
    p.add_argument("--out", required=True, help="file for the fit (.nc, or .zarr)")
    p.add_argument("--quiet", action="store_true", help="do not print the summary")

    p = sub.add_parser("summary", help="summarise a saved fit")
    p.add_argument("fit", help="a fit file written by 'twoway fit'")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("dof", help="degrees of freedom a model uses on a table")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--cols", type=int, required=True)
    p.add_argument("--replicates", type=int, default=1)
    _model_arg(p)
    p.add_argument("--json", action="store_true")
    return parser


def _version() -> str:
    from twoway import __version__

    return __version__


def cmd_demo(args) -> int:
    from twoway.demo import DEMO_SEED, run_demo

    print(f"twoway demo: the seed's 8 treatments x 12 groups, simulated and fitted with 'additive' -> {args.out}/",
          flush=True)
    res = run_demo(args.out, chains=args.chains, draws=args.draws, tune=args.tune,
                   seed=DEMO_SEED if args.seed is None else args.seed)
    rec = res.recovery
    print("\nrecovery (94% highest-density intervals):")
    print(rec.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\ncovered: {int(rec['covered'].sum())} of {len(rec)} true values "
          f"({100 * rec['covered'].mean():.0f}%; about 94% expected)")
    print()
    print(res.summary.format())
    print("\nwrote: " + ", ".join(str(p) for p in res.files.values()))
    return 0


def cmd_simulate(args) -> int:
    from twoway.simulate import simulate

    _parent_exists(args.out)
    if args.truth:
        _parent_exists(args.truth)
    sim = simulate(args.model, args.rows, args.cols, args.replicates, seed=args.seed, se=args.se,
                   missing=args.missing)
    sim.data.to_csv(args.out)
    print(f"wrote a {args.rows} x {args.cols} table"
          f"{f' x {args.replicates} replicates' if args.replicates > 1 else ''} "
          f"({sim.data.n_observed} observed cells) to {args.out}")
    if args.truth:
        sim.write_truth(args.truth)
        print(f"wrote the true parameters to {args.truth}")
    return 0


def cmd_fit(args) -> int:
    from twoway.data import TwoWayData
    from twoway.fit import check_sampling_options, fit
    from twoway.model import degrees_of_freedom, load_model

    check_sampling_options(args.chains, args.draws, args.tune, args.seed, args.backend)
    _parent_exists(args.out)
    spec = load_model(args.model)
    data = TwoWayData.from_csv(args.data, row=args.row, col=args.col, value=args.value,
                               se=args.se, replicate=args.replicate)
    dof = degrees_of_freedom(spec, data.n_rows, data.n_cols, data.n_replicates, n_observed=data.n_observed)
    if dof.overparameterised:
        print(f"warning: the model uses {dof.n_parameters} parameters on {dof.n_observed} observed cells; "
              "the priors will decide what the data cannot.", file=sys.stderr)
    result = fit(spec, data, chains=args.chains, draws=args.draws, tune=args.tune, seed=args.seed,
                 backend=args.backend)
    result.save(args.out)
    if not args.quiet:
        print(result.summary().format())
    print(f"\nwrote the fit to {args.out}")
    return 0


def cmd_summary(args) -> int:
    from twoway.fit import Fit

    summary = Fit.load(args.fit).summary()
    if args.json:
        out = summary.to_dict()
        print(json.dumps({"parameters": out["parameters"], "diagnostics": out["diagnostics"],
                          "warnings": out["warnings"]}, indent=2))
    else:
        print(summary.format())
    return 0


def cmd_dof(args) -> int:
    from twoway.model import degrees_of_freedom, load_model

    dof = degrees_of_freedom(load_model(args.model), args.rows, args.cols, args.replicates)
    if args.json:
        print(json.dumps(dof.to_dict(), indent=2))
    else:
        print(dof.format())
    return 0


def _parent_exists(path: str) -> None:
    parent = Path(path).parent
    if not parent.exists():
        raise TwowayError(f"The folder {str(parent)!r} for {path!r} does not exist.")


COMMANDS = {"demo": cmd_demo, "simulate": cmd_simulate, "fit": cmd_fit, "summary": cmd_summary, "dof": cmd_dof}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # The summary prints these in words; the CLI need not repeat them as Python warnings.
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", DegreesOfFreedomWarning)
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
