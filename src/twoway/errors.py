"""The one family of errors twoway raises on purpose.

Every error a user can cause by giving bad input derives from
:class:`TwowayError`; the command line turns these into a one-line message and
exit status 2, never a traceback.
"""

from __future__ import annotations

__all__ = [
    "TwowayError",
    "DataError",
    "ModelError",
    "FitError",
    "TwowayWarning",
    "ConvergenceWarning",
    "DegreesOfFreedomWarning",
]


class TwowayError(Exception):
    """Base class of every error caused by the user's input or request."""


class DataError(TwowayError, ValueError):
    """A table, a file or a column cannot be used as given."""


class ModelError(TwowayError, ValueError):
    """A model specification, preset, prior or model file is not valid."""


class FitError(TwowayError, RuntimeError):
    """A fit cannot be made, saved or loaded."""


class TwowayWarning(UserWarning):
    """Base class of twoway's warnings."""


class ConvergenceWarning(TwowayWarning):
    """Sampling finished but its diagnostics are poor (R-hat, ESS, divergences)."""


class DegreesOfFreedomWarning(TwowayWarning):
    """A model has more parameters than the table has observed cells."""
