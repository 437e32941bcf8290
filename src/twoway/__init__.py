"""twoway: Bayesian models of two-way tables with known and unknown variance."""

from twoway._version import __version__  # noqa: E402,F401
from twoway.errors import (  # noqa: E402
    ConvergenceWarning,
    DataError,
    DegreesOfFreedomWarning,
    FitError,
    ModelError,
    TwowayError,
    TwowayWarning,
)
from twoway.fit import Fit, fit  # noqa: E402
from twoway.plan import Plan, resolve  # noqa: E402
from twoway.runs.batch import fit_many  # noqa: E402  (imports Dask only when it runs on workers)
from twoway.simulate import Simulation, simulate  # noqa: E402
from twoway.spec.model import PRESETS, ModelSpec, degrees_of_freedom, load_model, preset  # noqa: E402
from twoway.spec.priors import Prior  # noqa: E402
from twoway.table.data import TwoWayData  # noqa: E402

__all__ = [
    "__version__",
    "TwoWayData",
    "Prior",
    "ModelSpec",
    "PRESETS",
    "preset",
    "load_model",
    "degrees_of_freedom",
    "Simulation",
    "simulate",
    "Fit",
    "fit",
    "Plan",
    "resolve",
    "fit_many",
    "TwowayError",
    "DataError",
    "ModelError",
    "FitError",
    "TwowayWarning",
    "ConvergenceWarning",
    "DegreesOfFreedomWarning",
]
