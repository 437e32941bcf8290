"""NUTS over a :class:`~twoway.engines.jax.model.JaxModel`, with BlackJAX.

One chain is one call of one jitted program ``chain(args, key)``: find a
finite initial point, Stan's windowed adaptation of the step size and a
diagonal mass matrix, then the draws, each mapped to the public values. The
table's numbers are in ``args``, so the program is compiled once per model
structure, table shape and number of draws, and reused for every table and
chain (:class:`ChainProgram`). Chains run in parallel as threads calling the
same compiled program (XLA releases the interpreter lock while it runs).

BlackJAX is used rather than NumPyro's sampler because its kernels are pure
functions of arrays: the same chain program is vmapped over many tables for
calibration (:meth:`ChainProgram.run_many`) without a second code path.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ChainProgram", "STAT_NAMES", "INIT_RADIUS", "INIT_TRIES"]

INIT_RADIUS = 1.0      # initial points: uniform(-1, 1) on the (prior-scaled) unconstrained space
INIT_TRIES = 50        # tries for a finite log-density and gradient
MAX_TREE_DEPTH = 10
STAT_NAMES = ("lp", "diverging", "n_steps", "tree_depth", "energy", "acceptance_rate")


@dataclass
class ChainProgram:
    """A model's chain program for a given number of tuning and kept draws.

    Attributes
    ----------
    model : JaxModel
    tune, draws : int
    compiled : object or None
        The compiled executable for one chain (after :meth:`compile`).
    compile_seconds : float
    """

    model: Any
    tune: int
    draws: int
    compiled: Any = None
    compiled_many: dict = field(default_factory=dict)
    compile_seconds: float = 0.0

    # -- the program ---------------------------------------------------------------
    def _chain(self, args, key):
        import blackjax
        import jax
        import jax.numpy as jnp
        from blackjax.adaptation.base import get_filter_adapt_info_fn

        model = self.model

        def logdensity(theta):
            return model.log_density(theta, args)

        def draw_init(k):
            keys = jax.random.split(k, len(model.sites))
            return {name: jax.random.uniform(kk, shape, minval=-INIT_RADIUS, maxval=INIT_RADIUS)
                    for kk, (name, shape) in zip(keys, model.sites.items())}

        def finite(theta):
            lp, grad = jax.value_and_grad(logdensity)(theta)
            ok = jnp.isfinite(lp)
            for g in jax.tree_util.tree_leaves(grad):
                ok = ok & jnp.all(jnp.isfinite(g))
            return ok

        k_init, k_warm, k_draw = jax.random.split(key, 3)

        def cond(c):
            i, _, ok, _ = c
            return (~ok) & (i < INIT_TRIES)

        def body(c):
            i, k, _, _ = c
            k, sub = jax.random.split(k)
            theta = draw_init(sub)
            return i + 1, k, finite(theta), theta

        first = draw_init(k_init)
        _, _, ok, theta0 = jax.lax.while_loop(cond, body, (0, k_init, finite(first), first))

        warmup = blackjax.window_adaptation(blackjax.nuts, logdensity, adaptation_info_fn=get_filter_adapt_info_fn(),
                                            max_num_doublings=MAX_TREE_DEPTH)
        (state, params), _ = warmup.run(k_warm, theta0, num_steps=self.tune)
        kernel = blackjax.nuts(logdensity, **{**params, "max_num_doublings": MAX_TREE_DEPTH}).step

        def one(state, k):
            state, info = kernel(k, state)
            values = model.public(state.position, args)
            stats = (state.logdensity, info.is_divergent, info.num_integration_steps,
                     info.num_trajectory_expansions, info.energy, info.acceptance_rate)
            return state, (values, stats)

        _, (values, stats) = jax.lax.scan(one, state, jax.random.split(k_draw, self.draws))
        return values, dict(zip(STAT_NAMES, stats)), params["step_size"], ok

    def compile(self, args) -> float:
        """Compile the one-chain program for arguments shaped like ``args``; return the seconds taken."""
        import jax

        if self.compiled is None:
            t0 = time.perf_counter()
            key = jax.random.key(0)
            self.compiled = jax.jit(self._chain).lower(args, key).compile()
            self.compile_seconds = time.perf_counter() - t0
        return self.compile_seconds

    def run(self, args, seed: int | None, chains: int, *, cores: int | None = None) -> dict:
        """Run ``chains`` chains in parallel threads; NumPy arrays with leading (chain, draw) dims."""
        import jax

        self.compile(args)
        keys = jax.random.split(jax.random.key(0 if seed is None else int(seed)), chains)
        workers = max(1, min(chains, cores or _cores()))

        def one(k):
            out = self.compiled(args, k)
            return jax.tree_util.tree_map(np.asarray, jax.block_until_ready(out))

        if workers == 1:
            results = [one(keys[c]) for c in range(chains)]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(one, [keys[c] for c in range(chains)]))
        return _stack(results)

    # -- many tables ---------------------------------------------------------------
    def run_many(self, many_args, seeds: np.ndarray, chains: int) -> list[dict]:
        """Run ``chains`` chains on each of a batch of tables through one vmapped program.

        Parameters
        ----------
        many_args : pytree
            ``args`` with a leading table dimension T on every leaf.
        seeds : array (T,) of int
        chains : int

        Returns
        -------
        list of T dicts, as :meth:`run` returns for one table.
        """
        import jax

        T = int(np.asarray(seeds).shape[0])
        keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s), chains))(np.asarray(seeds))
        flat_keys = keys.reshape((T * chains,))
        flat_args = jax.tree_util.tree_map(lambda x: np.repeat(np.asarray(x), chains, axis=0), many_args)
        shape_key = T * chains
        if shape_key not in self.compiled_many:
            self.compiled_many[shape_key] = jax.jit(jax.vmap(self._chain)).lower(flat_args, flat_keys).compile()
        out = jax.tree_util.tree_map(np.asarray, jax.block_until_ready(
            self.compiled_many[shape_key](flat_args, flat_keys)))
        results = []
        for t in range(T):
            per_chain = [jax.tree_util.tree_map(lambda x: x[t * chains + c], out) for c in range(chains)]
            results.append(_stack(per_chain))
        return results


def _stack(results: list) -> dict:
    values = {k: np.stack([r[0][k] for r in results]) for k in results[0][0]}
    stats = {k: np.stack([r[1][k] for r in results]) for k in results[0][1]}
    step = np.array([float(r[2]) for r in results])
    ok = np.array([bool(r[3]) for r in results])
    return {"values": values, "stats": stats, "step_size": step, "init_ok": ok}


def _cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1
