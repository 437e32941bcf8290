"""Any fitted model's covariance of one replicate table, at one posterior draw, as an (N, K, N, K) array."""

from __future__ import annotations

import numpy as np

from twoway.likelihood.marginal import dense_covariance, effects_design, layout, point_parameters
from twoway.linalg.ops import NUMPY
from twoway.plan import residual_parts
from twoway.table.data import TwoWayData

__all__ = ["covariance_tensor"]


def covariance_tensor(fit, *, chain: int = 0, draw: int = 0, include_effects: bool = True) -> np.ndarray:
    """The covariance of one replicate table under one posterior draw, as (N, K, N, K).

    Entry ``[i, j, k, l]`` is Cov(y[i, j], y[k, l]); with ``include_effects``
    the integrated random effects' share is included (the marginal law).
    Computed on the complete grid, as if no cell were missing and with the
    table's first replicate's known se.
    """

    spec = fit.model
    data = fit.data
    N, K = data.n_rows, data.n_cols
    se = None if not data.has_se else np.nan_to_num(data.se[:1], nan=float(np.nanmean(data.se)))
    complete = TwoWayData.from_array(np.zeros((1, N, K)), se=se, row_labels=data.row_labels,
                                     col_labels=data.col_labels, zero_se="none")
    if spec.effects == "integrate":
        plan = fit.plan
        # an (NK, NK) covariance: dense; given the covariates' coefficients (their part needs X at every cell)
        lay = layout(complete, plan.m0, plan.parts)
        design, constants = plan.design.dense().without_covariates(), plan.constants
    else:  # sampled effects: the residual's covariance alone

        lay = layout(complete, 0.0, residual_parts(spec, data.row_labels, data.col_labels))
        design, constants = effects_design(spec, complete), {}
    if not include_effects:
        design = design.without_effects()
    params = point_parameters(spec, lay, fit.posterior, chain, draw, constants)
    cov = dense_covariance(NUMPY, spec, lay, design, params)
    return cov.reshape(N, K, N, K)
