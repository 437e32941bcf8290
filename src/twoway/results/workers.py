"""Groups of draws spread over worker processes.

Checking a fit (leave-one-out, predictive moments) does the same work for
each distinct draw: on a big table a few hundred structured precisions of
~0.1 s each. The work is pure NumPy/SciPy but mostly not in BLAS, so threads
do not run it in parallel; forked processes do, and they share the loaded fit
with the parent (copy-on-write) instead of reading or pickling it again.

:func:`map_tasks` runs a function over tasks in forked workers and hands
back each piece of each task's result as it arrives (the parent keeps the
results; a worker keeps nothing between pieces), with the number of tasks
done for progress. Where fork is not available, or with one worker, the
tasks run in this process.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from twoway.errors import FitError

__all__ = ["can_fork", "default_workers", "keep_freed_memory", "map_tasks"]


def can_fork() -> bool:
    """Whether worker processes can be forked here (POSIX)."""
    return "fork" in multiprocessing.get_all_start_methods()


def default_workers() -> int:
    """Worker processes for checking work: the CPUs this process may use (at most 8)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


#: glibc's mallopt parameters: below this size allocations come from the heap, and freed heap memory is kept.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 512 * 2**20


def keep_freed_memory() -> None:
    """Let this process reuse the memory it frees instead of returning it to the system (glibc only).

    A worker allocates and frees the same few large arrays for every draw;
    by default each is a fresh mapping whose pages the kernel zeroes again,
    which doubled the time of a structured precision (half of it system
    time). Called in forked workers only, where the process ends with its task.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:  # pragma: no cover - not glibc
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _KEEP_BYTES)
    except (OSError, AttributeError):  # pragma: no cover - a libc without mallopt
        return


def _worker(function: Callable[[Any], Iterable[Any]], tasks: Sequence[tuple[int, Any]], conn) -> None:
    from threadpoolctl import threadpool_limits

    keep_freed_memory()
    try:
        with threadpool_limits(limits=1, user_api="blas"):     # the workers are the parallelism
            for number, task in tasks:
                for piece in function(task):
                    conn.send(("piece", number, piece))
                conn.send(("task", number, None))
        conn.send(("done", None, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def map_tasks(function: Callable[[Any], Iterable[Any]], tasks: Sequence[Any], *, workers: int,
              progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, Any]]:
    """``function(task)`` for each task, in forked worker processes; yields ``(task number, piece)``.

    Parameters
    ----------
    function : callable
        ``task -> iterable of pieces`` (each piece is sent to the parent as it is made; it must pickle).
    tasks : sequence
        Dealt to the workers in turn (task k to worker k mod workers), so equal tasks balance.
    workers : int
        Processes; 1 (or no fork on this system) runs the tasks here, in order.
    progress : callable, optional
        Called with the number of tasks finished, after each.

    Yields
    ------
    (int, piece)
        Pieces in the order they arrive (a task's pieces in order).

    Raises
    ------
    FitError
        When a worker fails (its error and traceback in the message) or dies.
    """
    tasks = list(tasks)
    workers = max(1, min(int(workers), len(tasks)))
    if workers == 1 or not can_fork():
        for number, task in enumerate(tasks):
            for piece in function(task):
                yield number, piece
            if progress is not None:
                progress(number + 1)
        return
    ctx = multiprocessing.get_context("fork")
    procs, conns = [], []
    try:
        with warnings.catch_warnings():
            # a fork of a process with BLAS threads: the child uses none of them (it runs single-threaded)
            warnings.simplefilter("ignore", DeprecationWarning)
            for w in range(workers):
                mine = [(k, tasks[k]) for k in range(w, len(tasks), workers)]
                parent_end, child_end = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, args=(function, mine, child_end), daemon=True)
                proc.start()
                child_end.close()
                procs.append(proc)
                conns.append(parent_end)
        open_conns = list(conns)
        finished = 0
        while open_conns:
            for conn in multiprocessing.connection.wait(open_conns):
                try:
                    kind, number, payload = conn.recv()
                except EOFError:
                    raise FitError("A worker process stopped without finishing its draws (out of memory?); "
                                   "run again with workers=1.") from None
                if kind == "piece":
                    yield number, payload
                elif kind == "task":
                    finished += 1
                    if progress is not None:
                        progress(finished)
                elif kind == "done":
                    open_conns.remove(conn)
                else:
                    raise FitError(f"A worker process failed: {payload}")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        for conn in conns:
            conn.close()
