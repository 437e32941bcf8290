"""Exact Gaussian log-likelihoods, one module per method.

The independent residual needs only the elementwise path in
:mod:`twoway.likelihood.diagonal`.
"""

from twoway.likelihood.diagonal import cell_sd, diagonal_logp

__all__ = ["cell_sd", "diagonal_logp"]
