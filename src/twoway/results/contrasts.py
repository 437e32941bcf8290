"""Contrasts against a reference level: each row (column) mean minus the reference's, draw by draw.

A network meta-analysis reports each treatment against placebo, a variety trial
each variety against a check. The quantities contrasted are the row and column
means of the fit (``row_mean[i] = intercept + row_effect[i] + mean_j col_effect[j]``,
see :mod:`twoway.spec.derived`), which are defined whenever the model has that
side's effect (random or fixed; the effects are drawn back after sampling when
they were integrated out). The difference of two row means is the difference
of their effects: the intercept and the other side cancel draw by draw.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

from twoway.errors import FitError, ModelError, TwowayWarning
from twoway.results.stats import statistics_table
from twoway.table.connectivity import components

# Deferred imports: pandas, xarray (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = ["Contrasts", "contrasts", "parse_contrast", "SIDES"]

SIDES = {"row": "row", "col": "column"}


@dataclass(frozen=True)
class Contrasts:
    """Contrasts of one side's means against a reference level.

    Attributes
    ----------
    side : {"row", "col"}
    reference : str
        The reference level's label.
    draws : xarray.DataArray
        (chain, draw, contrast): ``mean[label] - mean[reference]`` for every other
        level, the coordinate ``contrast`` holding the names ``"LABEL - REF"``.
    summary : pandas.DataFrame
        One row per contrast (index: its name), with the parameters' columns
        (``mean, sd, hdi_L%, hdi_U%, ess_bulk, ess_tail, r_hat``) and
        ``prior_only`` (True where no observed cell links the level to the reference).
    prior_only : tuple of str
        The contrasts that come from the priors alone: levels in another part of a
        disconnected design than the reference (empty for a connected design).
    """

    side: str
    reference: str
    draws: object
    summary: object
    prior_only: tuple[str, ...] = ()


def parse_contrast(text: "str | tuple[str, str]") -> tuple[str, str]:
    """``"col=Placebo"`` (or ``("col", "Placebo")``) -> ``("col", "Placebo")``; :class:`FitError` otherwise."""
    if isinstance(text, tuple) and len(text) == 2:
        side, ref = text
    else:
        side, sep, ref = str(text).partition("=")
        if not sep:
            raise FitError(f"A contrast must be given as row=LABEL or col=LABEL; got {text!r}.")
    side = str(side).strip()
    if side not in SIDES:
        raise FitError(f"A contrast's side must be 'row' or 'col'; got {side!r} (in {text!r}).")
    if not str(ref):
        raise FitError(f"A contrast needs a reference label after '{side}='; got {text!r}.")
    return side, str(ref)


def contrasts(fit, *, row: str | None = None, col: str | None = None, ci_prob: float = 0.94) -> Contrasts:
    """Each row (or column) mean minus the mean of the reference level ``row`` (or ``col``).

    Parameters
    ----------
    fit : Fit
    row, col : str
        The reference level's label; give exactly one of them.
    ci_prob : float
        Probability of the summary's highest-density intervals.

    Returns
    -------
    Contrasts
        Draws (chain, draw, N-1 or K-1) and their summary.

    Raises
    ------
    FitError
        For a label not in the table, or a model without that side's effect.
    ModelError
        When the design is disconnected (see :mod:`twoway.table.connectivity`), some
        levels are in another part than the reference, and that side's effects are
        ``fixed``: nothing, not even a shared prior, links them to the reference.

    Warns
    -----
    TwowayWarning
        When some contrasts come from the priors alone (a disconnected design, random
        effects): they are flagged in the summary's ``prior_only`` column.
    """
    if (row is None) == (col is None):
        raise FitError("Give the reference level of exactly one side: contrasts(row=LABEL) or contrasts(col=LABEL).")
    side, reference = ("row", row) if row is not None else ("col", col)
    return _contrasts(fit, side, str(reference), ci_prob)


def _contrasts(fit, side: str, reference: str, ci_prob: float) -> Contrasts:
    import xarray as xr

    post = fit.posterior
    name = f"{side}_mean"
    if name not in post:
        raise FitError(f"The model has no {SIDES[side]} effect ({side}_effect = 'none'), so its {SIDES[side]}s "
                       f"have no means to contrast; fit a model with {side}_effect 'random' or 'fixed'.")
    means = post[name]
    labels = [str(v) for v in means.coords[side].values]
    if reference not in labels:
        raise FitError(f"The reference {SIDES[side]} must be one of the table's {SIDES[side]}s "
                       f"({_few(labels)}); got {reference!r}.")
    k = labels.index(reference)
    others = [j for j in range(len(labels)) if j != k]
    unlinked = _unlinked(fit, side, labels, k, others)
    values = means.transpose("chain", "draw", side).values
    diff = values[..., others] - values[..., k:k + 1]
    names = [f"{labels[j]} - {reference}" for j in others]
    draws = xr.DataArray(diff, dims=("chain", "draw", "contrast"),
                         coords={"chain": means.coords["chain"].values, "draw": means.coords["draw"].values,
                                 "contrast": names},
                         name=f"{side}_contrast", attrs={"side": side, "reference": reference})
    table = statistics_table(xr.Dataset({"difference": draws}), ["difference"], ci_prob)
    table.index = names
    table.index.name = "contrast"
    table["prior_only"] = [labels[j] in unlinked for j in others]
    prior_only = tuple(n for n, flag in zip(names, table["prior_only"]) if flag)
    return Contrasts(side=side, reference=reference, draws=draws, summary=table, prior_only=prior_only)


def _unlinked(fit, side: str, labels: list[str], k: int, others: list[int]) -> list[str]:
    """The levels of ``side`` that no observed cell links to the reference ``labels[k]``.

    Warns when there are some (their contrasts come from the priors alone) and raises
    :class:`ModelError` when that side's effects are ``fixed``.
    """
    data = fit.data
    parts = components(data.mask, data.row_labels, data.col_labels)
    if parts.connected:
        return []
    part = parts.of(side)
    if len(part) != len(labels):  # the posterior's levels are not the table's: nothing to say
        return []
    unlinked = [labels[j] for j in others if part[j] != part[k]]
    if not unlinked:
        return []
    noun = SIDES[side]
    named = _few([f"'{x}'" for x in unlinked], 4)
    if getattr(fit.model, f"{side}_effect", None) == "fixed":
        raise ModelError(f"The design is disconnected ({parts.describe()}), so the {noun}s {named} cannot be "
                         f"compared with the reference '{labels[k]}': the {noun} effects are fixed and nothing "
                         f"links the parts (add data that links them, or fit {side}_effect = 'random').")
    warnings.warn(f"The contrasts of the {noun}s {named} against '{labels[k]}' come from the priors alone: the "
                  f"design is disconnected ({parts.describe()}) and no observed cell links them to the reference; "
                  "they are flagged prior_only.", TwowayWarning, stacklevel=4)
    return unlinked


def contrast_tables(fit, specs: Iterable["str | tuple[str, str]"], ci_prob: float = 0.94):
    """One table of every requested contrast (columns ``side`` and ``reference`` added), or None when none."""
    import pandas as pd

    parts = []
    for text in specs:
        side, ref = parse_contrast(text)
        c = _contrasts(fit, side, ref, ci_prob)
        table = c.summary.copy()
        table.insert(0, "reference", ref)
        table.insert(0, "side", side)
        parts.append(table)
    if not parts:
        return None
    return pd.concat(parts)


def _few(labels: Sequence[str], k: int = 6) -> str:
    return ", ".join(labels[:k]) + (f" and {len(labels) - k} more" if len(labels) > k else "")
