"""twoway: Bayesian models of two-way tables with known and unknown variance."""

__version__ = "0.1.0"

from twoway.errors import (  # noqa: E402
    ConvergenceWarning,
    DataError,
    DegreesOfFreedomWarning,
    FitError,
    ModelError,
    TwowayError,
    TwowayWarning,
)
from twoway.data import TwoWayData  # noqa: E402
from twoway.priors import Prior  # noqa: E402
from twoway.model import ModelSpec, PRESETS, preset, load_model, degrees_of_freedom  # noqa: E402
from twoway.simulate import Simulation, simulate  # noqa: E402
from twoway.fit import Fit, fit  # noqa: E402
from twoway.plan import Plan, resolve  # noqa: E402
from twoway.batch import fit_many  # noqa: E402  (imports Dask only when it runs on workers)

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
