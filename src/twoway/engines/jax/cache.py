"""Where twoway keeps JAX's persistent compilation cache.

Compiling a model with the JAX engine takes seconds; JAX can keep the compiled
programs on disk and load them the next time the same program is compiled (same
model layout, same JAX and XLA versions, same device). twoway keeps them in one
folder:

1. ``$TWOWAY_CACHE_DIR`` when that variable is set (and not empty);
2. else ``$XDG_CACHE_HOME/twoway/jax`` when ``XDG_CACHE_HOME`` is an absolute path;
3. else ``~/.cache/twoway/jax``.

:func:`enable_jax_cache` points JAX at the folder (it imports JAX);
:func:`cache_info`, :func:`cache_entries` and :func:`clear_cache` only look at
the files and never import JAX, so ``twoway cache info`` and ``twoway cache
clear`` are quick.

JAX writes one file ``<key>-cache`` per compiled program (and, when the cache
has a size limit, ``<key>-atime`` beside it); an *entry* is one such program.
To tell whether a compile came from the cache, compare :func:`cache_entries`
before and after it (no new entry: a hit, or nothing was compiled), or count
JAX's own hit and miss events with :class:`CacheWatch`.
"""

from __future__ import annotations

import os
import shutil
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twoway.errors import TwowayError, TwowayWarning

# Deferred imports: jax (heavy to import) are imported inside the functions that use them, so importing this
# module stays light.

__all__ = ["ENV_VAR", "cache_dir", "enable_jax_cache", "cache_info", "cache_entries", "clear_cache",
           "CacheWatch"]

ENV_VAR = "TWOWAY_CACHE_DIR"

#: Suffixes of the files JAX's file cache writes per entry (jax/_src/lru_cache.py).
_ENTRY_SUFFIX = "-cache"
_ATIME_SUFFIX = "-atime"
#: Other things JAX puts in the cache folder: the lock of a size-limited cache,
#: and XLA's own GPU caches (autotuning results, kernels) when the cache is enabled.
_OTHER_FILES = (".lockfile",)
_XLA_FOLDERS = ("xla_gpu_per_fusion_autotune_cache_dir", "xla_gpu_kernel_cache_file",
                "programs")  # the last: twoway's own compiled chain programs (engines/jax/programs.py)

_lock = threading.Lock()
_enabled_path: Path | None = None


def cache_dir() -> Path:
    """The folder of twoway's JAX compilation cache (it may not exist yet).

    Returns
    -------
    pathlib.Path
        ``$TWOWAY_CACHE_DIR``, else ``$XDG_CACHE_HOME/twoway/jax``, else
        ``~/.cache/twoway/jax``; ``~`` expanded, made absolute.
    """
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return (base / "twoway" / "jax").absolute()


def _resolve(path: "str | os.PathLike[str] | None") -> Path:
    return cache_dir() if path is None else Path(path).expanduser().absolute()


def _warn_if_not_folder(folder: Path) -> None:
    """Warn when ``folder`` is a file (or anything but a folder): nothing can be cached there.

    Parameters
    ----------
    folder : pathlib.Path
        The cache folder in use.
    """
    if folder.exists() and not folder.is_dir():
        source = f" (from {ENV_VAR})" if os.environ.get(ENV_VAR, "") else ""
        warnings.warn(f"The cache folder {str(folder)!r}{source} is a file, not a folder: compiled programs "
                      f"are not cached; set {ENV_VAR} to a folder.", TwowayWarning, stacklevel=3)


def enable_jax_cache(path: "str | os.PathLike[str] | None" = None) -> Path:
    """Create the cache folder and point JAX's persistent compilation cache at it.

    Every compiled program is cached, however small or quick to compile
    (``jax_persistent_cache_min_compile_time_secs = 0`` and
    ``jax_persistent_cache_min_entry_size_bytes = -1``). Calling it again with
    the same folder does nothing; with another folder, JAX switches to it.

    Parameters
    ----------
    path : path-like, optional
        The folder (default: :func:`cache_dir`).

    Returns
    -------
    pathlib.Path
        The folder in use.

    Raises
    ------
    TwowayError
        When the folder cannot be created.
    """
    global _enabled_path
    folder = _resolve(path)
    with _lock:
        if _enabled_path == folder:
            return folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = "a file is there" if folder.exists() and not folder.is_dir() else exc.strerror or type(exc).__name__
            raise TwowayError(f"The cache folder must be a folder twoway can create (set {ENV_VAR} to "
                              f"another one); got {str(folder)!r} ({why}), so compiled programs are not "
                              "cached on disk.") from None
        import jax
        from jax.experimental.compilation_cache import compilation_cache as jax_cc

        if jax.config.jax_compilation_cache_dir != str(folder):
            # JAX opens its cache once, at the first compile after a folder is set;
            # forget an open one so that the new folder takes effect.
            jax_cc.reset_cache()
            jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        # -1: no size threshold and no override by JAX (0 would let JAX pick one for the file system).
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        _enabled_path = folder
    return folder


def cache_entries(path: "str | os.PathLike[str] | None" = None) -> frozenset[str]:
    """The keys of the programs in the cache (empty when the folder does not exist).

    Compare the set before and after a compile: new keys are programs that
    were compiled and written, none new means the compile was served from the
    cache (or compiled nothing).

    Parameters
    ----------
    path : path-like, optional
        The folder (default: :func:`cache_dir`).

    Returns
    -------
    frozenset of str
    """
    folder = _resolve(path)
    try:
        with os.scandir(folder) as it:
            return frozenset(e.name[: -len(_ENTRY_SUFFIX)] for e in it
                             if e.name.endswith(_ENTRY_SUFFIX) and e.is_file(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()


def _size(path: Path) -> int:
    try:
        if path.is_symlink() or path.is_file():
            return path.lstat().st_size
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_symlink() or p.is_file())
    except OSError:
        return 0


def _cache_files(folder: Path) -> list[Path]:
    """Everything in ``folder`` that JAX's cache wrote (nothing else there is touched)."""
    try:
        children = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [p for p in children
            if (p.name.endswith((_ENTRY_SUFFIX, _ATIME_SUFFIX)) and not p.is_dir())
            or p.name in _OTHER_FILES or (p.name in _XLA_FOLDERS and p.is_dir())]


def cache_info(path: "str | os.PathLike[str] | None" = None) -> dict[str, Any]:
    """What the cache holds.

    Parameters
    ----------
    path : path-like, optional
        The folder (default: :func:`cache_dir`).

    Returns
    -------
    dict
        ``path`` (str), ``exists`` (bool), ``entries`` (number of cached
        programs) and ``bytes`` (total size of the cache's files).
    """
    folder = _resolve(path)
    _warn_if_not_folder(folder)
    return {"path": str(folder), "exists": folder.is_dir(), "entries": len(cache_entries(folder)),
            "bytes": sum(_size(p) for p in _cache_files(folder))}


def clear_cache(path: "str | os.PathLike[str] | None" = None) -> int:
    """Delete the cached programs (and JAX's other cache files there); keep the folder.

    Only files JAX's cache writes are removed (``*-cache``, ``*-atime``, its
    lock file and XLA's GPU cache folders): anything else in the folder stays.

    Parameters
    ----------
    path : path-like, optional
        The folder (default: :func:`cache_dir`).

    Returns
    -------
    int
        The number of entries (cached programs) removed.

    Raises
    ------
    TwowayError
        When a file cannot be removed.
    """
    folder = _resolve(path)
    _warn_if_not_folder(folder)
    removed = 0
    for p in _cache_files(folder):
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        except OSError as exc:
            raise TwowayError(f"The cache file {str(p)!r} must be removable to clear the cache; "
                              f"got {exc.strerror or type(exc).__name__}.") from None
        if p.name.endswith(_ENTRY_SUFFIX):
            removed += 1
    return removed


@dataclass
class CacheWatch:
    """Count JAX's persistent-cache hits and misses, and new entries, inside a ``with`` block.

    Hits and misses are JAX's own monitoring events (a miss is counted when a
    freshly compiled program is written to the cache); new entries are files
    that appeared in the folder. Entering imports JAX.

    Parameters
    ----------
    path : path-like, optional
        The folder to look for new entries in (default: :func:`cache_dir`).

    Examples
    --------
    >>> with CacheWatch() as watch:  # doctest: +SKIP
    ...     compiled = compile_model("additive", data, engine="jax")
    >>> watch.describe()  # doctest: +SKIP
    'cache hit'
    """

    path: "str | os.PathLike[str] | None" = None
    hits: int = 0
    misses: int = 0
    new_entries: frozenset[str] = field(default_factory=frozenset)
    _before: frozenset[str] = field(default_factory=frozenset, repr=False)
    _listener: Any = field(default=None, repr=False)

    def _listen(self, event: str, **kwargs: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.hits += 1
        elif event == "/jax/compilation_cache/cache_misses":
            self.misses += 1

    def __enter__(self) -> "CacheWatch":
        import jax.monitoring

        self._before = cache_entries(self.path)
        self._listener = self._listen  # one bound method, so that it can be unregistered
        jax.monitoring.register_event_listener(self._listener)
        return self

    def __exit__(self, *exc: object) -> None:
        import jax.monitoring

        jax.monitoring.unregister_event_listener(self._listener)
        self.new_entries = cache_entries(self.path) - self._before

    def describe(self) -> str:
        """``cache hit``, ``cache miss`` or ``partly cached``; empty when nothing went through the cache."""
        misses = max(self.misses, len(self.new_entries))
        if self.hits and not misses:
            return "cache hit"
        if misses and not self.hits:
            return "cache miss"
        if self.hits and misses:
            return "partly cached"
        return ""
