"""Writing results safely: checked before any work, written atomically, folders locked.

Every file twoway writes goes through :func:`atomic_output` (a temporary file in the same
folder, renamed over the target only once it is complete), so a run killed while writing
leaves either the previous file or the new one, never a cut one. Commands call
:func:`check_output` on their output paths before compiling or sampling, so a bad ``--out``
is reported in a second rather than after the whole fit. Folders that several runs could
share (SBC, many fits) are held with :func:`folder_lock`. A table too large to hold in memory
(the predictions of a whole grid) is written chunk by chunk with :func:`table_writer`, as CSV
or Parquet, after checking that it fits on disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from twoway.errors import TwowayError

LOCK_NAME = ".twoway.lock"

#: File endings :func:`table_writer` writes, and the format of each.
TABLE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: Bytes per line of a table, roughly, before any line is written (labels, six numbers, a word).
LINE_BYTES = {"csv": 110, "parquet": 45}


def _endings_text(endings: Iterable[str]) -> str:
    return ", ".join(repr(e) for e in endings)


def check_output(path: "str | os.PathLike[str]", *, endings: Iterable[str] = (),
                 inputs: Iterable["str | os.PathLike[str] | None"] = (), what: str = "output file") -> Path:
    """Check that ``path`` can be written as a new result, before any work is done.

    Parameters
    ----------
    path : path-like
        Where the result will be written.
    endings : iterable of str, optional
        Accepted file endings (e.g. ``(".nc", ".h5")``); empty accepts any.
    inputs : iterable of path-like, optional
        The command's input files; the output may not be one of them.
    what : str
        Words for the output in messages ("fit file", "report").

    Returns
    -------
    pathlib.Path
        The output path.

    Raises
    ------
    TwowayError
        With one sentence saying what is wrong: an empty name, an unknown ending, an input
        file, a missing or unwritable folder, or a folder where a file is expected.
    """
    text = os.fspath(path) if path is not None else ""
    if not str(text).strip():
        raise TwowayError(f"The {what} needs a name; got an empty one.")
    out = Path(text)
    endings = tuple(endings)
    if endings and not any(out.name.lower().endswith(e.lower()) for e in endings):
        raise TwowayError(f"The {what} {text!r} must end in one of {_endings_text(endings)}.")
    for item in inputs:
        if item is None:
            continue
        src = Path(item)
        same = False
        try:
            same = out.exists() and src.exists() and os.path.samefile(out, src)
        except OSError:
            same = False
        if same or out.resolve() == src.resolve():
            raise TwowayError(f"The {what} {text!r} is an input of this command; "
                              "writing it would replace the input. Choose another name.")
    if out.is_dir():
        raise TwowayError(f"The {what} {text!r} is a folder; give a file name.")
    parent = out.parent
    if not parent.exists():
        raise TwowayError(f"The folder {str(parent)!r} for the {what} {text!r} does not exist.")
    if not parent.is_dir():
        raise TwowayError(f"{str(parent)!r} (for the {what} {text!r}) is not a folder.")
    _check_writable(parent, text, what)
    return out


def _check_writable(folder: Path, text: str, what: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".twoway-probe-", dir=folder)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        raise TwowayError(f"The {what} {text!r} cannot be written in {str(folder)!r} ({reason}).") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


@contextlib.contextmanager
def atomic_output(path: "str | os.PathLike[str]") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds.

    The caller writes the whole result to the yielded path (any writer: HDF5, CSV, JSON).
    If the block raises, or the process is killed, the target is untouched and the
    temporary file is removed (or, after a kill, left as a hidden ``.NAME.*.tmp``).

    Examples
    --------
    >>> with atomic_output("fit.nc") as tmp:          # doctest: +SKIP
    ...     tree.to_netcdf(tmp, engine="h5netcdf")
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or Path("."))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync(tmp)
        _set_mode(tmp, target)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _set_mode(tmp: Path, target: Path) -> None:
    """Give the new file the previous file's permissions, else the usual ones (0666 less the umask).

    ``mkstemp`` makes files readable by their owner only; a result should be readable as any
    other file the user writes.
    """
    try:
        mode = target.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0o022)
        os.umask(mask)
        mode = 0o666 & ~mask
    with contextlib.suppress(OSError):
        os.chmod(tmp, mode)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: "str | os.PathLike[str]", text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: "str | os.PathLike[str]", payload: Mapping[str, Any], *, indent: int | None = None) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically; returns the path."""
    return write_text_atomic(path, json.dumps(payload, indent=indent))


def remove_stale_temporaries(folder: "str | os.PathLike[str]") -> int:
    """Remove the hidden ``.NAME.*.tmp`` files a killed run left in ``folder``; returns how many."""
    n = 0
    for stale in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            n += 1
    return n


@contextlib.contextmanager
def folder_lock(folder: "str | os.PathLike[str]", *, what: str = "output folder") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` for the duration of the block.

    A second twoway run on the same folder (another process, or another thread of this
    one) fails at once with a message naming the process that holds it, instead of both
    writing into it. The lock is released when the block ends or the process dies.

    Raises
    ------
    TwowayError
        When another run holds the folder.
    """

    folder = Path(folder)
    lock_path = folder / LOCK_NAME
    fh = open(lock_path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise TwowayError(f"The {what} {str(folder)!r} is in use by another twoway run ({holder}); "
                              "wait for it to finish or use another folder.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield folder
    finally:
        fh.close()  # closing the descriptor releases the lock


# -- tables written chunk by chunk ---------------------------------------------------------------
def table_format(path: "str | os.PathLike[str]") -> str:
    """``csv`` or ``parquet``, from the file's ending; :class:`TwowayError` for another ending."""
    name = Path(os.fspath(path)).name.lower()
    for ending, fmt in TABLE_FORMATS.items():
        if name.endswith(ending):
            return fmt
    raise TwowayError(f"The table {os.fspath(path)!r} must end in one of {_endings_text(TABLE_FORMATS)}.")


def _free_bytes(folder: Path) -> int:
    """Bytes free on the disk holding ``folder`` (for the user, not the superuser's reserve)."""
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:  # pragma: no cover - no way to know
        return 1 << 62


def _size_text(n_bytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes:.0f} bytes"


class TableWriter:
    """A table written chunk by chunk (CSV or Parquet): call it with each chunk (a pandas DataFrame, the same
    columns each time); made by :func:`table_writer`.

    Attributes
    ----------
    lines : int
        Lines written so far.
    expected : int or None
        Lines announced with :meth:`expect`.
    """

    def __init__(self, tmp: Path, target: Path, fmt: str, *, what: str = "table", advice: str = ""):
        self.tmp, self.target, self.format = tmp, target, fmt
        self.what, self.advice = what, advice
        self.lines = 0
        self.expected: int | None = None
        self._fh = None
        self._parquet = None
        self._schema = None
        self._checked = False

    def expect(self, lines: int) -> None:
        """Announce ``lines`` lines to come; :class:`TwowayError` when they would not fit on the disk.

        The size is estimated at :data:`LINE_BYTES` per line, and again from the bytes of the
        first chunk once it is written.
        """
        self.expected = int(lines)
        self._check_room(LINE_BYTES[self.format], rough=True)

    def _check_room(self, per_line: float, *, rough: bool) -> None:
        if self.expected is None:
            return
        left = max(0, self.expected - self.lines)
        need = per_line * left
        free = _free_bytes(self.target.parent)
        if need > free:
            advice = f"; {self.advice}" if self.advice else "; write it to another disk, or free some space"
            size = _size_text(need + self._written())
            raise TwowayError(f"The {self.what} {str(self.target)!r} would take {'roughly' if rough else 'about'} "
                              f"{size} on disk ({self.expected:,} lines) and {_size_text(free)} is free there{advice}.")

    def _written(self) -> int:
        try:
            return int(self.tmp.stat().st_size)
        except OSError:  # pragma: no cover
            return 0

    def __call__(self, frame) -> None:
        """Append the lines of ``frame`` (a pandas DataFrame) to the table."""
        if self.format == "csv":
            first = self._fh is None
            if first:
                self._fh = open(self.tmp, "w", encoding="utf-8", newline="")
            frame.to_csv(self._fh, header=first, index=False, na_rep="")
            self._fh.flush()
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._schema = table.schema
                self._parquet = pq.ParquetWriter(str(self.tmp), self._schema)
            elif not table.schema.equals(self._schema):
                table = table.cast(self._schema)
            self._parquet.write_table(table)
        self.lines += len(frame)
        if not self._checked and self.lines:   # the first chunk's bytes per line, for the rest
            self._checked = True
            self._check_room(self._written() / self.lines, rough=False)

    def close(self) -> None:
        """Finish the file (a Parquet file's footer). A writer never called leaves an empty file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None


@contextlib.contextmanager
def table_writer(path: "str | os.PathLike[str]", *, what: str = "table", advice: str = "") -> Iterator[TableWriter]:
    """Write a table chunk by chunk to ``path`` (``.csv``, ``.parquet`` or ``.pq``), atomically.

    Yields a :class:`TableWriter`: call it with each chunk, in order. The file appears at
    ``path`` only once the block succeeds (see :func:`atomic_output`); memory holds one chunk
    at a time. ``advice`` ends the message of a refusal for lack of disk space (what to do
    instead).

    Raises
    ------
    TwowayError
        For an unknown ending, Parquet without the package ``pyarrow``, or a table that would
        not fit on the disk (after :meth:`TableWriter.expect`).

    Examples
    --------
    >>> with table_writer("cells.csv") as write:        # doctest: +SKIP
    ...     write.expect(2_000_000)
    ...     for chunk in chunks:
    ...         write(chunk)
    """
    fmt = table_format(path)
    if fmt == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise TwowayError(f"Writing the Parquet file {os.fspath(path)!r} needs the package 'pyarrow', which is "
                              "not installed (pip install pyarrow); or write a .csv file.") from None
    with atomic_output(path) as tmp:
        writer = TableWriter(tmp, Path(path), fmt, what=what, advice=advice)
        try:
            yield writer
        finally:
            writer.close()
