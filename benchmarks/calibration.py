"""Calibration table: simulation-based calibration (SBC) of every covariance structure and model.

One row per case: each Kronecker structure (iid, diag, ar1, cs, fa:1, fa:2,
unstructured, known) on each side with ``iid`` on the other side, and the
``latent``, ``crossed``, ``additive`` and ``full`` models. Each case runs
:func:`twoway.runs.sbc.sbc` (priors fixed by ``sbc_spec``, one compile on the JAX
engine, every simulated table run through it) and gives one p-value per
scalar parameter (chi-square test of rank uniformity).

The multiple testing is stated once:

* within a case, the smallest of its P p-values is Bonferroni-adjusted,
  ``p_case = min(1, P * min p)``;
* across the C cases of the table, the p_case are Holm-adjusted, and a case
  fails when its Holm-adjusted p-value is below the family-wise alpha
  (default 0.01). A calibrated table therefore shows one or more failures with
  probability at most alpha (up to the chi-square approximation), whatever the
  dependence between parameters and cases.

Run it (sized to well under an hour on two shared cores)::

    .venv/bin/python benchmarks/calibration.py --sims 40 --out benchmarks/calibration.md \\
        --work /tmp/twoway-calibration

``--work`` keeps each case's replications (resumable: run it again to finish
or extend a run); ``--only fa:1`` runs the cases whose name contains the text.
"""

from __future__ import annotations

import argparse
import dataclasses
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


def run_case(case: Case, n_sims: int, *, seed: int = 0, work: Path | None = None, chains: int = 2,
             draws: int = 300, tune: int = 300, progress: bool = False):
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
    return sbc(sbc_spec(case.spec, n, k), n, k, n_sims, n_replicates=r, chains=chains, draws=draws, tune=tune,
               seed=seed, out=folder, progress=progress)


def _slug(case: Case) -> str:
    return (case.name + "-" + case.side).replace(" ", "-").replace(":", "")


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
    """The table: structure, side, simulations, worst adjusted p-value, verdict."""
    adjusted = holm(np.array([row["p_case"] for row in rows]))
    lines = ["| structure | side | table | simulations | parameters | worst p (Bonferroni in case) | "
             "Holm across cases | parameter | divergences | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row, h in zip(rows, adjusted):
        verdict = "pass" if h >= alpha else "FAIL"
        lines.append(f"| {row['name']} | {row['side']} | {row['table']} | {row['sims']} | {row['params']} | "
                     f"{row['p_case']:.3g} | {h:.3g} | `{row['worst']}` | {row['divergences']} | {verdict} |")
    n_fail = int(np.sum(adjusted < alpha))
    lines += ["", f"Family-wise alpha {alpha:g} over {len(rows)} cases (Bonferroni over the parameters of a case, "
                  f"Holm across cases): {n_fail} failing."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sims", type=int, default=40, help="replications per case (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="run the cases whose name contains this text")
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
    rows = []
    for case in cases(args.work):
        if args.only and args.only not in case.name:
            continue
        t0 = time.perf_counter()
        n, k, r = case.shape
        try:
            result = run_case(case, args.sims, seed=args.seed, work=args.work, chains=args.chains,
                              draws=args.draws, tune=args.tune)
        except Exception as exc:  # one broken case must not lose the others: it is a row of its own
            print(f"{case.name} ({case.side}): error {exc}", file=sys.stderr, flush=True)
            rows.append({"name": case.name, "side": case.side, "table": f"{n} x {k} x {r}", "sims": 0,
                         "params": 0, "p_case": 0.0, "worst": f"error: {type(exc).__name__}", "divergences": 0})
            continue
        p_case, worst = case_pvalue(result.pvalues)
        rows.append({"name": case.name, "side": case.side, "table": f"{n} x {k} x {r}", "sims": result.n_sims,
                     "params": len(result.parameters), "p_case": p_case, "worst": worst,
                     "divergences": int(result.diagnostics["divergences"].sum())})
        print(f"{case.name} ({case.side}): {result.n_sims} sims, worst adjusted p {p_case:.3g} ({worst}), "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    text = markdown(rows, args.alpha)
    if args.out is None:
        print(text)
    else:
        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
