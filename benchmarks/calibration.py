"""Calibration table: simulation-based calibration (SBC) of every covariance structure and model, with its power.

One row per case: each Kronecker structure (iid, diag, ar1, cs, fa:1, fa:2,
unstructured, known) on each side with ``iid`` on the other side, and the
``latent``, ``crossed``, ``additive`` and ``full`` models. Each case runs
:func:`twoway.runs.sbc.sbc` (priors fixed by ``sbc_spec``, one compile on the JAX
engine, every simulated table run through it) and gives one p-value per
scalar parameter (:func:`twoway.runs.sbc.rank_tests`: exact tests of the
ranks' normal scores for a shift and for a wrong width, twice the smaller).

The multiple testing is stated once:

* within a case, the smallest of its P p-values is Bonferroni-adjusted,
  ``p_case = min(1, P * min p)``;
* across the C cases of the table, the p_case are Holm-adjusted, and a case
  fails when its Holm-adjusted p-value is below the family-wise alpha
  (default 0.01). A calibrated table therefore shows one or more failures with
  probability at most alpha (the tests are exact), whatever the dependence
  between parameters and cases.

The power is stated per case: the probability that a parameter whose
posterior is off by 0.5 of its sd makes the case fail, computed exactly for
the case's S replications and L kept draws (:func:`twoway.runs.sbc.rank_test_power`,
the shift test alone at ``alpha / (C P 2)``, Holm's smallest threshold: a lower
bound), with the replications that give 80%. ``--power 0.8`` runs each case
until it has them (a case's P is known after its first replications; the
run is extended, not restarted).

Run it::

    .venv/bin/python benchmarks/calibration.py --power 0.8 --out benchmarks/calibration.md \\
        --work /tmp/twoway-calibration

``--work`` keeps each case's replications (resumable: run it again to finish
or extend a run); ``--only fa:1`` runs the cases whose name contains the text
(repeatable); ``--workers N`` fits on N processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Family-wise false-alarm rate of the whole table.
ALPHA = 0.01
#: Kronecker structures, each tried on the row side and on the column side.
STRUCTURES = ("iid", "diag", "ar1", "cs", "fa:1", "fa:2", "unstructured", "known")
#: Table shape of the Kronecker cases (rows, columns, replicates).
KRON_SHAPE = (6, 5, 2)
#: Table shape of the other models.
MODEL_SHAPE = (6, 5, 2)

FULL_MODULE = '''
def ar_rows(ops, rho, scale):
    """Rows AR(1) with correlation rho, columns independent, times scale^2 (row-major cells)."""
    import numpy as np
    N, K = {N}, {K}
    d = np.abs(np.subtract.outer(np.arange(N), np.arange(N)))
    rows = rho ** ops.asarray(d.astype(float))
    return scale * scale * ops.kron(rows, ops.asarray(np.eye(K)))
'''


@dataclass(frozen=True)
class Case:
    """One row of the table: a model on a table shape."""

    name: str
    side: str
    spec: Any
    shape: tuple[int, int, int]
    #: Priors of the fitted model that differ from the simulating ones (a wrong prior on purpose), by factor
    #: of the simulating prior's scale: {parameter: factor}.
    wrong: tuple[tuple[str, float], ...] = ()


def _known_file(folder: Path, side: str, n: int) -> Path:
    """A known relationship matrix (AR(1), rho = 0.6) over the labels SBC gives the side."""
    labels = [f"{side}{i + 1}" for i in range(n)]
    d = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    m = 0.6 ** d
    path = folder / f"known_{side}_{n}.csv"
    lines = ["," + ",".join(labels)] + [lab + "," + ",".join(f"{v:.12g}" for v in row) for lab, row in zip(labels, m)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cases(folder: Path) -> list[Case]:
    """Every case of the table; files they need (known matrices, the full covariance) are written to ``folder``."""
    import twoway
    from twoway.spec.model import preset

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    n, k, r = KRON_SHAPE
    kron = preset("kronecker")
    for text in STRUCTURES:
        for side in ("row", "col"):
            size = n if side == "row" else k
            structure = f"known:{_known_file(folder, side, size)}" if text == "known" else text
            other = "iid"
            spec = dataclasses.replace(kron, row_structure=structure if side == "row" else other,
                                       col_structure=structure if side == "col" else other)
            out.append(Case(f"kronecker {text}", side, spec, KRON_SHAPE))
    for name in ("latent", "crossed", "additive"):
        out.append(Case(name, "-", preset(name), MODEL_SHAPE))
    n, k, r = MODEL_SHAPE
    module = folder / "calibration_cov.py"
    module.write_text(FULL_MODULE.format(N=n, K=k), encoding="utf-8")
    P = twoway.Prior
    full = twoway.ModelSpec(residual="full", covariance=f"{module}:ar_rows", row_scale="none", col_scale="none",
                            sigma=True, priors=(("rho", P.make("uniform", lower=0.0, upper=0.9)),
                                                ("scale", P.make("halfnormal", sigma=1.0))))
    out.append(Case("full", "-", full, MODEL_SHAPE))
    return out


#: The wrong priors the table shows caught (``--wrong-prior``): the crossed model's row sd fitted with a
#: prior twice too wide and twice too narrow (the case the issue found missed in 10 of 10 seeds).
WRONG_PRIORS = (("row_effect_sd", 2.0), ("row_effect_sd", 0.5))


def wrong_prior_cases() -> list[Case]:
    """The crossed model fitted with each of :data:`WRONG_PRIORS` (simulated with the right one)."""
    from twoway.spec.model import preset

    return [Case(f"crossed, {name} prior {'twice too wide' if factor > 1 else 'twice too narrow'}", "-",
                 preset("crossed"), MODEL_SHAPE, wrong=((name, factor),)) for name, factor in WRONG_PRIORS]


def _fit_priors(spec, wrong: tuple[tuple[str, float], ...]) -> dict[str, Any] | None:
    """The fitted priors of a wrong-prior case: the simulating prior with its scale (sigma) times the factor."""
    if not wrong:
        return None
    fixed = spec.prior_overrides
    return {name: {**fixed[name].to_dict(), "sigma": fixed[name].kwargs["sigma"] * factor} for name, factor in wrong}


def run_case(case: Case, n_sims: int, *, seed: int = 0, work: Path | None = None, chains: int = 2,
             draws: int = 300, tune: int = 300, progress: bool = False, workers: int = 1):
    """SBC of one case (:func:`twoway.runs.sbc.sbc`); the result's p-values are per scalar parameter."""
    from twoway.errors import FitError
    from twoway.runs.sbc import load_sbc, sbc, sbc_spec

    n, k, r = case.shape
    folder = None if work is None else work / _slug(case)
    if folder is not None and (folder / "config.json").is_file():
        try:  # a finished case is read back without compiling anything
            done = load_sbc(folder)
        except FitError:
            done = None
        if done is not None and done.n_sims >= n_sims:
            return done
    spec = sbc_spec(case.spec, n, k)
    return sbc(spec, n, k, n_sims, n_replicates=r, chains=chains, draws=draws, tune=tune, seed=seed, out=folder,
               progress=progress, workers=workers, fit_priors=_fit_priors(spec, case.wrong))


def case_level(n_params: int, n_cases: int, alpha: float = ALPHA) -> float:
    """The level of one shift test that makes a case fail whatever the other cases: ``alpha / (C P 2)``.

    A parameter's p-value is twice its smaller test's, a case's is P times its
    smallest parameter's (Bonferroni), and Holm's smallest threshold across C
    cases is ``alpha / C``.
    """
    return alpha / (max(1, n_cases) * max(1, n_params) * 2)


def case_power(n_sims: int, n_draws: int, n_params: int, n_cases: int, alpha: float = ALPHA) -> float:
    """Lower bound on the probability that a case fails when one parameter's posterior is off by 0.5 sd."""
    from twoway.runs.sbc import POWER_SHIFT, rank_test_power

    return rank_test_power(n_sims, n_draws, case_level(n_params, n_cases, alpha), shift=POWER_SHIFT)


def sims_needed(n_draws: int, n_params: int, n_cases: int, alpha: float = ALPHA, power: float = 0.8) -> int:
    """Replications a case needs for ``power`` against a 0.5-sd shift of one parameter."""
    from twoway.runs.sbc import POWER_SHIFT, sims_for_power

    return sims_for_power(n_draws, case_level(n_params, n_cases, alpha), power=power, shift=POWER_SHIFT)


def _slug(case: Case) -> str:
    return (case.name + "-" + case.side).replace(" ", "-").replace(":", "").replace(",", "")


def case_pvalue(pvalues) -> tuple[float, str]:
    """Bonferroni-adjusted smallest p-value of a case, and the parameter it belongs to."""
    p = np.asarray(pvalues, dtype=float)
    i = int(np.nanargmin(p))
    return float(min(1.0, p[i] * p.size)), str(pvalues.index[i])


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of p-values (family-wise error control under any dependence)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def markdown(rows: list[dict], alpha: float = ALPHA) -> str:
    """The table: structure, side, simulations, power, worst adjusted p-value, verdict.

    A row may give ``power`` and ``needed`` (its power against a 0.5-sd shift
    and the replications that give 80%); they show as ``-`` otherwise.
    """
    adjusted = holm(np.array([row["p_case"] for row in rows]))
    lines = ["| structure | side | table | simulations | parameters | power vs 0.5-sd shift | sims for 80% | "
             "worst p (Bonferroni in case) | Holm across cases | parameter | divergences | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, h in zip(rows, adjusted):
        verdict = "pass" if h >= alpha else "FAIL"
        power = f"{row['power']:.0%}" if row.get("power") is not None else "-"
        needed = str(row["needed"]) if row.get("needed") is not None else "-"
        lines.append(f"| {row['name']} | {row['side']} | {row['table']} | {row['sims']} | {row['params']} | "
                     f"{power} | {needed} | {row['p_case']:.3g} | {h:.3g} | `{row['worst']}` | "
                     f"{row['divergences']} | {verdict} |")
    n_fail = int(np.sum(adjusted < alpha))
    lines += ["", f"Family-wise alpha {alpha:g} over {len(rows)} cases (Bonferroni over the parameters of a case, "
                  f"Holm across cases): {n_fail} failing. Power: the exact probability that a case fails when "
                  f"one of its parameters' posterior is off by 0.5 of its sd (its shift test at "
                  f"alpha / (cases x parameters x 2); a lower bound)."]
    return "\n".join(lines) + "\n"


def _row(case: Case, args, n_cases: int) -> dict[str, Any]:
    """Run (or read back) one case and give its row of the table (an error is a row of its own)."""
    t0 = time.perf_counter()
    n, k, r = case.shape
    opts = dict(seed=args.seed, work=args.work, chains=args.chains, draws=args.draws, tune=args.tune,
                workers=args.workers)
    try:
        result = run_case(case, args.sims, **opts)
        needed = sims_needed(result.n_draws, len(result.parameters), n_cases, args.alpha)
        if args.power is not None:
            wanted = sims_needed(result.n_draws, len(result.parameters), n_cases, args.alpha, args.power)
            if result.n_sims < wanted:  # extended: replications 0..n_sims-1 are read back, the rest fitted
                result = run_case(case, wanted, **opts)
    except Exception as exc:  # one broken case must not lose the others: it is a row of its own
        print(f"{case.name} ({case.side}): error {exc}", file=sys.stderr, flush=True)
        return {"name": case.name, "side": case.side, "table": f"{n} x {k} x {r}", "sims": 0,
                "params": 0, "p_case": 0.0, "worst": f"error: {type(exc).__name__}", "divergences": 0}
    p_case, worst = case_pvalue(result.pvalues)
    power = case_power(result.n_sims, result.n_draws, len(result.parameters), n_cases, args.alpha)
    print(f"{case.name} ({case.side}): {result.n_sims} sims, worst adjusted p {p_case:.3g} ({worst}), "
          f"power {power:.0%} against a 0.5-sd shift, {time.perf_counter() - t0:.0f} s",
          file=sys.stderr, flush=True)
    return {"name": case.name, "side": case.side, "table": f"{n} x {k} x {r}", "sims": result.n_sims,
            "params": len(result.parameters), "p_case": p_case, "worst": worst,
            "divergences": int(result.diagnostics["divergences"].sum()), "power": power, "needed": needed}


def wrong_markdown(rows: list[dict], n_cases: int, alpha: float = ALPHA) -> str:
    """The wrong-prior rows: each must FAIL at the table's smallest threshold, ``alpha / C`` (Bonferroni)."""
    lines = ["A wrong prior on purpose (simulated with the right prior, fitted with the wrong one; each must "
             f"fail at alpha / {n_cases} = {alpha / max(1, n_cases):.2g}, the table's smallest threshold):", "",
             "| case | table | simulations | parameters | worst p (Bonferroni in case) | parameter | verdict |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        verdict = "FAIL (caught)" if row["p_case"] < alpha / max(1, n_cases) else "pass (missed)"
        lines.append(f"| {row['name']} | {row['table']} | {row['sims']} | {row['params']} | {row['p_case']:.3g} | "
                     f"`{row['worst']}` | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sims", type=int, default=40,
                        help="replications per case (default 40; with --power, the fewest run)")
    parser.add_argument("--power", type=float, default=None,
                        help="run each case until its power against a 0.5-sd shift reaches this (e.g. 0.8)")
    parser.add_argument("--workers", type=int, default=1, help="processes fitting the replications (default 1)")
    parser.add_argument("--wrong-prior", action="store_true",
                        help="also fit the crossed model with its row sd prior twice too wide and twice too narrow "
                             "(each must fail)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", action="append", default=None,
                        help="run the cases whose name contains this text (repeatable)")
    parser.add_argument("--work", type=Path, default=Path("calibration-work"),
                        help="folder for the replications (resumable) and the files the cases need")
    parser.add_argument("--out", type=Path, default=None, help="markdown file for the table (default: stdout)")
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=300, help="kept draws per chain (default 300)")
    parser.add_argument("--tune", type=int, default=300, help="tuning draws per chain (default 300)")
    args = parser.parse_args(argv)
    from twoway.table.io.outputs import check_output, write_text_atomic

    if args.out is not None:
        check_output(args.out, endings=(".md",), what="calibration table")
    if args.power is not None and not 0 < args.power < 1:
        parser.error(f"--power must be between 0 and 1; got {args.power!r}")
    started = time.perf_counter()
    rows = []
    every = cases(args.work)
    chosen = [case for case in every if not args.only or any(text in case.name for text in args.only)]
    for case in chosen:
        rows.append(_row(case, args, len(chosen)))
    wrong_rows = [_row(case, args, len(chosen)) for case in (wrong_prior_cases() if args.wrong_prior else [])]
    text = markdown(rows, args.alpha)
    if wrong_rows:
        text += "\n" + wrong_markdown(wrong_rows, len(chosen), args.alpha)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["benchmarks/calibration.py"] + [shlex.quote(a) for a in given])
    left_out = [f"{c.name} ({c.side})" for c in every if c not in chosen]
    text = (f"Command: `.venv/bin/python {command}` ({args.chains} chains x {args.draws} draws after {args.tune} "
            f"tuning, ranks among 100 thinned draws; this run {(time.perf_counter() - started) / 60:.1f} min, "
            f"replications already in the work folder read back, not run again).\n\n" + text
            + (f"\nNot run here: {', '.join(left_out)}.\n" if left_out else ""))
    if args.out is None:
        print(text)
    else:
        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
