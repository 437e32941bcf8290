"""What an engine is and what its draws are: the Engine interface and EngineDescription.

Results read a fit's description (recorded in ``fit.info``), never the engine's name.
"""


from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Protocol

__all__ = ["Engine", "EngineDescription", "NUTS", "EXACT", "LAPLACE", "description_from_info",
           "with_progress_bar"]


@dataclass(frozen=True)
class EngineDescription:
    """What an engine's draws are, so that results can read them without knowing the engine.

    Attributes
    ----------
    method : str
        How the draws were made: ``nuts``, ``exact`` (independent draws from an exact
        Gaussian posterior) or ``laplace-importance``; recorded as ``fit.info["method"]``.
    chains_comparable : bool
        The chains are independent runs, so R-hat (their agreement) means something.
    draws_independent : bool
        The draws are independent of each other (no Markov chain: no mode check).
    draws_effects : bool
        The engine draws the integrated effects itself; otherwise the fit draws them
        back from their exact conditional law.
    diagnostics : tuple of str
        The diagnostics the engine reports: ``divergences`` (from the sampler statistics),
        and keys of ``fit.info`` (``importance_ess``, ``pareto_k``, ``factorisations``,
        ``proposals``).
    posterior_gaussian : bool
        The whole posterior is one Gaussian known exactly (nothing was sampled): leave-one-out
        and predictive densities are computed exactly rather than from draws.
    progress_bar : bool
        The engine shows a progress bar of its own (the command line then prints no
        progress lines of its own for the sampling).
    how : str
        One line saying how the fit was made: a template filled from ``fit.info``
        (``{likelihood_path}``, ``{engine}``, ``{chains}``, ``{draws}``, ``{tune}``,
        ``{seed}`` and the engine's own keys).
    """

    method: str
    chains_comparable: bool
    draws_independent: bool
    draws_effects: bool
    diagnostics: tuple = ()
    posterior_gaussian: bool = False
    progress_bar: bool = False
    how: str = ""

    @property
    def importance(self) -> bool:
        """Whether the draws are importance-resampled (an importance ESS and Pareto k are reported)."""
        return "importance_ess" in self.diagnostics

    @property
    def markov_chains(self) -> bool:
        """Whether the chains are Markov chains that may sit in different modes."""
        return self.chains_comparable and not self.draws_independent

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``description`` entry of ``fit.info``)."""
        out = asdict(self)
        out["diagnostics"] = list(self.diagnostics)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EngineDescription":
        """The description written by :meth:`to_dict`."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["diagnostics"] = tuple(known.get("diagnostics", ()))
        return cls(**known)

    def describe(self, info: Mapping[str, Any]) -> str:
        """:attr:`how` filled from ``info`` (a fit's info; a missing key reads ``?``)."""
        return self.how.format_map(_Defaulting(info))


class _Defaulting(dict):
    def __missing__(self, key):
        return "?"


#: The NUTS engines (jax, nutpie, pymc): Markov chains, effects drawn back by the fit.
NUTS = EngineDescription(
    method="nuts", chains_comparable=True, draws_independent=False, draws_effects=False,
    diagnostics=("divergences",),
    how="likelihood: {likelihood_path} (exact); engine: {engine}; {chains} chains x {draws} draws after "
        "{tune} tuning; seed {seed}")

#: No sampler: independent draws from the exact Gaussian posterior.
EXACT = EngineDescription(
    method="exact", chains_comparable=True, draws_independent=True, draws_effects=False, posterior_gaussian=True,
    how="posterior: exact Gaussian, nothing left to sample (no sampler); {chains} x {draws} independent draws; "
        "seed {seed}")

#: Nested Laplace + importance sampling, resampled into chains (the effects drawn with each proposal).
LAPLACE = EngineDescription(
    method="laplace-importance", chains_comparable=False, draws_independent=False, draws_effects=True,
    diagnostics=("importance_ess", "pareto_k", "factorisations", "proposals"),
    how="likelihood: {likelihood_path} (exact); engine: laplace (nested Laplace, importance sampling with exact "
        "weights, {proposals} proposals resampled to {chains} x {draws}); seed {seed}")


def description_from_info(info: Mapping[str, Any]) -> EngineDescription:
    """The engine description a fit recorded; for a fit written before it was recorded, the one of its method."""
    if "description" in info:
        return EngineDescription.from_dict(info["description"])
    by_method = {d.method: d for d in (NUTS, EXACT, LAPLACE)}  # an older fit file: its method is all it says
    return by_method.get(info.get("method", "nuts"), NUTS)


def with_progress_bar(description: EngineDescription) -> EngineDescription:
    """``description`` for an engine that shows its own progress bar."""
    return replace(description, progress_bar=True)


class Engine(Protocol):  # pragma: no cover - a description
    name: str
    reuses_priors: bool
    min_tune: int
    description: EngineDescription

    def compile(self, plan, *, progress) -> Any: ...

    def sample(self, compiled, plan, *, chains: int, draws: int, tune: int, seed, progress, cores, report=None): ...

    def compile_seconds_in_sample(self, compiled) -> float: ...

