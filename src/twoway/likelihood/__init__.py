"""Exact Gaussian log-likelihoods, one module per method.

The independent residual needs only the elementwise path in
:mod:`twoway.likelihood.diagonal`.
"""

from twoway.likelihood.diagonal import diagonal_logp, residual_sd

__all__ = ["residual_sd", "diagonal_logp"]
