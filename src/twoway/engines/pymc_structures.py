"""Kronecker structures built into a PyMC model (the ``pymc`` and ``nutpie`` engines).

:func:`build_structure` creates a structure's parameters and matrix inside the
current PyMC model, as described by :class:`twoway.structures.Structure`
(names, dims, priors, unit scale); the JAX engine's twin is
:func:`twoway.engines.jax.model._structure`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from twoway.errors import ModelError
from twoway.likelihood.structured import (ar1_logdet, ar1_matrix, ar1_quad, cs_logdet, cs_matrix, cs_quad,
                                          fa_identify, fa_logdet, fa_matrix, fa_quad)
from twoway.priors import Prior

__all__ = ["BuiltStructure", "build_structure"]


@dataclass(frozen=True)
class BuiltStructure:
    """A structure built into a PyMC model.

    Attributes
    ----------
    cov : TensorVariable, shape (n, n)
        The matrix.
    params : dict of str to TensorVariable
        The public parameters (see :meth:`Structure.parameter_names`), for
        example ``{"row_rho": ..., "row_sd": ...}``.
    kind : str
    structure : Structure
    parts : dict of str to TensorVariable
        The pieces the closed forms use (``sd2``, ``rho``, ``var``,
        ``loadings``, ``psi``, ``chol``).
    """

    cov: Any
    params: dict[str, Any]
    kind: str
    structure: Any
    parts: dict[str, Any] = field(default_factory=dict)

    def logdet(self) -> Any:
        """``log det`` of :attr:`cov` by the structure's closed form (a scalar tensor)."""
        import pytensor.tensor as pt

        p, n = self.parts, self.structure.n
        if self.kind in ("iid", "known"):
            return n * pt.log(p["sd2"]) + p.get("logdet_known", 0.0)
        if self.kind == "diag":
            return pt.log(p["var"]).sum()
        if self.kind == "ar1":
            return ar1_logdet(p["rho"], p["sd2"], n)
        if self.kind == "cs":
            return cs_logdet(p["rho"], p["sd2"], n)
        if self.kind == "fa":
            return fa_logdet(p["loadings"], p["psi"])
        return 2.0 * pt.log(pt.diagonal(p["chol"])).sum()  # unstructured

    def quad(self, X: Any) -> Any:
        """The quadratic forms ``x' cov^-1 x`` by the structure's closed form.

        Parameters
        ----------
        X : array or tensor, shape (..., n)

        Returns
        -------
        tensor, shape (...)
        """
        import pytensor.tensor as pt

        p = self.parts
        X = pt.as_tensor_variable(X)
        if self.kind == "iid":
            return (X * X).sum(axis=-1) / p["sd2"]
        if self.kind == "known":
            return ((X @ p["inverse_known"]) * X).sum(axis=-1) / p["sd2"]
        if self.kind == "diag":
            return (X * X / p["var"]).sum(axis=-1)
        if self.kind == "ar1":
            return ar1_quad(p["rho"], p["sd2"], X)
        if self.kind == "cs":
            return cs_quad(p["rho"], p["sd2"], X)
        if self.kind == "fa":
            return fa_quad(p["loadings"], p["psi"], X)
        n = self.structure.n
        flat = X.reshape((-1, n))
        z = pt.linalg.solve_triangular(p["chol"], flat.T, lower=True)
        return (z * z).sum(axis=0).reshape(X.shape[:-1])


def _add_coords(structure, model: Any) -> None:
    for name, values in structure.coords().items():
        if name in model.coords:
            have = model.coords[name]
            if have is not None and len(have) != len(values):
                raise ModelError(
                    f"The model's {name!r} coordinate has {len(have)} values; the "
                    f"'{structure.side}_structure' needs {len(values)}."
                )
        else:
            model.add_coord(name, values)

def build_structure(structure, priors: Mapping[str, Prior], *, unit_scale: bool) -> BuiltStructure:
    """Create the parameters and the matrix inside the current PyMC model.

    Parameters
    ----------
    priors : mapping of str to Prior
        At least :meth:`prior_names` (other keys are ignored).
    unit_scale : bool
        Build the matrix with mean diagonal 1 (see the module docstring).

    Returns
    -------
    BuiltStructure
        ``cov`` of shape (n, n) and the public parameters (deterministics
        or random variables) with dims as in :meth:`parameter_dims`.
        Coordinates the model lacks are added (:meth:`coords`).
    """
    import pymc as pm
    import pytensor.tensor as pt

    from twoway.engines.pymc_priors import pymc_variable

    model = pm.modelcontext(None)
    _add_coords(structure, model)
    pri = structure.check_priors(priors, unit_scale=unit_scale)
    kind, side, n, nm = structure.kind, structure.side, structure.n, structure._name
    params: dict[str, Any] = {}
    parts: dict[str, Any] = {}

    def scalar_sd2():
        if unit_scale:
            return pt.constant(1.0)
        sd = pymc_variable(pri[nm("sd")], nm("sd"))
        params[nm("sd")] = sd
        return sd * sd

    def unit_sd():
        w = pm.ZeroSumNormal(f"_{nm('log_sd_centred')}", sigma=pri[nm("log_sd_centred")].kwargs["sigma"], dims=side)
        return pm.Deterministic(nm("sd"), pt.sqrt(n * pt.special.softmax(2.0 * w)), dims=side)

    if kind in ("iid", "known"):
        sd2 = scalar_sd2()
        base = np.eye(n) if kind == "iid" else structure._known_unit() if unit_scale else structure.known
        cov = sd2 * pt.constant(base)
        parts["sd2"] = sd2
        if kind == "known":
            sign, logdet = np.linalg.slogdet(base)
            parts["logdet_known"] = float(logdet)
            parts["inverse_known"] = pt.constant(np.linalg.inv(base))
    elif kind == "diag":
        sd = unit_sd() if unit_scale else pymc_variable(pri[nm("sd")], nm("sd"), dims=side)
        params[nm("sd")] = sd
        parts["var"] = sd * sd
        cov = pt.diag(parts["var"])
    elif kind in ("ar1", "cs"):
        rho = pymc_variable(pri[nm("rho")], nm("rho"))
        params[nm("rho")] = rho
        sd2 = scalar_sd2()
        cov = ar1_matrix(rho, sd2, n) if kind == "ar1" else cs_matrix(rho, sd2, n)
        parts.update(rho=rho, sd2=sd2)
    elif kind == "fa":
        # as in the JAX engine: hierarchical scales, raw loadings without constraint, public ones identified
        hide = "_" if unit_scale else ""
        tau_l = pymc_variable(pri[nm("loadings_scale")], f"{hide}{nm('loadings_scale')}")
        tau_p = 1.0 if unit_scale else pymc_variable(pri[nm("psi_scale")], nm("psi_scale"))
        lam = tau_l * pm.Normal(f"_{nm('loadings')}_z", 0.0, 1.0, shape=(n, structure.k))
        psi = tau_p * pm.HalfNormal(f"_{nm('psi')}_z", 1.0, shape=n)
        if unit_scale:
            m = ((lam * lam).sum() + psi.sum()) / n
            lam, psi = lam / pt.sqrt(m), psi / m
        psi = pm.Deterministic(nm("psi"), psi, dims=side)
        loadings = pm.Deterministic(nm("loadings"), fa_identify(lam), dims=(side, f"{side}_factor"))
        params.update({nm("loadings"): loadings, nm("psi"): psi})
        if not unit_scale:
            params.update({nm("loadings_scale"): tau_l, nm("psi_scale"): tau_p})
        parts.update(loadings=lam, psi=psi)  # lam lam' = loadings loadings': the likelihood skips the rotation
        cov = fa_matrix(lam, psi)
    else:  # unstructured
        chol_corr = pm.LKJCorr(f"_{nm('corr')}_chol", n=n, eta=structure.eta)
        corr = pm.Deterministic(nm("corr"), chol_corr @ chol_corr.T, dims=(side, f"{side}_other"))
        sd = unit_sd() if unit_scale else pymc_variable(pri[nm("sd")], nm("sd"), dims=side)
        params = {nm("corr"): corr, nm("sd"): sd}
        parts["chol"] = sd[:, None] * chol_corr
        cov = sd[:, None] * corr * sd[None, :]
    return BuiltStructure(cov=cov, params=params, kind=kind, structure=structure, parts=parts)
