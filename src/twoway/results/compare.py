"""Compare fits of one table by their expected log predictive density (PSIS-LOO).

:func:`compare` refuses fits of different tables, computes exact
leave-one-out densities for each fit (:mod:`twoway.results.loo`), and ranks the fits
with ArviZ's :func:`arviz_stats.compare` (stacking weights). :func:`preferred`
says in words which fit predicts better, how large the difference is, how
uncertain, and which units carry it (:func:`verdict` builds the words from
the numbers; :func:`pointwise_differences` is the pointwise table).
:func:`fits_table` sets the fits side by side.

How a difference is worded: a difference in elpd under :data:`SMALL_DIFF`
(4) is small whatever its standard error; at or above it, it is large. It is
clear when it is at least :data:`CLEAR_SE` (2) standard errors of the
difference, and uncertain below. A large difference with a large standard
error is large and uncertain, not absent (Sivula, Magnusson, Matamoros &
Vehtari 2022, "Uncertainty in Bayesian leave-one-out cross-validation based
model comparison"; Vehtari, "Cross-validation FAQ").
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from twoway.errors import FitError, TwowayWarning
from twoway.fit import Fit
from twoway.spec.names import POSITIVE_PARAMETERS
from twoway.results.loo import _check_by, default_conditional, loo, refit_loo

# Deferred imports: arviz_stats (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = ["COLUMNS", "SMALL_DIFF", "CLEAR_SE", "compare", "preferred", "verdict", "pointwise_differences",
           "same_fits", "fits_table", "table_difference", "check_same_table", "unique_names", "loo_warnings"]

#: Columns of the comparison table, in order (the index holds the model names).
COLUMNS = ("rank", "elpd", "se", "elpd_diff", "dse", "weight", "p_loo", "pareto_k_bad")

#: An elpd difference below this is small, whatever its standard error (Sivula et al. 2022).
SMALL_DIFF = 4.0

#: A difference of at least this many standard errors is clear; below, uncertain.
CLEAR_SE = 2.0

#: How many units :func:`verdict` names as carrying a difference, at most.
N_DRIVERS = 3


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
                  max_refits: int, progress=None):
    """PSIS-LOO of one fit, made as reliable as it can be here, and what was done (a few words, or None).

    A fit with nothing sampled gets the exact Gaussian leave-one-out (no
    importance sampling). When cells have a high Pareto k under the default
    pointwise likelihood of sampled effects, the exact Gaussian conditional
    density with the random effects integrated out is tried instead (it
    varies less between draws); with ``refit``, the cells still flagged are
    refitted (at most ``max_refits``).
    """
    e = loo(fit, by=by, conditional=conditional, pointwise=True, progress=progress)
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


def same_fits(named: Mapping[str, object]) -> list[tuple[str, str]]:
    """Pairs of names that are one fit twice: the same object, or the same model with identical draws.

    Parameters
    ----------
    named : mapping of str to Fit
        Fits of one table.

    Returns
    -------
    list of (str, str)
        Each pair once, in the mapping's order.
    """
    names = list(named)
    out = []
    for k, a in enumerate(names):
        for b in names[k + 1:]:
            fa, fb = named[a], named[b]
            if fa is fb or (fa.model == fb.model and fa.posterior.equals(fb.posterior)):
                out.append((a, b))
    return out


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
            k_threshold: float | None = 0.7, refit: bool = False, max_refits: int = 10,
            progress=None) -> pd.DataFrame:
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
    progress : callable, optional
        Called as ``progress(done, total)`` with the draws done over every fit's leave-one-out.

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
        ``attrs["loo_method"]`` what was done beyond PSIS-LOO for each fit,
        ``attrs["pointwise"]`` each unit's elpd (``{"units": [...], "elpd_i":
        {name: [...]}}``; see :func:`pointwise_differences`), ``attrs["same"]`` the pairs of names that are one fit twice
        (:func:`same_fits`; they are also named in ``attrs["warnings"]``).

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
        sizes = [f.posterior.sizes["chain"] * f.posterior.sizes["draw"] for f in named.values()]
        offset = 0
        for (name, f), size in zip(named.items(), sizes):
            tell = None if progress is None else \
                (lambda done, total, _o=offset: progress(_o + done, sum(sizes)))
            elpds[name], how = _reliable_loo(f, by=by, conditional=conditional, k_threshold=k_threshold,
                                             refit=refit, max_refits=max_refits, progress=tell)
            offset += size
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
    # plain lists, not a DataFrame: pandas compares attrs with == (concat) and deep-copies them
    table.attrs["pointwise"] = {
        "units": [str(u) for u in np.asarray(elpds[table.index[0]].elpd_i[by].values)],
        "elpd_i": {name: np.asarray(elpds[name].elpd_i, dtype=float).ravel().tolist() for name in table.index},
    }
    same = same_fits(named)
    table.attrs["same"] = same
    first = next(iter(named.values())).data
    n_units = first.n_observed if by == "cell" else first.n_rows if by == "row" else first.n_cols
    notes = [f"{a!r} and {b!r} are the same fit (the same model with identical draws): the comparison compares "
             "a fit with itself, so their difference is zero by construction and says nothing about the model."
             for a, b in same]
    notes += loo_warnings(table, n_units, k_threshold=k_threshold)
    table.attrs["warnings"] = notes
    for note in notes:
        warnings.warn(note, TwowayWarning, stacklevel=2)
    return table


def pointwise_differences(table: pd.DataFrame, best: str | None = None, other: str | None = None) -> pd.DataFrame:
    """The pointwise table: each unit's elpd under two fits and their difference, largest difference first.

    Parameters
    ----------
    table : pandas.DataFrame
        The output of :func:`compare` (its ``attrs["pointwise"]``).
    best, other : str, optional
        The two fits (default: the best and the runner-up).

    Returns
    -------
    pandas.DataFrame
        Index the units (``cell``: ``"replicate|row|col"``, or row or column
        labels); columns ``elpd_<best>``, ``elpd_<other>`` and ``diff`` (the
        first minus the second; the differences sum to the fits' elpd difference),
        sorted by ``diff`` from the largest down.
    """
    pointwise = table.attrs.get("pointwise")
    if pointwise is None:
        raise FitError("This comparison table has no pointwise elpd (it was not made by twoway's compare).")
    ordered = table.sort_values("rank").index
    best = ordered[0] if best is None else best
    other = ordered[1] if other is None else other
    a = np.asarray(pointwise["elpd_i"][best], dtype=float)
    b = np.asarray(pointwise["elpd_i"][other], dtype=float)
    index = pd.Index(pointwise["units"], name=table.attrs.get("by", "cell"))
    out = pd.DataFrame({f"elpd_{best}": a, f"elpd_{other}": b, "diff": a - b}, index=index)
    return out.sort_values("diff", ascending=False, kind="stable")


def _drivers(diff_i: pd.Series, total: float, n: int = N_DRIVERS) -> list[tuple[str, float]]:
    """The units with the largest positive pointwise differences: as few as carry half of ``total``, at most ``n``."""
    if total <= 0:
        return []
    chosen, acc = [], 0.0
    for unit, value in diff_i.sort_values(ascending=False, kind="stable").items():
        if value <= 0 or len(chosen) == n or acc >= 0.5 * total:
            break
        chosen.append((str(unit), float(value)))
        acc += float(value)
    return chosen


def verdict(best: str, other: str, diff: float, dse: float, *, by: str = "cell", n_others: int = 0,
            drivers: Sequence[tuple[str, float]] = (), n_units: int | None = None, same: bool = False) -> str:
    """The comparison in words: who predicts better, how large and how uncertain the difference is, and where.

    Parameters
    ----------
    best, other : str
        The better fit and the one it is compared with.
    diff : float
        ``elpd(best) - elpd(other)`` (>= 0).
    dse : float
        The standard error of the difference.
    by : {"cell", "row", "col"}
        The unit left out.
    n_others : int
        How many further fits the comparison holds (named as "and N other fits").
    drivers : sequence of (str, float)
        The units with the largest pointwise differences and those differences
        (see :func:`pointwise_differences`); named when given, as carrying
        most of the difference when they add up to at least half of it, else
        as the largest parts of a difference spread over many units.
    n_units : int, optional
        The number of units, to say "3 of 96 cells".
    same : bool
        The two are one fit twice: the sentence says so and nothing else.

    Returns
    -------
    str
        Worded by size (large when ``diff >= SMALL_DIFF``) and certainty
        (clear when ``diff / dse >= CLEAR_SE``): large and clear, large but
        uncertain, small but clear, small and uncertain; a difference under
        0.05 is a tie.
    """
    unit = {"cell": "cell", "row": "row", "col": "column"}[by]
    what = f"expected log predictive density (leave one {unit} out)"
    others = f" (and {n_others} other fit{'s' if n_others > 1 else ''})" if n_others else ""
    if same:
        return (f"{best!r} and {other!r} are the same fit (the same model with identical draws): this compares "
                "a fit with itself, so the difference of 0 says nothing about the model.")
    if abs(diff) < 0.05:
        return (f"{best!r} and {other!r}{others} predict equally well: their {what} differs by "
                f"{abs(diff):.1f}, so the data do not tell them apart.")
    ratio = diff / dse if dse > 0 else np.inf
    z = "many" if not np.isfinite(ratio) else f"{ratio:.1f}"
    large, clear = diff >= SMALL_DIFF, ratio >= CLEAR_SE
    if large and clear:
        text = (f"{best!r} is preferred over {other!r}{others} clearly: its {what} is higher by {diff:.1f} "
                f"({z} standard errors of the difference, se {dse:.1f}), a large and clear difference.")
    elif large:
        text = (f"{best!r} is preferred over {other!r}{others}: its {what} is higher by {diff:.1f}, a large "
                f"difference but an uncertain one (se {dse:.1f}, so {z} standard errors of the difference): "
                f"the data favour {best!r}, but how much better it predicts is poorly known; the difference "
                "is not absent.")
    elif clear:
        text = (f"{best!r} predicts better than {other!r}{others}, but only by {diff:.1f} in {what}: a small "
                f"difference (under {SMALL_DIFF:g}) though a consistent one ({z} standard errors of the "
                f"difference, se {dse:.1f}), so in practice they predict about equally well.")
    else:
        text = (f"{best!r} is preferred over {other!r}{others}, but only by {diff:.1f} in {what}, "
                f"{z} standard errors of the difference (se {dse:.1f}): a small, uncertain difference, "
                "so the data hardly tell them apart.")
    if drivers and diff > 0:
        carried = sum(v for _, v in drivers)
        of = f" of {n_units}" if n_units else ""
        names = ", ".join(f"{u!r} (+{v:.1f})" for u, v in drivers)
        noun = unit if len(drivers) == 1 and not n_units else f"{unit}s"
        if carried >= 0.5 * diff:
            text += f" Most of it comes from {len(drivers)}{of} {noun}: {names}, together {carried:.1f} of {diff:.1f}"
            text += ("; a difference carried by so few units is uncertain, and these units are worth a look "
                     "(see the pointwise table)." if large and not clear else " (see the pointwise table).")
        else:
            text += (f" It is spread over many {unit}s; the largest parts: {names} (see the pointwise table).")
    return text


def preferred(table: pd.DataFrame) -> str:
    """In words: which fit predicts better, how large and how uncertain the difference is, and which units carry it.

    Parameters
    ----------
    table : pandas.DataFrame
        The output of :func:`compare`.

    Returns
    -------
    str
        See :func:`verdict`; the units named are those with the largest
        pointwise differences when a few of them carry at least half of it.
    """
    if len(table) < 2:
        raise FitError(f"A comparison table needs at least 2 fits; got {len(table)}.")
    ordered = table.sort_values("rank")
    best, runner = ordered.index[0], ordered.index[1]
    diff = -float(ordered.loc[runner, "elpd_diff"])
    dse = float(ordered.loc[runner, "dse"])
    by = table.attrs.get("by", "cell")
    same = any({best, runner} == set(pair) for pair in table.attrs.get("same", []))
    drivers, n_units = [], None
    if table.attrs.get("pointwise") is not None and not same:
        diffs = pointwise_differences(table, best, runner)["diff"]
        drivers, n_units = _drivers(diffs, diff), len(diffs)
    return verdict(best, runner, diff, dse, by=by, n_others=len(ordered) - 2, drivers=drivers, n_units=n_units,
                   same=same)


def _variance_summary(fit) -> str:
    """The fit's scale parameters in a few words: posterior medians (a range over levels for vectors)."""
    post = fit.posterior
    parts = []
    for name in POSITIVE_PARAMETERS:
        if name not in post:
            continue
        values = np.asarray(post[name].values, dtype=float)
        if values.ndim <= 2:
            parts.append(f"{name} {np.median(values):.3g}")
        else:
            med = np.median(values.reshape(-1, *values.shape[2:]), axis=0).ravel()
            parts.append(f"{name} {med.min():.3g}-{med.max():.3g}")
    return ", ".join(parts) if parts else "none (known se only)"


def fits_table(fits: Mapping[str, object], table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The fits side by side: model, likelihood path, engine, elpd, p_loo and scale parameters.

    Parameters
    ----------
    fits : mapping of str to Fit
    table : pandas.DataFrame, optional
        The output of :func:`compare` for these fits (its ``elpd`` and
        ``p_loo``); without it those columns are left out.

    Returns
    -------
    pandas.DataFrame
        Index ``fit`` (in the order of ``table`` when given); columns
        ``model``, ``likelihood`` (the likelihood path), ``engine`` (``exact
        (no sampler)`` for an exact Gaussian posterior), ``elpd``, ``p_loo``
        and ``variance`` (posterior medians of the scale parameters).
    """
    names = list(table.index) if table is not None else list(fits)
    rows = []
    for name in names:
        f = fits[name]
        info = f.info
        engine = "exact (no sampler)" if f.description.posterior_gaussian else f.engine
        row = {"model": f.model.name or "custom", "likelihood": str(info.get("likelihood_path", "unknown")),
               "engine": engine}
        if table is not None:
            row["elpd"] = float(table.loc[name, "elpd"])
            row["p_loo"] = float(table.loc[name, "p_loo"])
        row["variance"] = _variance_summary(f)
        rows.append(row)
    out = pd.DataFrame(rows, index=pd.Index([str(n) for n in names], name="fit"))
    return out
