"""Many fits: ``twoway.fit_many`` of 16 small tables, serially and on 2 Dask worker processes.

Sixteen 10 x 6 tables are simulated from the ``crossed`` preset (one per seed)
and written as CSV files; ``fit_many`` fits ``crossed`` to each of them

1. serially (``workers=1``: one fit after another in this process, chains in
   threads), and
2. on a local Dask cluster of 2 worker processes with one thread each
   (``workers=2``; the wall time includes starting the cluster and each
   worker's first fit, which loads the stored chain program), and
3. on a running 2-worker cluster whose workers have each fitted one table
   already (``scheduler=ADDRESS``), as a long-lived cluster serves.

Before either run, one table is fitted untimed so that the compiled chain
program is in the compile cache folder (a fresh one, ``TWOWAY_CACHE_DIR`` set
for the benchmark): both runs then start from a warm disk cache, as a user's
second day does. Figures: wall seconds of each run, the ratios serial / Dask
(the target is close to 2 on 2 cores), whether the two runs gave the same
numbers, and the per-fit overhead after the first fit of the serial run:
(total - first fit) / 15 minus the mean sampling seconds of those 15 fits
(reading the table, planning, writing the fit file, the summary).

Run: ``.venv/bin/python benchmarks/scale_many.py [--quick]`` (``--quick``:
2 chains x 200 draws after 200 tuning; else 4 x 1000 after 1000).
:func:`run_many_case` is what ``benchmarks/bench_scale.py`` imports.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

N_TABLES = 16
SHAPE = (10, 6)
MODEL = "crossed"


def _settings(quick: bool) -> dict:
    return dict(chains=2, draws=200, tune=200) if quick else dict(chains=4, draws=1000, tune=1000)


def run_many_case(quick: bool) -> dict:
    """Fit 16 tables of 10 x 6 serially and on 2 Dask workers; return the figures as a dict.

    Parameters
    ----------
    quick : bool
        2 chains x 200 draws after 200 tuning (else 4 x 1000 after 1000).

    Returns
    -------
    dict
        ``serial_s``, ``dask2_s``, ``ratio`` (serial / Dask), ``cluster_start_s``,
        ``dask2_running_cluster_s``, ``ratio_running_cluster``, ``same_numbers``,
        ``first_fit_s``, ``per_fit_s`` (mean wall seconds of fits 2..16 in the
        serial run), ``per_fit_sampling_s``, ``per_fit_overhead_s``, settings.
    """
    import numpy as np

    import twoway
    from twoway.runs.batch import fit_many

    settings = _settings(quick)
    with tempfile.TemporaryDirectory(prefix="twoway-scale-many-") as tmp:
        work = Path(tmp)
        old_cache = os.environ.get("TWOWAY_CACHE_DIR")
        os.environ["TWOWAY_CACHE_DIR"] = str(work / "cache")  # workers are given the same folder
        try:
            tables = work / "tables"
            tables.mkdir()
            for i in range(N_TABLES):
                twoway.simulate(MODEL, *SHAPE, seed=1000 + i).data.to_csv(tables / f"table_{i:02d}.csv")
            warm = work / "warm"
            warm.mkdir()
            for k in range(2):  # one per worker, for the running-cluster figure
                twoway.simulate(MODEL, *SHAPE, seed=1 + k).data.to_csv(warm / f"warm{k}.csv")
            fit_many(warm, MODEL, work / "warm-out", progress=False, **settings)  # the program on disk

            t0 = time.perf_counter()
            serial = fit_many(tables, MODEL, work / "serial", seed=7, progress=False, **settings)
            serial_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            dask = fit_many(tables, MODEL, work / "dask2", seed=7, progress=False, workers=2, **settings)
            dask_s = time.perf_counter() - t0
            warm_s, start_s = _on_a_running_cluster(tables, warm, work, settings)
        finally:
            if old_cache is None:
                os.environ.pop("TWOWAY_CACHE_DIR", None)
            else:
                os.environ["TWOWAY_CACHE_DIR"] = old_cache
        s = serial.summary
        cols = [c for c in s.columns if c.endswith(("_mean", "_sd"))]
        same = bool(np.array_equal(s[cols].to_numpy(float), dask.summary[cols].to_numpy(float)))
        seconds = s["seconds"].to_numpy(float)
        sampling = s["sampling_seconds"].to_numpy(float)
        rest = seconds[1:]
        return {
            "case": f"fit-many {N_TABLES} x {MODEL} {SHAPE[0]}x{SHAPE[1]}",
            **settings,
            "serial_s": round(serial_s, 2),
            "dask2_s": round(dask_s, 2),
            "ratio": round(serial_s / dask_s, 2),
            "cluster_start_s": round(start_s, 2),
            "dask2_running_cluster_s": round(warm_s, 2),
            "ratio_running_cluster": round(serial_s / warm_s, 2),
            "same_numbers": same,
            "failed": int((s["status"] != "ok").sum() + (dask.summary["status"] != "ok").sum()),
            "first_fit_s": round(float(seconds[0]), 3),
            "per_fit_s": round(float(rest.mean()), 3),
            "per_fit_sampling_s": round(float(sampling[1:].mean()), 3),
            "per_fit_overhead_s": round(float((serial_s - seconds[0]) / (N_TABLES - 1) - sampling[1:].mean()), 3),
        }


def _on_a_running_cluster(tables: Path, warm: Path, work: Path, settings: dict) -> tuple[float, float]:
    """Wall seconds of the 16 fits on a running 2-worker cluster whose workers have fitted once; its start-up."""
    import logging

    from distributed import LocalCluster

    from twoway.runs.batch import fit_many

    t0 = time.perf_counter()
    env = {"TWOWAY_CACHE_DIR": os.environ["TWOWAY_CACHE_DIR"], "PYTHONWARNINGS": "ignore"}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR, env=env) as cluster:
        start_s = time.perf_counter() - t0
        fit_many(warm, MODEL, work / "warm-cluster", progress=False, scheduler=cluster.scheduler_address, **settings)
        t0 = time.perf_counter()
        fit_many(tables, MODEL, work / "running", seed=7, progress=False, scheduler=cluster.scheduler_address,
                 **settings)
        return time.perf_counter() - t0, start_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 chains x 200 draws after 200 tuning")
    args = parser.parse_args()
    print(json.dumps(run_many_case(args.quick), indent=2))


if __name__ == "__main__":  # Dask's worker processes import this module; they must not run it
    main()
