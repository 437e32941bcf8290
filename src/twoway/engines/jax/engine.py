"""The ``jax`` engine: describe the plan in JAX, compile one chain program, run chains in threads."""

from __future__ import annotations

import hashlib
import inspect
import json
import marshal
import sys
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from twoway.engines.description import NUTS
from twoway.engines.jax.cache import cache_entries, enable_jax_cache
from twoway.engines.jax.model import describe, model_args
from twoway.engines.jax.programs import ProgramStore
from twoway.engines.jax.sampler import ChainProgram, capacity_for
from twoway.errors import FitError, TwowayError, TwowayWarning

# Deferred imports: xarray (heavy to import) are imported inside the functions that use them, so importing
# this module stays light.

__all__ = ["JaxEngine", "program_key"]

_KEEP = 16  # compiled chain programs kept in memory per process
QUICK_COMPILE_CELLS = 24


class _Programs:
    """Compiled chain programs of this process, by model structure, table layout and draws."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: OrderedDict = OrderedDict()

    def get(self, key, make):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key], True
            item = make()
            self._items[key] = item
            while len(self._items) > _KEEP:
                self._items.popitem(last=False)
            return item, False


PROGRAMS = _Programs()


def program_key(plan) -> str:
    """A digest of everything a plan bakes into the compiled program (not the table's numbers)."""
    h = hashlib.sha256()
    spec = plan.spec
    h.update(spec.to_json().encode())
    h.update(plan.path.encode())
    h.update(json.dumps({k: p.dist for k, p in plan.priors.items()}, sort_keys=True).encode())
    d = plan.data
    h.update(np.asarray(d.values.shape).tobytes())
    h.update(np.ascontiguousarray(d.mask).tobytes())
    h.update(np.ascontiguousarray(d.se_or_zero()).tobytes())
    cov = getattr(plan, "covariates", None)
    if cov is not None:  # the design (its centring and scale are constants of the program) and the coef prior sds
        h.update(json.dumps(list(cov.terms)).encode())
        for a in (cov.X, cov.scale, plan.coef_sd):
            h.update(np.ascontiguousarray(np.asarray(a, dtype=float)).tobytes())
    if plan.integrated:
        h.update(json.dumps(sorted(plan.constants)).encode())
        for a in (plan.design.E, *plan.design.base_cov):
            h.update(np.ascontiguousarray(a).tobytes())
        for side in ("row", "col"):
            st = plan.parts.get(side)
            if st is not None:
                h.update(st.text.encode())
                if getattr(st, "known", None) is not None:
                    h.update(np.ascontiguousarray(st.known).tobytes())
        full = plan.parts.get("full")
        if full is not None:
            h.update(full.source.encode())
            if full.function is not None:
                h.update(_function_digest(full.function))
            else:
                h.update(np.ascontiguousarray(full.matrix).tobytes())
    return h.hexdigest()


def _function_digest(function) -> bytes:
    """A digest of a covariance function's code that is the same in every process.

    The file that defines it (its module: a change to anything the function
    calls there counts), else the function's compiled code, else its name.
    """
    h = hashlib.sha256()
    module = getattr(function, "__module__", None)
    h.update(f"{module}:{getattr(function, '__qualname__', '')}".encode())
    try:
        path = inspect.getsourcefile(function)
    except TypeError:  # not a function defined in Python (a partial, a callable object): its module's file
        path = getattr(sys.modules.get(module or ""), "__file__", None)
    code = getattr(function, "__code__", None)
    if path is not None and Path(path).is_file():
        h.update(Path(path).read_bytes())
    elif code is not None:
        h.update(marshal.dumps(code))
    return h.digest()


class JaxEngine:
    """NUTS (BlackJAX) over the plan's JAX log-density; the table is an argument of the program."""

    name = "jax"
    reuses_priors = True
    min_tune = 0
    description = NUTS  # its progress is phase lines (the report callback), no bar of its own

    def compile(self, plan, *, progress):
        store = None
        try:
            store = ProgramStore(enable_jax_cache() / "programs")
        except TwowayError as exc:
            warnings.warn(f"{exc} Compiled programs are kept for this process only.", TwowayWarning, stacklevel=2)
        # cheap evaluations (O(1) sums of squares, tiny tables): compile fast rather than run fast
        quick = plan.path == "anova" or plan.data.n_observed <= QUICK_COMPILE_CELLS
        return {"key": program_key(plan), "model": describe(plan), "quick": quick, "store": store}

    def program(self, compiled, tune: int, draws: int):
        """The chain program that can run ``tune + draws`` iterations (built once per process)."""

        capacity = capacity_for(tune, draws)
        key = (compiled["key"], capacity)
        quick = compiled["quick"]
        prog, _ = PROGRAMS.get(key, lambda: ChainProgram(compiled["model"], capacity, quick_compile=quick))
        return prog

    def compile_seconds_in_sample(self, compiled) -> float:
        """Seconds the last sample() spent compiling (or loading) its chain program; 0 when reused."""
        return compiled.get("last_compile_seconds", 0.0)

    def sample(self, compiled, plan, *, chains, draws, tune, seed, progress, cores, report=None):
        args = model_args(plan)

        prog = self.program(compiled, tune, draws)
        fresh = prog.compiled is None
        store = compiled["store"]
        if fresh and report is not None:
            report("compile", prog, None)
        before = cache_entries() if fresh and store is not None else None
        prog.compile(args, store=store, key=compiled["key"])
        # where the program came from: this process, a stored program, JAX's cache, or a compile
        if not fresh:
            status = "in memory"
        elif store is None:
            status = "off"
        elif prog.loaded:
            status = "hit"
        else:
            status = "hit" if not (cache_entries() - before) else "miss"
        if report is not None:
            report("sample", prog, status)
        told = None if report is None else (lambda done, total: report("iterations", prog, (done, total)))
        out = prog.run(args, seed, chains, int(tune), int(draws), cores=cores, on_progress=told)
        if not out["init_ok"].all():
            raise FitError("The sampler found no starting point with a finite log-density in 20 tries per chain; "
                           "check the priors (an extreme prior can put all its mass where the data are impossible).")
        compiled["last_compile_seconds"] = prog.compile_seconds if fresh else 0.0
        return raw_tree(compiled["model"], out)


def raw_tree(model, out):
    """The draws as a DataTree: ``posterior`` (public values) and ``sample_stats``."""
    import xarray as xr

    post = {}
    for name in model.names:
        v = out["values"][name]
        dims = ("chain", "draw") + tuple(model.dims[name])
        post[name] = (dims, v)
    used = {d for name in model.names for d in model.dims[name]}
    coords = {k: v for k, v in model.coords.items() if k in used}
    posterior = xr.Dataset(post, coords=coords)
    st = out["stats"]
    chains, draws = st["lp"].shape
    stats = xr.Dataset({
        "lp": (("chain", "draw"), st["lp"]),
        "diverging": (("chain", "draw"), st["diverging"].astype(bool)),
        "n_steps": (("chain", "draw"), st["n_steps"].astype(int)),
        "tree_depth": (("chain", "draw"), st["tree_depth"].astype(int)),
        "energy": (("chain", "draw"), st["energy"]),
        "acceptance_rate": (("chain", "draw"), st["acceptance_rate"]),
        "step_size": (("chain", "draw"), np.repeat(out["step_size"][:, None], draws, axis=1)),
    })
    return xr.DataTree.from_dict({"posterior": posterior, "sample_stats": stats})
