"""Summaries of a fit: per-parameter statistics, overall diagnostics, plain warnings."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from twoway.errors import ConvergenceWarning, FitError
from twoway.results.contrasts import COVARIATE, contrast_tables
from twoway.results.covariates import coefficient_table, fit_design, mean_formula
from twoway.results.decomposition import variance_decomposition
from twoway.results.diagnostics import MODE_SDS, separated_chains
from twoway.results.stats import statistics_table
from twoway.table.connectivity import components
from twoway.table.labels import shorten_index

__all__ = ["FitSummary", "summarize", "overall_diagnostics", "default_variables", "format_number", "RHAT_LIMIT",
           "ESS_LIMIT", "SUMMARY_VALUES", "SCREENED"]

RHAT_LIMIT = 1.01
ESS_LIMIT = 400
PARETO_K_LIMIT = 0.7  # importance weights with a larger Pareto k are unreliable (unless the fit stores its own)


@dataclass(frozen=True)
class FitSummary:
    """What a fit says, in numbers and words.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per scalar parameter (``name`` or ``name[label]``); columns
        ``mean, sd, hdi_3%, hdi_97%, ess_bulk, ess_tail, r_hat`` (for the
        default 94% interval).
    diagnostics : dict
        ``divergences, max_r_hat, min_ess_bulk, sampling_seconds, total_seconds`` and the
        engine's own (see :func:`overall_diagnostics`).
    warnings : list of str
        Plain-word warnings; empty when the diagnostics are good.
    header : list of str
        Model, likelihood path, priors in force.
    contrasts : pandas.DataFrame or None
        Contrasts against reference levels (see :mod:`twoway.results.contrasts`): one row per
        ``"LABEL - REF"``, columns ``side, reference`` and the parameters' columns.
    decomposition : pandas.DataFrame or None
        Variance components, their shares of the total and the intraclass
        correlations (see :mod:`twoway.results.decomposition`), the parameters' columns.
    coefficients : pandas.DataFrame or None
        With covariates in the mean: one line per term of the formula (index ``term``),
        ``level`` (``row``, ``column``, ``cell``: what the term is constant within), the
        parameters' columns and ``prior_sd`` (see
        :func:`twoway.results.covariates.coefficient_table`); None without covariates.
    formula : str or None
        The covariates' formula (None without covariates).
    shortened : dict of str to int
        On a large fit (more than :data:`SUMMARY_VALUES` values among the default
        parameters, none chosen): the parameters with more than :data:`PRINT_LONG` entries,
        each with its number of entries. Only their first :data:`PRINT_HEAD` entries are in
        ``table``; ESS and R-hat were judged on those and on :data:`SCREENED` more of each
        (see :func:`summarize`). Empty otherwise.
    """

    table: pd.DataFrame
    diagnostics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    contrasts: pd.DataFrame | None = None
    decomposition: pd.DataFrame | None = None
    decomposition_notes: list[str] = field(default_factory=list)
    #: the variables were chosen (``var_names``): print every row of the table
    chosen: bool = False
    coefficients: pd.DataFrame | None = None
    formula: str | None = None
    shortened: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"parameters": _rows(self.table),
               "diagnostics": {k: _plain(v) for k, v in self.diagnostics.items()},
               "warnings": list(self.warnings)}
        if self.contrasts is not None:
            out["contrasts"] = _rows(self.contrasts)
        if self.decomposition is not None:
            out["variance_decomposition"] = {"components": _rows(self.decomposition),
                                             "notes": list(self.decomposition_notes)}
        if self.coefficients is not None:
            out["coefficients"] = {"formula": self.formula, "terms": _rows(self.coefficients)}
        if self.shortened:
            out["shortened"] = {name: {"entries": n, "shown": PRINT_HEAD} for name, n in self.shortened.items()}
        return out

    def format(self, *, long: int | None = None) -> str:
        """The summary as text.

        Parameters
        ----------
        long : int, optional
            A parameter with more entries than this (default :data:`PRINT_LONG`) shows its
            first :data:`PRINT_HEAD` and a line saying how many more there are and how to see
            them; ``0`` prints every row. Variables chosen with ``var_names`` print whole.
        """

        lines = list(self.header)
        table, more = _shorten_long(self.table, 0 if self.chosen else PRINT_LONG if long is None else long)
        table.index = pd.Index(shorten_index(table.index), name=table.index.name)  # long labels cut in the middle
        with pd.option_context("display.max_rows", None, "display.width", 120):
            lines += ["", table_text(table)]
            lines += [f"  ... {name}: {n:,} more entries not printed (see them with --var {name} or --json)"
                      for name, n in more]
            lines += [f"  ... {name}: {n - PRINT_HEAD:,} more entries not summarised (see them with --var {name})"
                      for name, n in self.shortened.items()]
            if self.shortened:
                lines.append(f"  (a large fit: the diagnostics judge each of these on its entries printed and "
                             f"{SCREENED} more)")
            if self.coefficients is not None:
                lines += ["", (f"covariates: coefficients of the terms of '{self.formula}' (the change in the "
                               "mean per unit of each term; level: what the term is constant within):"),
                          table_text(self.coefficients)]
            if self.contrasts is not None:
                for (side, ref), part in self.contrasts.groupby(["side", "reference"], sort=False):
                    drop = ["side", "reference"]
                    if str(side).startswith(COVARIATE):
                        variable = str(side)[len(COVARIATE):]
                        head = (f"contrasts: each level of the covariate {variable!r} minus its level {ref!r} "
                                "(a difference in the mean, the other terms held fixed):")
                        drop.append("prior_only")   # coefficients: never from a disconnected design's priors
                    else:
                        what = "row" if side == "row" else "column"
                        head = f"contrasts: each {what} mean minus the mean of {what} {ref!r}:"
                    lines += ["", head, table_text(part.drop(columns=[c for c in drop if c in part]))]
            if self.decomposition is not None:
                lines += ["", "variance decomposition (per draw, then summarised):",
                          self.decomposition.to_string(float_format=format_number)]
                lines += [f"  {note}" for note in self.decomposition_notes]
        d = self.diagnostics
        lines += ["", "diagnostics:",
                  f"  divergences       {d['divergences']}",
                  f"  max R-hat         {d['max_r_hat']:.4f}",
                  f"  min bulk ESS      {d['min_ess_bulk']:.0f}",
                  f"  sampling seconds  {d['sampling_seconds']:.2f}",
                  f"  total seconds     {d['total_seconds']:.2f}"]
        if "importance_ess" in d:  # the laplace engine: importance sampling's own diagnostics
            lines += [f"  importance ESS    {d['importance_ess']:.0f} of {d['proposals']} proposals",
                      f"  Pareto k          {d['pareto_k']:.2f}",
                      f"  factorisations    {d['factorisations']}"]
        if self.warnings:
            lines += ["", "warnings:"] + [f"  - {w}" for w in self.warnings]
        else:
            lines += ["", "No sampling problems: R-hat <= 1.01, bulk ESS >= 400, no divergences."]
        return "\n".join(lines)


def format_number(value: float, digits: int = 4) -> str:
    """A number as printed in text tables: ``digits`` significant digits, scientific when tiny or huge.

    Values of magnitude below 1e-3 or from 1e6 up are written in scientific notation, so that a
    parameter in small units (1e-12) reads as ``3.142e-12``, not ``0.000``.

    Parameters
    ----------
    value : float
    digits : int
        Significant digits (at least 1).

    Returns
    -------
    str
        E.g. ``0.8650``, ``25.64``, ``12346``, ``-3.142e-12``, ``0``, ``nan``.
    """
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    value = float(f"{value:.{digits - 1}e}")  # rounded first: 9.99996 is 10.00, not 10.000
    magnitude = abs(value)
    if magnitude < 1e-3 or magnitude >= 1e6:
        return f"{value:.{digits - 1}e}"
    decimals = max(digits - 1 - math.floor(math.log10(magnitude)), 0)
    return f"{value:.{decimals}f}"


def _whole(value: float) -> str:
    return str(value) if not math.isfinite(float(value)) else f"{float(value):.0f}"


def _rhat(value: float) -> str:
    return str(value) if not math.isfinite(float(value)) else f"{float(value):.3f}"


#: Columns printed in their own terms: effective sample sizes as whole draws, R-hat to 3 decimals.
COLUMN_FORMATS = {"ess_bulk": _whole, "ess_tail": _whole, "r_hat": _rhat}


def table_text(table) -> str:
    """A statistics table as printed: values with significant digits (:func:`format_number`),
    ESS as whole numbers and R-hat with three decimals."""
    formatters = {c: COLUMN_FORMATS[c] for c in table.columns if c in COLUMN_FORMATS}
    return table.to_string(formatters=formatters, float_format=format_number)


PRINT_LONG = 40   # a parameter with more entries than this is printed shortened
PRINT_HEAD = 10   # ... to its first entries


def _shorten_long(table: pd.DataFrame, long: int) -> tuple[pd.DataFrame, list[tuple[str, int]]]:
    """The printed rows: each parameter with more than ``long`` entries cut to its first ones; what was cut."""
    if not long or len(table) <= long:
        return table.copy(), []
    base = pd.Series([str(i).split("[", 1)[0] for i in table.index], index=table.index)
    sizes = base.value_counts()
    keep = np.ones(len(table), bool)
    more = []
    for name, n in sizes.items():
        if n > long:
            where = np.flatnonzero(base.to_numpy() == name)
            keep[where[PRINT_HEAD:]] = False
            more.append((name, int(n - PRINT_HEAD)))
    return table[keep].copy(), more


def _rows(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {str(name): {col: _plain(row[col]) for col in table.columns} for name, row in table.iterrows()}


def _plain(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    return v


def summarize(fit, *, var_names: "list[str] | str | None" = None, ci_prob: float = 0.94,
              contrasts: "list[str | tuple[str, str]] | None" = None,
              decomposition: bool = True) -> FitSummary:
    """Summarise ``fit``; warns (:class:`ConvergenceWarning`) when the diagnostics are poor.

    Parameters
    ----------
    fit : Fit
    var_names : list of str, optional
        Parameters to include, each a name or the prefix of names (``"row_"``: every
        row parameter); default: all the model's, plus row_mean and col_mean.
    ci_prob : float
        Probability of the highest-density intervals (default 0.94), in (0, 1).
    contrasts : list of str or (side, label), optional
        Contrasts against reference levels, ``"col=Placebo"`` or ``("col", "Placebo")``:
        each other level's mean minus the reference's; a factor covariate ``g``:
        ``"covariate:g"`` (against its reference level) or ``"covariate:g=b"`` (see
        :func:`twoway.results.contrasts.contrasts`).
    decomposition : bool
        Add the variance decomposition (see :func:`twoway.results.decomposition.variance_decomposition`).
    """
    if isinstance(ci_prob, bool) or not isinstance(ci_prob, (int, float, np.floating)) or not 0 < ci_prob < 1:
        raise FitError(f"The interval probability must be between 0 and 1; got {ci_prob!r}.")
    post = fit.posterior
    # by default: every parameter with at most one dimension besides chain and draw (matrices such as
    # row_cov and per-replicate shocks are in the posterior; ask for them by name)
    default = default_variables(fit, post)
    # the diagnostics and warnings always judge every default parameter, whatever is shown; on a large
    # fit a long parameter is judged on its printed entries and the ones its chains make most suspect
    long = long_parameters(post, default)
    checked, shown = _judged_statistics(fit, post, default, long, ci_prob)
    table = statistics_table(post, select_variables(post, var_names), ci_prob) if var_names else shown
    table.index.name = "parameter"
    contrast_table = None
    if contrasts:

        contrast_table = contrast_tables(fit, contrasts, ci_prob)
    decomp, decomp_notes = None, []
    if decomposition:

        vd = variance_decomposition(fit, ci_prob=ci_prob)
        decomp, decomp_notes = vd.summary, list(vd.notes)
    # what the engine's draws are (its description), never its name, decides how they are judged
    description = fit.description
    diagnostics = overall_diagnostics(fit, checked)
    n_chains = int(post.sizes["chain"])
    # chains that are not comparable (resampled into chains) are not "one chain" either: no R-hat to ask for
    notes = _diagnostic_warnings(checked, diagnostics, n_chains if description.chains_comparable else max(n_chains, 2),
                                 int(post.sizes["draw"]))
    if description.markov_chains:  # chains of a Markov sampler can sit in different modes
        notes += _mode_warnings(post)
    # the engine's own threshold when it stored one (the laplace engine's depends on its number of proposals)
    k_limit = float(fit.info.get("pareto_k_threshold", PARETO_K_LIMIT))
    if diagnostics.get("pareto_k", 0.0) > k_limit:
        notes.append(f"The importance weights are unreliable (Pareto k = {diagnostics['pareto_k']:.2f} "
                     f"> {k_limit:.2f}).")
    for note in notes:
        warnings.warn(note, ConvergenceWarning, stacklevel=3)
    spec = fit.model
    how = description.describe({**fit.info, "engine": fit.engine})
    design = fit_design(fit)
    header = [f"model: {spec.describe()}"]
    if design is not None:
        header.append(f"mean: {mean_formula(spec, design)}")
    header += [how, "priors:"] + [f"  {k} ~ {p}" for k, p in fit.priors.items()]
    coefficients = None if design is None else coefficient_table(fit, ci_prob=ci_prob, design=design)
    if coefficients is not None and "prior_sd" in coefficients:
        header.append("  coef per term (the coef prior's sigma is per one sd of the term): "
                      + _few([f"{t} ~ Normal(0, {format_number(v)})"
                              for t, v in coefficients["prior_sd"].items()], 8))
    note = cell_effect_note(spec, fit.data.n_replicates)
    if note:
        header.append(f"note: {note}")
    parts = components(fit.data.mask, fit.data.row_labels, fit.data.col_labels)
    if not parts.connected:
        header.append(f"note: the design is disconnected ({parts.describe()}): no observed cell links its "
                      "parts, so comparisons across them come from the priors alone.")
    return FitSummary(table=table, diagnostics=diagnostics, warnings=notes, header=header,
                      contrasts=contrast_table, decomposition=decomp, decomposition_notes=decomp_notes,
                      chosen=bool(var_names), coefficients=coefficients,
                      formula=None if design is None else design.formula,
                      shortened={} if var_names else long)


#: Values (entries x draws) of the default parameters above which a summary shortens its long
#: parameters (see :func:`long_parameters`): about a second of statistics.
SUMMARY_VALUES = 2_000_000
#: Entries of a shortened parameter judged (ESS, R-hat) beyond the printed ones.
SCREENED = 40


def long_parameters(post, names: list[str]) -> dict[str, int]:
    """The parameters a summary of ``post`` shortens: ``{name: entries}``, empty for a small fit.

    When the default parameters hold more than :data:`SUMMARY_VALUES` values over the
    draws, each parameter with more than :data:`PRINT_LONG` entries (one per row, column
    or level) is summarised by its first :data:`PRINT_HEAD` entries (and judged on
    :data:`SCREENED` more).
    """
    S = int(post.sizes["chain"]) * int(post.sizes["draw"])
    entries = {n: int(np.prod([post[n].sizes[d] for d in post[n].dims if d not in ("chain", "draw")], dtype=np.int64))
               for n in names}
    if sum(entries.values()) * S <= SUMMARY_VALUES:
        return {}
    return {n: k for n, k in entries.items() if k > PRINT_LONG}


def _judged_statistics(fit, post, names: list[str], shortened: dict[str, int],
                       ci_prob: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(checked, shown): the statistics the diagnostics judge, and those the table shows.

    Without shortened parameters both are the statistics of every entry of ``names``.
    A shortened parameter shows its first :data:`PRINT_HEAD` entries; it is judged on those
    and on :data:`SCREENED` more: the entries whose split chains disagree most (the classic
    split R-hat, one pass over the draws) when the chains are comparable, entries spread
    evenly over the parameter otherwise.
    """
    if not shortened:
        table = statistics_table(post, names, ci_prob)
        return table, table
    comparable = fit.description.chains_comparable and int(post.sizes["chain"]) > 1
    checked_parts, shown_parts = [], []
    for name in names:
        da = post[name]
        if name not in shortened:
            part = statistics_table(post[[name]], [name], ci_prob)
            checked_parts.append(part)
            shown_parts.append(part)
            continue
        dim = next(d for d in da.dims if d not in ("chain", "draw"))
        n = shortened[name]
        head = np.arange(min(PRINT_HEAD, n))
        rest = np.setdiff1d(np.arange(n), head)
        if comparable:
            score = _split_rhat(da.transpose("chain", "draw", dim).values)[rest]
            extra = rest[np.argsort(-np.nan_to_num(score, nan=np.inf), kind="stable")[:SCREENED]]
        else:
            extra = rest[np.unique(np.linspace(0, rest.size - 1, min(SCREENED, rest.size)).astype(np.int64))]
        picked = np.concatenate([head, np.sort(extra)])
        part = statistics_table(post[[name]].isel({dim: picked}), [name], ci_prob)
        checked_parts.append(part)
        shown_parts.append(part.iloc[:head.size])
    return pd.concat(checked_parts), pd.concat(shown_parts)


def _split_rhat(x: np.ndarray) -> np.ndarray:
    """The classic split R-hat of each entry of draws (chains, draws, L): one pass, for screening; (L,)."""
    x = np.asarray(x, dtype=float)
    half = x.shape[1] // 2
    if half < 2:
        return np.full(x.shape[2], np.nan)
    halves = np.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)     # (2 chains, half, L)
    with np.errstate(invalid="ignore", divide="ignore"):
        between = half * halves.mean(axis=1).var(axis=0, ddof=1)
        within = halves.var(axis=1, ddof=1).mean(axis=0)
        return np.sqrt((between / within + half - 1) / half)


def default_variables(fit, post=None) -> list[str]:
    """The parameters a summary shows and judges by default: each with at most one dimension besides
    chain and draw (matrices such as row_cov and per-replicate shocks are shown when named)."""
    post = fit.posterior if post is None else post
    return [n for n in fit.parameter_names + ["row_mean", "col_mean"] if n in post and post[n].ndim <= 3]


def overall_diagnostics(fit, checked: pd.DataFrame | None = None) -> dict[str, Any]:
    """A fit's overall diagnostics, read as its engine's description says (the one rule for every report).

    ``twoway summary`` and fit-many's summary.csv both report these.

    Parameters
    ----------
    fit : Fit
    checked : pandas.DataFrame, optional
        The statistics of the default parameters (:func:`default_variables`), if already computed.

    Returns
    -------
    dict
        ``divergences`` (0 unless the engine reports them), ``max_r_hat`` (NaN where R-hat
        compares nothing: one chain, or chains that are not comparable, such as importance
        draws resampled into chains), ``min_ess_bulk`` (no more than the importance ESS where
        the draws are importance-resampled), ``sampling_seconds``, ``total_seconds``, and the
        engine's own diagnostics recorded in ``fit.info`` (``importance_ess``, ``pareto_k``,
        ``factorisations``, ``proposals``).
    """
    post = fit.posterior
    if checked is None:
        checked = statistics_table(post, default_variables(fit, post))
    description = fit.description
    info = fit.info
    stats = fit.sample_stats
    n_chains = int(post.sizes["chain"])
    r_hat = checked["r_hat"].to_numpy()
    ess = checked["ess_bulk"].to_numpy()
    comparable = description.chains_comparable and n_chains > 1 and np.isfinite(r_hat).any()
    out: dict[str, Any] = {
        "divergences": (int(stats["diverging"].sum())
                        if "divergences" in description.diagnostics and "diverging" in stats else 0),
        "max_r_hat": float(np.nanmax(r_hat)) if comparable else float("nan"),
        "min_ess_bulk": float(np.nanmin(ess)) if np.isfinite(ess).any() else float("nan"),
        "sampling_seconds": float(info["sampling_seconds"]),
        "total_seconds": float(info["total_seconds"]),
    }
    for key in description.diagnostics:
        if key != "divergences" and key in info:
            value = info[key]
            out[key] = int(value) if isinstance(value, int) and not isinstance(value, bool) else float(value)
    if description.importance and "importance_ess" in out:  # resampled draws: the importance ESS is what counts
        out["min_ess_bulk"] = float(np.nanmin([out["min_ess_bulk"], out["importance_ess"]]))
    return out


def cell_effect_note(spec, n_replicates: int) -> str | None:
    """A note when replicate tables are fitted without a random cell effect (None otherwise)."""
    if n_replicates < 2 or getattr(spec, "cell_effect", "none") != "none":
        return None
    return (f"the table has {n_replicates} replicates and the model no cell effect: a deviation a cell keeps in "
            "every replicate (the row x column interaction) is taken for independent noise, which makes "
            "contrasts too narrow if it is there; the predictive check 'cell_mean_var' tests for it, and "
            "cell_effect = \"random\" in a model file adds it (cell_sd).")


def select_variables(post, var_names: "list[str] | str") -> list[str]:
    """The posterior's variables named by ``var_names``: each a name, or the prefix of names.

    Raises :class:`FitError` for an entry that names nothing.
    """
    if isinstance(var_names, str):
        var_names = [var_names]
    available = [str(v) for v in post.data_vars if not str(v).startswith("_")]
    out: list[str] = []
    for name in var_names:
        found = [name] if name in available else [v for v in available if v.startswith(name)]
        if not found:
            raise FitError(f"The variables must be names or prefixes of names among {', '.join(available)}; "
                           f"got {name!r}.")
        out += [v for v in found if v not in out]
    return out


def _diagnostic_warnings(table: pd.DataFrame, d: dict[str, Any], n_chains: int, n_draws: int) -> list[str]:
    out = []
    if d["divergences"] > 0:
        out.append(f"{d['divergences']} divergent transitions: the sampler met geometry it could not follow, "
                   "so the posterior may be biased; try more tuning, or a model with fewer scales.")
    if n_chains < 2:
        out.append("Only one chain was run, so R-hat cannot check convergence; run 2 or more chains.")
    elif d["max_r_hat"] > RHAT_LIMIT:
        bad = table.index[table["r_hat"] > RHAT_LIMIT].tolist()
        out.append(f"R-hat is above {RHAT_LIMIT} for {len(bad)} parameter(s) ({_few(bad)}; max {d['max_r_hat']:.3f}): "
                   "the chains disagree; run longer before trusting these.")
    if d["min_ess_bulk"] < ESS_LIMIT:
        bad = table.index[table["ess_bulk"] < ESS_LIMIT].tolist()
        out.append(f"The bulk effective sample size is below {ESS_LIMIT} for {len(bad)} parameter(s) "
                   f"({_few(bad)}; min {d['min_ess_bulk']:.0f}): intervals are rough; draw more.")
    return out


def _mode_warnings(post) -> list[str]:
    """A warning naming the parameters whose chains sit in different modes (see :func:`twoway.results.diagnostics.separated_chains`)."""

    names = [n for n in post.data_vars if not str(n).startswith("_") and {"chain", "draw"} <= set(post[n].dims)]
    found = separated_chains(post, names)
    if not found:
        return []
    opposite = [label for label, _, opp in found if opp]
    what = (f"{len(opposite)} of them with chain means on opposite sides of zero ({_few(opposite)})"
            if opposite else "none of them by sign")
    return [f"The chains sit in different modes for {len(found)} parameter(s) ({_few([f[0] for f in found])}; "
            f"chain means up to {found[0][1]:.1f} within-chain sds apart, more than {MODE_SDS:g}), {what}: "
            "the chains did not mix, so the draws do not describe one posterior; run longer, or change the "
            "model or its priors (a sign-symmetric parameter needs an identifying constraint)."]


def _few(names: list[str], k: int = 4) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")
