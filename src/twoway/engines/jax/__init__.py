"""The JAX engine: one jitted program per model structure and table shape.

The log-density (:mod:`.model`) takes the table's numbers as arguments, NUTS
comes from BlackJAX (:mod:`.sampler`), and compiled programs are kept in
memory and in JAX's persistent compilation cache (:mod:`twoway.engines.jax.cache`).

JAX runs in float64 here: the engine turns ``jax_enable_x64`` on when it
first builds a model (twoway's algebra needs double precision). twoway sets
no ``XLA_FLAGS``; chains run in parallel as threads calling one compiled
program, which needs no flag.
"""

from __future__ import annotations

# Deferred imports: jax (heavy to import) are imported inside the functions that use them, so importing this
# module stays light.

__all__ = ["enable_x64"]


def enable_x64() -> None:
    """Turn on double precision in JAX (idempotent)."""
    import jax

    if not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
