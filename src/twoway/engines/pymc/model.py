"""The PyMC model of a plan (the ``pymc`` and ``nutpie`` engines sample it).

The model is the one walk over the plan (:func:`twoway.engines.walk.walk`)
with a PyMC builder: a parameter with a prior is a PyMC random variable, a
potential a ``pm.Potential``, the table's numbers ``pm.Data`` containers (so
that nutpie's ``with_data`` swaps a table in without compiling again,
:func:`data_updates`).

Only observed cells enter the likelihood, as one flat vector over
(replicate, row, col) in C order, so missing cells are simply absent.
Replicate tables share every parameter. With integrated effects the model
holds only the variance parameters and one potential: the exact marginal
log-density of the plan's likelihood path, written once against the ops
protocol (:mod:`twoway.linalg.ops`).

Variables whose names start with an underscore are sampling devices
(non-centred offsets); they are left out of the stored posterior.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twoway.engines.pymc.priors import pymc_distribution, pymc_variable
from twoway.engines.walk import coords, tables, walk
from twoway.linalg.ops import PYTENSOR
from twoway.plan import Plan
from twoway.table.data import TwoWayData

# Deferred imports: pymc, pytensor (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = ["BuiltModel", "build_pymc_model", "data_updates"]


@dataclass(frozen=True)
class BuiltModel:
    """A PyMC model with the plan it was built from.

    Attributes
    ----------
    model : pymc.Model
    plan : Plan
    """

    model: object
    plan: Plan

    @property
    def likelihood_path(self) -> str:
        return self.plan.path

    @property
    def layout(self):
        return self.plan.layout

    @property
    def design(self):
        return self.plan.design

    @property
    def constants(self) -> dict:
        return self.plan.constants

    @property
    def priors(self) -> dict:
        return self.plan.priors

    @property
    def integrated(self) -> bool:
        return self.plan.integrated


def data_updates(plan: Plan, data: TwoWayData) -> dict[str, np.ndarray]:
    """Values of the PyMC model's data containers for another table of the plan's layout."""
    return tables(plan.with_data(data))


class _Builder:
    """The PyMC builder of the walk (inside the model's context).

    A dim's coordinates are added to the model when a variable first uses it.
    """

    ops = PYTENSOR

    def __init__(self, model, plan: Plan):
        import pymc as pm

        self.pm = pm
        self.model = model
        self.plan = plan
        self.coords = coords(plan)
        self.tables = tables(plan)

    def _dims(self, dims) -> tuple | None:
        for d in dims:
            if d not in self.model.coords:
                self.model.add_coord(d, self.coords[d])
        return tuple(dims) or None

    def _size(self, shape, dims) -> dict:
        return {"dims": self._dims(dims)} if dims else {"shape": shape} if shape else {}

    def prior(self, name, shape=(), dims=(), *, prior_name=None):
        return pymc_variable(self.plan.priors[prior_name or name], name, **self._size(shape, dims))

    def std_normal(self, name, shape, dims=()):
        return self.pm.Normal(name, 0.0, 1.0, **self._size(shape, dims))

    def half_normal(self, name, shape, sigma):
        return self.pm.HalfNormal(name, sigma, shape=shape)

    def zero_sum(self, name, n, sigma, dims=()):
        return self.pm.ZeroSumNormal(name, sigma=sigma, **self._size((n,), dims))

    def flat(self, name):
        """Started at the data's location."""
        return self.pm.Flat(name, initval=self.plan.data.location())

    def lkj_cholesky(self, name, n, eta):
        return self.pm.LKJCorr(name, n=n, eta=eta)

    def deterministic(self, name, value, dims=()):
        return self.pm.Deterministic(name, value, dims=self._dims(dims))

    def potential(self, name, value):
        self.pm.Potential(name, value)

    def prior_logp(self, name, value):
        return self.pm.logp(pymc_distribution(self.plan.priors[name]), value)

    def prior_number(self, name, key):
        return self.plan.priors[name].kwargs[key]

    def table(self, name):
        return self.pm.Data(name, self.tables[name])

    def observe_normal(self, mu, sd):
        """``y`` over the dim ``cell``: independent normals, or one multivariate normal with a diagonal
        covariance on the ``dense`` path (the dense twin of the tests)."""
        import pytensor.tensor as pt

        pm, y = self.pm, self.tables["y_observed"]
        self.model.add_coord("cell", np.arange(y.size))
        y_data = pm.Data("y_observed", y, dims="cell")
        if self.plan.path == "diagonal":
            pm.Normal("y", mu=mu, sigma=sd, observed=y_data, dims="cell")
        else:
            cov = pt.diag(pt.broadcast_to(sd, (y.size,)) ** 2)
            pm.MvNormal("y", mu=pt.broadcast_to(mu, (y.size,)), cov=cov, observed=y_data, dims="cell")


def build_pymc_model(plan: Plan) -> BuiltModel:
    """The PyMC model of ``plan``.

    Returns
    -------
    BuiltModel
    """
    import pymc as pm

    d = plan.data
    with pm.Model(coords={"row": list(d.row_labels), "col": list(d.col_labels)}) as model:
        walk(_Builder(model, plan), plan)
    return BuiltModel(model=model, plan=plan)
