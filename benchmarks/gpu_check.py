"""GPU check: a Kronecker model with a known row relationship matrix, JAX engine, GPU vs CPU.

For a session that is lent a GPU machine (the ``device`` tool): one prepared
script, run once. It fits ``residual="kronecker"`` with ``row_structure =
known:FILE`` (a 5,000 x 5,000 relationship matrix) and an unstructured column
side on a 5,000 x 200 table on the GPU, and the same model on a table that fits
the CPU comfortably (1,000 x 50 by default) on both devices, reporting for each

* seconds per 1,000 evaluations of the log-density and its gradient
  (the NUTS cost unit), after one warm-up call;
* the end-to-end fit (compile included, 4 chains x ``--draws`` after
  ``--tune``), wall seconds;
* the device JAX used.

Usage (on the GPU machine, with twoway installed with ``jax[cuda12]``)::

    python benchmarks/gpu_check.py --json gpu.json
    python benchmarks/gpu_check.py --quick            # a small trial run, CPU only is fine

Without a GPU the big table is skipped (the CPU case still runs) and the
script says so; nothing here is needed by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def relationship_matrix(n: int, *, rank: int = 40, seed: int = 0) -> np.ndarray:
    """A positive definite relationship-like matrix (n, n): low-rank kinship plus an identity share."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, rank))
    k = a @ a.T / rank
    k = 0.8 * k / np.mean(np.diag(k)) + 0.2 * np.eye(n)
    return k


def write_matrix(path: Path, k: np.ndarray, labels: list[str]) -> None:
    """A labelled CSV of ``k`` (first column the labels, header the labels)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("," + ",".join(labels) + "\n")
        for lab, row in zip(labels, k):
            fh.write(lab + "," + ",".join(f"{v:.6g}" for v in row) + "\n")


def make_case(n_rows: int, n_cols: int, folder: Path, *, seed: int):
    """The spec and a simulated table for the check, with the matrix written under ``folder``."""
    import twoway

    labels = [f"g{i}" for i in range(n_rows)]
    k = relationship_matrix(n_rows, seed=seed)
    path = folder / f"kinship_{n_rows}.csv"
    write_matrix(path, k, labels)
    spec = twoway.ModelSpec(row_effect="none", col_effect="fixed", row_scale="none", col_scale="none",
                            sigma=True, residual="kronecker", row_structure=f"known:{path}",
                            col_structure="unstructured", name="kronecker-known")
    sim = twoway.simulate(spec, n_rows, n_cols, 1, seed=seed, row_labels=labels)
    return spec, sim.data


def gradient_seconds(spec, data, *, n_evals: int, device) -> float:
    """Seconds per 1,000 evaluations of value and gradient of the log-density on ``device``."""
    import jax
    import jax.numpy as jnp

    import twoway
    from twoway.engines.jax.model import describe, model_args

    plan = twoway.resolve(spec, data)
    model = describe(plan)
    args = jax.device_put(model_args(plan), device)
    theta = jax.device_put({k: jnp.zeros(s) for k, s in model.sites.items()}, device)
    vg = jax.jit(jax.value_and_grad(model.log_density))
    jax.block_until_ready(vg(theta, args))
    t0 = time.perf_counter()
    for _ in range(n_evals):
        out = vg(theta, args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n_evals * 1000.0


def end_to_end(spec, data, *, draws: int, tune: int, device) -> dict:
    """Wall seconds of one fit (compile included) with JAX's default device set to ``device``."""
    import jax

    import twoway

    t0 = time.perf_counter()
    with jax.default_device(device):
        f = twoway.fit(spec, data, chains=4, draws=draws, tune=tune, seed=1, progress=False)
    wall = time.perf_counter() - t0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = f.summary().diagnostics
    return {"wall_s": round(wall, 2), "compile_s": round(float(f.info.get("compile_seconds", float("nan"))), 2),
            "max_r_hat": round(float(d["max_r_hat"]), 4), "min_ess_bulk": round(float(d["min_ess_bulk"]), 1),
            "sampling_s": round(float(d.get("sampling_seconds", float("nan"))), 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--big", default="5000x200", help="the GPU table, ROWSxCOLS (default 5000x200)")
    p.add_argument("--small", default="1000x50", help="the table run on both devices (default 1000x50)")
    p.add_argument("--evals", type=int, default=200, help="gradient evaluations timed per case")
    p.add_argument("--draws", type=int, default=500)
    p.add_argument("--tune", type=int, default=500)
    p.add_argument("--quick", action="store_true", help="small tables and few draws: a trial of the script")
    p.add_argument("--json", help="write the figures here as well")
    args = p.parse_args(argv)
    if args.quick:
        args.big, args.small, args.evals, args.draws, args.tune = "300x20", "100x10", 20, 100, 100

    import jax

    jax.config.update("jax_enable_x64", True)
    cpu = jax.devices("cpu")[0]
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    report = {"jax": jax.__version__, "cpu": os.cpu_count(), "gpu": [str(getattr(g, "device_kind", g)) for g in gpus],
              "cases": []}
    print(f"JAX {jax.__version__}; GPU: {report['gpu'] or 'none'}", flush=True)

    def shape(text):
        r, c = (int(x) for x in text.lower().split("x"))
        return r, c

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs = [("small", shape(args.small), cpu)]
        if gpus:
            runs += [("small", shape(args.small), gpus[0]), ("big", shape(args.big), gpus[0])]
        else:
            print("no GPU: the big table is skipped", flush=True)
        made = {}
        for label, (r, c), device in runs:
            if (r, c) not in made:
                t0 = time.perf_counter()
                made[(r, c)] = make_case(r, c, folder, seed=7)
                print(f"made {r} x {c} table and matrix in {time.perf_counter() - t0:.1f} s", flush=True)
            spec, data = made[(r, c)]
            per_1000 = gradient_seconds(spec, data, n_evals=args.evals, device=device)
            fitted = end_to_end(spec, data, draws=args.draws, tune=args.tune, device=device)
            row = {"table": f"{r}x{c}", "device": device.platform, "s_per_1000_gradients": round(per_1000, 3),
                   **fitted}
            report["cases"].append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
