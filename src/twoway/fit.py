"""Fit a model to a table: sample, then hold the result as an ArviZ DataTree.

:func:`fit` chooses an engine (:mod:`twoway.engines.choose`: the ``jax`` engine's
NUTS by default, ``nutpie`` or PyMC's own NUTS when named, ``laplace`` for a table
on the sparse path, no sampler when nothing is left to sample), compiles the model,
samples it and returns a :class:`Fit`. The fit's DataTree holds

* ``posterior``: the parameters a user sees, dims ``row``/``col`` labelled
  (``coef``, the covariates' coefficients, on dim ``term``: the design's column
  names); :attr:`Fit.posterior` adds the derived ``row_mean`` and ``col_mean``
  (intercept plus the effects: with covariates, the means at covariate values 0,
  i.e. every numeric term at 0 and every factor at its reference level),
  computed when read, never stored;
* ``sample_stats``: the sampler's per-draw statistics;
* ``observed_data``: the observed cells of the table (``y`` and ``se`` on the dim
  ``cell``, with their replicate, row and column positions and the covariates;
  :meth:`twoway.table.data.TwoWayData.to_dataset`, layout ``cells``);
* attributes: the model spec, the priors in force, the data summary, the
  likelihood path and option, the engine and its description, seed and timings.

A fit is saved to one file (netCDF, or a zarr store when the name ends in
``.zarr``) and loads back whole. The file grows with the observed cells and the
distinct draws, not the grid: where an engine repeats draws (the ``laplace``
engine resamples a few hundred proposals into every chain), the posterior group
holds each distinct draw once, on the dim ``unique_draw``, with
``unique_draw_index`` (chain, draw) saying which (:meth:`Fit.load` puts every
draw back); float64 throughout, zlib-compressed in netCDF where it saves at
least a fifth (a zarr store uses zarr's default compressor). Files written by
earlier versions (the observed grid, stored ``row_mean``/``col_mean``) load too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from twoway.engines.startup import check_start, start_failure
from twoway.errors import TwowayError
from twoway.likelihood import memory
from twoway.likelihood.marginal import draw_cell_effects, draw_shocks
from twoway.likelihood.paths import draw_effects
from twoway.results.contrasts import contrasts
from twoway.results.decomposition import variance_decomposition
from twoway.results.predict import predict
from twoway.table.io.outputs import atomic_output, check_output

# Deferred imports: xarray (heavy to import); twoway.results.summary (they import pandas or xarray at their
# top) are imported inside the functions that use them, so importing this module stays light.


def _xr():
    """xarray, imported on first use (``import twoway`` stays light)."""
    import xarray

    return xarray

from twoway._version import __version__
from twoway.engines.choose import (
    DEFAULT_ENGINE,
    ENGINES,
    Choice,
    choose,
    engine_for,
    engine_name,
    get_engine,
    nothing_to_sample,
    replan,
)
from twoway.engines.description import EngineDescription, description_from_info
from twoway.errors import FitError
from twoway.plan import MAX_STORED_COV, Plan, resolve
from twoway.spec.derived import DERIVED_MEANS, MEAN_SOURCES, row_col_means
from twoway.spec.model import ModelSpec, load_model
from twoway.spec.names import public_names
from twoway.spec.priors import Prior
from twoway.table.data import TwoWayData

__all__ = ["Fit", "fit", "compile_model", "CompiledModel", "ENGINES"]

#: File endings of a fit: netCDF (HDF5) files, or a zarr store (a folder).
FIT_ENDINGS = (".nc", ".h5", ".zarr")

#: The group of a fit's DataTree holding the matrices its model read from files.
INPUTS_GROUP = "inputs"


@dataclass(frozen=True, eq=False)
class Fit:
    """A fitted model: the DataTree and what it was fitted from.

    Attributes
    ----------
    tree : xarray.DataTree
        Groups ``posterior``, ``sample_stats``, ``observed_data``; attributes as
        described in the module docstring.
    """

    tree: _xr().DataTree

    # -- what it holds --------------------------------------------------------
    @property
    def posterior(self) -> _xr().Dataset:
        """The posterior group, with the derived ``row_mean`` (chain, draw, row) and ``col_mean`` (chain,
        draw, col) after the stored parameters (see :mod:`twoway.spec.derived`).

        The means are computed from the draws once per Fit (and again only when the tree's
        intercept or effects are replaced); a file that stores them is read as it is.
        """
        post = self.tree["posterior"].to_dataset()
        derived = self._derived_means(post)
        return post.assign(derived) if derived else post

    @cached_property
    def _memo(self) -> dict[str, Any]:
        """Values computed once per Fit from its tree (the derived means with the arrays they came from)."""
        return {}

    def _derived_means(self, post: _xr().Dataset) -> dict[str, Any]:
        """The derived means ``post`` does not hold, as DataArrays by name (empty when it holds them)."""
        if all(name in post.data_vars for name in DERIVED_MEANS):
            return {}
        sources = tuple(post[n].data if n in post.data_vars else None for n in MEAN_SOURCES)
        memo = self._memo.get("means")
        if memo is not None and all(a is b for a, b in zip(memo[0], sources, strict=True)):
            return memo[1]
        derived = _derived_means(post)
        self._memo["means"] = (sources, derived)
        return derived

    @property
    def sample_stats(self) -> _xr().Dataset:
        return self.tree["sample_stats"].to_dataset()

    @property
    def model(self) -> ModelSpec:
        return ModelSpec.from_json(self.tree.attrs["twoway_model"])

    @property
    def priors(self) -> dict[str, Prior]:
        raw = json.loads(self.tree.attrs["twoway_priors"])
        return {k: Prior.from_mapping(k, v) for k, v in raw.items()}

    @cached_property
    def data(self) -> TwoWayData:
        """The table fitted, read once per Fit from ``observed_data`` (either layout, see
        :meth:`twoway.table.data.TwoWayData.from_dataset`)."""
        return TwoWayData.from_dataset(self.tree["observed_data"].to_dataset())

    @property
    def info(self) -> dict[str, Any]:
        """Engine and its description, likelihood path and option, seed, chains, draws, tune and timings."""
        return json.loads(self.tree.attrs["twoway_info"])

    @property
    def description(self) -> EngineDescription:
        """What the engine's draws are (:class:`~twoway.engines.description.EngineDescription`); results read this,
        never the engine's name."""
        return description_from_info(self.info)

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        """The matrices the model read from files (known matrices, a full covariance), as stored in the fit.

        Keys are the model options that named the files (see :attr:`twoway.plan.Plan.inputs`).
        """
        if INPUTS_GROUP not in self.tree.children:
            return {}
        ds = self.tree[INPUTS_GROUP].to_dataset()
        return {str(name): np.asarray(ds[name].values, dtype=float) for name in ds.data_vars}

    @cached_property
    def plan(self) -> Plan:
        """The plan this fit was sampled with: its model resolved on its table with the priors and the
        likelihood option it was fitted with (the same path and design); resolved once per Fit.

        Matrices stored in the fit are used, so the files they came from are not needed. A fit
        written before the likelihood option was recorded is resolved as its engine was chosen
        then (see :func:`twoway.engines.choose.replan`).
        """
        return replan(self.model, self.data, self.info, priors=self.priors, inputs=self.inputs)

    @property
    def engine(self) -> str:
        """The engine that sampled this fit (as named or chosen; ``unknown`` for a fit file that does not say)."""
        info = self.info
        return info.get("engine") or info.get("backend") or "unknown"

    @property
    def parameter_names(self) -> list[str]:
        return list(json.loads(self.tree.attrs["twoway_parameters"]))

    def summary(self, *, var_names: list[str] | None = None, ci_prob: float = 0.94,
                contrasts: list | None = None, decomposition: bool = True):
        """Per-parameter statistics and overall diagnostics; see :func:`twoway.results.summary.summarize`."""
        from twoway.results.summary import summarize

        return summarize(self, var_names=var_names, ci_prob=ci_prob, contrasts=contrasts,
                         decomposition=decomposition)

    def contrasts(self, *, row: str | None = None, col: str | None = None, ci_prob: float = 0.94):
        """Each row (column) mean minus the reference level's; see :func:`twoway.results.contrasts.contrasts`."""

        return contrasts(self, row=row, col=col, ci_prob=ci_prob)

    def variance_decomposition(self, *, ci_prob: float = 0.94):
        """Variance components, shares and intraclass correlations; see :mod:`twoway.results.decomposition`."""

        return variance_decomposition(self, ci_prob=ci_prob)

    def predict(self, *, new_observation: bool = False, ci_prob: float = 0.94, new_rows=(), new_cols=(),
                max_draws: int | None = None, seed: int | None = 0, at=None, cells=None, grid: bool | None = None,
                sink=None, progress=None):
        """Cells' means (or a new observation), fitted and predicted; see :func:`twoway.results.predict.predict`.

        ``cells`` (``at`` is its older name), a long table (pandas.DataFrame) of cells (row, col,
        replicate where the fit has several, and the covariate columns), predicts those cells at
        those covariate values; ``grid`` True predicts every cell of the grid, False the observed
        cells (and new levels' cells), None (default) the grid up to a size and the observed cells
        above it; ``sink`` receives the lines chunk by chunk (then totals are returned);
        ``progress(done, total)`` is called after each chunk.
        """
        return predict(self, new_observation=new_observation, ci_prob=ci_prob, new_rows=new_rows,
                       new_cols=new_cols, max_draws=max_draws, seed=seed, at=at, cells=cells, grid=grid,
                       sink=sink, progress=progress)

    # -- files ------------------------------------------------------------------
    def save(self, path: "str | os.PathLike[str]") -> Path:
        """Write the fit to one file: netCDF (``.nc``, ``.h5``), or a zarr store when ``path`` ends in ``.zarr``.

        The write is atomic: the fit goes to a hidden temporary beside ``path`` that is renamed
        over it only when complete, so a run killed while writing leaves the previous file whole.
        The file is self-contained: known matrices and full covariances the model read are stored
        in it (group ``inputs``), so it loads, summarises and compares with those files gone.
        Its size follows the observed cells and the distinct draws (see the module's docstring):
        the derived means are not written, the observed cells are written alone, repeated draws once.
        """

        path = check_fit_output(path)
        stored = _file_tree(self.tree)
        try:
            if path.suffix.lower() == ".zarr":
                with warnings.catch_warnings():
                    # zarr 3 warns on every consolidated write that consolidated metadata is not in its
                    # format's specification; xarray reads it back, so the warning says nothing to a user.
                    warnings.filterwarnings("ignore", category=UserWarning,
                                            message=r"Consolidated metadata is currently not part")
                    _replace_folder(path, lambda tmp: stored.to_zarr(tmp, mode="w"))
            else:
                with atomic_output(path) as tmp:
                    stored.to_netcdf(tmp, engine="h5netcdf", encoding=_compression(stored))
        except OSError as exc:
            raise FitError(f"The fit could not be written to {str(path)!r}: {exc.strerror or exc}.") from None
        return path

    @classmethod
    def load(cls, path: "str | os.PathLike[str]") -> "Fit":
        """Read a fit written by :meth:`save` (by this version or an earlier one), every draw in place."""
        path = Path(path)
        if not path.exists():
            raise FitError(f"The fit file {str(path)!r} does not exist.")
        try:
            if path.suffix == ".zarr" or path.is_dir():
                tree = _xr().open_datatree(path, engine="zarr")
            else:
                tree = _xr().open_datatree(path, engine="h5netcdf")
            tree = tree.load()
        except Exception as exc:  # any reader failure means: not a fit file
            raise FitError(f"The file {str(path)!r} is not a twoway fit ({type(exc).__name__}: {exc}).") from None
        if "twoway_model" not in tree.attrs or "posterior" not in tree.children:
            raise FitError(f"The file {str(path)!r} is not a twoway fit (it has no twoway model or posterior).")
        post = tree["posterior"].to_dataset()
        if UNIQUE_DRAW_INDEX in post.variables:
            post = unpack_draws(post)
        tree["posterior"] = _xr().DataTree(_in_order(post, tree.attrs.get("twoway_parameters")))
        return cls(tree)


@dataclass(frozen=True, eq=False)
class CompiledModel:
    """A model compiled once for tables of one layout, ready to sample many of them.

    Compiling takes seconds; swapping in a new table with the same layout (same
    shape, missing cells and standard errors) does not. With the ``jax`` engine
    the priors' numbers are arguments too, so tables whose default priors
    differ reuse the program; ``nutpie`` and ``pymc`` need the same priors.

    Attributes
    ----------
    spec : ModelSpec
    plan : Plan
        The plan of the table the model was compiled for.
    engine : str
        The engine's name, as named or chosen (see :mod:`twoway.engines.choose`).
    compiled : object
        What the engine built (see :mod:`twoway.engines`).
    compile_seconds : float
    """

    spec: ModelSpec
    plan: Plan
    engine: str
    compiled: Any
    compile_seconds: float

    @property
    def template(self) -> TwoWayData:
        """The table the model was compiled for."""
        return self.plan.data

    def plan_for(self, data: TwoWayData) -> Plan:
        """The plan of ``data`` under this compiled model; :class:`FitError` unless the layout is the same."""
        if data is self.plan.data:
            return self.plan
        t = self.template
        same = (data.values.shape == t.values.shape and np.array_equal(data.mask, t.mask)
                and data.has_se == t.has_se
                and (not t.has_se or np.array_equal(data.se_or_zero(), t.se_or_zero())))
        if not same:
            raise FitError("The table must have the layout the model was compiled for "
                           "(shape, missing cells and standard errors); compile again for this one.")
        new = resolve(self.spec, data, likelihood=self.plan.likelihood)  # the option the compiled plan was chosen with
        _check_same_covariates(new, self.plan)
        if engine_for(new, self.engine).reuses_priors:
            if {k: p.dist for k, p in new.priors.items()} != {k: p.dist for k, p in self.plan.priors.items()}:
                raise FitError("The table's priors are of other families than the compiled model's; "
                               "compile again for this one.")
            return new
        if new.priors != self.plan.priors:
            raise FitError("The table's default priors differ from the compiled model's (they scale with the "
                           "data); give every prior explicitly in the model to reuse a compiled model, "
                           "or use the jax engine, which takes the priors as arguments.")
        return self.plan.with_data(data)

    def check_layout(self, data: TwoWayData) -> None:
        """Raise :class:`FitError` unless ``data`` can reuse this compiled model."""
        self.plan_for(data)

    def sample(self, data: TwoWayData | None = None, *, chains: int = 4, draws: int = 1000,
               tune: int = 1000, seed: int | None = None, progress: bool | None = None,
               cores: int | None = None, on_progress=None) -> "Fit":
        """Sample the model on ``data`` (default: the table it was compiled for); see :func:`fit`.

        ``on_progress``, if given, is called as each phase starts, ``on_progress(event, **details)``:
        ``"compile"``; ``"sample"`` (``compile_seconds``, ``cache``: ``hit``, ``miss``, ``off`` or
        ``in memory``); ``"iterations"`` (``done``, ``total``: iterations, warm-up included, over all
        chains; the jax engine tells them as each chain's segment of iterations ends);
        ``"draw_back"`` (the integrated effects are drawn). The command line prints its lines from it.
        """
        data = self.template if data is None else data
        check_sampling_options(chains, draws, tune, seed, self.engine)
        if seed is None:  # a seed from the OS's entropy, recorded in info["seed"]: the fit can be redone
            seed = secrets.randbelow(2**31)
        plan = self.plan_for(data)
        check_draws_memory(plan, chains, draws)
        if progress is None:
            progress = sys.stderr.isatty()
        eng = engine_for(plan, self.engine)  # no sampler when every unknown is integrated out
        t0 = time.perf_counter()
        compile_seconds = float(self.compile_seconds)
        extra: dict[str, Any] = {}

        if not nothing_to_sample(plan) and plan is not self.plan:  # compile_model checked the compiled plan already
            check_start(plan, seed=seed)  # no finite starting point: one clear error before any sampler runs
        try:
            raw = eng.sample(self.compiled, plan, chains=chains, draws=draws, tune=tune, seed=seed,
                             progress=progress, cores=cores,
                             report=_phase_reporter(progress, chains, draws, extra, on_progress))
        except FitError:
            raise
        except Exception as exc:  # a sampler's own start-up failure (PyMC's SamplingError, nutpie's RuntimeError)
            failure = start_failure(plan, exc, engine=self.engine, seed=seed)
            if failure is None:
                raise
            raise failure from None
        compile_seconds += eng.compile_seconds_in_sample(self.compiled)
        engine_info = dict(raw.attrs.pop("engine_info", {}))  # an engine's own diagnostics (laplace: importance)
        t_sampling = time.perf_counter() - t0 - (compile_seconds - float(self.compile_seconds))
        info = {
            "engine": self.engine,
            "backend": self.engine,
            "likelihood_path": plan.path,
            "likelihood": plan.likelihood,
            "method": eng.description.method,
            "description": eng.description.to_dict(),
            "seed": seed,
            "chains": int(chains),
            "draws": int(draws),
            "tune": int(tune),
            "compile_seconds": compile_seconds,
            "sampling_seconds": float(max(t_sampling, 0.0)),
            **extra,
            **engine_info,
        }
        if plan.integrated:
            if on_progress is not None:
                on_progress("draw_back")
            elif progress:
                print("twoway: drawing the integrated effects back ...", file=sys.stderr, flush=True)
        return _make_fit(raw, plan, info, eng.description)


def check_fit_output(path: "str | os.PathLike[str]", *, inputs=()) -> Path:
    """Check, before any work, that a fit can be written to ``path``; :class:`FitError` if not.

    ``path`` must end in one of :data:`FIT_ENDINGS`, not be one of ``inputs`` and lie in a
    writable folder; an existing ``.zarr`` folder may be replaced only when it is a zarr store.
    """

    text = "" if path is None else os.fspath(path)
    try:
        out = Path(text)
        if text.strip() and out.suffix.lower() == ".zarr" and out.is_dir():
            if not any((out / marker).exists() for marker in (".zgroup", "zarr.json")):
                raise TwowayError(f"The fit file {text!r} is a folder that is not a zarr store; "
                                  "give another name.")
            check_output(out.with_name(f".{out.name}.nc"), endings=FIT_ENDINGS, inputs=inputs, what="fit file")
            return out
        return check_output(text, endings=FIT_ENDINGS, inputs=inputs, what="fit file")
    except FitError:
        raise
    except TwowayError as exc:
        raise FitError(str(exc)) from None


def _replace_folder(path: Path, write) -> None:
    """Write a folder (a zarr store) beside ``path`` with ``write(tmp)``, then swap it in.

    The old store is renamed aside first and removed only after the new one is in place, so
    a kill at any moment leaves a whole store under ``path`` or under its hidden aside name.
    """

    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it private to its owner
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = None
    if path.exists():
        aside = path.with_name(f".{path.name}.old.tmp")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(path, aside)
    os.replace(tmp, path)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _phase_reporter(progress: bool, chains: int, draws: int, extra: dict, on_progress=None):
    """Phase lines for engines that compile while sampling (jax): compiling (compile cache hit, miss or off),
    sampling, chains done; or, with ``on_progress``, those events passed on to it (see :meth:`CompiledModel.sample`)."""
    state: dict[str, Any] = {}

    def report(phase, prog, status):
        if phase == "iterations":
            done, total = status
            if on_progress is not None:
                on_progress("iterations", done=done, total=total)
            elif progress and int(10 * done / total) > state.get("tenths", 0):
                state["tenths"] = int(10 * done / total)
                print(f"twoway: sampling: {100 * done // total}% ({done}/{total} iterations, warm-up included)",
                      file=sys.stderr, flush=True)
            return
        if on_progress is not None:
            if phase == "compile":
                on_progress("compile")
            else:
                extra["compile_cache"] = status
                on_progress("sample", compile_seconds=float(prog.compile_seconds) if status != "in memory" else 0.0,
                            cache=status)
            return
        if phase == "compile":
            state["compiling"] = True
            if progress:
                print("twoway: compiling the model ...", file=sys.stderr, flush=True)
        else:
            extra["compile_cache"] = status
            if progress and state.get("compiling"):
                said = {"hit": "compile cache hit", "miss": "compile cache miss", "off": "no compile cache"}[status]
                print(f"twoway: compiled in {prog.compile_seconds:.1f} s ({said})", file=sys.stderr, flush=True)
            if progress:
                print(f"twoway: sampling {chains} chains x {draws} draws ...", file=sys.stderr, flush=True)

    return report


def _check_same_covariates(new: Plan, compiled: Plan) -> None:
    """Raise :class:`FitError` unless ``new`` has the covariates' design and prior sds of ``compiled``.

    A compiled program holds the design (its scale and centring; on the integrated
    paths the design and the coefficients' prior covariance too), so another table must
    have the same covariate values on the same cells, and the same ``coef`` prior sds.
    """
    a, b = new.covariates, compiled.covariates
    if a is None and b is None:
        return
    same = (a is not None and b is not None and tuple(a.terms) == tuple(b.terms)
            and np.array_equal(np.asarray(a.X), np.asarray(b.X)))
    if not same:
        raise FitError("The table must have the covariate values the model was compiled for (the same terms and "
                       "values on the same cells); compile again for this one.")
    if not np.array_equal(np.asarray(new.coef_sd), np.asarray(compiled.coef_sd)):
        raise FitError("The table's prior for 'coef' differs from the compiled model's (the default scales with "
                       "the data); give the coef prior explicitly in the model to reuse a compiled model, or "
                       "compile again for this table.")


def _with_covariates(model: "ModelSpec | str", covariates: str | None) -> ModelSpec:
    """The model read by :func:`~twoway.spec.model.load_model`, its covariate formula set when one is given."""
    spec = load_model(model)
    if covariates is None:
        return spec
    if not isinstance(covariates, str):
        raise FitError("The covariates must be a formula's right-hand side as text, for example 'x + C(group)'; "
                       f"got {covariates!r}.")
    return dataclasses.replace(spec, covariates=covariates)


def compile_model(model: "ModelSpec | str", data: TwoWayData, *, engine: str | None = None,
                  backend: str | None = None, progress: bool | None = None, likelihood: str = "auto",
                  choice: Choice | None = None, covariates: str | None = None) -> CompiledModel:
    """Build (and compile, where the engine compiles) ``model`` for tables laid out like ``data``.

    Parameters
    ----------
    model : ModelSpec or str
    data : TwoWayData
    engine : {"jax", "nutpie", "pymc", "laplace"}, optional
        Default: ``jax``, or ``laplace`` for a table on the sparse path (see
        :func:`twoway.engines.choose.choose`). ``backend`` is accepted as another name for it.
    progress : bool, optional
        Say so on stderr while compiling (default: when stderr is a terminal).
    likelihood : {"auto", "dense", "sparse", "nuts"}
        The likelihood option (see :func:`twoway.plan.resolve`); a fit records it.
    choice : Choice, optional
        The engine already chosen for this model and table (:func:`twoway.engines.choose.choose`,
        as the command line does to name it first); then ``engine``, ``backend``,
        ``likelihood`` and ``covariates`` are not read and the table is not resolved again.
    covariates : str, optional
        A covariate formula's right-hand side (``"x + C(group)"``) over the table's
        covariate columns; it replaces the model's ``covariates`` (see :func:`fit`).

    Returns
    -------
    CompiledModel
    """
    _check_data(data)
    if choice is None:
        choice = choose(_with_covariates(model, covariates), data, engine=engine, backend=backend,
                        likelihood=likelihood)
    return compile_choice(choice, progress=progress)


def _check_data(data) -> None:
    """Raise :class:`FitError` unless ``data`` is a :class:`TwoWayData`."""
    if not isinstance(data, TwoWayData):
        raise FitError(f"The data must be a TwoWayData; got {type(data).__name__}.")


def compile_choice(choice: Choice, *, progress: bool | None = None) -> CompiledModel:
    """Build (and compile, where the engine compiles) the engine ``choice`` names for its plan.

    Parameters
    ----------
    choice : Choice
        From :func:`twoway.engines.choose.choose`.
    progress : bool, optional
        Say so on stderr while compiling (default: when stderr is a terminal).

    Returns
    -------
    CompiledModel
    """
    if progress is None:
        progress = sys.stderr.isatty()
    t0 = time.perf_counter()
    plan, eng = choice.plan, choice.engine
    if not nothing_to_sample(plan):

        check_start(plan)  # before compiling: a model that cannot start fails at once, for every engine
    if progress and getattr(eng, "compiles_ahead", False):
        print("twoway: compiling the model ...", file=sys.stderr, flush=True)
    compiled = eng.compile(plan, progress=progress)
    return CompiledModel(spec=plan.spec, plan=plan, engine=choice.name, compiled=compiled,
                         compile_seconds=choice.seconds + time.perf_counter() - t0)


def fit(
    model: "ModelSpec | str",
    data: TwoWayData,
    *,
    chains: int = 4,
    draws: int = 1000,
    tune: int = 1000,
    seed: int | None = None,
    engine: str | None = None,
    backend: str | None = None,
    progress: bool | None = None,
    cores: int | None = None,
    likelihood: str = "auto",
    covariates: str | None = None,
) -> Fit:
    """Fit ``model`` to ``data``: NUTS, or the laplace engine for a table on the sparse path.

    Parameters
    ----------
    model : ModelSpec or str
        A spec, a preset name (``additive``, ``additive-sd``) or a TOML model file.
    data : TwoWayData
        The table, (R, N, K) with optional se and missing cells.
    chains, draws, tune : int
        Number of chains, kept draws per chain, and tuning draws per chain.
    seed : int, optional
        Seed for the sampler; the same seed gives the same draws. Without one, a
        seed is drawn from the operating system's entropy; either way the seed
        used is recorded in ``fit.info["seed"]``, so the fit can be redone.
    engine : {"jax", "nutpie", "pymc", "laplace"}, optional
        ``jax`` (default: BlackJAX's NUTS on a jitted program, cached on disk),
        ``nutpie`` (compiled with numba), PyMC's own NUTS, or ``laplace`` (nested
        Laplace + importance sampling on the sparse path; the default for a table on
        that path). ``backend`` is accepted as another name for it.
    progress : bool, optional
        Show progress; by default only when stderr is a terminal.
    cores : int, optional
        Chains run in parallel on this many cores (default: all).
    likelihood : {"auto", "dense", "sparse", "nuts"}
        The likelihood option (see :func:`twoway.plan.resolve`); the fit records it, and
        :attr:`Fit.plan` gives back the plan it was sampled with.
    covariates : str, optional
        The right-hand side of a model formula over the table's covariate columns
        (``"dose + C(site)"``; the table read with ``covariates=`` naming its variables,
        :func:`twoway.table.covariates.required_variables`): its terms enter the mean,
        ``X @ coef``, and the posterior gets ``coef`` on dim ``term``. It replaces the
        model's own ``covariates``. Default: the model's.

    Returns
    -------
    Fit
    """
    check_sampling_options(chains, draws, tune, seed, engine_name(engine, backend))
    _check_data(data)
    choice = choose(_with_covariates(model, covariates), data, engine=engine, backend=backend, likelihood=likelihood)
    check_draws_memory(choice.plan, chains, draws)  # before compiling, for every engine
    compiled = compile_choice(choice, progress=progress)
    return compiled.sample(chains=chains, draws=draws, tune=tune, seed=seed, progress=progress, cores=cores)


def check_sampling_options(chains, draws, tune, seed, engine: str | None = DEFAULT_ENGINE) -> None:
    """Raise :class:`FitError` for sampling options that cannot work (``engine`` None: chosen by the table)."""
    engine = DEFAULT_ENGINE if engine is None else engine
    if engine not in ENGINES:
        raise FitError(f"The engine must be one of {', '.join(ENGINES)}; got {engine!r}.")
    low_tune = get_engine(engine).min_tune
    for name, value, low in (("chains", chains, 1), ("draws", draws, 1), ("tune", tune, low_tune)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise FitError(f"The '{name}' option must be a whole number >= {low}"
                           f"{f' with the {engine} engine' if name == 'tune' and low else ''}; got {value!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise FitError(f"The seed must be a non-negative whole number; got {seed!r}.")


def check_draws_memory(plan: Plan, chains: int, draws: int, *, fits_at_once: int = 1) -> None:
    """Raise :class:`FitError` when the draws of a fit of ``plan`` would not fit in the memory available.

    Called before anything is compiled or sampled, for every engine (:func:`fit`, the command
    line's ``fit``; :meth:`CompiledModel.sample` checks again for a compiled model given new options).

    Parameters
    ----------
    plan : Plan
        The model resolved on its table; its spec and table size the draws.
    chains, draws : int
        Chains, and kept draws per chain.
    fits_at_once : int
        Fits held at the same time (workers of a batch on this machine).

    Raises
    ------
    FitError
        When :func:`twoway.likelihood.memory.draws_bytes` (the sampled and drawn-back
        values and the derived ones, 8 bytes each), plus the covariates' p coefficients,
        exceeds both :func:`twoway.likelihood.memory.available_memory` and
        :data:`twoway.likelihood.memory.DRAWS_FLOOR` (see :func:`twoway.likelihood.memory.check_draws`).
    """
    memory.check_draws(plan.spec, plan.data.values.shape, chains, draws, n_cov=plan.n_coef,
                       stored_cov=MAX_STORED_COV, fits_at_once=fits_at_once)


def _make_fit(raw: _xr().DataTree, plan: Plan, info: dict[str, Any],
              description: EngineDescription | None = None) -> Fit:
    """Assemble the fit's DataTree from the engine's raw draws (``description``: the engine's; default:
    the one ``info`` records, or its method's)."""
    spec, data = plan.spec, plan.data
    if description is None:
        description = description_from_info(info)
    post = raw["posterior"].to_dataset()
    if plan.integrated and not description.draws_effects:
        post = _draw_back(post, plan, seed=info.get("seed"))
    post = _term_coords(post, plan)
    drawn = [n for n in ("intercept", "row_effect", "col_effect", "coef") if n in post]
    names = [n for n in public_names(spec) if n in plan.var_names + drawn]
    names += [n for n in plan.var_names if n not in names]
    names += [n for n in ("row_shock", "col_shock", "cell_effect") if n in post]
    posterior = _public_posterior(post, names)
    shown = list(posterior.data_vars)
    stats = raw["sample_stats"].to_dataset()
    stats = stats.drop_vars([v for v in stats.data_vars if stats[v].dtype == object])
    stats.attrs = {}
    groups = {
        "posterior": posterior,
        "sample_stats": stats,
        "observed_data": data.to_dataset(layout="cells"),
    }
    if plan.inputs:
        groups[INPUTS_GROUP] = _inputs_dataset(plan)
    tree = _xr().DataTree.from_dict(groups)
    info = {**info, "total_seconds": info["compile_seconds"] + info["sampling_seconds"]}
    tree.attrs.update({
        "twoway_version": __version__,
        "twoway_model": spec.to_json(),
        "twoway_priors": json.dumps({k: p.to_dict() for k, p in plan.priors.items()}),
        "twoway_data_summary": json.dumps(data.summary()),
        "twoway_parameters": json.dumps(shown),
        "twoway_info": json.dumps(info),
    })
    return Fit(tree)


def _inputs_dataset(plan: Plan) -> _xr().Dataset:
    """The plan's matrices read from files, one (n, n) variable each, with the option text it came from."""
    out = _xr().Dataset()
    for name, matrix in plan.inputs.items():
        out[name] = ((f"{name}_i", f"{name}_j"), np.asarray(matrix, dtype=float),
                     {"source": str(getattr(plan.spec, name))})
    return out


def _term_coords(post: _xr().Dataset, plan: Plan) -> _xr().Dataset:
    """``coef`` on the dim ``term``, labelled with the design's term names (whatever dim an engine gave it)."""
    if "coef" not in post.data_vars or plan.covariates is None:
        return post
    dim = post["coef"].dims[-1]
    if dim != "term":
        post = post.rename_dims({dim: "term"}) if dim not in ("chain", "draw") else post
    return post.assign_coords(term=list(plan.covariates.terms))


def _draw_back(post: _xr().Dataset, plan: Plan, *, seed: int | None) -> _xr().Dataset:
    """Add the integrated-out effects, drawn from their exact conditional law given each draw."""

    spec = plan.spec
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    S = n_chain * n_draw
    params = {}
    for name in post.data_vars:
        if not name.startswith("_"):
            v = post[name].values
            params[name] = v.reshape((S,) + v.shape[2:])
    for name, value in plan.constants.items():
        params[name] = np.full(S, value)
    # the draws of the effects get their own stream, derived from the fit's seed
    rng = np.random.default_rng([0 if seed is None else int(seed), 0x7E57])
    drawn = draw_effects(spec, plan.layout, plan.design, params, rng, n_draws=S)
    if spec.residual == "latent":
        drawn.update(draw_shocks(spec, plan.layout, plan.design, params, drawn, rng))
    if spec.cell_effect == "random":

        drawn.update(draw_cell_effects(spec, plan.layout, params, drawn, rng))
    rows, cols, reps = plan.labels
    out = post.copy().assign_coords(row=list(rows), col=list(cols), replicate=list(reps))
    if plan.covariates is not None:
        out = out.assign_coords(term=list(plan.covariates.terms))
    dims = {"intercept": (), "row_effect": ("row",), "col_effect": ("col",), "coef": ("term",),
            "row_shock": ("replicate", "row"), "col_shock": ("replicate", "col"), "cell_effect": ("row", "col")}
    for name, value in drawn.items():
        out[name] = (("chain", "draw") + dims[name], value.reshape((n_chain, n_draw) + value.shape[1:]))
    return out


def _public_posterior(post: _xr().Dataset, names: list[str]) -> _xr().Dataset:
    """Keep the user-facing parameters (``coef`` among them), in the order of ``names``.

    The derived ``row_mean`` and ``col_mean`` are not among them: :attr:`Fit.posterior`
    adds them when read (:func:`_derived_means`).
    """
    keep = [n for n in names if n in post.data_vars]
    out = post[keep]
    out.attrs = {}
    return out


def _derived_means(post: _xr().Dataset) -> dict[str, Any]:
    """The derived means of a posterior, as DataArrays by name (those it does not hold already).

    ``row_mean[i] = intercept + row_effect[i] + mean(col_effect)`` (chain, draw, row), and the
    same for columns (chain, draw, col): the mean of a row over the table's columns. With
    covariates it is that mean at covariate values 0 (numeric terms at 0, factors at their
    reference levels); the covariates' part, ``X @ coef``, is not in it (the predictions and the
    results that use the cells' means add it, :mod:`twoway.results`). A mean whose effect the
    model does not have is left out.
    """
    xr = _xr()
    row_mean, col_mean = row_col_means(
        post["intercept"].values if "intercept" in post else 0.0,
        post["row_effect"].values if "row_effect" in post else None,
        post["col_effect"].values if "col_effect" in post else None,
    )
    out = {}
    for name, value, axis in (("row_mean", row_mean, "row"), ("col_mean", col_mean, "col")):
        if value is not None and name not in post.data_vars:
            dims = ("chain", "draw", axis)
            out[name] = xr.DataArray(value, dims=dims, coords={d: post[d] for d in dims if d in post.coords})
    return out


# -- fit files ------------------------------------------------------------------

#: The dim of a file's posterior holding each distinct draw once, and the variable (chain, draw) -> its position.
UNIQUE_DRAW = "unique_draw"
UNIQUE_DRAW_INDEX = "unique_draw_index"

#: Repeated draws are stored once when the distinct ones are at most this share of all the draws.
UNIQUE_SHARE = 0.9

#: A netCDF variable is zlib-compressed (level 1, byte shuffle) when a sample of it shrinks to at most this
#: share: measured on the 73,421-cell crossed fit, the effects' float64 draws shrink to 0.87-0.91 (for 2-3x the
#: read time), the per-draw statistics and cell positions to 0.1-0.4.
COMPRESS_BELOW = 0.8
_COMPRESS_MIN_BYTES = 16_384   # smaller variables are stored as they are (chunking costs more than it saves)
_SAMPLE_BYTES = 1 << 20        # the bytes of a variable compressed to decide


def _file_tree(tree: _xr().DataTree) -> _xr().DataTree:
    """The tree a fit file holds: the posterior without the derived means (repeated draws packed once,
    :func:`pack_draws`), the observed cells alone (layout ``cells``, an earlier grid converted); the rest
    as it is."""
    xr = _xr()
    out = tree.copy()
    post = tree["posterior"].to_dataset().drop_vars([n for n in DERIVED_MEANS if n in tree["posterior"].data_vars])
    out["posterior"] = xr.DataTree(pack_draws(post))
    if "observed_data" in tree.children and tree["observed_data"]["y"].dims != ("cell",):   # an earlier grid
        data = TwoWayData.from_dataset(tree["observed_data"].to_dataset())
        out["observed_data"] = xr.DataTree(data.to_dataset(layout="cells"))
    return out


def unique_draws(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct draws of a posterior, exactly (bit for bit).

    Parameters
    ----------
    arrays : list of numpy.ndarray, each shape (S, ...)
        Every variable of the posterior, chains and draws flattened to S.

    Returns
    -------
    (first, index) : numpy.ndarray (U,) and (S,), int64
        ``first``: the first draw of each distinct one, in order of appearance; ``index[s]``:
        the position in ``first`` of the draw equal to draw s in every variable.
    """
    S = int(arrays[0].shape[0]) if arrays else 0
    flat = [np.ascontiguousarray(a).reshape(S, -1).view(np.uint8) for a in arrays]
    # a draw cannot repeat more than any one of its values does: skip the comparisons when the first
    # value of some variable has nearly S distinct values (continuous draws of a Markov chain)
    for a, source in zip(flat, arrays, strict=True):
        width = source.dtype.itemsize
        if a.shape[1] and np.unique(a[:, :width].copy().view(np.dtype((np.void, width)))).size > UNIQUE_SHARE * S:
            return np.arange(S, dtype=np.int64), np.arange(S, dtype=np.int64)
    import hashlib

    seen: dict[bytes, int] = {}
    first: list[int] = []
    index = np.empty(S, dtype=np.int64)
    for s in range(S):
        digest = hashlib.blake2b(digest_size=16)
        for a in flat:
            digest.update(a[s])
        key = digest.digest()
        k = seen.get(key)
        if k is None or not all(np.array_equal(a[s], a[first[k]]) for a in flat):   # new (or a hash collision)
            k = len(first)
            first.append(s)
            seen.setdefault(key, k)
        index[s] = k
    return np.asarray(first, dtype=np.int64), index


def pack_draws(post: _xr().Dataset) -> _xr().Dataset:
    """``post`` with each distinct draw once, when the draws repeat (see :data:`UNIQUE_SHARE`).

    Parameters
    ----------
    post : xarray.Dataset
        Every variable on dims (chain, draw, ...).

    Returns
    -------
    xarray.Dataset
        ``post`` itself when the draws do not repeat enough; otherwise each variable on dims
        (unique_draw, ...) (U,...), and ``unique_draw_index`` (chain, draw), int32: the
        position of each draw in ``unique_draw``.
    """
    names = list(post.data_vars)
    if not names or any(post[n].dims[:2] != ("chain", "draw") for n in names):
        return post
    C, D = post.sizes["chain"], post.sizes["draw"]
    arrays = [post[n].values.reshape((C * D,) + post[n].shape[2:]) for n in names]
    first, index = unique_draws(arrays)
    if first.size > UNIQUE_SHARE * C * D:
        return post
    out = post.drop_vars(names)
    for name, values in zip(names, arrays, strict=True):
        out[name] = ((UNIQUE_DRAW,) + post[name].dims[2:], values[first], post[name].attrs)
    out[UNIQUE_DRAW_INDEX] = (("chain", "draw"), index.reshape(C, D).astype(np.int32))
    return out


def unpack_draws(post: _xr().Dataset) -> _xr().Dataset:
    """Inverse of :func:`pack_draws`: every variable back on (chain, draw, ...), in the stored order."""
    index = np.asarray(post[UNIQUE_DRAW_INDEX].values, dtype=np.int64)
    out = post.drop_vars([UNIQUE_DRAW_INDEX, *[n for n in post.data_vars if n != UNIQUE_DRAW_INDEX]])
    for name in post.data_vars:
        if name != UNIQUE_DRAW_INDEX:
            var = post[name]
            out[name] = (("chain", "draw") + var.dims[1:], np.asarray(var.values)[index], var.attrs)
    return out


def _in_order(post: _xr().Dataset, parameters: str | None) -> _xr().Dataset:
    """``post`` with its variables in the order the fit lists its parameters (``twoway_parameters``, JSON),
    the others after them as stored (a zarr store gives its variables back sorted by name)."""
    listed = json.loads(parameters) if parameters else []
    names = [n for n in listed if n in post.data_vars]
    names += [n for n in post.data_vars if n not in names]
    return post[names]


def _pays_to_compress(values: np.ndarray) -> bool:
    """Whether zlib (level 1, bytes shuffled) shrinks a sample of ``values`` to :data:`COMPRESS_BELOW` or less."""
    import zlib

    if values.ndim == 0 or values.dtype.kind not in "biuf" or values.nbytes < _COMPRESS_MIN_BYTES:
        return False
    sample = np.ascontiguousarray(values.reshape(-1)[: _SAMPLE_BYTES // values.itemsize])
    shuffled = sample.view(np.uint8).reshape(-1, values.itemsize).T.tobytes()
    return len(zlib.compress(shuffled, 1)) <= COMPRESS_BELOW * len(shuffled)


def _compression(tree: _xr().DataTree) -> dict[str, dict[str, dict]]:
    """The netCDF encoding of a fit file: zlib level 1 with byte shuffle for each variable where it pays."""
    out: dict[str, dict[str, dict]] = {}
    for node in tree.subtree:
        ds = node.to_dataset(inherit=False)
        chosen = {str(name): {"zlib": True, "complevel": 1, "shuffle": True}
                  for name, var in ds.variables.items() if _pays_to_compress(np.asarray(var.values))}
        if chosen:
            out[node.path] = chosen
    return out
