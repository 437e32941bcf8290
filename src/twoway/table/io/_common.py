"""Small pieces the readers and the table's checks share: quoting for messages, reading bytes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twoway.errors import DataError


def quote(text: Any) -> str:
    """Quote ``text`` for a message: ``'text'``."""
    return f"'{text}'"


def list_names(names: Sequence[Any], limit: int = 12) -> str:
    """Return ``'a', 'b', 'c'`` (shortened with a count after ``limit`` items)."""
    shown = ", ".join(quote(n) for n in list(names)[:limit])
    extra = len(names) - limit
    return shown + (f" and {extra} more" if extra > 0 else "")


def number_text(x: float) -> str:
    """Format a float for a message (``-0.5``, ``inf``, ``nan``)."""
    return repr(float(x)) if np.isfinite(x) else str(float(x))


def read_bytes(path: Path, subject: str) -> bytes:
    """The bytes of a file that should be CSV text.

    Parameters
    ----------
    path : pathlib.Path
    subject : str
        How messages name the file, after "The ": ``file 'data.csv'``.

    Raises
    ------
    twoway.errors.DataError
        If the file does not exist, is a directory or cannot be read.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"The {subject} does not exist; looked for {quote(os.path.abspath(path))}.") from None
    except IsADirectoryError:
        raise DataError(f"The {subject} is a directory, not a CSV file.") from None
    except OSError as exc:
        raise DataError(f"The {subject} cannot be read: {exc.strerror or exc}.") from None
