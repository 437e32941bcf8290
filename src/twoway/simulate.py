"""Simulate tables from a model, from given parameters or from the prior.

Simulating first is how a model is understood before it meets data: draw
parameters, draw a table, fit it, and see what comes back.

A model with covariates (``ModelSpec.covariates``, a formula's right-hand side)
needs their values on every cell: given (a mapping of column name to values on
the grid, or the covariate columns of a template table), or drawn
(:func:`draw_covariates`). The coefficients are drawn from their prior,
``coef[j] ~ normal(0, (sigma / sd_j)^2)`` with ``sd_j`` the sd of the design's
column j over the simulated table's observed cells (the prior a fit of that
table uses), or given; the truth holds them by term name.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from twoway.errors import ModelError, TwowayWarning
from twoway.likelihood.diagonal import residual_sd
from twoway.linalg.ops import NUMPY
from twoway.plan import known_matrices, residual_parts
from twoway.spec.derived import row_col_means
from twoway.spec.model import ModelSpec, load_model
from twoway.spec.names import public_names
from twoway.spec.priors import resolve_priors
from twoway.table.data import TwoWayData
from twoway.table.io.outputs import write_json_atomic

__all__ = ["Simulation", "simulate", "draw_parameters", "draw_covariates", "covariate_grid_values"]


@dataclass(frozen=True)
class Simulation:
    """A simulated table with the parameters that made it.

    Attributes
    ----------
    data : TwoWayData
        The table, shape (R, N, K).
    truth : dict of str to float or array
        Every parameter (scalars as floats, per-row arrays (N,), per-column
        arrays (K,), ``coef`` (p,) in the order of ``terms``), plus the derived
        ``row_mean`` and ``col_mean`` (intercept plus effects: the means at covariate
        values 0, as a fit's).
    model : ModelSpec
    terms : tuple of str
        The covariates' terms (the design's column names), p of them; empty without covariates.
    """

    data: TwoWayData
    truth: dict[str, Any]
    model: ModelSpec
    terms: tuple[str, ...] = ()

    def truth_dict(self) -> dict[str, Any]:
        """The truth as JSON-ready values: scalars, or ``{label: value}`` per row/column."""
        out: dict[str, Any] = {}
        for name, value in self.truth.items():
            arr = np.asarray(value, dtype=float)
            if arr.ndim == 0:
                out[name] = float(arr)
            elif name == "coef":
                out[name] = {term: float(v) for term, v in zip(self.terms, arr)}
            elif arr.ndim == 2 and name.endswith("_shock"):
                labels = self.data.row_labels if name.startswith("row_") else self.data.col_labels
                out[name] = {rep: {lab: float(v) for lab, v in zip(labels, row)}
                             for rep, row in zip(self.data.replicate_labels, arr)}
            elif arr.ndim >= 2:  # matrices (row_cov, col_corr, loadings): nested lists, labels in order
                out[name] = arr.tolist()
            else:
                labels = self.data.row_labels if name.startswith("row_") else self.data.col_labels
                out[name] = {lab: float(v) for lab, v in zip(labels, arr)}
        return out

    def write_truth(self, path) -> None:
        """Write the model and the truth as JSON (atomically), as ``twoway report --truth`` reads it."""

        write_json_atomic(path, {"model": self.model.to_dict(), "truth": self.truth_dict()}, indent=2)


def _whole(n: Any, what: str) -> int:
    """``n`` as an int when it is a whole number (``4.0`` is 4); ModelError otherwise."""
    ok = (not isinstance(n, bool) and isinstance(n, (int, float, np.integer, np.floating))
          and math.isfinite(n) and float(n).is_integer())
    if not ok:
        raise ModelError(f"The number of {what} must be a whole number; got {n!r}.")
    return int(n)


def draw_parameters(spec: ModelSpec, n_rows: int, n_cols: int, *, rng: np.random.Generator,
                    location: float = 0.0, spread: float = 1.0,
                    given: Mapping[str, Any] | None = None, known: Mapping[str, np.ndarray] | None = None
                    ) -> dict[str, Any]:
    """Draw every parameter of ``spec`` from its prior, except those ``given``.

    The priors are the ones a fit would use on data with this ``location`` and
    ``spread`` (see :func:`twoway.spec.priors.default_priors`), with the spec's overrides.
    A given hyperparameter is in force before what depends on it is drawn: a given
    ``row_effect_sd`` scales the drawn row effects, given ``row_log_sd_loc`` and
    ``row_log_sd_scale`` make the drawn ``row_sd``. A given effect or scale is used as
    it is. The random stream does not depend on what is given (a given parameter's
    prior draw is made and set aside), so the parameters not given are the ones the
    same seed gives without ``given``.

    Parameters
    ----------
    spec : ModelSpec
    n_rows, n_cols : int
        N and K.
    rng : numpy.random.Generator
    location, spread : float
        The data scale the default priors are set for.
    given : mapping, optional
        Values of the model's parameters (names of :func:`twoway.spec.names.public_names`;
        other names, such as a Kronecker structure's, are left to the caller): scalars,
        or arrays (N,) / (K,) for effects and heteroscedastic scales.
    known : mapping of str to numpy.ndarray, optional
        Known relationship matrices of random effects (``row``: (N, N), ``col``: (K, K);
        ``row_effect_cov = "known:FILE"``): the effects are drawn as
        ``effect_sd * S z`` with ``S S' = K`` (S the symmetric square root), so that their covariance is ``effect_sd^2 K``.

    Returns
    -------
    dict of str to float or array (N,) or (K,)

    Raises
    ------
    ModelError
        For a given value of the wrong shape, not finite, or a negative scale.
    """
    names = set(public_names(spec)) - {"coef"}  # coefficients need the table's design: see simulate()
    given = _check_params(spec, {k: v for k, v in (given or {}).items() if k in names}, n_rows, n_cols)
    priors = resolve_priors(spec.parameter_names(), location, spread, spec.model_prior_overrides)
    out: dict[str, Any] = {}

    def scalar(name: str) -> float:  # the prior's draw is made whether or not the value is given
        drawn = float(priors[name].sample(rng))
        return given.get(name, drawn)

    if spec.intercept:
        out["intercept"] = scalar("intercept")
    for side, kind, n in (("row", spec.row_effect, n_rows), ("col", spec.col_effect, n_cols)):
        if kind == "random":
            sd = out[f"{side}_effect_sd"] = scalar(f"{side}_effect_sd")
            z = rng.normal(size=n)
            if known and side in known:  # a square root of K (eigen: a singular K is allowed)
                w, v = np.linalg.eigh(np.asarray(known[side], dtype=float))
                z = v @ (np.sqrt(np.clip(w, 0.0, None)) * (v.T @ z))
            out[f"{side}_effect"] = given.get(f"{side}_effect", sd * z)
        elif kind == "fixed":
            raw = priors[f"{side}_effect"].sample(rng, n)
            out[f"{side}_effect"] = given.get(f"{side}_effect", raw - raw.mean())
    for side, kind, n in (("row", spec.row_scale, n_rows), ("col", spec.col_scale, n_cols)):
        if kind == "homo":
            out[f"{side}_sd"] = scalar(f"{side}_sd")
        elif kind == "hetero":
            loc = out[f"{side}_log_sd_loc"] = scalar(f"{side}_log_sd_loc")
            scale = out[f"{side}_log_sd_scale"] = scalar(f"{side}_log_sd_scale")
            z = rng.normal(size=n)
            out[f"{side}_sd"] = given.get(f"{side}_sd", np.exp(loc + scale * z))
    if spec.sigma:
        out["sigma"] = scalar("sigma")
    if spec.cell_effect == "random":
        out["cell_sd"] = scalar("cell_sd")
    return out


def _residual_parts(spec: ModelSpec, row_labels, col_labels) -> dict:
    if spec.residual not in ("kronecker", "full"):
        return {}

    return residual_parts(spec, tuple(row_labels), tuple(col_labels))


def _draw_residual_parameters(spec: ModelSpec, parts: dict, rng, spread: float,
                              given: Mapping[str, Any] | None = None) -> dict:
    """The Kronecker structures' or the full covariance's parameters: ``given`` ones, the others drawn from the prior.

    The draws are made whether or not a parameter is given, so the random stream is the
    same. A given ``{side}_loadings_scale`` or ``{side}_psi_scale`` of a factor-analytic
    structure scales the drawn loadings or psi (they are the scale times standard draws,
    so this is drawing them with the given scale). The column factor is then put on the
    unit scale the model fixes (mean diagonal 1, see :func:`_unit_column_factor`).

    Parameters
    ----------
    spec : ModelSpec
    parts : dict
        :func:`_residual_parts`.
    rng : numpy.random.Generator
    spread : float
    given : mapping, optional
        Checked values (:func:`_check_params`); names that are not these parts' are ignored.

    Returns
    -------
    dict
        The parameters by name (arrays in the structures' shapes), and ``_parts``.
    """
    given = given or {}
    out = {}
    if spec.residual == "kronecker":
        for side, unit in (("row", False), ("col", True)):
            st = parts[side]
            defaults = st.default_priors(spread, unit_scale=unit)
            chosen = st.check_priors({k: spec.prior_overrides.get(k, v) for k, v in defaults.items()},
                                     unit_scale=unit)
            drawn = st.draw(rng, chosen, unit_scale=unit)
            for what, scale in (("loadings", f"{side}_loadings_scale"), ("psi", f"{side}_psi_scale")):
                if scale in given and scale in drawn and drawn[scale] > 0:
                    drawn[f"{side}_{what}"] = drawn[f"{side}_{what}"] * (given[scale] / drawn[scale])
            mine = st.parameter_names(unit_scale=unit)
            values = {**drawn, **{k: v for k, v in given.items() if k in mine}}
            if unit and any(k in given for k in mine):
                values = _unit_column_factor(st, values)
            out.update(values)
    if spec.residual == "full":
        overrides = spec.prior_overrides
        for name in parts["full"].parameters:
            if name not in overrides:
                raise ModelError(f"The model needs a prior for {name!r}; give it in the model file's [priors] table.")
            drawn = float(overrides[name].sample(rng))
            out[name] = given.get(name, drawn)
    if parts:
        out["_parts"] = parts
    return out


def _unit_column_factor(st, values: dict[str, Any]) -> dict[str, Any]:
    """The column structure's parameters rescaled so that its matrix V has mean diagonal 1.

    A Kronecker residual fixes its redundant scale there; ``matrix(..., unit_scale=True)``
    rescales V so, and the truth must hold the values V is made of. Given values on
    another scale are rescaled with a warning (drawn ones are on it already).

    Parameters
    ----------
    st : twoway.spec.structures.Structure
        The column structure.
    values : dict
        Its parameters (:meth:`parameter_names` under unit scale).

    Returns
    -------
    dict
        ``values`` with the column ``sd`` (``diag``, ``unstructured``) divided by ``sqrt(m)``,
        or the ``loadings`` by ``sqrt(m)`` and ``psi`` by ``m`` (``fa``), where ``m`` is the
        mean diagonal of the matrix they make.
    """
    nm = f"{st.side}_"
    if st.kind not in ("diag", "unstructured", "fa"):
        return values  # iid, known, ar1, cs: no free scale under unit scale
    m = float(np.mean(np.diag(st.matrix(values, unit_scale=False))))
    if not (math.isfinite(m) and m > 0):
        raise ModelError(f"The parameters of the '{st.side}_structure' {st.text} must make a matrix with a "
                         "positive diagonal.")
    if abs(m - 1.0) <= 1e-12:
        return values
    out = dict(values)
    if st.kind == "fa":
        out[nm + "loadings"] = np.asarray(values[nm + "loadings"], dtype=float) / math.sqrt(m)
        out[nm + "psi"] = np.asarray(values[nm + "psi"], dtype=float) / m
    else:
        out[nm + "sd"] = np.asarray(values[nm + "sd"], dtype=float) / math.sqrt(m)
    if abs(m - 1.0) > 1e-6:  # more than rounding
        warnings.warn(f"The column structure's parameters were divided by their matrix's mean variance ({m:.4g}, "
                      "its square root for scales and loadings): a Kronecker residual fixes the column matrix at "
                      "mean variance 1. The truth records the rescaled values.", TwowayWarning, stacklevel=4)
    return out


def _check_params(spec: ModelSpec, params: Mapping[str, Any], n_rows: int, n_cols: int,
                  parts: dict | None = None) -> dict[str, Any]:
    allowed = public_names(spec)
    parts = parts or {}
    for side, unit in (("row", False), ("col", True)):
        if side in parts:
            allowed = allowed + parts[side].parameter_names(unit_scale=unit)
    if "full" in parts:
        allowed = allowed + list(parts["full"].parameters)
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name not in allowed:
            raise ModelError(
                f"The parameters must be among this model's ({', '.join(allowed)}); got {name!r}."
            )
        arr = np.array(value, dtype=float)  # a copy: the truth does not share the caller's array
        if name not in public_names(spec):  # a structure's or covariance's own parameter (shapes: checked by its matrix)
            if not np.all(np.isfinite(arr)):
                raise ModelError(f"The parameter {name!r} must be finite; got {value!r}.")
            if name.startswith(("row_", "col_")) and name.endswith(("_sd", "_scale", "_psi")) and np.any(arr < 0):
                raise ModelError(f"The parameter {name!r} must not be negative; got {value!r}.")
            out[name] = arr if arr.ndim else float(arr)
            continue
        per_level = name in ("row_effect", "col_effect") or (
            name in ("row_sd", "col_sd") and getattr(spec, f"{name[:3]}_scale") == "hetero")
        n = n_rows if name.startswith("row") else n_cols
        if per_level:
            if arr.shape != (n,):
                raise ModelError(f"The parameter {name!r} must have one value per level ({n}); got shape {arr.shape}.")
        elif arr.ndim != 0:
            raise ModelError(f"The parameter {name!r} must be a single number; got shape {arr.shape}.")
        if not np.all(np.isfinite(arr)):
            raise ModelError(f"The parameter {name!r} must be finite; got {value!r}.")
        if name.endswith("_sd") or name in ("sigma", "row_log_sd_scale", "col_log_sd_scale"):
            if np.any(arr < 0):
                raise ModelError(f"The parameter {name!r} must not be negative; got {value!r}.")
        out[name] = arr if arr.ndim else float(arr)
    return out


def _on_grid(value, grid: tuple[int, int], *, axis: int):
    """A scalar or per-row (axis 0) / per-column (axis 1) value spread over the (N, K) grid."""
    if value is None:
        return None
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None] if axis == 0 else arr[None, :]
    return np.broadcast_to(arr, grid)


def draw_residual(spec: ModelSpec, truth: dict[str, Any], shape: tuple[int, int, int], se,
                  rng: np.random.Generator) -> np.ndarray:
    """Draw the residual tables e (R, N, K) of ``spec`` with parameters ``truth``.

    The latent residual's shocks are stored in ``truth`` (``row_shock``,
    ``col_shock``, each (R, N) / (R, K)).
    """
    R, N, K = shape
    if spec.residual == "independent":
        row_sd = _on_grid(truth.get("row_sd"), shape[1:], axis=0)
        col_sd = _on_grid(truth.get("col_sd"), shape[1:], axis=1)
        sd = residual_sd(se, row_sd, col_sd, truth.get("sigma"), combine=spec.combine)
        return np.broadcast_to(sd, shape) * rng.standard_normal(shape)
    noise_sd = np.sqrt(np.asarray(se, dtype=float) ** 2 + truth.get("sigma", 0.0) ** 2)
    if spec.residual == "latent":
        e = np.broadcast_to(noise_sd, shape) * rng.standard_normal(shape)
        if "row_sd" in truth:
            truth["row_shock"] = np.broadcast_to(truth["row_sd"], (N,)) * rng.standard_normal((R, N))
            e = e + truth["row_shock"][:, :, None]
        if "col_sd" in truth:
            truth["col_shock"] = np.broadcast_to(truth["col_sd"], (K,)) * rng.standard_normal((R, K))
            e = e + truth["col_shock"][:, None, :]
        return e
    parts = truth.pop("_parts")
    if spec.residual == "kronecker":
        U = parts["row"].matrix(truth, unit_scale=False)
        V = parts["col"].matrix(truth, unit_scale=True)
        if U.shape[0] <= 30:
            truth["row_cov"] = U
        if V.shape[0] <= 30:
            truth["col_cov"] = V
        lu, lv = np.linalg.cholesky(U), np.linalg.cholesky(V)
        e = lu[None] @ rng.standard_normal(shape) @ lv.T[None]
    elif spec.residual == "full":

        cov = parts["full"](NUMPY, truth)
        e = (np.linalg.cholesky(cov)[None] @ rng.standard_normal((R, N * K, 1)))[..., 0].reshape(shape)
    else:  # pragma: no cover
        raise ModelError(f"Simulating the {spec.residual!r} residual is not available.")
    return e + np.broadcast_to(noise_sd, shape) * rng.standard_normal(shape)


def _missing_mask(rng: np.random.Generator, shape: tuple[int, int, int], fraction: float) -> np.ndarray:
    """Missing-at-random cells, redrawn until every row and column keeps an observed cell."""
    if not 0.0 <= fraction < 1.0:
        raise ModelError(f"The missing fraction must be in [0, 1); got {fraction!r}.")
    if fraction == 0.0:
        return np.zeros(shape, dtype=bool)
    for _ in range(1000):
        miss = rng.random(shape) < fraction
        obs = ~miss
        if obs.any(axis=(0, 2)).all() and obs.any(axis=(0, 1)).all() and obs.any(axis=(1, 2)).all():
            return miss
    raise ModelError(f"A missing fraction of {fraction} leaves some row or column empty; use a smaller one.")


def simulate(
    model: "ModelSpec | str",
    n_rows: int,
    n_cols: int,
    n_replicates: int = 1,
    params: Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
    se: "float | np.ndarray | None" = None,
    missing: float = 0.0,
    location: float = 0.0,
    spread: float = 1.0,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    covariates: "Mapping[str, Any] | TwoWayData | None" = None,
) -> Simulation:
    """Draw a table from a model.

    Parameters
    ----------
    model : ModelSpec or str
        A spec, a preset name or a TOML model file.
    n_rows, n_cols, n_replicates : int
        Table shape (R, N, K) = (n_replicates, n_rows, n_cols).
    params : mapping, optional
        Parameters to use; any the model has that are not given are drawn
        from the prior, with the given ones in force: a given ``row_effect_sd``
        scales the drawn row effects, given ``row_log_sd_loc`` / ``row_log_sd_scale``
        make the drawn ``row_sd``, a given ``cell_sd`` the cell effects, a given
        structure scale the structure's drawn loadings. Given effects and scales are
        used as they are, except a Kronecker column structure's, which are put on
        the unit scale the model fixes (with a warning when that changes them).
        The parameters not given are drawn from the same random stream as without
        ``params``. ``coef`` (with covariates): an array (p,) in the design's term
        order, or a mapping of term name to value (every term).
    seed : int, optional
        Seed of the random generator; the same seed gives the same table.
    se : float or array broadcastable to (R, N, K), optional
        Known standard errors to attach to the table (they add to the residual).
    missing : float
        Fraction of cells to drop at random (every row and column keeps one).
    location, spread : float
        The data scale the default priors are set for when drawing from them.
    row_labels, col_labels : sequence of str, optional
    covariates : mapping or TwoWayData, optional
        Covariate values. A mapping of column name to values broadcastable to the grid
        (R, N, K): numbers, or text for a factor; an array (N, 1) is constant within
        rows, (K,) within columns. Or a table (TwoWayData) of this shape whose covariate
        columns are used, its labels too (unless given), and its missing cells stay
        missing. Without them, a model with covariates gets values drawn for the
        formula's variables (:func:`draw_covariates`, from a stream of their own, so the
        other draws are those of the same seed without covariates). Values given for a
        model without covariates are kept as columns of the table (the mean ignores
        them).

    Returns
    -------
    Simulation
        Its table holds the covariate columns on its observed cells.
    """
    spec = load_model(model)
    n_rows, n_cols, n_replicates = (_whole(n, what) for n, what in (
        (n_rows, "rows"), (n_cols, "columns"), (n_replicates, "replicates")))
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ModelError(f"The seed must be a non-negative whole number; got {seed!r}.")
    rng = np.random.default_rng(seed)
    shape = (int(n_replicates), int(n_rows), int(n_cols))
    if min(shape) < 1 or n_rows < 2 or n_cols < 2:
        raise ModelError(f"A simulated table needs at least 2 rows, 2 columns and 1 replicate; got {shape[1]} x {shape[2]} x {shape[0]}.")
    template = covariates if isinstance(covariates, TwoWayData) else None
    if template is not None:
        if template.values.shape != shape:
            raise ModelError(f"The template table must have the simulated shape (replicates, rows, cols) = {shape}; "
                             f"got {template.values.shape}.")
        row_labels = list(template.row_labels) if row_labels is None else row_labels
        col_labels = list(template.col_labels) if col_labels is None else col_labels
    row_labels = [f"row{i + 1}" for i in range(n_rows)] if row_labels is None else list(row_labels)
    col_labels = [f"col{j + 1}" for j in range(n_cols)] if col_labels is None else list(col_labels)
    parts = _residual_parts(spec, row_labels, col_labels)
    params = dict(params or {})
    given_coef = params.pop("coef", None)
    if given_coef is not None and not spec.covariates:
        raise ModelError("The parameter 'coef' needs a model with covariates; the model has none.")
    given = _check_params(spec, params, n_rows, n_cols, parts)
    # the given parameters are in force before anything that depends on them is drawn
    known = known_matrices(spec, row_labels, col_labels)
    truth = draw_parameters(spec, n_rows, n_cols, rng=rng, location=location, spread=spread, given=given,
                            known=known)
    truth.update(_draw_residual_parameters(spec, parts, rng, spread, given))
    if se is None:
        se_arr = None
    else:
        se_arr = np.broadcast_to(np.asarray(se, dtype=float), shape).copy()
        if not np.all(np.isfinite(se_arr)) or np.any(se_arr <= 0):
            raise ModelError("The simulated standard errors must be positive and finite.")
    if spec.needs_se() and se_arr is None:
        raise ModelError("The model has no unknown scale, so simulating from it needs a known se.")

    mu = np.full(shape[1:], truth.get("intercept", 0.0))
    if "row_effect" in truth:
        mu = mu + np.asarray(truth["row_effect"])[:, None]
    if "col_effect" in truth:
        mu = mu + np.asarray(truth["col_effect"])[None, :]
    if spec.cell_effect == "random":  # one deviation per cell, shared by its replicates
        truth["cell_effect"] = truth["cell_sd"] * rng.standard_normal(shape[1:])
        mu = mu + truth["cell_effect"]
    values = mu + draw_residual(spec, truth, shape, 0.0 if se_arr is None else se_arr, rng)
    miss = _missing_mask(rng, shape, missing)
    grids = None
    if template is not None:
        miss = miss | ~template.mask
        grids = covariate_grid_values(template)
    elif covariates is not None:
        grids = _grids_from_mapping(covariates, shape)
    elif spec.covariates:
        cov_rng = np.random.default_rng(None if seed is None else [int(seed), 0xC0F])
        grids = draw_covariates(spec.covariates, shape, cov_rng)
    values[miss] = np.nan
    if se_arr is not None:
        se_arr[miss] = np.nan

    row_mean, col_mean = row_col_means(truth.get("intercept", 0.0), truth.get("row_effect"), truth.get("col_effect"))
    if row_mean is not None:
        truth["row_mean"] = row_mean
    if col_mean is not None:
        truth["col_mean"] = col_mean
    data = TwoWayData.from_array(values, se=se_arr, row_labels=row_labels, col_labels=col_labels)
    terms: tuple[str, ...] = ()
    if grids is not None:
        data = dataclasses.replace(data, covariates={k: v[data.mask] for k, v in grids.items()})
    if spec.covariates:
        data, truth["coef"], terms = _add_covariates(spec, data, given_coef, rng, location, spread)
    return Simulation(data=data, truth=truth, model=spec, terms=terms)


def _add_covariates(spec: ModelSpec, data: TwoWayData, given_coef, rng: np.random.Generator,
                    location: float, spread: float) -> tuple[TwoWayData, np.ndarray, tuple[str, ...]]:
    """``data`` with ``X @ coef`` added to its observed values; ``coef`` (p,) and the terms (p,).

    The coefficients are ``given_coef`` (an array (p,) or a mapping term -> value), or drawn
    from their prior: ``normal(0, sigma / scale_j)`` with the ``coef`` prior's sigma (for this
    ``location`` and ``spread``, the spec's override kept) and ``scale_j`` the sd of the
    design's column j over the observed cells.
    """
    from twoway.plan import check_confounding
    from twoway.table.covariates import covariate_design

    design = covariate_design(spec.covariates, data, intercept=spec.intercept)
    check_confounding(spec, design)
    terms = tuple(design.terms)
    p = len(terms)
    prior = resolve_priors(spec.parameter_names(), location, spread, spec.model_prior_overrides)["coef"]
    drawn = rng.standard_normal(p) * (prior.kwargs["sigma"] / np.asarray(design.scale, dtype=float))
    if given_coef is None:
        coef = drawn
    elif isinstance(given_coef, Mapping):
        unknown = [k for k in given_coef if k not in terms]
        missing = [t for t in terms if t not in given_coef]
        if unknown or missing:
            raise ModelError(f"The parameter 'coef' must give every term of the covariates ({', '.join(terms)}); "
                             f"got {', '.join(map(repr, given_coef))}.")
        coef = np.array([float(given_coef[t]) for t in terms])
    else:
        coef = np.array(given_coef, dtype=float).reshape(-1) if np.ndim(given_coef) else np.array([given_coef], float)
        if coef.shape != (p,):
            raise ModelError(f"The parameter 'coef' must have one value per term ({p}: {', '.join(terms)}); "
                             f"got shape {np.shape(given_coef)}.")
    if not np.all(np.isfinite(coef)):
        raise ModelError(f"The parameter 'coef' must be finite; got {coef.tolist()!r}.")
    values = np.array(data.values)
    values[data.mask] += np.asarray(design.X, dtype=float) @ coef
    return data.with_values(values), coef, terms


def _grid(value: Any, shape: tuple[int, int, int], name: str) -> np.ndarray:
    """One covariate's values on the (R, N, K) grid: float64 for numbers, an object array of str for text."""
    arr = np.asarray(value)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        arr = arr.astype(str).astype(object)
    else:
        arr = arr.astype(float)
    try:
        return np.array(np.broadcast_to(arr, shape))
    except ValueError:
        raise ModelError(f"The covariate {name!r} must have values broadcastable to the table's grid "
                         f"(replicates, rows, cols) = {shape}; got shape {arr.shape}.") from None


def _grids_from_mapping(covariates: Mapping[str, Any], shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    if not isinstance(covariates, Mapping):
        raise ModelError("The covariates must be a mapping of column name to values, or a TwoWayData; "
                         f"got {type(covariates).__name__}.")
    return {str(k): _grid(v, shape, str(k)) for k, v in covariates.items()}


def covariate_grid_values(data: TwoWayData) -> dict[str, np.ndarray]:
    """A table's covariate columns on its (R, N, K) grid (missing cells: NaN, or None for text).

    Parameters
    ----------
    data : TwoWayData

    Returns
    -------
    dict of str to numpy.ndarray (R, N, K)
        Empty when the table has no covariate columns.
    """
    out = {}
    for name, col in (getattr(data, "covariates", None) or {}).items():
        col = np.asarray(col)
        numeric = col.dtype.kind in "iuf"
        grid = np.full(data.values.shape, np.nan if numeric else None, dtype=float if numeric else object)
        grid[data.mask] = col
        out[name] = grid
    return out


#: Levels of a factor drawn by :func:`draw_covariates`.
DRAWN_LEVELS = ("a", "b", "c")


def draw_covariates(formula: str, shape: tuple[int, int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Values of a formula's variables on every cell of an (R, N, K) grid, for simulating.

    A variable the formula reads as a factor (``C(g)``) gets levels ``a``, ``b``, ``c``
    in about equal numbers, at random cells (each level present on 3 cells or more); any other a positive number, log-normal(0, 0.5) (positive so that
    transforms such as ``np.log(x)`` apply). Each cell (and replicate) gets its own
    value; give values for covariates constant within rows or columns.

    Parameters
    ----------
    formula : str
        The right-hand side (see :func:`twoway.table.covariates.required_variables`).
    shape : (int, int, int)
    rng : numpy.random.Generator

    Returns
    -------
    dict of str to numpy.ndarray (R, N, K)
        float64 values, or object arrays of str for factors, in the order the formula reads them.
    """
    from twoway.table.covariates import required_variables

    factors = set(re.findall(r"\bC\(\s*([A-Za-z_][A-Za-z0-9_.]*)", formula))
    out = {}
    for name in required_variables(formula):
        if name in factors:
            codes = rng.permutation(np.arange(int(np.prod(shape))) % len(DRAWN_LEVELS)).reshape(shape)
            out[name] = np.asarray(DRAWN_LEVELS, dtype=object)[codes]
        else:
            out[name] = rng.lognormal(0.0, 0.5, shape)
    return out
