"""Compiled chain programs kept on disk, so a later process skips tracing and compiling.

JAX's persistent compilation cache skips XLA's compile, but a process still
traces and lowers the sampler (about a second for NUTS). A
:class:`ProgramStore` keeps the compiled executable itself, under a name made
of the plan's structure (:func:`twoway.engines.jax.engine.program_key`), the
numbers of draws, and a digest of the code and library versions that built
it, so a program is never reused across a change of twoway, JAX or jaxlib.
Files are written atomically; an unreadable one is ignored and replaced.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from functools import lru_cache
from pathlib import Path

from twoway._version import __version__

# Deferred imports: jax, jaxlib (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = ["ProgramStore", "code_digest"]

SUFFIX = ".twoway-program"


@lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of the code a compiled program depends on: twoway's algebra and engine, JAX's versions."""
    import jax
    import jaxlib

    h = hashlib.sha256()
    h.update(f"{__version__} {jax.__version__} {jaxlib.__version__}".encode())
    h.update(jax.default_backend().encode())
    root = Path(__file__).parents[2]  # the package folder
    for sub in ("spec", "linalg", "plan.py", "likelihood", "engines"):
        path = root / sub
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _initialize_lapack() -> None:
    """Load LAPACK's kernels into XLA's CPU runtime.

    JAX does this when it first lowers a linear-algebra operation; a program
    loaded from disk lowers nothing, and calling its Cholesky without this
    crashes the process (seen with jax 0.12). JAX's own loader of exported
    programs makes the same call.
    """
    from jax._src.lax import linalg

    linalg.initialize_lapack()


class ProgramStore:
    """A folder of compiled chain programs (inside the compile cache folder)."""

    def __init__(self, folder: "str | os.PathLike[str]"):
        self.folder = Path(folder)

    def _path(self, name: str) -> Path:
        return self.folder / f"{hashlib.sha256((name + code_digest()).encode()).hexdigest()[:32]}{SUFFIX}"

    def load(self, name: str):
        """The compiled program saved as ``name``, or None."""
        path = self._path(name)
        if not path.exists():
            return None
        try:
            from jax.experimental.serialize_executable import deserialize_and_load

            _initialize_lapack()
            with open(path, "rb") as fh:
                payload, in_tree, out_tree = pickle.load(fh)
            return deserialize_and_load(payload, in_tree, out_tree)
        except Exception:  # a stale or damaged file: compile again and overwrite it
            return None

    def save(self, name: str, compiled) -> bool:
        """Save ``compiled`` as ``name``; False when it cannot be serialised or written (then it is not kept)."""
        try:
            from jax.experimental.serialize_executable import serialize

            blob = pickle.dumps(serialize(compiled))
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._path(name)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(blob)
            os.replace(tmp, path)
            return True
        except Exception:
            return False
