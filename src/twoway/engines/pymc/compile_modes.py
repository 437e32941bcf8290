"""The PyTensor compile modes twoway samples with: the standard ones minus rewrites known to miscompile.

PyTensor 3.3 (seen with 3.3.8) rewrites ``sum(alloc(x, *shape))`` into
``x * prod(shape)`` and multiplies the shape constants in their own integer
type: small shapes are int8 constants, so a (3, 8, 12) broadcast sums to
``32 * x`` instead of ``288 * x``. twoway's graphs broadcast scalar variances
over whole tables, so the compiled log-density of, for instance, the latent
model on the seed's 8 x 12 table with 3 replicates came out wrong while its
gradient stayed right, and NUTS collapsed its step size. The rewrite is only an
optimisation: leaving it out costs nothing measurable.

:func:`sampling_modes` applies the exclusion for the duration of a compile
(nutpie compiles in the predefined ``NUMBA`` mode, by name);
:func:`pymc_compile_kwargs` gives PyMC's own sampler the same mode.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

# Deferred imports: pytensor (heavy to import) are imported inside the functions that use them, so importing
# this module stays light.

__all__ = ["FAULTY_REWRITES", "sampling_modes", "pymc_compile_kwargs", "safe_mode"]

FAULTY_REWRITES = ("local_careduce_of_alloc",)

_LOCK = threading.Lock()


def safe_mode(mode=None):
    """``mode`` (a name, a Mode or None for PyTensor's default) without :data:`FAULTY_REWRITES`."""
    from pytensor.compile.mode import get_mode

    return get_mode(mode).excluding(*FAULTY_REWRITES)


@contextmanager
def sampling_modes() -> Iterator[None]:
    """While inside, the predefined ``NUMBA`` mode leaves out :data:`FAULTY_REWRITES`.

    The previous mode is restored on exit, also on error; compiles in other
    threads wait for the lock only if they also enter this context.
    """
    import pytensor.compile.mode as modes

    with _LOCK:
        before = modes.predefined_modes.get("NUMBA")
        if before is None:  # no such mode in this PyTensor: nothing to patch
            yield
            return
        modes.predefined_modes["NUMBA"] = before.excluding(*FAULTY_REWRITES)
        try:
            yield
        finally:
            modes.predefined_modes["NUMBA"] = before


def pymc_compile_kwargs() -> dict:
    """``compile_kwargs`` for :func:`pymc.sample` with the faulty rewrites left out."""
    return {"mode": safe_mode(None)}
