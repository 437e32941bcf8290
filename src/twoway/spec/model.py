"""Model specifications: what a model is, independent of how it is fitted.

A :class:`ModelSpec` describes the mean (intercept, row and column effects) and
the residual of a two-way table model. Backends turn a spec and a table into
something to sample (see :mod:`twoway.build`); the simulator draws tables from
it (see :mod:`twoway.simulate`).

The model::

    y[r,i,j] = intercept + x[r,i,j]' coef + row_effect[i] + col_effect[j] + e[r,i,j]

where ``x`` are the terms of a covariate formula over the long table's columns
(``covariates``, optional) and with independent residuals whose variance mixes the known standard error with
unknown row, column and cell scales:

* ``combine="variance"``: ``Var e = se^2 + row_sd[i]^2 + col_sd[j]^2 + sigma^2``;
* ``combine="sd"``: ``sd e = se + row_sd[i] + col_sd[j] + sigma``.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from twoway.errors import ModelError
from twoway.spec.covariance import is_callable_source
from twoway.spec.names import STANDARD_PARAMETERS, prior_names
from twoway.spec.priors import Prior, check_coef_prior, check_support
from twoway.spec.structures import parse_structure

__all__ = [
    "ModelSpec",
    "PRESETS",
    "preset",
    "load_model",
    "DegreesOfFreedom",
    "degrees_of_freedom",
]

EFFECTS = ("random", "fixed", "none")
SCALES = ("hetero", "homo", "none")
COMBINES = ("variance", "sd")
RESIDUALS = ("independent", "latent", "kronecker", "full")
CELL_EFFECTS = ("none", "random")
EFFECT_MODES = ("integrate", "sample")


@dataclass(frozen=True)
class ModelSpec:
    """A two-way table model.

    Parameters
    ----------
    row_effect, col_effect : {"random", "fixed", "none"}
        ``random``: ``effect ~ normal(0, effect_sd)`` (hierarchical, non-centred);
        ``fixed``: independent wide priors constrained to sum to zero;
        ``none``: no effect.
    row_scale, col_scale : {"hetero", "homo", "none"}
        Residual scale per row (column): one per level, hierarchical on the log
        scale (``hetero``), one shared (``homo``), or none.
    sigma : bool
        Include a cell-level residual scale ``sigma``.
    combine : {"variance", "sd"}
        How the known se and the unknown scales combine (see the module docstring).
    intercept : bool
        Include an intercept.
    residual : {"independent", "latent", "kronecker", "full"}
        The residual structure: independent cells; per-replicate latent row and
        column shocks (scales ``row_scale``/``col_scale``) plus noise; a
        matrix-normal ``U (x) V`` (``row_structure``/``col_structure``) with an
        optional nugget ``sigma``; or a user-given covariance of the whole
        table (``covariance``).
    effects : {"integrate", "sample"}
        ``integrate``: random and fixed effects (and a normal intercept) are
        integrated out of the likelihood exactly and drawn back after
        sampling; ``sample``: the sampler draws them (independent residual only).
    row_structure, col_structure : str
        Kronecker factors: ``iid``, ``diag``, ``ar1``, ``cs``, ``fa:k``,
        ``unstructured``, ``known:FILE``.
    cell_effect : {"none", "random"}
        ``random``: a cell effect ``cell_effect[i,j] ~ normal(0, cell_sd)``
        shared by every replicate of the cell (the row x column interaction
        of a two-way design with replication), integrated out like the row
        and column effects; independent residual, integrated effects only.
    row_effect_cov, col_effect_cov : str or None
        ``known:FILE``: a known relationship matrix K for random effects,
        ``effect ~ normal(0, effect_sd^2 K)``.
    covariance : str or None
        For ``residual="full"``: a CSV file with the (N K) x (N K) covariance of
        the table in row-major order, or ``module:function``, a Python callable
        of named parameters returning it.
    covariates : str or None
        The right-hand side of a model formula over the long table's columns
        (``"x + C(g)"``, ``"np.log(dose) + site:x"``; formulaic's syntax, factors in
        treatment coding): its terms enter the mean, ``X @ coef``, with ``coef``
        (dim ``term``) a Gaussian term of the mean like the intercept (prior
        ``coef``, normal with mu 0, its sigma per one sd of each term). The model has
        its own intercept, so the formula must not write one (``1 +``, ``0 +``, ``- 1``).
        A term constant within rows needs random (not fixed) row effects, one constant
        within columns random column effects: fixed ones would absorb it.
    priors : tuple of (str, Prior)
        Overrides of the default priors, by parameter name.
    name : str
        The preset name, or ``"custom"``.
    """

    row_effect: str = "random"
    col_effect: str = "random"
    row_scale: str = "hetero"
    col_scale: str = "hetero"
    sigma: bool = True
    combine: str = "variance"
    intercept: bool = True
    residual: str = "independent"
    effects: str = "integrate"
    row_structure: str = "iid"
    col_structure: str = "iid"
    cell_effect: str = "none"
    row_effect_cov: str | None = None
    col_effect_cov: str | None = None
    covariance: str | None = None
    covariates: str | None = None
    priors: tuple[tuple[str, Prior], ...] = field(default_factory=tuple)
    name: str = "custom"

    def __post_init__(self) -> None:
        _choice("row_effect", self.row_effect, EFFECTS)
        _choice("col_effect", self.col_effect, EFFECTS)
        _choice("row_scale", self.row_scale, SCALES)
        _choice("col_scale", self.col_scale, SCALES)
        _choice("combine", self.combine, COMBINES)
        _choice("residual", self.residual, RESIDUALS)
        _choice("effects", self.effects, EFFECT_MODES)
        _choice("cell_effect", self.cell_effect, CELL_EFFECTS)
        if self.cell_effect == "random" and (self.residual != "independent" or self.effects != "integrate"):
            raise ModelError("A random cell effect ('cell_effect = \"random\"') works with the independent residual "
                             f"and integrated effects; got residual {self.residual!r}, effects {self.effects!r}.")
        if self.residual != "independent" and self.combine != "variance":
            raise ModelError(f"The '{self.residual}' residual adds variances; 'combine' must be 'variance'; got {self.combine!r}.")
        if self.effects == "sample" and self.residual != "independent":
            raise ModelError("Sampled effects ('effects = \"sample\"') work with the independent residual only; "
                             f"got residual {self.residual!r}.")
        if self.residual == "full" and not self.covariance:
            raise ModelError("The 'full' residual needs a 'covariance': a CSV file or a 'module:function' callable.")
        if self.residual == "latent" and self.row_scale == "none" and self.col_scale == "none":
            raise ModelError("The 'latent' residual needs row or column shocks: set row_scale or col_scale.")
        for name in ("row_effect_cov", "col_effect_cov"):
            value = getattr(self, name)
            if value is not None and not str(value).startswith("known:"):
                raise ModelError(f"The '{name}' option must be 'known:FILE'; got {value!r}.")
        if not isinstance(self.sigma, bool) or not isinstance(self.intercept, bool):
            raise ModelError("The 'sigma' and 'intercept' options must be true or false.")
        if self.covariates is not None:
            if not isinstance(self.covariates, str):
                raise ModelError("The 'covariates' option must be a formula's right-hand side as text, for example "
                                 f"covariates = \"x + C(group)\"; got {self.covariates!r}.")
            formula = self.covariates.strip()
            if formula.startswith("~"):  # a formula written with its tilde: the right-hand side is meant
                formula = formula[1:].strip()
            # an empty formula is no covariates (the same model, compared and stored the same)
            object.__setattr__(self, "covariates", formula or None)
        names = self.parameter_names()
        for key, prior in self.priors:
            if self.residual == "kronecker" and key.startswith(("row_", "col_")) and key not in names:
                continue  # a structure's parameter: checked against the structure when the model is built
            if key not in names:
                raise ModelError(
                    f"The priors must name parameters of this model ({', '.join(names)}); got {key!r}."
                )
            if not isinstance(prior, Prior):
                raise ModelError(f"The prior for {key!r} must be a Prior; got {prior!r}.")
            check_support(key, prior)
            if key == "coef":
                check_coef_prior(prior)

    # -- what the model contains -------------------------------------------------
    def parameter_names(self) -> tuple[str, ...]:
        """Names of the model's parameters that carry a prior, in a stable order (see :mod:`twoway.spec.names`)."""
        out = prior_names(self)
        if self.residual == "full":

            if is_callable_source(self.covariance):
                # a covariance callable's parameters are the priors the model file names besides the
                # standard ones; the plan checks them against the callable's signature (a spec runs no user code)
                out += [k for k, _ in self.priors if k not in out and k not in STANDARD_PARAMETERS]
        return tuple(out)

    def needs_se(self) -> bool:
        """True when no unknown scale is in the model, so the known se must carry the variance."""
        if self.residual in ("kronecker", "full"):
            return False
        return self.row_scale == "none" and self.col_scale == "none" and not self.sigma

    @property
    def prior_overrides(self) -> dict[str, Prior]:
        """Every prior the spec overrides (the Kronecker structures' parameters included)."""
        return dict(self.priors)

    @property
    def model_prior_overrides(self) -> dict[str, Prior]:
        """The overrides of :meth:`parameter_names` only (not of the Kronecker structures' parameters)."""
        names = self.parameter_names()
        return {k: v for k, v in self.priors if k in names}

    def with_priors(self, **priors: Prior) -> "ModelSpec":
        """A copy with further prior overrides."""
        merged = {**dict(self.priors), **priors}
        return replace(self, priors=tuple(merged.items()))

    def describe(self) -> str:
        """One line in words."""
        eff = f"row effects {self.row_effect}, column effects {self.col_effect}"
        sc = f"row scales {self.row_scale}, column scales {self.col_scale}"
        comb = "variances add" if self.combine == "variance" else "standard deviations add"
        if self.cell_effect == "random":
            eff += ", cell effects random"
        return f"{self.label}: {eff}; {self.residual} residual with {sc}, sigma {'on' if self.sigma else 'off'} ({comb}, known se included)"

    def changes_from_preset(self) -> list[str]:
        """What differs from the preset the model is named after (empty for another name).

        Options as ``option value`` (``row_scale homo``), then priors as ``NAME prior``.
        """
        if self.name not in PRESETS:
            return []
        base = ModelSpec(**{**PRESETS[self.name], "name": self.name})
        out = [f"{key} {getattr(self, key)}" for key in self.__dataclass_fields__
               if key not in ("name", "priors", "covariates") and getattr(self, key) != getattr(base, key)]
        return out + [f"{key} prior" for key, _ in self.priors]

    @property
    def label(self) -> str:
        """The model's name as shown, a changed preset named as such: ``crossed (modified: sigma prior)``.

        Covariates are named after it: ``crossed with covariates x + C(g)`` (a preset with
        covariates is that preset's model of what the covariates leave).
        """
        changes = self.changes_from_preset()
        out = f"{self.name} (modified: {', '.join(changes)})" if changes else self.name
        return f"{out} with covariates {self.covariates}" if self.covariates else out

    # -- serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["priors"] = {k: p.to_dict() for k, p in self.priors}
        if d["covariates"] is None:
            # a model without covariates is stored as before they existed: fit files, SBC and fit-many
            # configurations (and their digests) written earlier stay the same
            del d["covariates"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(
                f"The model options must be among {sorted(known - {'priors'}) + ['priors']}; got {', '.join(unknown)}."
            )
        priors = d.pop("priors", {}) or {}
        if not isinstance(priors, Mapping):
            raise ModelError(f"The 'priors' table must map parameter names to priors; got {priors!r}.")
        d["priors"] = tuple((k, Prior.from_mapping(k, v)) for k, v in priors.items())
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return cls.from_dict(json.loads(text))


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ModelError(f"The '{name}' option must be one of {', '.join(allowed)}; got {value!r}.")


PRESETS: dict[str, dict[str, Any]] = {
    # The question's model: Var e = se^2 + row_sd[i]^2 + col_sd[j]^2. A cell-level sigma
    # would be redundant next to two heterogeneous scales (sigma^2 folds into every row_sd^2).
    "additive": dict(combine="variance", row_effect="random", col_effect="random",
                     row_scale="hetero", col_scale="hetero", sigma=False),
    # The seed's model_univar_inf as written: sd e = se + row_sd[i] + col_sd[j] + sigma.
    "additive-sd": dict(combine="sd", row_effect="random", col_effect="random",
                        row_scale="hetero", col_scale="hetero", sigma=True),
}


PRESETS.update({
    # the classic crossed random-intercept model: random rows and columns, one residual sd
    "crossed": dict(combine="variance", row_effect="random", col_effect="random",
                    row_scale="none", col_scale="none", sigma=True),
    # the same with one residual scale per row and per column
    "crossed-hetero": dict(combine="variance", row_effect="random", col_effect="random",
                           row_scale="hetero", col_scale="hetero", sigma=False),
    # the seed's latent model: per-replicate row and column shocks plus noise
    "latent": dict(combine="variance", row_effect="random", col_effect="random", residual="latent",
                   row_scale="hetero", col_scale="hetero", sigma=True),
    # matrix-normal residual U (x) V; choose the factors with row_structure / col_structure
    "kronecker": dict(combine="variance", row_effect="random", col_effect="random", residual="kronecker",
                      row_scale="none", col_scale="none", sigma=False,
                      row_structure="iid", col_structure="iid"),
    # a common-effect (network) meta-analysis: fixed row (study) and column (treatment) effects, the known se
    # the only variance; every unknown is Gaussian and integrated out, so the posterior is drawn exactly (no sampler)
    "common-effect": dict(combine="variance", row_effect="fixed", col_effect="fixed",
                          row_scale="none", col_scale="none", sigma=False),
})


def preset(name: str, **options: Any) -> ModelSpec:
    """The model named ``name`` (see :data:`PRESETS`), with options changed."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ModelError(f"The model must be one of {', '.join(PRESETS)} or a .toml model file; got {name!r}.")
    known = list(ModelSpec.__dataclass_fields__)
    unknown = [k for k in options if k not in known]
    if unknown:

        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ModelError(f"The options of preset({name!r}) must be among {', '.join(known)}; "
                         f"got {', '.join(repr(k) for k in unknown)}{hint}.")
    priors = options.get("priors")
    if isinstance(priors, Mapping):  # {name: Prior or {"dist": ...}}, as in a model file
        options["priors"] = tuple((k, v if isinstance(v, Prior) else Prior.from_mapping(k, v))
                                  for k, v in priors.items())
    return ModelSpec(**{**PRESETS[name], **options, "name": options.get("name", name)})


def load_model(source: "str | Path | ModelSpec") -> ModelSpec:
    """A model from a preset name, a TOML model file, or a spec (returned as is).

    A model file holds ``preset = "additive"`` (optional) and any option of
    :class:`ModelSpec`, plus a ``[priors]`` table, for example::

        preset = "additive"
        row_effect = "fixed"
        col_scale = "homo"
        covariates = "dose + C(site)"

        [priors]
        sigma = { dist = "halfnormal", sigma = 0.5 }
    """
    if isinstance(source, ModelSpec):
        return source
    text = str(source)
    if text in PRESETS:
        return preset(text)
    path = Path(text)
    if path.suffix.lower() != ".toml":
        raise ModelError(f"The model must be one of {', '.join(PRESETS)} or a .toml model file; got {text!r}.")
    if not path.is_file():
        raise ModelError(f"The model file {text!r} does not exist; looked for {os.path.abspath(path)!r}.")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"The model file {text!r} is not valid TOML: {exc}.") from None
    if not table:
        raise ModelError(f"The model file {text!r} must set a preset or model options (for example "
                         f"preset = \"crossed\"); it sets nothing.")
    base_name = table.pop("preset", None)
    if base_name is not None and base_name not in PRESETS:
        raise ModelError(f"The 'preset' in {text!r} must be one of {', '.join(PRESETS)}; got {base_name!r}.")
    base = dict(PRESETS[base_name]) if base_name is not None else {}
    merged = {**base, **_paths_beside(table, path.parent)}
    merged.setdefault("name", base_name or path.stem)
    return ModelSpec.from_dict(merged)


#: Model options that can name a file (``known:FILE``, a covariance CSV, ``FILE.py:function``).
FILE_OPTIONS = ("row_structure", "col_structure", "row_effect_cov", "col_effect_cov", "covariance")


def _paths_beside(table: dict, folder: Path) -> dict:
    """``table`` with the relative file paths of its options made absolute against ``folder``.

    A model file's ``known:K.csv`` means the ``K.csv`` beside the model file, wherever the
    command is run from; the spec holds the absolute path.
    """
    out = dict(table)
    for key in FILE_OPTIONS:
        value = out.get(key)
        if not isinstance(value, str):
            continue
        head, sep, rest = value.strip().partition(":")
        if key != "covariance":
            if head.strip().lower() == "known" and sep and rest.strip():
                out[key] = f"known:{_beside(rest.strip(), folder)}"
        elif value.lower().endswith(".csv"):
            out[key] = _beside(value.strip(), folder)
        else:
            module, sep, func = value.strip().rpartition(":")
            if sep and module.endswith(".py"):
                out[key] = f"{_beside(module, folder)}:{func}"
    return out


def _beside(name: str, folder: Path) -> str:
    path = Path(name).expanduser()
    return os.path.abspath(path if path.is_absolute() else folder / path)


@dataclass(frozen=True)
class DegreesOfFreedom:
    """How many parameters a model spends on a table.

    Attributes
    ----------
    n_cells : int
        Cells in the table, R * N * K.
    n_observed : int
        Observed cells.
    parameters : tuple of (str, int)
        Parameter group and its count.
    """

    n_cells: int
    n_observed: int
    parameters: tuple[tuple[str, int], ...]

    @property
    def n_parameters(self) -> int:
        return sum(n for _, n in self.parameters)

    @property
    def remaining(self) -> int:
        return self.n_observed - self.n_parameters

    @property
    def overparameterised(self) -> bool:
        return self.n_parameters > self.n_observed

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_cells": self.n_cells,
            "observed_cells": self.n_observed,
            "parameters": dict(self.parameters),
            "used": self.n_parameters,
            "remaining": self.remaining,
        }

    def format(self) -> str:
        width = max([len(k) + 2 for k, _ in self.parameters] + [15])
        lines = [f"{'total cells'.ljust(width)}  {self.n_cells}",
                 f"{'observed cells'.ljust(width)}  {self.n_observed}"]
        lines += [f"  {k.ljust(width - 2)}  {n}" for k, n in self.parameters]
        lines += [f"{'parameters used'.ljust(width)}  {self.n_parameters}",
                  f"{'remaining'.ljust(width)}  {self.remaining}"]
        if self.overparameterised:
            lines.append("WARNING: the model has more parameters than observed cells; "
                         "the data cannot pin them all down and the priors will decide.")
        return "\n".join(lines)


def degrees_of_freedom(spec: ModelSpec, n_rows: int, n_cols: int, n_replicates: int = 1,
                       n_observed: int | None = None, *, n_coef: int | None = None) -> DegreesOfFreedom:
    """Count the parameters ``spec`` uses on an (R, N, K) table.

    Random effects count one per level plus their sd; fixed effects one per
    level less the sum-to-zero constraint; heterogeneous scales one per level
    plus the two hyper-parameters of their log-normal population. A model with
    covariates counts ``n_coef`` coefficients (the design's terms, known only on a
    table: :attr:`twoway.plan.Plan.covariates`); not counted when not given.
    """
    for what, n in (("rows", n_rows), ("columns", n_cols), ("replicates", n_replicates)):
        if int(n) != n or n < 1:
            raise ModelError(f"The number of {what} must be a positive whole number; got {n!r}.")
    if n_rows < 2 or n_cols < 2:
        raise ModelError(f"A two-way table needs at least 2 rows and 2 columns; got {n_rows} x {n_cols}.")
    n_cells = n_rows * n_cols * n_replicates
    n_obs = n_cells if n_observed is None else int(n_observed)
    parts: list[tuple[str, int]] = []
    if spec.intercept:
        parts.append(("intercept", 1))
    if spec.covariates and n_coef:
        parts.append(("coef", int(n_coef)))
    for side, kind, n in (("row", spec.row_effect, n_rows), ("col", spec.col_effect, n_cols)):
        if kind == "random":
            parts += [(f"{side}_effect", n), (f"{side}_effect_sd", 1)]
        elif kind == "fixed":
            parts.append((f"{side}_effect", n - 1))
    for side, kind, n in (("row", spec.row_scale, n_rows), ("col", spec.col_scale, n_cols)):
        if kind == "hetero":
            parts += [(f"{side}_sd", n), (f"{side}_log_sd_loc", 1), (f"{side}_log_sd_scale", 1)]
        elif kind == "homo":
            parts.append((f"{side}_sd", 1))
    if spec.sigma:
        parts.append(("sigma", 1))
    if spec.cell_effect == "random":
        parts += [("cell_effect", n_rows * n_cols), ("cell_sd", 1)]
    if spec.residual == "latent":
        for side, kind, n in (("row", spec.row_scale, n_rows), ("col", spec.col_scale, n_cols)):
            if kind != "none":
                parts.append((f"{side}_shock", n * n_replicates))
    if spec.residual == "kronecker":

        for side, text, n, unit in (("row", spec.row_structure, n_rows, False), ("col", spec.col_structure, n_cols, True)):
            if text.startswith("known:"):
                count = 0 if unit else 1
            else:
                st = parse_structure(text, side=side, labels=[f"{side}{k}" for k in range(n)])
                count = st.n_parameters(unit_scale=unit)
            if count:
                parts.append((f"{side}_structure ({text})", count))
    if spec.residual == "full":
        extra = [p for p in spec.parameter_names() if p not in dict(parts) and p not in (
            "row_log_sd_loc", "row_log_sd_scale", "col_log_sd_loc", "col_log_sd_scale", "row_effect_sd",
            "col_effect_sd", "intercept", "sigma", "row_sd", "col_sd", "row_effect", "col_effect", "coef")]
        for p in extra:
            parts.append((p, 1))
    return DegreesOfFreedom(n_cells, n_obs, tuple(parts))
