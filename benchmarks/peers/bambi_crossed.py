"""Fit crossed random intercepts with Bambi and print one JSON object of timings and diagnostics.

Runs inside ``benchmarks/.venv-bambi`` (made by ``benchmarks/peers/setup-bambi.sh``),
not in twoway's virtualenv, and imports nothing from twoway. The model is
``value ~ 1 + (1|row) + (1|col)`` with Bambi's default priors and Bambi's
default inference (``inference_method="pymc"``: :func:`pymc.sample`, which
runs PyMC's own NUTS unless nutpie is installed in the same environment).

Printed keys
------------
wall : float
    Seconds from building the Bambi model to the last draw (formula parsing,
    PyMC model, compile and sampling; not the imports).
import_seconds : float
    Seconds spent importing Bambi (and with it PyMC).
min_ess_bulk : float
    Minimum bulk ESS over the three standard deviations: the row and column
    group sds (``1|ROW_sigma``, ``1|COL_sigma``) and the residual ``sigma``.
ess_bulk : dict
    Bulk ESS of each of the three.
divergences : int
    Divergent transitions after tuning, all chains.
means : dict
    Posterior means of the three.
sampler : str
    Which NUTS ran (``pymc`` or ``nutpie``).
logp_offset : float
    Compiled log-density (the default mode, as sampled) minus the log-density
    compiled without PyTensor's ``local_careduce_of_alloc`` rewrite, at the
    initial point: non-zero means the sampled model was miscompiled (see
    ``twoway.engines.pymc.compile_modes``).
versions : dict

Run: ``benchmarks/.venv-bambi/bin/python benchmarks/peers/bambi_crossed.py data.csv
[--row row] [--col col] [--value value] [--chains 4] [--draws 1000] [--tune 1000] [--seed 1]``
"""

from __future__ import annotations

import argparse
import json
import time
import warnings


def parse_args() -> argparse.Namespace:
    """The command line: the CSV file, its column names and the sampler settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="long CSV table, one line per cell")
    parser.add_argument("--row", default="row", help="row-label column (default: %(default)s)")
    parser.add_argument("--col", default="col", help="column-label column (default: %(default)s)")
    parser.add_argument("--value", default="value", help="value column (default: %(default)s)")
    parser.add_argument("--chains", type=int, default=None, help="chains (default: Bambi's, i.e. PyMC's)")
    parser.add_argument("--draws", type=int, default=None, help="kept draws per chain (default: Bambi's, 1000)")
    parser.add_argument("--tune", type=int, default=None, help="tuning draws per chain (default: Bambi's, 1000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the sampler")
    return parser.parse_args()


def logp_offset(pm_model) -> float:
    """Default-mode minus safe-mode compiled log-density of ``pm_model`` at its initial point.

    Parameters
    ----------
    pm_model : pymc.Model

    Returns
    -------
    float
    """
    from pytensor.compile.mode import get_mode

    point = pm_model.initial_point()
    as_sampled = pm_model.compile_logp()
    safe = pm_model.compile_logp(mode=get_mode(None).excluding("local_careduce_of_alloc"))
    return float(as_sampled(point)) - float(safe(point))


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    import arviz as az
    import bambi as bmb
    import pandas as pd
    import pymc as pm

    import_seconds = time.perf_counter() - t0

    df = pd.read_csv(args.data)
    for name in (args.row, args.col):
        df[name] = df[name].astype(str).astype("category")
    formula = f"{args.value} ~ 1 + (1|{args.row}) + (1|{args.col})"
    sds = [f"1|{args.row}_sigma", f"1|{args.col}_sigma", "sigma"]
    options = {k: v for k, v in (("chains", args.chains), ("draws", args.draws), ("tune", args.tune),
                                 ("random_seed", args.seed)) if v is not None}

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = bmb.Model(formula, df)
        trace = model.fit(progressbar=False, **options)
    wall = time.perf_counter() - t0

    post = trace["posterior"].to_dataset()
    stats = trace["sample_stats"].to_dataset()
    ess = az.ess(post[sds], method="bulk")
    ess_bulk = {k: float(ess[k]) for k in sds}
    installed = bool(getattr(pm.sampling.mcmc, "NUTPIE_INSTALLED", False))
    model.build()
    out = {
        "formula": formula,
        "wall": wall,
        "import_seconds": import_seconds,
        "chains": int(post.sizes["chain"]),
        "draws": int(post.sizes["draw"]),
        "min_ess_bulk": min(ess_bulk.values()),
        "ess_bulk": ess_bulk,
        "divergences": int(stats["diverging"].sum()),
        "means": {k: float(post[k].mean()) for k in sds},
        "sampler": "nutpie" if installed else "pymc",
        "logp_offset": logp_offset(model.backend.model),
        "versions": {"bambi": bmb.__version__, "pymc": pm.__version__, "arviz": az.__version__},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
