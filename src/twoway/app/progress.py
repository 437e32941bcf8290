"""A small progress reporter for the command line: one line per phase, and a bar.

Lines go to a stream (standard error by default), each starting ``twoway:``::

    twoway: compiling the additive model (jax) ...
    twoway: compiling done in 1.2 s (cache hit)
    twoway: sampling 4 chains x 1000 draws ...
    twoway: sampling done in 3.4 s

On a terminal :meth:`Progress.bar` redraws one line in place (``\\r``); in a
log (not a terminal) it writes a new line only each time another tenth of the
work is done, so that logs stay short. No third-party dependency.

Before the work of a command that reads fits starts, an :class:`Estimate` says how
big it will be (memory held at once, operations, a rough time), so that the command
line can print it when it is large and refuse, in one line, what will not fit in
memory::

    twoway: leave-one-cell-out of big.nc (4,000 draws x 6,114 cells, 968 distinct covariances): about
            561.1 MiB of memory and 3.7e+10 operations (roughly 7.3 s)

The functions that size the work (:func:`loo_estimate`, :func:`ppc_estimate`,
:func:`predict_estimate`, :func:`summary_estimate`, :func:`report_estimate`) read a
fit's size and model only; the numbers come from :mod:`twoway.likelihood.memory`.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Callable, Iterator, Sequence

__all__ = ["Progress", "Step", "FitLines", "Estimate", "loo_estimate", "ppc_estimate", "predict_estimate",
           "summary_estimate", "report_estimate", "dense_checks", "distinct_draws"]


class Step:
    """What :meth:`Progress.step` yields: set :attr:`note` to add it to the ``done`` line.

    Attributes
    ----------
    name : str
    note : str
        Said in brackets after the time, e.g. ``cache hit``.
    seconds : float
        The time the step took (set when it ends).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.note = ""
        self.seconds = 0.0


class Progress:
    """Report phases and progress on a stream.

    Parameters
    ----------
    enabled : bool
        When false, every method does nothing.
    stream : file-like, optional
        Where to write (default: ``sys.stderr`` at the time of the call).
    isatty : bool, optional
        Whether the stream is a terminal (default: ask the stream).
    prefix : str
        Starts every line (followed by ``": "``).
    """

    #: In a log, a bar writes a line at most once per this fraction of the total.
    LOG_STEP = 0.1
    #: Width of the drawn bar, in characters.
    WIDTH = 30

    def __init__(self, enabled: bool = True, stream: IO[str] | None = None, *, isatty: bool | None = None,
                 prefix: str = "twoway") -> None:
        self.enabled = bool(enabled)
        self.stream = sys.stderr if stream is None else stream
        if isatty is None:
            try:
                isatty = bool(self.stream.isatty())
            except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
                isatty = False
        self.isatty = isatty
        self.prefix = prefix
        self._open = False  # a bar line is drawn on a terminal and not yet ended
        self._bar_label: str | None = None
        self._bar_shown = -1  # last tenth (log) or percent (terminal) shown for the current bar
        self._bar_done = 0
        self._bar_width = 0

    # -- lines ---------------------------------------------------------------
    def _line(self, text: str) -> None:
        if self._open:
            self._end_bar()
        self.stream.write(f"{self.prefix}: {text}\n")
        self.stream.flush()

    def phase(self, name: str, detail: str = "") -> None:
        """Say that a phase starts: ``twoway: NAME DETAIL ...``.

        Parameters
        ----------
        name : str
            E.g. ``compiling``, ``sampling``.
        detail : str
            Words after the name, e.g. ``4 chains x 1000 draws``.
        """
        if self.enabled:
            self._line(f"{name}{' ' + detail if detail else ''} ...")

    def done(self, name: str, seconds: float, note: str = "") -> None:
        """Say that a phase ended: ``twoway: NAME done in 1.2 s (NOTE)``.

        Parameters
        ----------
        name : str
        seconds : float
        note : str
            Said in brackets at the end when not empty.
        """
        if self.enabled:
            self._line(f"{name} done in {_seconds(seconds)}{f' ({note})' if note else ''}")

    def message(self, text: str) -> None:
        """Write one line ``twoway: TEXT``."""
        if self.enabled:
            self._line(text)

    @contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[Step]:
        """Say that a phase starts, run the ``with`` block, say it is done and how long it took.

        Nothing is said at the end when the block raises.

        Parameters
        ----------
        name, detail : str
            As for :meth:`phase`.

        Yields
        ------
        Step
            Set its ``note`` to add words to the ``done`` line.
        """
        step = Step(name)
        self.phase(name, detail)
        t0 = time.perf_counter()
        yield step
        step.seconds = time.perf_counter() - t0
        self.done(name, step.seconds, step.note)

    # -- the bar ---------------------------------------------------------------
    def bar(self, done: int, total: int, label: str = "") -> None:
        """Show that ``done`` of ``total`` units are done.

        On a terminal the line is redrawn in place (when its percentage
        changes) and ended when ``done`` reaches ``total`` or another line is
        written; in a log a line is written each time another tenth is done
        (at most 10 lines per bar, the last at 100%). A new ``label``, or
        ``done`` going back, starts a new bar.

        Parameters
        ----------
        done, total : int
        label : str
            What is counted, e.g. ``draws``.
        """
        if not self.enabled or total <= 0:
            return
        done = min(max(int(done), 0), int(total))
        fraction = done / total
        if label != self._bar_label or done < self._bar_done:
            if self._open:
                self._end_bar()
            self._bar_label, self._bar_shown = label, -1
        self._bar_done = done
        name = f"{label} " if label else ""
        if self.isatty:
            percent = int(100 * fraction)
            if percent == self._bar_shown:
                return
            self._bar_shown = percent
            filled = int(self.WIDTH * fraction)
            text = (f"{self.prefix}: {name}[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                    f"{percent:3d}% ({done}/{total})")
            pad = " " * max(0, self._bar_width - len(text))
            self._bar_width = len(text)
            self.stream.write("\r" + text + pad)
            self._open = True
            if done == total:
                self._end_bar()
            else:
                self.stream.flush()
        else:
            tenth = int(round(fraction / self.LOG_STEP, 9))  # 0..10; round() guards 0.3/0.1 = 2.999...
            if tenth <= self._bar_shown or tenth == 0:
                return
            self._bar_shown = tenth
            self._line(f"{name}{int(100 * fraction)}% ({done}/{total})")

    def counter(self, label: str = "") -> Callable[[int, int], None]:
        """A callback ``(done, total)`` that shows a bar of ``label`` (for a loop in a library function).

        Parameters
        ----------
        label : str
            What is counted, e.g. ``draws``.

        Returns
        -------
        callable
            ``f(done, total)``: :meth:`bar` with this label.
        """

        def tell(done: int, total: int) -> None:
            self.bar(done, total, label)

        return tell

    def _end_bar(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
        self._open = False
        self._bar_width = 0

    def close(self) -> None:
        """End a bar line left open on a terminal."""
        if self._open:
            self._end_bar()


def _seconds(seconds: float) -> str:
    """``0.04 s``, ``1.2 s``, ``42 s``, ``3 min 05 s``."""
    if seconds < 0.1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


class FitLines:
    """The command line's phase lines of one fit, from :meth:`twoway.fit.CompiledModel.sample`'s events.

    Lines, each as its phase starts or ends (a log shows where a long fit is)::

        twoway: compiling the model ...
        twoway: compiling done in 11 s (cache miss)
        twoway: sampling ...
        twoway: sampling: 50% (4000/8000 iterations, warm-up included)
        twoway: sampling done in 3.4 s
        twoway: drawing the integrated effects back ...
        twoway: writing the fit to fit.nc ...

    Parameters
    ----------
    progress : Progress
        Where the lines go (nothing when it is disabled).
    """

    CACHE_NOTES = {"hit": "cache hit", "miss": "cache miss", "in memory": "in memory", "off": "no compile cache"}

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._sampling_since: float | None = None
        self._compiled_said = False
        self._sampling_said = False
        self._tenths = 0

    def __call__(self, event: str, **details) -> None:
        """Take one event of :meth:`~twoway.fit.CompiledModel.sample` (its ``on_progress``)."""
        p = self.progress
        if event == "compile":
            p.phase("compiling the model")
        elif event == "sample":
            p.done("compiling", details.get("compile_seconds", 0.0),
                   self.CACHE_NOTES.get(details.get("cache"), ""))
            self._compiled_said = True
            p.phase("sampling")
            self._sampling_since = time.perf_counter()
        elif event == "iterations":
            done, total = details["done"], details["total"]
            if p.isatty:
                p.bar(done, total, "sampling:")
            elif int(10 * done / total) > self._tenths:  # a log: a line per tenth of the work
                self._tenths = int(10 * done / total)
                p.message(f"sampling: {100 * done // total}% ({done}/{total} iterations, warm-up included)")
        elif event == "draw_back" and self._sampling_since is not None:  # an engine that told its phases
            self._end_sampling()
            p.phase("drawing the integrated effects back")

    def _end_sampling(self, seconds: float | None = None) -> None:
        if self._sampling_said:
            return
        if seconds is None:
            seconds = 0.0 if self._sampling_since is None else time.perf_counter() - self._sampling_since
        self.progress.done("sampling", seconds)
        self._sampling_said = True

    def sampled(self, info: dict) -> None:
        """After sampling: the lines an engine without events did not give (from the fit's ``info``)."""
        if not self._compiled_said:
            self.progress.done("compiling", info.get("compile_seconds", 0.0),
                               self.CACHE_NOTES.get(info.get("compile_cache"), ""))
            self._compiled_said = True
        self._end_sampling(None if self._sampling_since is not None else info.get("sampling_seconds", 0.0))

    def writing(self, path) -> None:
        self.progress.phase(f"writing the fit to {path}")


# -- estimates of the work a command will do -------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """The size of some work, said before it starts and refused when it will not fit in memory.

    Attributes
    ----------
    task : str
        The work, e.g. ``leave-one-cell-out of a.nc``.
    size : str
        Its size in words, e.g. ``4,000 draws x 73,421 cells``.
    bytes : int
        Memory held at once, at the peak.
    flops : float
        Floating-point operations (a rough count).
    instead : str
        What to do when it will not fit in memory (the end of the refusal).
    """

    task: str
    size: str
    bytes: int
    flops: float
    instead: str = "use a machine with more memory"

    def large(self) -> bool:
        """Whether the work is worth saying before it starts (more than a few seconds, or a lot of memory)."""
        from twoway.likelihood import memory

        return self.bytes > memory.LARGE_BYTES or self.flops > memory.LARGE_FLOPS

    def line(self) -> str:
        """``TASK (SIZE): about 1.2 GiB of memory and 3.4e+11 operations (roughly 1 min 08 s)``.

        The time is the operations at :data:`twoway.likelihood.memory.FLOPS_PER_SECOND`: the numerical
        work only (not reading, importing or drawing figures), to within a few times.
        """
        from twoway.likelihood import memory

        size = f" ({self.size})" if self.size else ""
        return (f"{self.task}{size}: about {memory.size_text(self.bytes)} of memory and {self.flops:.1e} operations "
                f"({_rough_seconds(memory.work_seconds(self.flops))})")

    def check(self) -> None:
        """Raise :class:`~twoway.errors.FitError` when :attr:`bytes` will not fit in the memory available."""
        from twoway.errors import FitError
        from twoway.likelihood import memory

        if not memory.fits(self.bytes):
            size = f" ({self.size})" if self.size else ""
            raise FitError(f"The {self.task}{size} would need about {memory.size_text(self.bytes)} of memory and "
                           f"{memory.size_text(memory.available_memory())} is available: {self.instead}.")


def _rough_seconds(seconds: float) -> str:
    """``under a second``, ``roughly 42 s``, ``roughly 3 min 05 s``: an estimated time."""
    return "under a second" if seconds < 1 else f"roughly {_seconds(seconds)}"


def _combined(task: str, size: str, parts: Sequence[Estimate], instead: str) -> Estimate:
    """Work done one part after another: the largest memory of a part, the sum of the operations."""
    return Estimate(task, size, max((e.bytes for e in parts), default=0), float(sum(e.flops for e in parts)), instead)


def _sizes(fit) -> tuple[int, tuple[int, int, int], int]:
    """(draws over all chains, the table's (R, N, K), observed cells) of a fit."""
    post = fit.tree["posterior"]
    data = fit.data
    return int(post.sizes["chain"] * post.sizes["draw"]), tuple(int(v) for v in data.values.shape), \
        int(data.n_observed)


def _structured_laws() -> bool:
    """Whether the checks read structured laws of the observed cells (:mod:`twoway.results.structured`)."""
    import importlib.util

    return importlib.util.find_spec("twoway.results.structured") is not None


def dense_checks(fit, *, conditional: bool) -> bool:
    """Whether the checks of ``fit`` factor a dense (n_obs, n_obs) covariance for each (distinct) draw.

    :mod:`twoway.results.moments` is asked when it says (its ``uses_dense(fit,
    conditional=...)``). Otherwise: with the structured laws of
    :mod:`twoway.results.structured`, only a residual without structure to use is dense
    (a full covariance, or a Kronecker residual on a table with gaps or known se: its
    ``dense-table`` path); without them, wherever effects integrated out (or random
    effects left out of the condition) tie the cells together.

    Parameters
    ----------
    fit : Fit
    conditional : bool
        Given the drawn effects (True) or with the random effects integrated out.

    Returns
    -------
    bool
    """
    from twoway.results import moments

    ask = getattr(moments, "uses_dense", None)
    if ask is not None:
        return bool(ask(fit, conditional=conditional))
    spec = fit.model
    if _structured_laws():
        if spec.residual == "full":
            return True
        if spec.residual == "kronecker":
            from twoway.likelihood.kronecker import kronecker_path

            return kronecker_path(spec, fit.plan.layout) == "dense-table"
        return False
    if spec.effects == "integrate":
        independent = spec.residual == "independent" and getattr(spec, "cell_effect", "none") == "none"
        return not (conditional and independent)
    return not conditional and "random" in (spec.row_effect, spec.col_effect)


#: Posterior variables that are means (not covariance parameters): draws that differ only in these share a law.
MEAN_NAMES = frozenset({"intercept", "row_effect", "col_effect", "coef", "row_shock", "col_shock", "cell_effect",
                        "row_mean", "col_mean"})


def distinct_draws(fit) -> int:
    """Draws with distinct covariance parameters (the laplace engine repeats its proposals).

    With the structured laws each distinct covariance is factored once; otherwise every draw
    counts.

    Parameters
    ----------
    fit : Fit

    Returns
    -------
    int
    """
    import numpy as np

    S = _sizes(fit)[0]
    if not _structured_laws():
        return S
    post = fit.tree["posterior"]
    names = [v for v in post.data_vars if v not in MEAN_NAMES and not str(v).startswith("_")]
    if not names:
        return 1
    values = np.concatenate([np.asarray(post[v].values, dtype=float).reshape(S, -1) for v in names], axis=1)
    return int(np.unique(values, axis=0).shape[0])


def _effects_left(fit, *, conditional: bool) -> int:
    """The effects' coordinates a predictive law inverts densely: none given the drawn effects (and an
    independent residual), else those integrated out less the larger iid random side, which
    :mod:`twoway.results.structured` eliminates (Schur) on large designs."""
    from twoway.likelihood import memory

    spec = fit.model
    if conditional and spec.effects == "integrate" and spec.residual == "independent" \
            and getattr(spec, "cell_effect", "none") == "none":
        return 0
    if spec.effects != "integrate":
        if conditional:
            return 0
        return sum(n for n, kind in zip(fit.data.values.shape[1:], (spec.row_effect, spec.col_effect))
                   if kind == "random")
    _, shape, _ = _sizes(fit)
    n_cov = int(fit.tree["posterior"].sizes.get("term", 0))  # the covariates' coefficients
    m = memory.integrated_coordinates(spec, shape, n_cov=n_cov)
    if not _structured_laws():
        return m
    from twoway.results import structured

    if m >= int(getattr(structured, "SCHUR_MIN_COORDS", 400)):
        iid = [n for n, kind in zip(shape[1:], (spec.row_effect, spec.col_effect)) if kind == "random"]
        m -= max(iid, default=0)
    return m


def _dense_words(n_obs: int) -> str:
    return f", a dense {n_obs:,} x {n_obs:,} covariance per draw"


def loo_estimate(fit, *, name: str, by: str = "cell", conditional: bool | None = None) -> Estimate:
    """The work of leave-one-out of ``fit``: a (draws, units) log-likelihood and, once per distinct covariance
    (:func:`distinct_draws`), the precision of the observed cells' law: a dense factor of the whole
    covariance where it is dense (:func:`dense_checks`), else a dense inverse of the effects' coordinates
    left after elimination (:func:`twoway.likelihood.memory.law_flops`) and the residual's own factors.

    Parameters
    ----------
    fit : Fit
    name : str
        How the fit is named in the line (its file).
    by : {"cell", "row", "col"}
    conditional : bool, optional
        As :func:`twoway.results.loo.pointwise_log_likelihood` (default: its default).

    Returns
    -------
    Estimate
    """
    from twoway.likelihood import memory
    from twoway.results.loo import default_conditional

    S, (R, N, K), n_obs = _sizes(fit)
    if fit.description.posterior_gaussian:  # exact leave-one-out: one marginal law, no draws
        S, conditional = 1, False
    elif conditional is None:
        conditional = default_conditional(fit, by)
    from twoway.results.psis import CHUNK_BYTES
    from twoway.results.workers import default_workers

    n_units = n_obs if by == "cell" else N if by == "row" else K
    dense = dense_checks(fit, conditional=bool(conditional))
    laws = min(S, distinct_draws(fit))  # covariances factored: one per distinct draw
    h = _effects_left(fit, conditional=bool(conditional))
    # a row of values per distinct draw (every draw when the drawn effects enter), Pareto smoothing's chunks
    # of (draws, units), a law's mean, variance and densities, the effects' inverse and its factor
    rows = S if conditional else laws
    held = memory.pointwise_bytes(rows, n_units, copies=1) + 3 * CHUNK_BYTES + 8 * 8 * n_obs + 8 * 3 * h * h
    flops = memory.cells_check_flops(S, n_obs)
    if h or fit.model.residual != "independent":
        # the laws are shared among worker processes when there are many; leaving out whole rows or
        # columns factors each unit's block of every law
        per_law = memory.law_flops(n_obs, h)
        if by != "cell":
            import numpy as np

            _, ii, jj = fit.data.observed_index()
            per_law += memory.unit_blocks_flops(np.bincount(ii if by == "row" else jj))
        flops += laws * per_law / (default_workers() if laws > 16 else 1)
    n_table = -(-n_obs // R)  # a dense block per replicate table
    if dense:
        held += memory.dense_check_bytes(n_table)
        flops += R * memory.dense_check_flops(laws, n_table)
    elif fit.model.residual == "kronecker":  # the factors' eigen-decompositions, once per law
        flops += laws * memory.DENSE_FLOPS * float(N**3 + K**3)
    size = f"{S:,} draw{'s' if S != 1 else ''} x {n_obs:,} cells" + (_dense_words(n_table) if dense else "")
    if laws < S:
        size += f", {laws:,} distinct covariances"
    return Estimate(f"leave-one-{by}-out of {name}", size, held, flops,
                    "compare fits of a smaller table, or fits with fewer draws")


#: Replicated tables of the predictive checks (:func:`twoway.results.ppc.predictive_checks`' default).
PPC_DRAWS = 500
#: Arrays of a replicated table's size alive at once in the predictive checks (the tables, the statistics' copies).
PPC_COPIES = 3


def ppc_estimate(fit, *, name: str, draws: int | None = PPC_DRAWS) -> Estimate:
    """The work of the posterior predictive checks of ``fit``: ``draws`` replicated tables and their statistics.

    Where :mod:`twoway.results.ppc` reduces the replicated tables a chunk at a time at the
    observed cells (its ``correlations_affordable`` decides whether the row and column
    correlations, which need each table's dense grid, are checked), a chunk is held;
    otherwise every replicated table's full grid is.

    Parameters
    ----------
    fit : Fit
    name : str
    draws : int, optional
        Replicated tables (None: one per posterior draw).

    Returns
    -------
    Estimate
    """
    from twoway.likelihood import memory
    from twoway.results import ppc

    S, (R, N, K), n_obs = _sizes(fit)
    D = S if draws is None else min(int(draws), S)
    grid = R * N * K
    correlation_flops = float(D) * R * (N * N * K + K * K * N)
    chunked = hasattr(ppc, "correlations_affordable")
    if chunked:
        correlations = bool(ppc.correlations_affordable((R, N, K), D + 1))
        rows = min(D, max(1, int(getattr(ppc, "CHUNK_VALUES", 4_000_000)) // max(n_obs, 1)))
        held = 8 * rows * (2 * n_obs + (grid if correlations else 0)) + 8 * D * (2 * (N + K) + 5)
        flops = memory.cells_check_flops(D, n_obs) + (correlation_flops if correlations else 0.0)
    else:
        held = PPC_COPIES * 8 * D * grid
        flops = memory.cells_check_flops(D, grid) + correlation_flops
    dense = dense_checks(fit, conditional=True)
    if dense:  # a Cholesky factor per draw, a block per replicate table
        n_table = -(-n_obs // R)
        held += memory.dense_check_bytes(n_table)
        flops += R * memory.dense_check_flops(D, n_table) / memory.DENSE_FLOPS
    size = f"{D:,} replicated tables of {n_obs:,} observed cells" + (_dense_words(-(-n_obs // R)) if dense else "")
    return Estimate(f"predictive checks of {name}", size, held, flops,
                    "check a smaller table, or fewer replicated tables")


#: Values drawn per cell for the prediction intervals (:func:`twoway.results.predict.predict` draws this many).
PREDICTION_SAMPLES = 4000
#: Bytes per predicted cell of the table of predictions (labels, six numbers, kind) and its CSV text.
PREDICTION_CELL_BYTES = 200
#: Values held at once by a block of predictions (:data:`twoway.results.predict.BLOCK_VALUES` when it says).
PREDICTION_BLOCK = 20_000_000


def predict_estimate(fit, *, name: str, n_cells: int | None = None, max_draws: int | None = None,
                     new_rows: Sequence[str] = (), new_cols: Sequence[str] = ()) -> Estimate:
    """The work of predicting ``n_cells`` cells of ``fit`` (default: the cells :func:`twoway.results.predict.predict`
    predicts by default, with the new rows and columns).

    Each cell gets its mean and sd over the draws and an interval from
    :data:`PREDICTION_SAMPLES` values (sorted), a block of cells at a time; a residual that
    ties every cell together (Kronecker, full) first gets its conditional mean and variance
    for every draw on the whole table.

    Parameters
    ----------
    fit : Fit
    name : str
    n_cells : int, optional
        Cells predicted (lines of a table of cells asked for).
    max_draws : int, optional
        Posterior draws used (default: all).
    new_rows, new_cols : sequence of str
        New levels predicted (their cells are counted).

    Returns
    -------
    Estimate
    """
    import math

    from twoway.results import predict as predict_module

    S, (R, N, K), n_obs = _sizes(fit)
    used = S if max_draws is None else min(int(max_draws), S)
    if n_cells is not None:
        cells = int(n_cells)
    elif hasattr(predict_module, "prediction_size"):  # the cells predict chooses (the grid, or the observed cells)
        cells = int(predict_module.prediction_size(fit, new_rows=tuple(new_rows), new_cols=tuple(new_cols),
                                                   max_draws=max_draws).lines)
    else:
        cells = R * (N + len(set(new_rows))) * (K + len(set(new_cols)))
    samples = used * max(1, -(-PREDICTION_SAMPLES // used))
    block = int(getattr(predict_module, "BLOCK_VALUES", PREDICTION_BLOCK))
    held = PREDICTION_CELL_BYTES * cells + 3 * 8 * min(block, samples * cells)
    if fit.model.residual in ("kronecker", "full"):
        held += 4 * 8 * used * R * N * K  # the correlated part's mean and variance, every draw, the whole table
    flops = float(cells) * samples * (math.log2(max(samples, 2)) + 10)  # draw, sort and scan for the interval
    return Estimate(f"predictions of {name}", f"{cells:,} cells from {used:,} draws", held, flops,
                    "predict fewer cells (--at FILE with the cells wanted), or use fewer draws (--max-draws)")


def summary_estimate(fit, *, name: str) -> Estimate:
    """The work of summarising ``fit``: statistics and diagnostics of every stored value over the draws.

    Parameters
    ----------
    fit : Fit
    name : str

    Returns
    -------
    Estimate
    """
    S, _, _ = _sizes(fit)
    post = fit.tree["posterior"]
    values = sum(int(post[v].size) for v in post.data_vars)
    per_draw = values // max(S, 1)
    return Estimate(f"summary of {name}", f"{S:,} draws x {per_draw:,} values", 3 * 8 * values, 100.0 * values,
                    "summarise fewer variables (--var NAME)")


def report_estimate(fits: Sequence, names: Sequence[str], *, ppc_draws: int = 400,
                    prediction_draws: int = 500) -> Estimate:
    """The work of a report of ``fits``: each fit's summary, predictions and predictive checks, and the
    comparison (leave-one-out of each) when there are several.

    Parameters
    ----------
    fits : sequence of Fit
    names : sequence of str
    ppc_draws, prediction_draws : int
        The report's replicated tables and draws for the predicted table.

    Returns
    -------
    Estimate
    """
    parts: list[Estimate] = []
    for fit, name in zip(fits, names):
        parts += [summary_estimate(fit, name=name), predict_estimate(fit, name=name, max_draws=prediction_draws),
                  ppc_estimate(fit, name=name, draws=ppc_draws)]
        if len(fits) > 1:
            parts.append(loo_estimate(fit, name=name))
    S = sum(_sizes(fit)[0] for fit in fits)
    size = f"{len(fits)} fit{'s' if len(fits) != 1 else ''}, {S:,} draws in all"
    return _combined("report", size, parts, "report on a smaller table, or on fits with fewer draws")
