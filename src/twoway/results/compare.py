"""Compare fits of one table by their expected log predictive density (PSIS-LOO).

:func:`compare` refuses fits of different tables, computes exact
leave-one-out densities for each fit (:mod:`twoway.results.loo`), and ranks the fits
with ArviZ's :func:`arviz_stats.compare` (stacking weights). :func:`preferred`
says in one sentence which fit predicts better and by how much.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from twoway.errors import FitError, TwowayWarning
from twoway.fit import Fit
from twoway.results.loo import _check_by, default_conditional, loo, refit_loo

# Deferred imports: arviz_stats (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = ["COLUMNS", "compare", "preferred", "table_difference", "check_same_table", "unique_names",
           "loo_warnings"]

#: Columns of the comparison table, in order (the index holds the model names).
COLUMNS = ("rank", "elpd", "se", "elpd_diff", "dse", "weight", "p_loo", "pareto_k_bad")


def table_difference(a, b) -> str | None:
    """How two tables differ, in a few words, or None when they are the same.

    Parameters
    ----------
    a, b : TwoWayData

    Returns
    -------
    str or None
        e.g. ``"their shapes differ (1 x 6 x 8 and 1 x 5 x 8)"``, ``"the
        observed values differ in 3 cells"``.
    """
    def shape(d):
        return " x ".join(str(n) for n in d.values.shape)

    if a.values.shape != b.values.shape:
        return f"their shapes (replicate x row x col) differ ({shape(a)} and {shape(b)})"
    for what, la, lb in (("row labels", a.row_labels, b.row_labels),
                         ("column labels", a.col_labels, b.col_labels),
                         ("replicate labels", a.replicate_labels, b.replicate_labels)):
        if tuple(la) != tuple(lb):
            return f"their {what} differ"
    if not np.array_equal(a.mask, b.mask):
        n = int(np.count_nonzero(a.mask != b.mask))
        return f"their missing cells differ ({n} cell{'s' if n != 1 else ''})"
    n = int(np.count_nonzero(a.values[a.mask] != b.values[b.mask]))
    if n:
        return f"their observed values differ in {n} cell{'s' if n != 1 else ''}"
    if a.has_se != b.has_se:
        return "one has known standard errors and the other not"
    if a.has_se and not np.array_equal(a.se_or_zero()[a.mask], b.se_or_zero()[b.mask]):
        n = int(np.count_nonzero(a.se_or_zero()[a.mask] != b.se_or_zero()[b.mask]))
        return f"their standard errors differ in {n} cell{'s' if n != 1 else ''}"
    return None


def check_same_table(fits: Mapping[str, object]) -> None:
    """Raise :class:`FitError` unless every fit was made on the same table as the first.

    Parameters
    ----------
    fits : mapping of str to Fit
        The error names the first fit and the first one that differs from it,
        and says how their tables differ (see :func:`table_difference`).
    """
    names = list(fits)
    first = fits[names[0]].data
    for name in names[1:]:
        how = table_difference(first, fits[name].data)
        if how is not None:
            raise FitError(f"The fits {names[0]!r} and {name!r} are of different tables ({how}); "
                           "only fits of the same table can be compared.")


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with repeats made unique by a suffix: ``a, a, b`` -> ``a, a_2, b``.

    Parameters
    ----------
    names : sequence of str, length n

    Returns
    -------
    list of str, length n
    """
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        candidate, k = name, 1
        while candidate in seen:
            k += 1
            candidate = f"{name}_{k}"
        seen.add(candidate)
        out.append(candidate)
    return out


def _named_fits(fits) -> dict[str, object]:
    """The fits as an ordered {name: Fit}; names from the mapping or the fits' model names."""

    if isinstance(fits, Mapping):
        named = {str(k): v for k, v in fits.items()}
    elif isinstance(fits, Sequence) and not isinstance(fits, (str, bytes)):
        items = list(fits)
        bad = [f for f in items if not isinstance(f, Fit)]
        if bad:
            raise FitError(f"The fits to compare must be twoway Fit objects; got {type(bad[0]).__name__}.")
        named = dict(zip(unique_names([f.model.name for f in items]), items))
    else:
        raise FitError(f"The fits to compare must be a mapping of names to fits or a list of fits; "
                       f"got {type(fits).__name__}.")
    for name, f in named.items():
        if not isinstance(f, Fit):
            raise FitError(f"The fits to compare must be twoway Fit objects; {name!r} is a {type(f).__name__}.")
    if len(named) < 2:
        raise FitError(f"A comparison needs at least 2 fits; got {len(named)}.")
    return named


def _reliable_loo(fit, *, by: str, conditional: bool | None, k_threshold: float | None, refit: bool,
                  max_refits: int):
    """PSIS-LOO of one fit, made as reliable as it can be here, and what was done (a few words, or None).

    A fit with nothing sampled gets the exact Gaussian leave-one-out (no
    importance sampling). When cells have a high Pareto k under the default
    pointwise likelihood of sampled effects, the exact Gaussian conditional
    density with the random effects integrated out is tried instead (it
    varies less between draws); with ``refit``, the cells still flagged are
    refitted (at most ``max_refits``).
    """
    e = loo(fit, by=by, conditional=conditional, pointwise=True)
    how = None
    threshold = e.good_k if k_threshold is None else k_threshold
    if fit.description.posterior_gaussian:
        return e, "exact Gaussian leave-one-out (nothing sampled)"
    if _n_bad(e, threshold) and conditional is None and default_conditional(fit, by):
        integrated = loo(fit, by=by, conditional=False, pointwise=True)
        if _n_bad(integrated, threshold) < _n_bad(e, threshold):
            e, how = integrated, "the exact Gaussian leave-one-out densities with the random effects integrated out"
    if refit and by == "cell" and _n_bad(e, threshold):
        refitted, n = refit_loo(fit, e, k_threshold=threshold, max_refits=max_refits,
                                conditional=conditional if how is None else False)
        if n:
            e, how = refitted, f"{n} cell{'s' if n != 1 else ''} refitted without themselves"
    return e, how


def _n_bad(e, threshold: float) -> int:
    return int(np.count_nonzero(np.asarray(e.pareto_k) > threshold))


def loo_warnings(table: pd.DataFrame, n_units: int, *, k_threshold: float | None = 0.7) -> list[str]:
    """Plain-word warnings about the leave-one-out estimates of a comparison table.

    Parameters
    ----------
    table : pandas.DataFrame
        The output of :func:`compare` (``pareto_k_bad``, ``p_loo``; ``attrs["by"]``).
    n_units : int
        The number of units left out (observed cells, rows or columns).

    Returns
    -------
    list of str
        One per fit with cells whose Pareto k is above the threshold, and one
        per fit whose p_loo exceeds the number of units.
    """
    by = table.attrs.get("by", "cell")
    unit = {"cell": "cell", "row": "row", "col": "column"}[by]
    thr = "ArviZ's good_k" if k_threshold is None else f"{k_threshold:g}"
    out = []
    for name, line in table.iterrows():
        bad = int(line["pareto_k_bad"])
        if bad:
            hint = "" if by != "cell" else " (compare(..., refit=True) or 'twoway compare --refit' refits without them)"
            out.append(f"Leave-one-out is unreliable for {name!r}: {bad} of {n_units} {unit}s have Pareto k above {thr}, "
                       f"so their predictive densities are rough and the elpd may be off{hint}.")
        if float(line["p_loo"]) > n_units:
            out.append(f"Leave-one-out is unreliable for {name!r}: its effective number of parameters p_loo "
                       f"({float(line['p_loo']):.1f}) exceeds the number of {unit}s ({n_units}); the model is too "
                       f"flexible (or badly misspecified) for PSIS-LOO to be trusted.")
    return out


def compare(fits, *, by: str = "cell", conditional: bool | None = None,
            k_threshold: float | None = 0.7, refit: bool = False, max_refits: int = 10) -> pd.DataFrame:
    """Rank fits of one table by their PSIS-LOO expected log predictive density.

    Parameters
    ----------
    fits : mapping of str to Fit, or sequence of Fit
        Fits of the same table (same observed values, missing cells, standard
        errors and labels). A sequence is named by each fit's model name,
        made unique (``custom``, ``custom_2``).
    by : {"cell", "row", "col"}
        What is left out at a time: one cell, or a whole row or column.
    conditional : bool, optional
        See :func:`twoway.results.loo.pointwise_log_likelihood`.
    k_threshold : float, optional
        Pareto k above which a unit's estimate is counted as unreliable
        (default 0.7; None: ArviZ's sample-size dependent ``good_k``).
    refit : bool
        Refit each fit without each cell still flagged (at most ``max_refits``
        per fit; ``by="cell"`` only) and use the exact leave-one-out density
        of that cell. A fit with nothing sampled always gets the exact
        Gaussian leave-one-out; fits with sampled effects get the exact
        Gaussian densities with the random effects integrated out when that
        flags fewer cells.
    max_refits : int

    Warns
    -----
    TwowayWarning
        When a fit has units with Pareto k above the threshold, or a p_loo
        above the number of units (see :func:`loo_warnings`); the same
        sentences are in ``attrs["warnings"]``.

    Returns
    -------
    pandas.DataFrame
        One line per fit, best first, index ``model``; columns ``rank`` (0 is
        best), ``elpd``, ``se``, ``elpd_diff`` (this fit's elpd minus the best
        one's, <= 0), ``dse`` (its standard error), ``weight`` (stacking),
        ``p_loo`` (effective number of parameters) and ``pareto_k_bad``
        (units with Pareto k above the threshold). ``attrs["by"]`` records ``by``,
        ``attrs["loo_method"]`` what was done beyond PSIS-LOO for each fit.

    Raises
    ------
    FitError
        Fewer than two fits, something that is not a fit, or fits of different tables.
    """
    import arviz_stats

    _check_by(by)
    named = _named_fits(fits)
    check_same_table(named)
    elpds, methods = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k warnings: counted in the table instead
        for name, f in named.items():
            elpds[name], how = _reliable_loo(f, by=by, conditional=conditional, k_threshold=k_threshold,
                                             refit=refit, max_refits=max_refits)
            if how:
                methods[name] = how
        raw = arviz_stats.compare(elpds, round_to="none")
    bad = {}
    for name, e in elpds.items():
        threshold = e.good_k if k_threshold is None else k_threshold
        bad[name] = int(np.count_nonzero(np.asarray(e.pareto_k) > threshold))
    table = pd.DataFrame({
        "rank": raw["rank"].astype(int),
        "elpd": raw["elpd"].astype(float),
        "se": raw["se"].astype(float),
        "elpd_diff": raw["elpd_diff"].astype(float),
        "dse": raw["dse"].astype(float),
        "weight": raw["weight"].astype(float),
        "p_loo": raw["p"].astype(float),
        "pareto_k_bad": pd.Series(bad).reindex(raw.index).astype(int),
    }, index=raw.index)
    table.index.name = "model"
    table = table.sort_values("rank")
    table.attrs["by"] = by
    table.attrs["loo_method"] = methods
    first = next(iter(named.values())).data
    n_units = first.n_observed if by == "cell" else first.n_rows if by == "row" else first.n_cols
    notes = loo_warnings(table, n_units, k_threshold=k_threshold)
    table.attrs["warnings"] = notes
    for note in notes:
        warnings.warn(note, TwowayWarning, stacklevel=2)
    return table


def preferred(table: pd.DataFrame) -> str:
    """One sentence: which fit predicts better, and by how much in standard errors.

    Parameters
    ----------
    table : pandas.DataFrame
        The output of :func:`compare`.

    Returns
    -------
    str
    """
    if len(table) < 2:
        raise FitError(f"A comparison table needs at least 2 fits; got {len(table)}.")
    ordered = table.sort_values("rank")
    best, runner = ordered.index[0], ordered.index[1]
    diff = -float(ordered.loc[runner, "elpd_diff"])
    dse = float(ordered.loc[runner, "dse"])
    unit = {"cell": "cell", "row": "row", "col": "column"}[table.attrs.get("by", "cell")]
    what = f"expected log predictive density (leave one {unit} out)"
    others = f" (and {len(ordered) - 2} other fit{'s' if len(ordered) > 3 else ''})" if len(ordered) > 2 else ""
    if abs(diff) < 0.05:
        return (f"{best!r} and {runner!r}{others} predict equally well: their {what} differs by "
                f"{abs(diff):.1f}, so the data do not tell them apart.")
    ratio = diff / dse if dse > 0 else np.inf
    if ratio >= 2:
        return (f"{best!r} is preferred over {runner!r}{others} clearly: its {what} is higher by "
                f"{diff:.1f} ({ratio:.1f} standard errors of the difference).")
    return (f"{best!r} is preferred over {runner!r}{others}, but only by {diff:.1f} in {what}, "
            f"{ratio:.1f} standard errors of the difference, so the data hardly tell them apart.")
