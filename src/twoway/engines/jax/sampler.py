"""NUTS over a :class:`~twoway.engines.jax.model.JaxModel`, with BlackJAX.

A chain is two jitted programs: ``begin(args, key)`` finds a finite initial
point, and ``advance(args, state, ...)`` runs a segment of iterations from a
state and returns the new state: Stan's windowed adaptation of the step size
and a diagonal mass matrix, then the draws, each mapped to the public values.
Running a chain as a few segments (:data:`SEGMENTS`) lets the engine say how
far sampling has come between them; the draws are the same as in one call
(measured on a crossed 8 x 12 table, 4 x (1000 + 1000) iterations: no
difference in sampling time beyond the machine's noise). The table's numbers
are in ``args``, so the programs are compiled once per model structure, table
shape and capacity, and reused for every table and chain
(:class:`ChainProgram`). Chains run in parallel as threads calling the
same compiled program (XLA releases the interpreter lock while it runs).

BlackJAX is used rather than NumPyro's sampler because its kernels are pure
functions of arrays: twoway writes the chain program itself (one kernel for
warm-up and draws, the adaptation as a few lines of state), which keeps the
program small and lets the numbers of draws be arguments.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from threadpoolctl import threadpool_limits

from twoway.engines.jax.cache import cache_entries

# Deferred imports: blackjax, jax (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = ["ChainProgram", "STAT_NAMES", "INIT_RADIUS", "adaptation_schedule", "capacity_for", "DualAveraging"]

INIT_RADIUS = 1.0      # initial points: uniform(-1, 1) on the (prior-scaled) unconstrained space
MAX_TREE_DEPTH = 10
INIT_TRIES = 20        # starting points tried per chain
INITIAL_STEP = 0.1
TARGET_ACCEPT = 0.8
SEGMENTS = 8          # calls of the advance program per chain at full capacity (progress between them)
STAT_NAMES = ("lp", "diverging", "n_steps", "tree_depth", "energy", "acceptance_rate")


@dataclass
class ChainProgram:
    """A model's chain program for up to ``capacity`` iterations (tuning and kept draws together).

    Attributes
    ----------
    model : JaxModel
    capacity : int
        The scan's length; see :func:`capacity_for`.
    quick_compile : bool
        Compile with XLA's backend optimisation level 0: about 40% less
        compile time for twice the run time per gradient, the better choice
        when evaluations are cheap (a balanced table's sums of squares).
    compiled : object or None
        The compiled executable for one chain (after :meth:`compile`).
    compile_seconds : float
    """

    model: Any
    capacity: int
    quick_compile: bool = False
    compiled: Any = None
    loaded: bool = False
    compile_seconds: float = 0.0

    # -- the program ---------------------------------------------------------------
    #
    # A chain is two programs: ``begin`` (a starting point and the sampler's first state) and
    # ``advance`` (SEGMENT iterations from a given state, state out). The chain runs as
    # ``begin`` then ``advance`` repeatedly, so progress can be told between segments
    # without leaving the compiled code more than a few times per chain.

    def _parts(self, args):
        """What both programs build: the log-density, the starting-point draw, BlackJAX's NUTS."""
        import jax
        from blackjax.mcmc import nuts

        model = self.model

        def logdensity(theta):
            return model.log_density(theta, args)

        def draw_init(k):
            keys = jax.random.split(k, len(model.sites))
            return {name: jax.random.uniform(kk, shape, minval=-INIT_RADIUS, maxval=INIT_RADIUS)
                    for kk, (name, shape) in zip(keys, model.sites.items())}

        return logdensity, draw_init, nuts

    def _begin(self, args, key):
        """A starting point: the first carry of the chain, the key of its iterations, and whether it is finite."""
        import jax
        import jax.flatten_util
        import jax.numpy as jnp

        logdensity, draw_init, nuts = self._parts(args)
        k_init, k_run = jax.random.split(key)
        state = nuts.init(draw_init(k_init), logdensity)
        ok = jnp.isfinite(state.logdensity)
        for g in jax.tree_util.tree_leaves(state.logdensity_grad):
            ok = ok & jnp.all(jnp.isfinite(g))
        dim = jax.flatten_util.ravel_pytree(state.position)[0].shape[0]
        step0 = jnp.asarray(INITIAL_STEP)
        # BlackJAX's state travels as a plain tuple: a stored program's argument tree then names no
        # BlackJAX type, so loading it from disk does not import BlackJAX (0.4 s of a warm CLI fit)
        carry = (tuple(state), DualAveraging().init(step0), step0, jnp.ones(dim),
                 (jnp.asarray(0.0), jnp.zeros(dim), jnp.zeros(dim)))
        return carry, k_run, ok

    def _advance(self, args, carry, k_run, t0, schedule):
        """Iterations ``t0 .. t0 + SEGMENT - 1`` of the chain from ``carry``: the new carry and their outputs.

        One NUTS kernel serves warm-up and sampling (adaptation switches off after
        ``n_tune``), so the program holds one copy of the log-density's gradient. The
        numbers of tuning and kept draws are arguments (iterations past ``n_total`` are
        skipped), so one compiled program serves any ``tune + draws`` up to the capacity.
        The iterations' keys are the same whatever the segment length.
        """
        import jax
        import jax.flatten_util
        import jax.numpy as jnp

        model = self.model
        logdensity, _, nuts = self._parts(args)
        n_tune, n_total = schedule["n_tune"], schedule["n_total"]
        kernel = nuts.build_kernel()
        adapt = DualAveraging()

        from blackjax.mcmc.hmc import HMCState

        def step_once(carry, inputs):
            state, da, step, imm, (count, mean, m2) = carry
            t, k, is_slow, is_end = inputs
            state, info = kernel(k, HMCState(*state), logdensity, step, imm, max_num_doublings=MAX_TREE_DEPTH)
            tuning = t < n_tune
            # step size: dual averaging while tuning, its average after
            acc = jnp.where(jnp.isfinite(info.acceptance_rate), info.acceptance_rate, 0.0)
            da_new = adapt.update(da, acc)
            da = jax.tree_util.tree_map(lambda a, b: jnp.where(tuning, a, b), da_new, da)
            step = jnp.where(tuning, jnp.where(t == n_tune - 1, jnp.exp(da.log_avg), jnp.exp(da.log_step)), step)
            # diagonal mass matrix: Welford variance over each slow window
            x = jax.flatten_util.ravel_pytree(state.position)[0]
            count1 = count + 1.0
            delta = x - mean
            mean1 = mean + delta / count1
            m21 = m2 + delta * (x - mean1)
            count, mean, m2 = (jnp.where(is_slow, count1, count), jnp.where(is_slow, mean1, mean),
                               jnp.where(is_slow, m21, m2))
            var = m2 / jnp.maximum(count - 1.0, 1.0)
            regular = (count / (count + 5.0)) * var + 1e-3 * (5.0 / (count + 5.0))
            imm = jnp.where(is_end, regular, imm)
            da = jax.tree_util.tree_map(lambda a, b: jnp.where(is_end, a, b), adapt.init(step), da)
            count, mean, m2 = (jnp.where(is_end, 0.0, count), jnp.where(is_end, 0.0, mean),
                               jnp.where(is_end, 0.0, m2))
            values = model.public(state.position, args)
            stats = (state.logdensity, info.is_divergent, info.num_integration_steps,
                     info.num_trajectory_expansions, info.energy, info.acceptance_rate)
            return (tuple(state), da, step, imm, (count, mean, m2)), (values, stats, step)

        # the shapes of one iteration's outputs, to fill skipped iterations with zeros
        out_shapes = jax.eval_shape(step_once, carry, (0, k_run, False, False))[1]

        def one(carry, inputs):
            def skip(c, _):
                return c, jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), out_shapes)

            return jax.lax.cond(inputs[0] < n_total, step_once, skip, carry, inputs)

        length = self.segment
        keys = jax.lax.dynamic_slice_in_dim(jax.random.split(k_run, self.capacity), t0, length)
        window = [jax.lax.dynamic_slice_in_dim(schedule[name], t0, length) for name in ("slow", "window_end")]
        carry, (values, stats, steps) = jax.lax.scan(one, carry, (t0 + jnp.arange(length), keys, *window))
        return carry, values, dict(zip(STAT_NAMES, stats)), steps

    @property
    def segment(self) -> int:
        """Iterations per call of ``advance``: the capacity in SEGMENTS parts (at least 64 each)."""
        return max(self.capacity // SEGMENTS, min(64, self.capacity))

    def schedule(self, tune: int, draws: int) -> dict:
        """The program's schedule argument for ``tune`` and ``draws`` (tune + draws <= capacity)."""
        slow, end = adaptation_schedule(tune)
        pad = self.capacity - tune
        return {"slow": np.concatenate([slow, np.zeros(pad, bool)]),
                "window_end": np.concatenate([end, np.zeros(pad, bool)]),
                "n_tune": np.int32(tune), "n_total": np.int32(tune + draws)}

    def compile(self, args, *, store=None, key: str | None = None) -> float:
        """Compile the chain's two programs for arguments shaped like ``args``; return the seconds taken.

        With a ``store`` (a :class:`~twoway.engines.jax.programs.ProgramStore`)
        and the program's ``key``, programs compiled by an earlier process are
        loaded instead (no tracing, lowering or compiling), and new ones are
        saved there.
        """
        import jax

        if self.compiled is None:
            t0 = time.perf_counter()
            name = None if key is None else f"{key}-{self.capacity}-{int(self.quick_compile)}"
            loaded = None
            if store is not None and name is not None:
                loaded = (store.load(name + "-begin"), store.load(name + "-advance"))
                loaded = None if None in loaded else loaded
            if loaded is not None:
                self.compiled, self.loaded = loaded, True
            else:
                options = {"xla_cpu_parallel_codegen_split_count": 1}
                if self.quick_compile:
                    options["xla_backend_optimization_level"] = 0
                k0 = jax.random.key(0)
                begin, begin_new = _compile(jax.jit(self._begin).lower(args, k0), options, store)
                carry, k_run, _ = jax.eval_shape(self._begin, args, k0)
                advance, advance_new = _compile(jax.jit(self._advance).lower(args, carry, k_run, np.int32(0),
                                                                             self.schedule(0, 1)), options, store)
                self.compiled = (begin, advance)
                # Only freshly compiled programs are stored: an executable that JAX's own cache
                # handed back, serialised a second time, lacks some of its functions when loaded
                # in a later process (jax 0.12: "NOT_FOUND: Function ... fusion not found").
                if store is not None and name is not None and begin_new and advance_new:
                    store.save(name + "-begin", begin)
                    store.save(name + "-advance", advance)
            self.compile_seconds = time.perf_counter() - t0
        return self.compile_seconds

    def run(self, args, seed: int | None, chains: int, tune: int, draws: int, *, cores: int | None = None,
            on_progress=None) -> dict:
        """Run ``chains`` chains in parallel threads; NumPy arrays with leading (chain, draw) dims.

        ``on_progress(done, total)``, if given, is called (from the chains' threads, one
        at a time) after each segment of each chain, with the iterations (tuning and
        kept draws) done so far over all chains and their total.
        """

        import jax

        self.compile(args)
        begin, advance = self.compiled
        schedule = self.schedule(tune, draws)
        n_total = tune + draws
        keys = jax.random.split(jax.random.key(0 if seed is None else int(seed)), chains)
        workers = max(1, min(chains, cores or _cores()))
        lock = threading.Lock()
        done = [0]

        def one(k):
            # a chain whose random starting point has no finite log-density starts again elsewhere
            for attempt in range(INIT_TRIES):
                carry, k_run, ok = begin(args, k)
                if bool(ok):
                    break
                k = jax.random.fold_in(k, attempt + 1)
            else:
                return None
            parts = []
            for t0 in range(0, n_total, self.segment):
                carry, values, stats, steps = advance(args, carry, k_run, np.int32(t0), schedule)
                parts.append(jax.tree_util.tree_map(np.asarray, (values, stats, steps)))
                if on_progress is not None:
                    with lock:
                        done[0] += min(self.segment, n_total - t0)
                        on_progress(done[0], chains * n_total)
            values, stats, steps = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *parts)
            return values, stats, steps[n_total - 1], True

        if workers == 1:
            results = [one(keys[c]) for c in range(chains)]
        else:

            # chains in parallel threads: one BLAS thread each (XLA's CPU linear algebra calls
            # OpenBLAS, whose own threads would otherwise fight the chains for the cores: measured
            # on a 100 x 8 x 5 Kronecker table, 2 threads x 4 chains took 22 s against 6.3 s)
            with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(one, [keys[c] for c in range(chains)]))
        if any(r is None for r in results):
            return {"init_ok": np.array([r is not None for r in results])}
        return _keep(_stack(results), tune, draws)


def _compile(lowered, options: dict, store) -> tuple[Any, bool]:
    """Compile ``lowered``; also say whether XLA compiled it (True) or JAX's cache served it (False)."""
    if store is None:
        return lowered.compile(compiler_options=options), True

    before = cache_entries()
    exe = lowered.compile(compiler_options=options)
    return exe, bool(cache_entries() - before)


def capacity_for(tune: int, draws: int) -> int:
    """The capacity of the program for ``tune + draws`` iterations: the next power of two, at least 256.

    Programs are compiled per capacity, so fits with other numbers of draws
    reuse one (skipped iterations cost nothing but their outputs' memory).
    """
    return max(256, 1 << (int(tune) + int(draws) - 1).bit_length())


def _keep(out: dict, tune: int, draws: int) -> dict:
    """The kept draws of every chain: iterations tune .. tune + draws - 1."""
    sl = slice(tune, tune + draws)
    out["values"] = {k: v[:, sl] for k, v in out["values"].items()}
    out["stats"] = {k: v[:, sl] for k, v in out["stats"].items()}
    return out


def adaptation_schedule(tune: int) -> tuple[np.ndarray, np.ndarray]:
    """Stan's warm-up windows: which iterations feed the mass matrix, and where a window ends.

    An initial fast buffer (step size only), slow windows doubling in length
    (mass matrix and step size), a final fast buffer: 75 / 25... / 50
    iterations when ``tune`` >= 150, else 15% / 75% / 10%.

    Returns
    -------
    slow : bool array (tune,)
    window_end : bool array (tune,)
        True at the last iteration of each slow window.
    """
    slow = np.zeros(tune, bool)
    end = np.zeros(tune, bool)
    if tune < 20:
        return slow, end
    if tune >= 150:
        init, term, base = 75, 50, 25
    else:
        init, term = int(0.15 * tune), int(0.1 * tune)
        base = tune - init - term
    start, size = init, base
    stop_all = tune - term
    while start < stop_all:
        stop = start + size
        if stop_all - stop < 2 * size:  # the last window takes the rest
            stop = stop_all
        slow[start:stop] = True
        end[stop - 1] = True
        start, size = stop, 2 * size
    return slow, end


class DualAveraging:
    """Nesterov dual averaging of the log step size towards a target acceptance rate (Stan's constants)."""

    def __init__(self, target: float = TARGET_ACCEPT, t0: float = 10.0, gamma: float = 0.05, kappa: float = 0.75):
        self.target, self.t0, self.gamma, self.kappa = target, t0, gamma, kappa

    def init(self, step):
        import jax.numpy as jnp

        state = _DAState(log_step=jnp.log(step), log_avg=jnp.asarray(0.0), h_avg=jnp.asarray(0.0),
                         t=jnp.asarray(0.0), mu=jnp.log(10.0 * step))
        return state

    def update(self, s, accept):
        import jax.numpy as jnp

        t = s.t + 1.0
        w = 1.0 / (t + self.t0)
        h_avg = (1.0 - w) * s.h_avg + w * (self.target - accept)
        log_step = s.mu - jnp.sqrt(t) / self.gamma * h_avg
        eta = t ** (-self.kappa)
        log_avg = eta * log_step + (1.0 - eta) * s.log_avg
        return _DAState(log_step=log_step, log_avg=log_avg, h_avg=h_avg, t=t, mu=s.mu)


class _DAState(NamedTuple):
    log_step: Any
    log_avg: Any
    h_avg: Any
    t: Any
    mu: Any


def _stack(results: list) -> dict:
    values = {k: np.stack([r[0][k] for r in results]) for k in results[0][0]}
    stats = {k: np.stack([r[1][k] for r in results]) for k in results[0][1]}
    step = np.array([float(r[2]) for r in results])
    ok = np.array([bool(r[3]) for r in results])
    return {"values": values, "stats": stats, "step_size": step, "init_ok": ok}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1
