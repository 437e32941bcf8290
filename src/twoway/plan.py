"""Resolve a model spec on a table, once: the plan every engine builds from.

``plan = resolve(spec, data)`` is where the table enters. It fixes the priors
in force (the model's, scaled to the data, and the Kronecker structures'),
the integration constants (the intercept's prior mean and the fixed effects'
prior sds), the covariates' design and their coefficients' prior sds, the
residual parts (a full covariance, the row and column structures), the layout
of the observed cells, the integrated effects' design (with known relationship
matrices) and the exact likelihood path.
Engines (PyMC, nutpie, JAX) build their log-density from a plan; the
draw-back of effects, moments and covariances read it; nothing re-resolves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import numpy as np

from twoway.errors import ModelError
from twoway.likelihood import memory
from twoway.likelihood import sparse as sp
from twoway.likelihood.marginal import effects_design, layout
from twoway.likelihood.paths import choose_path
from twoway.spec.covariance import load_full_covariance
from twoway.spec.model import ModelSpec
from twoway.spec.names import EFFECTS, STANDARD_PARAMETERS, public_names
from twoway.spec.priors import Prior, check_coef_prior, resolve_priors
from twoway.spec.structures import Structure, parse_structure
from twoway.table.data import TwoWayData, _cell_text
from twoway.table.io.matrices import read_labelled_matrix

if TYPE_CHECKING:  # pragma: no cover
    from twoway.likelihood.marginal import EffectsDesign, Layout
    from twoway.likelihood.sparse import SparseDesign
    from twoway.table.covariates import CovariateDesign

#: The integrated effects of a plan: dense, or sparse (which builds a dense twin only when asked,
#: :meth:`~twoway.likelihood.sparse.SparseDesign.dense`). Both have ``m``, ``blocks``, ``dense()`` and
#: ``relationship_scale(side)``.
Design = Union["EffectsDesign", "SparseDesign"]

__all__ = ["Plan", "resolve", "integration_constants", "residual_parts",
           "known_relationships", "covariates_of", "check_confounding", "LIKELIHOODS", "MAX_STORED_COV"]

LIKELIHOODS = ("auto", "dense", "sparse", "nuts")
MAX_STORED_COV = 30  # row_cov / col_cov are stored per draw only up to this many levels


@dataclass(frozen=True, eq=False)
class Plan:
    """A spec resolved on a table.

    Attributes
    ----------
    spec : ModelSpec
    data : TwoWayData
        The table, (R, N, K).
    priors : dict of str to Prior
        Every prior in force, structures' included, in the model's order.
    model_priors : dict of str to Prior
        The model's own priors (without the structures').
    path : str
        The exact likelihood path (``diagonal`` when effects are sampled).
    var_names : list of str
        The sampled (or derived) parameters a user sees, before the effects
        that are drawn back.
    m0 : float
        Prior mean of the intercept (0 without one); integrated paths only.
    constants : dict of str to float
        ``intercept_sd`` and ``{side}_fixed_sd`` of the integrated effects.
    parts : dict
        ``full``: a :class:`~twoway.spec.covariance.FullCovariance`; ``row``/``col``:
        the Kronecker :class:`~twoway.spec.structures.Structure` of each side.
    layout : Layout or None
        The observed cells laid out for the integrated paths.
    design : EffectsDesign or SparseDesign or None
        The integrated effects (None when they are sampled): a
        :class:`~twoway.likelihood.sparse.SparseDesign` on the ``sparse`` path (it
        stays sparse; ask for ``design.dense()`` where a dense one is needed).
    inputs : dict of str to numpy.ndarray
        The matrices read from files, by the model option that named them (``row_structure``,
        ``col_structure``, ``row_effect_cov``, ``col_effect_cov``, ``covariance``), each (n, n)
        in the table's label order (cells row-major for ``covariance``); a fit stores them so
        that it does not need the files again.
    likelihood : str
        The likelihood option the plan was resolved with (see :func:`resolve`); a fit
        records it, and another table of the same layout is resolved with it.
    covariates : CovariateDesign or None
        The design of the spec's covariate formula on the table
        (:func:`twoway.table.covariates.covariate_design`): ``X`` (n_observed, p), rows
        in :meth:`~twoway.table.data.TwoWayData.observed_index` order, its ``terms`` (p,)
        (the coordinate ``term`` of ``coef``) and ``scale`` (p,), each column's sd over
        the observed cells. None without covariates.
    coef_sd : numpy.ndarray or None
        (p,): the prior sd of each coefficient, ``sigma / scale`` with ``sigma`` the
        ``coef`` prior's (per one sd of each term). None without covariates.
    """

    spec: ModelSpec
    data: TwoWayData
    priors: dict
    model_priors: dict
    path: str
    var_names: list
    m0: float = 0.0
    constants: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)
    layout: "Layout | None" = None
    design: "Design | None" = None
    inputs: dict = field(default_factory=dict)
    likelihood: str = "auto"
    covariates: "CovariateDesign | None" = None
    coef_sd: "np.ndarray | None" = None

    @property
    def n_coef(self) -> int:
        """p, the number of covariate terms (0 without covariates)."""
        return 0 if self.covariates is None else len(self.covariates.terms)

    @property
    def integrated(self) -> bool:
        return self.design is not None

    @property
    def labels(self) -> tuple:
        """(row labels, column labels, replicate labels)."""
        d = self.data
        return d.row_labels, d.col_labels, d.replicate_labels

    def structure_priors(self, side: str) -> dict[str, Prior]:
        """The priors of the Kronecker structure on ``side`` (empty for other residuals)."""
        st = self.parts.get(side)
        if st is None:
            return {}
        return {k: self.priors[k] for k in st.prior_names(unit_scale=side == "col") if k in self.priors}

    def with_data(self, data: TwoWayData) -> "Plan":
        """The same plan read against another table of the same layout (priors kept).

        The covariates' design is kept too: the other table is one of the same cells with
        the same covariate values (a compiled model checks that before it calls this).
        """
        if not self.integrated:
            return dataclasses.replace(self, data=data)

        x = None if self.covariates is None else self.covariates.X
        return dataclasses.replace(self, data=data, layout=layout(data, self.m0, self.parts, x=x))


def covariates_of(spec: ModelSpec, data: TwoWayData, priors: dict[str, Prior]):
    """The covariates' design of ``spec`` on ``data`` and their coefficients' prior sds.

    Parameters
    ----------
    spec : ModelSpec
        With ``covariates``, a formula's right-hand side (or None).
    data : TwoWayData
        The table, with the formula's variables among its covariate columns.
    priors : dict of str to Prior
        The model's priors; ``coef`` (normal, mu 0) when there are covariates.

    Returns
    -------
    design : CovariateDesign or None
    coef_sd : numpy.ndarray (p,) or None
        ``priors["coef"].sigma / design.scale``: the prior sd of each coefficient.

    Raises
    ------
    ModelError
        For a bad formula, a term fixed row (column) effects absorb (:func:`check_confounding`),
        a ``coef`` prior that is not normal with mu 0; :class:`~twoway.errors.DataError` for a
        variable the table lacks.
    """
    if not spec.covariates:
        return None, None
    from twoway.table.covariates import covariate_design  # formulaic: only for models with covariates

    design = covariate_design(spec.covariates, data, intercept=spec.intercept)
    check_confounding(spec, design)
    prior = priors.get("coef")
    if prior is None:
        raise ModelError("The model has covariates, so it needs a prior for 'coef' (normal, mu = 0); the priors "
                         "given have none.")
    check_coef_prior(prior)
    coef_sd = prior.kwargs["sigma"] / np.asarray(design.scale, dtype=float)
    coef_sd.setflags(write=False)
    return design, coef_sd


def check_confounding(spec: ModelSpec, design) -> None:
    """Raise :class:`ModelError` for a covariate term that fixed row or column effects absorb.

    A term constant within every row (``level`` ``row``) is a function of the row: fixed
    row effects, each with a wide prior of its own, fit any such function, so the term's
    coefficient would be decided by the priors alone (and the sum-to-zero constraint).
    Random row effects are shrunk towards 0, which keeps it identified. The same for
    columns.
    """
    for term, level in zip(design.terms, design.level):
        for side, words in (("row", "row"), ("col", "column")):
            if level == side and getattr(spec, f"{side}_effect") == "fixed":
                raise ModelError(
                    f"The covariate term {term!r} is constant within every {words}, so fixed {words} effects "
                    f"absorb it (its coefficient is not identified); use random {words} effects "
                    f"({side}_effect = \"random\"), which keep it identified, or drop the term from the formula.")


def integration_constants(spec: ModelSpec, priors: dict[str, Prior]) -> tuple[float, dict[str, float]]:
    """The intercept's prior mean and the fixed prior sds of the integrated effects."""
    m0 = 0.0
    constants = {}
    if spec.intercept:
        p = priors["intercept"]
        if p.dist != "normal":
            raise ModelError(f"Integrating the intercept out needs a normal prior; got {p}. "
                             "Use a normal prior, or effects = \"sample\".")
        m0 = p.kwargs["mu"]
        constants["intercept_sd"] = p.kwargs["sigma"]
    for side, kind in (("row", spec.row_effect), ("col", spec.col_effect)):
        if kind == "fixed":
            check_fixed_prior(priors[f"{side}_effect"], side)
            constants[f"{side}_fixed_sd"] = priors[f"{side}_effect"].kwargs["sigma"]
    return m0, constants


def check_fixed_prior(p: Prior, side: str) -> None:
    """Fixed effects sum to zero: their prior must be normal with mean 0."""
    if p.dist != "normal" or p.kwargs["mu"] != 0.0:
        raise ModelError(f"The prior for fixed '{side}_effect' must be normal with mu = 0 "
                         f"(the effects sum to zero); got {p}.")


def residual_parts(spec: ModelSpec, row_labels, col_labels, *, inputs: dict | None = None) -> dict:
    """What the residual needs besides parameters: the full covariance, the Kronecker structures.

    ``inputs`` (a :attr:`Plan.inputs`, e.g. a saved fit's) gives matrices that are used instead
    of reading their files again.
    """
    inputs = inputs or {}
    parts = {}
    if spec.residual == "full":

        parts["full"] = load_full_covariance(spec.covariance, row_labels, col_labels,
                                             matrix=inputs.get("covariance"))
    if spec.residual == "kronecker":

        for side, labels in (("row", row_labels), ("col", col_labels)):
            text = getattr(spec, f"{side}_structure")
            stored = inputs.get(f"{side}_structure")
            if stored is not None and text.strip().lower().startswith("known:"):
                parts[side] = Structure("known", side, tuple(labels), path=text.partition(":")[2].strip(),
                                        known=np.asarray(stored, dtype=float))
            else:
                parts[side] = parse_structure(text, side=side, labels=labels)
    return parts


def known_relationships(spec: ModelSpec, data: TwoWayData, *, inputs: dict | None = None) -> dict:
    """Known relationship matrices of random effects (``row_effect_cov = "known:FILE"``).

    ``inputs`` as in :func:`residual_parts`: stored matrices used instead of the files.
    """
    return known_matrices(spec, data.row_labels, data.col_labels, inputs=inputs)


def known_matrices(spec: ModelSpec, row_labels, col_labels, *, inputs: dict | None = None) -> dict:
    """Known relationship matrices of random effects on tables with these labels, by side.

    Returns
    -------
    dict of str to numpy.ndarray
        ``row``: (N, N) and/or ``col``: (K, K), in the labels' order.
    """
    inputs = inputs or {}
    out = {}
    for side, labels in (("row", row_labels), ("col", col_labels)):
        value = getattr(spec, f"{side}_effect_cov")
        if value is not None and getattr(spec, f"{side}_effect") == "random":
            stored = inputs.get(f"{side}_effect_cov")
            out[side] = (np.asarray(stored, dtype=float) if stored is not None else
                         read_labelled_matrix(value[len("known:"):], list(labels), what=f"{side}_effect_cov"))
    return out


def plan_inputs(spec: ModelSpec, parts: dict, known: dict) -> dict:
    """The matrices a plan read from files, by the model option that named them (see :attr:`Plan.inputs`)."""
    out = {}
    full = parts.get("full")
    if full is not None and getattr(full, "matrix", None) is not None:
        out["covariance"] = np.asarray(full.matrix, dtype=float)
    for side in ("row", "col"):
        st = parts.get(side)
        if st is not None and st.kind == "known":
            out[f"{side}_structure"] = np.asarray(st.known, dtype=float)
        if side in known:
            out[f"{side}_effect_cov"] = np.asarray(known[side], dtype=float)
    return out


def _structure_priors(spec: ModelSpec, parts: dict, spread: float) -> dict[str, Prior]:
    out: dict[str, Prior] = {}
    for side, unit in (("row", False), ("col", True)):
        st = parts[side]
        defaults = st.default_priors(spread, unit_scale=unit)
        chosen = {k: spec.prior_overrides.get(k, v) for k, v in defaults.items()}
        out.update(st.check_priors(chosen, unit_scale=unit))
    return out


def resolve(spec: ModelSpec, data: TwoWayData, *, likelihood: str = "auto",
            priors: dict[str, Prior] | None = None, inputs: dict | None = None) -> Plan:
    """Resolve ``spec`` on ``data``.

    Parameters
    ----------
    spec : ModelSpec
    data : TwoWayData
        The table, (R, N, K); only observed cells enter the likelihood.
    likelihood : {"auto", "dense", "sparse", "nuts"}
        ``auto`` picks the fastest exact path (``sparse`` for crossed random
        effects on a large sparse table); ``dense`` the dense reference;
        ``sparse`` forces the sparse path; ``nuts`` the fastest path a NUTS
        engine can trace (never ``sparse``). A path whose memory need exceeds
        the memory available is refused (:class:`ModelError`).
    priors : dict of str to Prior, optional
        Every prior in force, as recorded by an earlier plan (a saved fit's):
        used as they are instead of defaults scaled to ``data``.
    inputs : dict of str to numpy.ndarray, optional
        Matrices recorded by an earlier plan (:attr:`Plan.inputs`, a saved fit's), used
        instead of reading the model's ``known:FILE`` and covariance files again.

    Returns
    -------
    Plan

    Raises
    ------
    ModelError
        When the model cannot be fitted to this table (no scale and no se,
        a prior the integrated paths cannot use, an unknown prior name).
    """
    if not isinstance(data, TwoWayData):
        raise ModelError(f"The data must be a TwoWayData; got {type(data).__name__}.")
    if spec.needs_se() and not data.has_se:
        raise ModelError(
            "The model has no unknown scale (row_scale, col_scale and sigma are all off), "
            "so every cell needs a known standard error; the table has none."
        )
    if spec.needs_se() and np.any(data.se_or_zero()[data.mask] == 0):

        r, i, j = np.argwhere(data.mask & (data.se_or_zero() == 0))[0]
        raise ModelError(
            "The model has no unknown scale (row_scale, col_scale and sigma are all off), so every cell needs "
            f"a known standard error; {_cell_text(r, i, j, data.replicate_labels, data.row_labels, data.col_labels)} "
            "has none (an empty se). Give it one, or add an unknown scale (sigma = true)."
        )
    if likelihood not in LIKELIHOODS:
        raise ModelError(f"The likelihood must be one of {', '.join(LIKELIHOODS)}; got {likelihood!r}.")
    if priors is not None:
        given = dict(priors)
        model_priors = {k: given[k] for k in spec.parameter_names() if k in given}
    else:
        model_priors = resolve_priors(spec.parameter_names(), data.location(), data.spread(),
                                      spec.model_prior_overrides)
    for side, kind in (("row", spec.row_effect), ("col", spec.col_effect)):
        if kind == "fixed":
            check_fixed_prior(model_priors[f"{side}_effect"], side)
    cov, coef_sd = covariates_of(spec, data, model_priors)
    if spec.effects != "integrate":
        path = "dense" if likelihood == "dense" else "diagonal"
        return Plan(spec=spec, data=data, priors=dict(model_priors), model_priors=model_priors, path=path,
                    var_names=public_names(spec), likelihood=likelihood, covariates=cov, coef_sd=coef_sd)


    m0, constants = integration_constants(spec, model_priors)
    parts = residual_parts(spec, data.row_labels, data.col_labels, inputs=inputs)
    recorded, priors = priors, dict(model_priors)
    extra: list[str] = []
    if spec.residual == "full":
        declared = [n for n in spec.parameter_names() if n not in STANDARD_PARAMETERS]
        wanted = list(parts["full"].parameters)
        missing = [n for n in wanted if n not in declared]
        if missing:
            raise ModelError(f"The covariance {spec.covariance!r} takes {', '.join(wanted)}; give each a prior "
                             f"in the model file's [priors] table (missing: {', '.join(missing)}).")
        unused = [n for n in declared if n not in wanted]
        if unused:
            raise ModelError(f"The priors must name parameters of this model; the covariance {spec.covariance!r} "
                             f"takes {', '.join(wanted) or 'none'}, not {', '.join(unused)}.")
        extra += wanted
    if spec.residual == "kronecker":
        if recorded is not None:
            priors.update({k: v for k, v in recorded.items() if k not in priors})
        else:
            priors.update(_structure_priors(spec, parts, data.spread()))
        for side, unit in (("row", False), ("col", True)):
            st = parts[side]
            extra += [n for n in st.parameter_names(unit_scale=unit) if n not in extra]
            if st.n <= MAX_STORED_COV:
                extra.append(f"{side}_cov")
        unknown = sorted(k for k in spec.prior_overrides if k not in priors)
        if unknown:
            raise ModelError(f"The priors must name parameters of this model ({', '.join(priors)}); "
                             f"got {', '.join(unknown)}.")
    lay = layout(data, m0, parts, x=None if cov is None else cov.X)
    known = known_relationships(spec, data, inputs=inputs)
    design = _design(spec, data, known, likelihood, coef_sd)
    path = choose_path(spec, lay, design, likelihood=likelihood)
    names = [n for n in public_names(spec) if n not in EFFECTS] + extra
    return Plan(spec=spec, data=data, priors=priors, model_priors=model_priors, path=path, var_names=names,
                m0=m0, constants=constants, parts=parts, layout=lay, design=design,
                inputs=plan_inputs(spec, parts, known), likelihood=likelihood, covariates=cov, coef_sd=coef_sd)


def _design(spec: ModelSpec, data: TwoWayData, known: dict, likelihood: str, coef_sd=None):
    """The integrated effects' design: sparse (large sparse crossed tables, or asked) or dense.

    A dense design whose paths would need more memory than is available is
    refused here, before it is built, rather than after a long silent run.
    ``coef_sd`` (p,), the covariates' coefficients' prior sds, adds their block.
    """
    extra = {} if coef_sd is None else {"coef_sd": coef_sd}

    fits_sparse = sp.sparse_applies(spec)
    if likelihood == "sparse":
        if not fits_sparse:
            raise ModelError("The sparse likelihood path fits random row and/or column effects with an independent "
                             "residual without row or column scales (one sigma and/or known se); "
                             f"got the model {spec.name!r}.")
        return sp.SparseDesign(spec, data, known, **extra)
    if likelihood == "auto" and fits_sparse and sp.prefers_sparse(spec, data):
        return sp.SparseDesign(spec, data, known, **extra)
    need = memory.dense_path_bytes(spec, data, n_cov=0 if coef_sd is None else len(coef_sd))
    if likelihood == "dense" or spec.residual == "full":
        need += 3 * 8 * data.n_observed ** 2  # the whole covariance of the observed cells, and its factor
    available = memory.available_memory()
    if need > available:
        if likelihood == "auto" and fits_sparse:
            return sp.SparseDesign(spec, data, known, **extra)
        which = "dense" if likelihood == "dense" else "integrated (NUTS)"
        hint = (" The sparse path (likelihood=\"sparse\", the laplace engine) needs memory in proportion to the "
                "observed cells." if fits_sparse else "")
        raise ModelError(f"The {which} likelihood path for this {data.n_rows} x {data.n_cols} table would need about "
                         f"{memory.gib(need)} of memory; {memory.gib(available)} is available.{hint}")
    return effects_design(spec, data, known=known, **extra)


def anova_vector(stats) -> np.ndarray:
    """The five balanced sums of squares as one vector (grand, row, col, interaction, within)."""
    return np.array([stats.ss_grand, stats.ss_row, stats.ss_col, stats.ss_inter, stats.ss_within])
