"""Checking fits against what is known: recovery of true parameters."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from twoway.errors import DataError, FitError
from twoway.results.stats import hdi

__all__ = ["recovery", "check_truth"]


def recovery(fit, truth: Mapping[str, Any], *, prob: float = 0.94,
             names: list[str] | None = None) -> pd.DataFrame:
    """Compare a fit's posterior with the true parameters.

    Parameters
    ----------
    fit : Fit
    truth : mapping
        Parameter name to a scalar, an array (N,) / (K,), or ``{label: value}``
        (the form of :meth:`Simulation.truth_dict`).
    prob : float
        Probability of the highest-density interval.
    names : list of str, optional
        Parameters to compare (default: every one in both truth and posterior).

    Returns
    -------
    pandas.DataFrame
        Index ``name`` or ``name[label]``; columns ``true, mean, low, high,
        covered, error`` (error = mean - true).
    """
    post = fit.posterior
    names = names or [n for n in truth if n in post]
    rows = []
    for name in names:
        if name not in post:
            raise FitError(f"The parameter {name!r} is not in the fit's posterior.")
        da = post[name]
        flat = da.stack(sample=("chain", "draw")).transpose("sample", ...)
        draws = flat.values
        value = truth[name]
        extra = [d for d in flat.dims if d != "sample"]
        if extra:
            labels = [str(v) for v in flat[extra[0]].values]
            if isinstance(value, Mapping):
                true = np.array([float(value[lab]) for lab in labels])
            else:
                true = np.asarray(value, dtype=float).reshape(len(labels))
            keys = [f"{name}[{lab}]" for lab in labels]
        else:
            true = np.array([float(value)])
            draws = draws[:, None]
            keys = [name]
        interval = hdi(draws[None], prob)                      # (components, 2)
        low, high = interval[:, 0], interval[:, 1]
        mean = draws.mean(axis=0)
        for k, t, m, lo, hi in zip(keys, true, mean, low, high):
            rows.append({"parameter": k, "true": t, "mean": m, "low": lo, "high": hi,
                         "covered": bool(lo <= t <= hi), "error": m - t})
    return pd.DataFrame(rows).set_index("parameter")


def check_truth(truth: Any, fit, *, source: str = "the truth") -> dict[str, Any]:
    """Check true values against a fit before they are compared with it; return them as a dict.

    Parameters
    ----------
    truth : mapping
        Parameter name to a number, ``{label: number}`` or a list (the form of
        :meth:`twoway.simulate.Simulation.truth_dict`), or the JSON ``twoway simulate --truth``
        writes (``{"model": ..., "truth": {...}}``).
    fit : Fit
    source : str
        How messages name the truth (``"the truth file 't.json'"``).

    Returns
    -------
    dict
        The truth (unwrapped from the simulate file's ``truth`` key).

    Raises
    ------
    twoway.errors.DataError
        When the truth is not a mapping, names none of the fit's parameters, or gives a
        value that is not a number or misses (or adds) labels of the fit's table.
    """

    if isinstance(truth, Mapping) and isinstance(truth.get("truth"), Mapping):
        truth = truth["truth"]
    if not isinstance(truth, Mapping):
        raise DataError(f"The truth must map parameter names to values; {source} holds a "
                        f"{type(truth).__name__}.")
    post = fit.posterior
    shared = [n for n in truth if n in post.data_vars]
    if not shared:
        names = ", ".join(repr(str(n)) for n in list(truth)[:6]) or "nothing"
        have = [str(v) for v in post.data_vars]
        shown = ", ".join(have[:8]) + (", ..." if len(have) > 8 else "")
        raise DataError(f"The truth must name parameters of the fit ({shown}); "
                        f"{source} names {names}. Is it the truth of this table's simulation?")
    for name in shared:
        value, da = truth[name], post[name]
        extra = [d for d in da.dims if d not in ("chain", "draw")]
        where = f"the true {name!r} in {source}"
        if not extra:
            if not _is_number(value):
                raise DataError(f"The true values must be numbers; {where} is {value!r}.")
            continue
        labels = [str(v) for v in da[extra[0]].values] if len(extra) == 1 else None
        if isinstance(value, Mapping) and labels is not None:
            missing = [lab for lab in labels if lab not in value]
            unknown = [str(k) for k in value if str(k) not in set(labels)]
            if missing or unknown:
                parts = ([f"lacks {', '.join(map(repr, missing[:5]))}"] if missing else []) + (
                    [f"has {', '.join(map(repr, unknown[:5]))}, not in the fit's table"] if unknown else [])
                raise DataError(f"The true values must have the labels of the fit's {extra[0]}s; {where} "
                                f"{' and '.join(parts)}. Is it the truth of this table's simulation?")
            bad = [k for k, v in value.items() if not _is_number(v)]
            if bad:
                raise DataError(f"The true values must be numbers; {where} has {value[bad[0]]!r} "
                                f"for {bad[0]!r}.")
            continue
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise DataError(f"The true values must be numbers; {where} is {value!r}.") from None
        want = tuple(da.sizes[d] for d in extra)
        if arr.size != int(np.prod(want)):
            raise DataError(f"The true {name!r} must have {int(np.prod(want))} values (shape {want}) for the "
                            f"fit's table; {source} gives {arr.size}. Is it the truth of this table's simulation?")
    return dict(truth)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and np.isfinite(value))
