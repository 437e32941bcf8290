"""Predictive moments of the observed cells, one posterior draw at a time.

Checks (predictive tables, leave-one-out, comparison) need, for each
posterior draw, the Gaussian law of the observed cells: a mean vector and a
covariance. :func:`iter_moments` gives them for any fitted model, in the
order of :meth:`TwoWayData.observed_index` (replicate, row, col; C order).

``conditional=True`` conditions on the drawn row and column effects and
covariate coefficients (the residual law only); ``conditional=False`` integrates
the random effects out (the marginal law the likelihood of an integrated model
uses; there the covariates' coefficients, integrated out with the effects, are
integrated out too). The mean includes the covariates' part ``X @ coef`` of
every draw where the coefficients are conditioned on. For models
whose cells are independent given the parameters the covariance is diagonal
and ``cov`` is None.

The covariance is held structured (:class:`twoway.results.structured.GaussianLaw`:
the residual's own structure plus the effects' low-rank part): its diagonal,
draws and precision never need an n x n matrix; ``cov`` builds the dense matrix
on request, for small tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from twoway.results.structured import FitDraws, GaussianLaw

__all__ = ["DrawMoments", "draw_indices", "iter_moments"]


@dataclass(frozen=True, eq=False)
class DrawMoments:
    """The law of the observed cells under one posterior draw.

    Attributes
    ----------
    chain, draw : int
        Which posterior draw.
    mean : array (n_obs,)
    var : array (n_obs,)
        Diagonal of the covariance.
    law : GaussianLaw or None
        The covariance, structured; None when it is diagonal (``diag(var)``).
        Draws that share their covariance parameters share one law.
    """

    chain: int
    draw: int
    mean: np.ndarray
    var: np.ndarray
    law: GaussianLaw | None = None

    @property
    def cov(self) -> np.ndarray | None:
        """The full covariance (n_obs, n_obs), built densely on each call; None when it is diagonal."""
        return None if self.law is None else self.law.dense()

    def dense_cov(self) -> np.ndarray:
        """The covariance as a dense (n_obs, n_obs) matrix."""
        return np.diag(self.var) if self.law is None else self.law.dense()

    def sample(self, rng: np.random.Generator, size: int = 1) -> np.ndarray:
        """Draw ``size`` replicated vectors of observed cells; shape (size, n_obs)."""
        if self.law is None:
            return self.mean + np.sqrt(self.var) * rng.standard_normal((size, self.mean.size))
        return self.mean + self.law.sample(rng, size)


def draw_indices(fit, max_draws: int | None = None, *, seed: int | None = 0) -> list[tuple[int, int]]:
    """(chain, draw) pairs: all of them, or ``max_draws`` chosen at random without replacement."""
    post = fit.posterior
    pairs = [(c, d) for c in range(post.sizes["chain"]) for d in range(post.sizes["draw"])]
    if max_draws is None or max_draws >= len(pairs):
        return pairs
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(pairs), size=max_draws, replace=False))
    return [pairs[k] for k in pick]


def iter_moments(fit, draws: list[tuple[int, int]] | None = None, *,
                 conditional: bool = True) -> Iterator[DrawMoments]:
    """Yield the moments of the observed cells for each (chain, draw) in ``draws`` (default: all), in that order.

    Consecutive draws with the same covariance parameters share one law.
    """
    state = FitDraws(fit, bool(conditional))
    pairs = np.asarray(draw_indices(fit) if draws is None else list(draws), dtype=np.int64).reshape(-1, 2)
    last_key, law = None, None
    for c, d in pairs:
        one = np.array([[c, d]])
        key = state.keys(one)[0]
        if law is None or not np.array_equal(key, last_key):
            law, last_key = state.law(int(c), int(d)), key
        mean = np.array(np.broadcast_to(state.means(one)[0], (state.n,)))
        yield DrawMoments(chain=int(c), draw=int(d), mean=mean, var=np.array(law.var),
                          law=None if law.is_diagonal else law)
