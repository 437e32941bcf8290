"""Contrasts against a reference level: each row (column) mean minus the reference's, draw by draw.

A network meta-analysis reports each treatment against placebo, a variety trial
each variety against a check. The quantities contrasted are the row and column
means of the fit (``row_mean[i] = intercept + row_effect[i] + mean_j col_effect[j]``,
see :mod:`twoway.spec.derived`), which are defined whenever the model has that
side's effect (random or fixed; the effects are drawn back after sampling when
they were integrated out). The difference of two row means is the difference
of their effects: the intercept and the other side cancel draw by draw.

A factor covariate of the mean (``C(g)`` in the model's covariates formula) is
contrasted the same way: with treatment coding its coefficient ``C(g)[T.b]`` is
level ``b``'s difference from the coding's reference level, so the contrast of
level ``b`` against a reference ``a`` is ``coef[b] - coef[a]`` draw by draw (the
coding's reference contributing 0). Where the factor also enters interactions
the contrast is the one at zero of the other variables (their reference level).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from twoway.errors import FitError, ModelError, TwowayWarning
from twoway.results.stats import statistics_table
from twoway.table.connectivity import components

# Deferred imports: pandas, xarray (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = ["Contrasts", "contrasts", "parse_contrast", "covariate_contrasts", "contrast_name", "SIDES",
           "COVARIATE"]

SIDES = {"row": "row", "col": "column"}
#: The prefix of a contrast's side that names a factor covariate: ``"covariate:g"``.
COVARIATE = "covariate:"


@dataclass(frozen=True)
class Contrasts:
    """Contrasts of one side's means against a reference level.

    Attributes
    ----------
    side : str
        ``"row"``, ``"col"`` or ``"covariate:VAR"`` (the levels of a factor covariate ``VAR``).
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
    """A requested contrast as ``(side, reference)``; :class:`FitError` for text that is none.

    ``"col=Placebo"`` (or ``("col", "Placebo")``) -> ``("col", "Placebo")``; a factor covariate
    ``g``: ``"covariate:g"`` or ``"g"`` -> ``("covariate:g", "")`` (against the coding's
    reference level), ``"covariate:g=b"`` or ``"g=b"`` -> ``("covariate:g", "b")``. Whether
    ``g`` is a factor covariate of the model is checked against the fit
    (:func:`contrast_tables`).
    """
    if isinstance(text, tuple) and len(text) == 2:
        side, ref = text
        sep = "="
    else:
        side, sep, ref = str(text).partition("=")
    side, ref = str(side).strip(), str(ref).strip() if sep else ""
    if side.startswith(COVARIATE) or side not in SIDES:
        name = side[len(COVARIATE):].strip() if side.startswith(COVARIATE) else side
        if not name or not _is_name(name):
            raise FitError(f"A contrast must be given as row=LABEL or col=LABEL, or as covariate:NAME[=LEVEL] for "
                           f"a factor covariate; got {text!r}.")
        return COVARIATE + name, ref
    if not sep:
        raise FitError(f"A contrast must be given as row=LABEL or col=LABEL; got {text!r}.")
    if not ref:
        raise FitError(f"A contrast needs a reference label after '{side}='; got {text!r}.")
    return side, ref


def _is_name(text: str) -> bool:
    """A plausible column name: no spaces or operators of a formula."""
    return bool(text) and not any(ch in text for ch in " \t+*~()[]:,")


def contrast_name(side: str) -> str:
    """The contrasted things in words: ``row``, ``column``, ``level of g``."""
    if side.startswith(COVARIATE):
        return f"level of {side[len(COVARIATE):]}"
    return SIDES[side]


def contrasts(fit, *, row: str | None = None, col: str | None = None, covariate: str | None = None,
              reference: str | None = None, ci_prob: float = 0.94) -> Contrasts:
    """Each row (or column) mean minus the mean of the reference level ``row`` (or ``col``); or the
    levels of a factor covariate against a reference level.

    Parameters
    ----------
    fit : Fit
    row, col : str
        The reference level's label; give exactly one of ``row``, ``col`` and ``covariate``.
    covariate : str
        A factor covariate of the model's formula (``g`` for ``C(g)``): each of its levels'
        coefficient minus the reference level's (see :func:`covariate_contrasts`).
    reference : str, optional
        With ``covariate``: the reference level (default: the coding's reference, the first level).
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
    if sum(x is not None for x in (row, col, covariate)) != 1:
        raise FitError("Give the reference level of exactly one side, or one factor covariate: "
                       "contrasts(row=LABEL), contrasts(col=LABEL) or contrasts(covariate=NAME).")
    if covariate is not None:
        return covariate_contrasts(fit, str(covariate), reference=reference, ci_prob=ci_prob)
    if reference is not None:
        raise FitError("The option 'reference' goes with 'covariate'; for rows and columns give the reference "
                       "level as row=LABEL or col=LABEL.")
    side, reference = ("row", row) if row is not None else ("col", col)
    return _contrasts(fit, side, str(reference), ci_prob)


def covariate_contrasts(fit, variable: str, *, reference: str | None = None, ci_prob: float = 0.94) -> Contrasts:
    """Each level of the factor covariate ``variable`` against a reference level, draw by draw.

    With treatment coding the coefficient ``C(g)[T.b]`` is level ``b``'s difference from the
    coding's reference level ``a``; the contrast ``b - r`` against another reference ``r`` is
    ``coef[b] - coef[r]`` (``coef[a]`` = 0).

    Parameters
    ----------
    fit : Fit
    variable : str
        A factor covariate of the model's formula (the table's column, e.g. ``g`` for ``C(g)``).
    reference : str, optional
        The reference level (default: the coding's reference level).
    ci_prob : float
        Probability of the summary's highest-density intervals.

    Returns
    -------
    Contrasts
        ``side`` ``"covariate:VAR"``; draws (chain, draw, L-1) for a factor of L levels, each
        ``"LEVEL - REF"``; the summary as for rows and columns (``prior_only`` all False).

    Raises
    ------
    FitError
        For a model without covariates, a name that is not a factor covariate, or a level
        the factor does not have.

    Warns
    -----
    TwowayWarning
        When the factor also enters interactions: the contrasts are those at zero of the
        other variables in them.
    """
    import xarray as xr

    from twoway.results.covariates import coef_draws, fit_design

    design = fit_design(fit)
    factors = dict(getattr(design, "factors", None) or {})
    if variable not in factors and design is not None and variable in design.variables:
        raise FitError(f"The covariate {variable!r} is not a factor (its term is a number), so it has no levels "
                       "to contrast; its coefficient is in the coefficient table"
                       + (f" (factor covariates: {', '.join(map(repr, factors))})." if factors else "."))
    if variable not in factors:
        what = (f"the model's factor covariates are {', '.join(map(repr, factors))}" if factors else
                "the model has no factor covariate" if design is not None else "the model has no covariates")
        raise FitError(f"A contrast's side must be 'row' or 'col', or a factor covariate of the model ({what}); "
                       f"got {variable!r}.")
    levels_of = factors[variable]
    levels = [str(v) for v in levels_of.levels]
    coding_ref = levels_of.reference
    coding_ref = levels[0] if coding_ref is None else str(coding_ref)
    reference = coding_ref if reference in (None, "") else str(reference)
    if reference not in levels:
        raise FitError(f"The reference level of '{variable}' must be one of its levels ({_few(levels)}); "
                       f"got {reference!r}.")
    term_of = {str(k): str(v) for k, v in levels_of.terms.items()}
    terms = list(design.terms)
    coef = coef_draws(fit, design)                                  # (chains, draws, p)
    if coef is None:
        raise FitError("The fit has no draws of 'coef' to contrast the levels of a covariate with.")

    def effect(level: str) -> np.ndarray:
        if level not in term_of:       # the coding's reference level (or a level without a coefficient)
            return np.zeros(coef.shape[:2])
        return coef[..., terms.index(term_of[level])]

    others = [lv for lv in levels if lv != reference]
    diff = np.stack([effect(lv) - effect(reference) for lv in others], axis=-1)
    names = [f"{lv} - {reference}" for lv in others]
    side = COVARIATE + variable
    post = fit.posterior
    draws = xr.DataArray(diff, dims=("chain", "draw", "contrast"),
                         coords={"chain": post.coords["chain"].values, "draw": post.coords["draw"].values,
                                 "contrast": names},
                         name="covariate_contrast", attrs={"side": side, "reference": reference})
    table = statistics_table(xr.Dataset({"difference": draws}), ["difference"], ci_prob)
    table.index = names
    table.index.name = "contrast"
    table["prior_only"] = False
    main = set(term_of.values())
    shared = [t for t in terms if t not in main and any(m in t for m in main)]
    if shared:
        warnings.warn(f"The factor '{variable}' also enters the term(s) {_few(shared, 4)}: its contrasts are those "
                      "where the other variables of those terms are zero (at their reference level).",
                      TwowayWarning, stacklevel=3)
    return Contrasts(side=side, reference=reference, draws=draws, summary=table)


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
        if side.startswith(COVARIATE):
            c = covariate_contrasts(fit, side[len(COVARIATE):], reference=ref or None, ci_prob=ci_prob)
            ref = c.reference
        else:
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
