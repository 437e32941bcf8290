"""Many independent fits on an executor: one after another, or on Dask ``distributed`` workers.

Users fit one table per trait, per site or per simulation. :func:`run_jobs` runs
such jobs and yields each result as soon as it is done; :func:`fit_many` uses
it to fit one model to many tables and keep one fit file per table, and
:func:`twoway.runs.sbc.sbc` uses it for its simulations.

* **Executors.** ``workers=1`` (and no scheduler) runs the jobs here, one after
  another, and never imports Dask. ``workers=N > 1`` starts a local Dask
  cluster of N worker *processes* with one thread each; ``scheduler=ADDRESS``
  uses a running cluster instead (its workers must import the same twoway and,
  for :func:`fit_many` on table files, see the same files).
* **One compile per process.** A worker keeps what it compiled for the life of
  the process: the jax engine holds its chain programs in memory per process
  and on disk in the compile cache folder (``TWOWAY_CACHE_DIR``, which a local
  cluster's workers are given explicitly), so tables of one layout compile
  once per worker, or not at all when the cache already has the program.
* **Seeds.** A job's seed is derived from the run's seed and the job's name
  (:func:`job_seed`), never from the worker, so results do not depend on the
  number of workers or the order the jobs finish in.
* **Results as they finish.** Jobs return their result to this process, which
  writes it at once, atomically (:mod:`twoway.table.io.outputs`): a run killed part
  way keeps every finished result, and a rerun with the same folder and
  configuration runs only the missing jobs.
* **Failures.** A job that raises is recorded with its error; the others finish.
* **One run per folder.** The output folder is held with
  :func:`twoway.table.io.outputs.folder_lock` for the whole run, so a second run on
  it fails at once, and it holds the run's ``config.json``; each stored result
  carries a digest of that configuration and is checked against it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from twoway._version import __version__
from twoway.engines.choose import engine_name
from twoway.engines.jax.cache import ENV_VAR, cache_dir
from twoway.errors import DataError, FitError
from twoway.fit import check_sampling_options, compile_model
from twoway.runs.common import check_count, json_normal, read_json_object
from twoway.spec.model import ModelSpec, load_model
from twoway.table.data import TwoWayData
from twoway.table.io.outputs import (
    atomic_output,
    folder_lock,
    remove_stale_temporaries,
    write_json_atomic,
    write_text_atomic,
)
from twoway.table.io.tables import read_csv

# Deferred imports: distributed, pandas (heavy to import); twoway.results.summary (they import pandas or
# xarray at their top) are imported inside the functions that use them, so importing this module stays
# light.

__all__ = ["Outcome", "BatchResult", "run_jobs", "fit_many", "job_seed", "safe_names", "config_digest",
           "prepare_folder", "fit_diagnostics", "CONFIG_NAME", "SUMMARY_NAME", "RECORDS"]

CONFIG_NAME = "config.json"
SUMMARY_NAME = "summary.csv"
#: Sub-folder of a fit-many folder holding one JSON record per finished table.
RECORDS = "jobs"
FIT_SUFFIX = ".nc"
#: Table files a folder given to :func:`fit_many` is searched for.
TABLE_PATTERNS = ("*.csv", "*.csv.gz", "*.tsv", "*.parquet")
_MAX_NAME = 100


# ---------------------------------------------------------------------------
# names, seeds, configurations
# ---------------------------------------------------------------------------


def job_seed(seed: int, name: "str | int") -> int:
    """The seed of one job: independent streams from the run's ``seed`` and the job's name.

    Parameters
    ----------
    seed : int
        The run's seed (non-negative).
    name : str or int
        The job's name (a string is digested) or index (used as it is).

    Returns
    -------
    int
        A seed in ``[0, 2**32)``, the same in every process.
    """
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        words = [int(name)]
    else:
        digest = hashlib.sha256(str(name).encode("utf-8")).digest()
        words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return int(np.random.SeedSequence([int(seed), *words]).generate_state(1, dtype=np.uint32)[0])


def _safe(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text).strip()).strip("._")
    return name[:_MAX_NAME] or "table"


def safe_names(texts: Sequence[str]) -> list[str]:
    """File-safe, distinct names for ``texts`` (letters, digits, ``.``, ``_``, ``-``).

    Other characters become ``_``; names that would clash (also when compared
    without regard to case) get ``-2``, ``-3``, ... in the order given.

    Parameters
    ----------
    texts : sequence of str

    Returns
    -------
    list of str
        One name per text, in the same order.
    """
    out: list[str] = []
    seen: set[str] = set()
    for text in texts:
        base = _safe(text)
        name, k = base, 1
        while name.lower() in seen:
            k += 1
            name = f"{base}-{k}"
        seen.add(name.lower())
        out.append(name)
    return out


def config_digest(config: Mapping[str, Any]) -> str:
    """A short digest of a configuration (its JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(json_normal(dict(config)), sort_keys=True).encode()).hexdigest()[:16]


def prepare_folder(out: Path, config: Mapping[str, Any], *, what: str, results_glob: str,
                   ignore: Iterable[str] = ()) -> None:
    """Check an output folder against ``config`` (the caller holds its lock); create it when missing.

    Parameters
    ----------
    out : pathlib.Path
        The folder (its parent must exist).
    config : mapping
        The run's configuration, already JSON-normal.
    what : str
        Words for the run in messages (``SBC``, ``fit-many``).
    results_glob : str
        Pattern of stored results inside ``out``; results without a
        ``config.json`` beside them are refused.
    ignore : iterable of str
        Keys of the stored configuration left out of the comparison.

    Raises
    ------
    FitError
        When ``out`` is a file, its parent does not exist, it holds results
        of another configuration, or results without one. A configuration
        file with no result beside it (a run stopped before its first result)
        binds nothing.
    """
    if out.exists() and not out.is_dir():
        raise FitError(f"The {what} output {str(out)!r} must be a folder; it is a file.")
    if not out.parent.exists():
        raise FitError(f"The folder {str(out.parent)!r} for the {what} output does not exist.")
    out.mkdir(exist_ok=True)
    cfg_path = out / CONFIG_NAME
    has_results = any(out.glob(results_glob))
    if cfg_path.exists() and has_results:  # a configuration with no result yet binds nothing
        stored = read_json_object(cfg_path, f"{what} configuration", "use a new folder")
        skip = set(ignore) | {"twoway_version"}
        stored = {k: v for k, v in stored.items() if k not in skip}
        if stored != dict(config):
            diff = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
            raise FitError(f"The folder {str(out)!r} holds a {what} run with another configuration "
                           f"(differing in {', '.join(diff)}); use a new folder or the same settings.")
    elif has_results and not cfg_path.exists():
        raise FitError(f"The folder {str(out)!r} holds result files but no {CONFIG_NAME}; use an empty folder.")


def check_record(record: Mapping[str, Any], digest: str, path: Path) -> None:
    """Refuse a stored result made under another configuration than the folder's."""
    if record.get("config_digest") != digest:
        raise FitError(f"The result {str(path)!r} was made with another configuration than its folder's "
                       f"{CONFIG_NAME}; delete it to run that job again, or use a new folder.")


# ---------------------------------------------------------------------------
# running jobs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one job gave.

    Attributes
    ----------
    name : str
    ok : bool
    value : object
        The job function's return value (None when it failed).
    error : str
        ``"TypeName: message"`` when it failed, else empty.
    seconds : float
        Wall time of the job on its worker.
    """

    name: str
    ok: bool
    value: Any = None
    error: str = ""
    seconds: float = 0.0


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _call(fn: Callable[..., Any], name: str, args: tuple) -> Outcome:
    """Run one job, turning an exception into a failed outcome (runs on the worker)."""
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = fn(*args)
    except Exception as exc:  # a job's failure is its result; the other jobs go on
        return Outcome(name, False, None, _error_text(exc), time.perf_counter() - t0)
    return Outcome(name, True, value, "", time.perf_counter() - t0)


class _Serial:
    """Runs the jobs here, one after another."""

    threads = 1

    def run(self, fn, jobs):
        for name, args in jobs:
            yield _call(fn, name, args)

    def close(self):
        pass


class _Dask:
    """Runs the jobs on Dask ``distributed`` workers: a local cluster of processes, or a running one."""

    def __init__(self, workers: int, scheduler: str | None) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:  # pragma: no cover - a dependency of twoway
            raise FitError("Running on several workers needs Dask's 'distributed' package; "
                           "install dask[distributed].") from None


        self.cluster = None
        if scheduler is not None:
            try:
                self.client = Client(scheduler, timeout=30)
            except (OSError, TimeoutError, ValueError) as exc:
                raise FitError(f"The Dask scheduler {scheduler!r} cannot be reached ({_error_text(exc)}).") from None
        else:
            env = {ENV_VAR: str(cache_dir()), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                   "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
            try:
                self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                            dashboard_address=None, silence_logs=logging.ERROR, env=env)
            except Exception as exc:
                raise FitError(f"A local Dask cluster of {workers} worker processes could not start "
                               f"({_error_text(exc)}); a script that runs several workers must start them under "
                               "'if __name__ == \"__main__\":'.") from None
            self.client = Client(self.cluster)
        try:
            self.threads = max(1, sum(self.client.nthreads().values()))
        except Exception:  # pragma: no cover - informative only
            self.threads = workers

    def run(self, fn, jobs):
        from distributed import as_completed

        token = uuid.uuid4().hex[:8]
        futures = {}
        for name, args in jobs:
            fut = self.client.submit(_call, fn, name, args, key=f"twoway-{token}-{name}", pure=False)
            futures[fut.key] = (fut, name)
        for fut in as_completed([f for f, _ in futures.values()]):
            name = futures[fut.key][1]
            try:
                yield fut.result()
            except Exception as exc:  # the worker died, or the result could not come back
                yield Outcome(name, False, None, _error_text(exc), float("nan"))
            fut.release()

    def close(self):
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()


def _executor(workers: int, scheduler: str | None):
    workers = check_count("workers", workers, 1)
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise FitError(f"The scheduler must be an address such as 'tcp://host:8786'; got {scheduler!r}.")
    if workers == 1 and scheduler is None:
        return _Serial()
    return _Dask(workers, scheduler)


class BatchProgress:
    """Counts of done, failed and running jobs on stderr.

    On a terminal one line is redrawn after each job; in a log a line is
    written for each failure and each time another tenth of the jobs is done.

    Parameters
    ----------
    total : int
        Jobs to run in this call.
    label : str
        What a job is (``fits``, ``simulations``).
    enabled : bool
    stream : file-like, optional
        Default: ``sys.stderr``.
    """

    def __init__(self, total: int, label: str, *, enabled: bool = True, stream: IO[str] | None = None,
                 reused: int = 0) -> None:
        self.total, self.label, self.enabled, self.reused = int(total), label, bool(enabled), int(reused)
        self.stream = sys.stderr if stream is None else stream
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError, OSError):
            self.tty = False
        self.done = self.failed = 0
        self._tenth = 0
        self._open = False
        self.t0 = time.perf_counter()

    def _text(self, running: int) -> str:
        width = 30
        filled = int(width * (self.done + self.failed) / max(1, self.total))
        reused = f", {self.reused} already done" if self.reused else ""
        elapsed = time.perf_counter() - self.t0
        return (f"twoway: {self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done + self.failed}/{self.total}: "
                f"{self.done} done, {self.failed} failed, {running} running{reused}, "
                f"{elapsed:.0f} s{self._left(elapsed)}")

    def _left(self, elapsed: float) -> str:
        """``, about N s left`` once a job has finished (the pace so far, over the jobs still to run)."""
        finished = self.done + self.failed
        if finished == 0 or finished >= self.total:
            return ""
        left = elapsed / finished * (self.total - finished)
        return f", about {left:.0f} s left" if left < 120 else f", about {left / 60:.0f} min left"

    def start(self, running: int) -> None:
        if self.enabled:
            self._show(running, force=True)

    def update(self, outcome: Outcome, running: int) -> None:
        if outcome.ok:
            self.done += 1
        else:
            self.failed += 1
        if not self.enabled:
            return
        if not outcome.ok:
            self._write_line(f"twoway: {outcome.name} failed: {outcome.error}")
        self._show(running)

    def _write_line(self, text: str) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def _show(self, running: int, force: bool = False) -> None:
        finished = self.done + self.failed
        if self.tty:
            self.stream.write("\r" + self._text(running) + "  ")
            self._open = True
            self.stream.flush()
            return
        tenth = int(10 * finished / max(1, self.total))
        if force or tenth > self._tenth or finished == self.total:
            self._tenth = tenth
            self._write_line(self._text(running))

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple[str, tuple]], *, workers: int = 1,
             scheduler: str | None = None, progress: "bool | BatchProgress" = False,
             label: str = "jobs") -> Iterator[Outcome]:
    """Run ``fn(*args)`` for each ``(name, args)`` of ``jobs``; yield each outcome as it finishes.

    Parameters
    ----------
    fn : callable
        A module-level function (workers import it by name); it runs with
        Python's warnings silenced.
    jobs : sequence of (str, tuple)
        Distinct job names and the arguments of each call (picklable).
    workers : int
        1: here, one after another (Dask is not imported). More: a local Dask
        cluster of that many worker processes, one thread each.
    scheduler : str, optional
        Address of a running Dask scheduler (``workers`` is then ignored).
    progress : bool or BatchProgress
        Counts of done, failed and running jobs on stderr.
    label : str
        What a job is, for the progress line.

    Yields
    ------
    Outcome
        In the order the jobs finish; an exception of ``fn`` is a failed outcome.
    """
    jobs = list(jobs)
    names = [n for n, _ in jobs]
    if len(set(names)) != len(names):
        raise FitError("The job names must be distinct.")
    bar = progress if isinstance(progress, BatchProgress) else BatchProgress(len(jobs), label, enabled=bool(progress))
    if not jobs:
        return
    executor = _executor(workers, scheduler)
    try:
        remaining = len(jobs)
        bar.start(min(executor.threads, remaining))
        for outcome in executor.run(fn, jobs):
            remaining -= 1
            bar.update(outcome, min(executor.threads, remaining))
            yield outcome
    finally:
        bar.close()
        executor.close()


# ---------------------------------------------------------------------------
# diagnostics and scalar summaries of one fit
# ---------------------------------------------------------------------------


#: The engine's own diagnostics a summary.csv shows (columns only when a fit reports them).
ENGINE_DIAGNOSTICS = ("importance_ess", "pareto_k")


def fit_diagnostics(fit) -> dict[str, float]:
    """Divergences, the largest R-hat and the smallest bulk ESS of a fit, as ``twoway summary`` reports them.

    The rules are :func:`twoway.results.summary.overall_diagnostics`' (read from the engine's
    description): R-hat is NaN when it cannot be computed or compares nothing (one chain, a
    constant, importance draws resampled into chains); an importance-sampling engine's ESS and
    Pareto k are added (:data:`ENGINE_DIAGNOSTICS`) and bound the bulk ESS.
    """
    from twoway.results.summary import overall_diagnostics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            d = overall_diagnostics(fit)
        except Exception:  # diagnostics are informative only; never stop a run for them
            stats = fit.sample_stats
            d = {"divergences": int(stats["diverging"].sum()) if "diverging" in stats else 0,
                 "max_r_hat": float("nan"), "min_ess_bulk": float("nan")}
    keep = ("divergences", "max_r_hat", "min_ess_bulk") + ENGINE_DIAGNOSTICS
    return {k: d[k] for k in keep if k in d}


def scalar_moments(fit) -> dict[str, tuple[float, float]]:
    """Posterior mean and sd of each scalar parameter (no dimension besides chain and draw), and of each
    covariate coefficient, as ``coef[TERM]``."""
    post = fit.posterior
    out = {}

    def moments(x) -> tuple[float, float]:
        x = np.asarray(x, dtype=float).ravel()
        return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else float("nan")

    for name in post.data_vars:
        da = post[name]
        if set(da.dims) <= {"chain", "draw"}:
            out[str(name)] = moments(da.values)
        elif name == "coef" and "term" in da.dims:
            for term in da["term"].values:
                out[f"coef[{term}]"] = moments(da.sel(term=term).values)
    return out


# ---------------------------------------------------------------------------
# fit-many
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BatchResult:
    """What :func:`fit_many` did.

    Attributes
    ----------
    summary : pandas.DataFrame
        One row per table (index ``name``): ``source``, ``status`` (``ok`` or
        ``failed``), ``error``, ``seconds``, ``fit_file``, sampler settings,
        ``divergences``, ``max_r_hat``, ``min_ess_bulk``, and ``PARAM_mean``,
        ``PARAM_sd`` for each scalar parameter.
    out : pathlib.Path
        The folder.
    reused : tuple of str
        Tables whose stored result was kept instead of being fitted again.
    """

    summary: Any
    out: Path
    reused: tuple[str, ...] = ()

    @property
    def failed(self) -> list[str]:
        return self.summary.index[self.summary["status"] != "ok"].tolist()

    @property
    def fit_files(self) -> dict[str, Path]:
        ok = self.summary[self.summary["status"] == "ok"]
        return {name: self.out / str(f) for name, f in ok["fit_file"].items()}


@dataclass(frozen=True)
class _Table:
    name: str
    source: str  # path, or "path[by=value]"
    digest: str
    payload: tuple  # ("file", path) or ("frame", DataFrame)


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _table_stem(path: Path) -> str:
    name = path.name
    for ending in (".csv.gz", ".csv", ".tsv", ".gz", ".parquet"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return path.stem


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise DataError(f"The table {str(path)!r} cannot be read ({exc.strerror or exc}).") from None
    return h.hexdigest()[:16]


def table_files(tables: "str | os.PathLike[str] | Sequence[str | os.PathLike[str]]", *,
                exclude: "str | os.PathLike[str] | None" = None) -> list[Path]:
    """The table files named by ``tables``: a folder (its table files), a glob pattern, files, or a list of these.

    Parameters
    ----------
    tables : path, glob pattern, folder, or a sequence of these
    exclude : path, optional
        A folder whose files are never tables (the output folder: its summary.csv).

    Returns
    -------
    list of pathlib.Path
        Sorted within each item, items in the order given, each file once.

    Raises
    ------
    DataError
        When an item names nothing, or nothing at all is found.
    """
    items = [tables] if isinstance(tables, (str, os.PathLike)) else list(tables)
    if not items:
        raise DataError("The tables must name at least one file, folder or pattern; got none.")
    found: list[Path] = []
    skip = None if exclude is None else Path(exclude).resolve()
    for item in items:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            hits = sorted({p for pat in TABLE_PATTERNS for p in path.glob(pat) if p.is_file()})
            if not hits:
                raise DataError(f"The folder {text!r} holds no table ({', '.join(TABLE_PATTERNS)}).")
        elif path.is_file():
            hits = [path]
        elif _is_glob(text):

            hits = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not hits:
                raise DataError(f"The pattern {text!r} matches no file.")
        else:
            raise DataError(f"The table {text!r} does not exist.")
        for p in hits:
            if p not in found and not (skip is not None and skip in p.resolve().parents):
                found.append(p)
    if not found:
        raise DataError(f"The tables must name at least one file outside the output folder {str(exclude)!r}.")
    return found


def _frame_digest(df) -> str:
    import pandas as pd

    h = hashlib.sha256(json.dumps([str(c) for c in df.columns]).encode())
    h.update(pd.util.hash_pandas_object(df.astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _split_by(path: Path, by: str) -> list[tuple[str, Any]]:
    """The groups of a long table by the column ``by``, in order of first appearance."""

    df, lines = read_csv(path)
    if by not in df.columns:
        raise DataError(f"The 'by' column {by!r} must be a column of {str(path)!r}; "
                        f"got columns {', '.join(map(str, df.columns))}.")
    keys = df[by].astype(str).str.strip()
    empty = np.flatnonzero((keys == "").to_numpy())
    if empty.size:
        where = f"line {int(lines[empty[0]])}" if lines is not None else f"data row {int(empty[0]) + 1}"
        raise DataError(f"The {by!r} column must have a label on every line; "
                        f"got an empty one on {where} of {str(path)!r}.")
    groups = []
    for key in dict.fromkeys(keys.tolist()):
        part = df[(keys == key).to_numpy()].reset_index(drop=True)
        part.attrs = dict(df.attrs)  # how the file was read (its decimal mark)
        groups.append((key, part))
    return groups


def collect_tables(tables, *, by: str | None = None, exclude=None) -> list[_Table]:
    """The tables of a fit-many run, with their names (file-safe, distinct) and content digests."""
    files = table_files(tables, exclude=exclude)
    if by is None:
        names = safe_names([_table_stem(p) for p in files])
        return [_Table(n, str(p), _file_digest(p), ("file", str(p))) for n, p in zip(names, files)]
    if not isinstance(by, str) or not by.strip():
        raise DataError(f"The 'by' option must name a column; got {by!r}.")
    parts = []
    for path in files:
        for key, frame in _split_by(path, by):
            label = key if len(files) == 1 else f"{_table_stem(path)}_{key}"
            parts.append((label, f"{path}[{by}={key}]", frame))
    names = safe_names([label for label, _, _ in parts])
    return [_Table(n, src, _frame_digest(frame), ("frame", frame)) for n, (_, src, frame) in zip(names, parts)]


def _fit_table_job(payload: tuple, spec_dict: dict, columns: dict, sampling: dict, seed: int,
                   cores: int | None = None) -> dict:
    """Read one table, fit it, return the fit file's bytes and the record (runs on a worker)."""

    kind, source = payload
    if kind == "file":
        data = TwoWayData.from_csv(source, **columns)
    else:
        data = TwoWayData.from_long(source, **columns)
    spec = ModelSpec.from_dict(spec_dict)
    compiled = compile_model(spec, data, engine=sampling["engine"], progress=False)
    fit = compiled.sample(chains=sampling["chains"], draws=sampling["draws"], tune=sampling["tune"],
                          seed=seed, progress=False, cores=cores)
    info = fit.info
    with tempfile.TemporaryDirectory(prefix="twoway-fit-") as tmp:
        path = Path(tmp) / f"fit{FIT_SUFFIX}"
        fit.save(path)
        blob = path.read_bytes()
    moments = scalar_moments(fit)
    record = {
        "n_rows": data.n_rows, "n_cols": data.n_cols, "n_replicates": data.n_replicates,
        "n_observed": data.n_observed,
        "compile_seconds": float(info.get("compile_seconds", float("nan"))),
        "sampling_seconds": float(info.get("sampling_seconds", float("nan"))),
        "compile_cache": info.get("compile_cache", ""),
        **fit_diagnostics(fit),
        "parameters": list(moments),  # in the posterior's order (the JSON of means and sds sorts its keys)
        "means": {k: m for k, (m, _) in moments.items()},
        "sds": {k: s for k, (_, s) in moments.items()},
    }
    return {"fit": blob, "record": record}


def _write_bytes_atomic(path: Path, blob: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(blob)


def _summary_frame(records: Sequence[Mapping[str, Any]]):
    import pandas as pd

    params: list[str] = []
    for rec in records:
        for p in rec.get("parameters", []):
            if p not in params:
                params.append(p)
    # an engine's own diagnostics (importance ESS, Pareto k) get columns when some fit reports them
    engine_own = [k for k in ENGINE_DIAGNOSTICS if any(k in rec for rec in records)]
    rows = []
    for rec in records:
        row = {k: rec.get(k) for k in ("name", "source", "status", "error", "seconds", "fit_file", "seed",
                                       "n_rows", "n_cols", "n_replicates", "n_observed", "divergences",
                                       "max_r_hat", "min_ess_bulk", *engine_own, "compile_seconds",
                                       "sampling_seconds")}
        for p in params:
            row[f"{p}_mean"] = rec.get("means", {}).get(p, float("nan"))
            row[f"{p}_sd"] = rec.get("sds", {}).get(p, float("nan"))
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("name")
    for name in ("seed", "n_rows", "n_cols", "n_replicates", "n_observed", "divergences"):
        frame[name] = frame[name].astype("Int64")  # whole numbers, empty for a failed table
    frame["error"] = frame["error"].fillna("")
    frame["fit_file"] = frame["fit_file"].fillna("")
    return frame


def fit_many(
    tables: "str | os.PathLike[str] | Sequence[str | os.PathLike[str]]",
    model: Any,
    out: "str | os.PathLike[str]",
    *,
    by: str | None = None,
    row: str = "row",
    col: str = "col",
    value: str = "value",
    se: str | None = None,
    replicate: str | None = None,
    zero_se: str = "error",
    chains: int = 4,
    draws: int = 1000,
    tune: int = 1000,
    seed: int = 0,
    engine: str | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    progress: bool | None = None,
    on_result: Callable[[str], None] | None = None,
    covariates: str | None = None,
) -> BatchResult:
    """Fit one model to many tables, one fit file per table, on one or more workers.

    Parameters
    ----------
    tables : path, glob pattern, folder, or a sequence of these
        Long-form tables (a folder: its ``*.csv``, ``*.csv.gz``, ``*.tsv`` and ``*.parquet`` files),
        or with ``by``, long tables split into one table per value of that column.
    model : ModelSpec or str
        A spec, a preset name or a TOML model file.
    out : path
        Folder for the results (created; its parent must exist): one
        ``NAME.nc`` per table, ``summary.csv``, ``config.json`` and
        ``jobs/NAME.json`` (the record of each finished table). Rerun with the
        same folder and settings, only the tables without a record are fitted
        (failed ones again); other settings are refused.
    by : str, optional
        Column splitting each table into groups, fitted separately.
    row, col, value, se, replicate : str
        Columns, as for :meth:`twoway.TwoWayData.from_csv`.
    zero_se : {"error", "none"}
        What an se of 0 means, as for :meth:`twoway.TwoWayData.from_csv`.
    chains, draws, tune : int
        Sampler settings of every fit.
    seed : int
        The run's seed; table ``NAME`` is sampled with :func:`job_seed` (seed, NAME).
    engine : str, optional
        One of :data:`twoway.fit.ENGINES`; default: what :func:`twoway.fit.compile_model` chooses.
    workers : int
        1: one table after another here; N > 1: a local Dask cluster of N
        worker processes (one thread each).
    scheduler : str, optional
        Address of a running Dask scheduler instead of a local cluster.
    progress : bool, optional
        Counts of done, failed and running fits on stderr (default: when stderr is a terminal).
    on_result : callable, optional
        Called with a table's name after its result was written (not for reused ones).
    covariates : str, optional
        A covariate formula's right-hand side (``"dose + C(site)"``); it replaces the model's
        ``covariates``. Each table is read with the formula's variables as covariate columns
        (:func:`twoway.table.covariates.required_variables`) and fitted with them.

    Returns
    -------
    BatchResult

    Raises
    ------
    TwowayError
        For bad options, no tables, a folder in use by another run or holding
        another configuration, or a table changed since its stored fit.
    """

    engine = engine_name(engine)  # None: the library's default for each table
    seed = check_count("seed", seed, 0)
    check_count("workers", workers, 1)
    check_sampling_options(chains, draws, tune, seed, engine)
    spec = load_model(model)
    if covariates is not None:
        if not isinstance(covariates, str):
            raise FitError(f"The covariates must be a formula's right-hand side as text; got {covariates!r}.")
        spec = dataclasses.replace(spec, covariates=covariates)
    out = Path(out)
    columns = {"row": row, "col": col, "value": value, "se": se, "replicate": replicate, "zero_se": zero_se}
    if spec.covariates:  # only then: the configurations of runs without covariates stay as they were
        from twoway.table.covariates import required_variables

        columns["covariates"] = list(required_variables(spec.covariates))
    sampling = {"chains": int(chains), "draws": int(draws), "tune": int(tune), "engine": engine}
    config = json_normal({"kind": "fit-many", "model": spec.to_dict(), "columns": columns, "by": by,
                      "seed": seed, **sampling})
    digest = config_digest(config)
    if out.exists() and not out.is_dir():
        raise FitError(f"The fit-many output {str(out)!r} must be a folder; it is a file.")
    if not out.parent.exists():
        raise FitError(f"The folder {str(out.parent)!r} for the fit-many output does not exist.")
    found = collect_tables(tables, by=by, exclude=out)
    out.mkdir(exist_ok=True)
    records_dir = out / RECORDS
    with folder_lock(out, what="fit-many folder"):
        prepare_folder(out, config, what="fit-many", results_glob=f"{RECORDS}/*.json")
        records_dir.mkdir(exist_ok=True)
        remove_stale_temporaries(out)
        remove_stale_temporaries(records_dir)
        write_json_atomic(out / CONFIG_NAME, {**config, "twoway_version": _version()}, indent=2)
        records: dict[str, dict[str, Any]] = {}
        for t in found:
            path = records_dir / f"{t.name}.json"
            if not path.exists():
                continue
            rec = read_json_object(path, "fit-many record", "delete it to fit that table again")
            check_record(rec, digest, path)
            if rec.get("input_digest") != t.digest:
                raise FitError(f"The table {t.source!r} changed since its fit in {str(out)!r} was made; "
                               f"delete {str(path)!r} to fit it again, or use a new folder.")
            if rec.get("status") == "ok" and (out / rec.get("fit_file", "")).is_file():
                records[t.name] = rec
        reused = tuple(records)
        todo = [t for t in found if t.name not in records]
        by_name = {t.name: t for t in found}
        if progress is None:
            progress = sys.stderr.isatty()
        bar = BatchProgress(len(todo), "fits", enabled=bool(progress), reused=len(reused))
        # chains in threads when the fits run here; one thread per worker process on a cluster
        cores = None if workers == 1 and scheduler is None else 1
        jobs = [(t.name, (t.payload, config["model"], columns, sampling, job_seed(seed, t.name), cores))
                for t in todo]
        for outcome in run_jobs(_fit_table_job, jobs, workers=workers, scheduler=scheduler, progress=bar):
            t = by_name[outcome.name]
            rec: dict[str, Any] = {"name": t.name, "source": t.source, "input_digest": t.digest,
                                   "config_digest": digest, "seed": job_seed(seed, t.name),
                                   "seconds": outcome.seconds}
            if outcome.ok:
                fit_file = f"{t.name}{FIT_SUFFIX}"
                _write_bytes_atomic(out / fit_file, outcome.value["fit"])
                rec.update(status="ok", error="", fit_file=fit_file, **outcome.value["record"])
            else:
                rec.update(status="failed", error=outcome.error, fit_file="")
            write_json_atomic(records_dir / f"{t.name}.json", json_normal(rec))
            records[t.name] = rec
            if on_result is not None:
                on_result(t.name)
        ordered = [records[t.name] for t in found]
        summary = _summary_frame(ordered)
        write_text_atomic(out / SUMMARY_NAME, summary.to_csv())
    return BatchResult(summary=summary, out=out, reused=reused)


def _version() -> str:
    return __version__
