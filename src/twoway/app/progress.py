"""A small progress reporter for the command line: one line per phase, and a bar.

Lines go to a stream (standard error by default), each starting ``twoway:``::

    twoway: compiling the additive model (jax) ...
    twoway: compiling done in 1.2 s (cache hit)
    twoway: sampling 4 chains x 1000 draws ...
    twoway: sampling done in 3.4 s

On a terminal :meth:`Progress.bar` redraws one line in place (``\\r``); in a
log (not a terminal) it writes a new line only each time another tenth of the
work is done, so that logs stay short. No third-party dependency.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import IO, Iterator

__all__ = ["Progress", "Step", "FitLines"]


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
