"""Helpers the runs share: option checks and the JSON files of a run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from twoway.errors import FitError

__all__ = ["check_count", "json_normal", "read_json_object"]


def check_count(name: str, value: Any, low: int) -> int:
    """``value`` as an int when it is a whole number >= ``low`` (not a bool); FitError otherwise.

    Parameters
    ----------
    name : str
        The option's name, for the message.
    value : object
    low : int

    Returns
    -------
    int
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise FitError(f"The '{name}' option must be a whole number >= {low}; got {value!r}.")
    return int(value)


def json_normal(obj: Any) -> Any:
    """``obj`` after a JSON round trip, so configurations compare the way they are stored.

    Parameters
    ----------
    obj : object
        Anything :func:`json.dumps` writes (tuples come back as lists).

    Returns
    -------
    object
    """
    return json.loads(json.dumps(obj, sort_keys=True))


def read_json_object(path: Path, what: str, hint: str) -> dict[str, Any]:
    """The JSON object stored in ``path``; FitError when it cannot be read or is not an object.

    Parameters
    ----------
    path : pathlib.Path
    what : str
        Words for the file in messages (``"SBC configuration"``).
    hint : str
        What to do about a bad file (``"use a new folder"``).

    Returns
    -------
    dict
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FitError(f"The {what} {str(path)!r} cannot be read ({type(exc).__name__}); {hint}.") from None
    if not isinstance(value, dict):
        raise FitError(f"The {what} {str(path)!r} is not a JSON object; {hint}.")
    return value
