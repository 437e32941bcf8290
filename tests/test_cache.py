"""Tests of twoway's JAX compilation cache (src/twoway/cache.py) and ``twoway cache``.

JAX's configuration is global to a process, so everything that enables the
cache runs in a subprocess; the file-only functions (where, what, clear) run
here on temporary folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import twoway
from twoway.engines.jax.cache import ENV_VAR, cache_dir, cache_entries, cache_info, clear_cache
from twoway.app.cli import main
from twoway.errors import TwowayError

SRC = Path(twoway.__file__).resolve().parent  # the twoway package folder


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    """An empty cache folder named by TWOWAY_CACHE_DIR (not created)."""
    path = tmp_path / "cache"
    monkeypatch.setenv(ENV_VAR, str(path))
    return path


def fake_entries(folder: Path, keys=("jit_f-abc", "jit_g-def"), size: int = 100) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key in keys:
        (folder / f"{key}-cache").write_bytes(b"x" * size)
        (folder / f"{key}-atime").write_bytes(b"t" * 8)


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc


# ---------------------------------------------------------------------------
# where
# ---------------------------------------------------------------------------


def test_env_var_names_the_folder(folder):
    assert cache_dir() == folder
    assert cache_info()["path"] == str(folder)


def test_xdg_cache_home_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "twoway" / "jax"
    monkeypatch.setenv(ENV_VAR, "")  # empty: as if not set
    assert cache_dir() == tmp_path / "xdg" / "twoway" / "jax"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid by the XDG spec: ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "twoway" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "twoway" / "jax"


def test_env_var_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(ENV_VAR, "~/jaxcache")
    assert cache_dir() == tmp_path / "jaxcache"


# ---------------------------------------------------------------------------
# what, and clearing
# ---------------------------------------------------------------------------


def test_info_on_a_folder_that_does_not_exist(folder):
    assert cache_info() == {"path": str(folder), "exists": False, "entries": 0, "bytes": 0}
    assert cache_entries() == frozenset()
    assert clear_cache() == 0
    assert not folder.exists()  # looking does not create it


def test_info_on_an_empty_folder(folder):
    folder.mkdir()
    assert cache_info() == {"path": str(folder), "exists": True, "entries": 0, "bytes": 0}


def test_info_counts_entries_and_bytes(folder):
    fake_entries(folder)
    (folder / "xla_gpu_per_fusion_autotune_cache_dir").mkdir()
    (folder / "xla_gpu_per_fusion_autotune_cache_dir" / "a.textproto").write_bytes(b"y" * 10)
    (folder / "notes.txt").write_text("not the cache's")
    info = cache_info()
    assert info["entries"] == 2
    assert info["bytes"] == 2 * (100 + 8) + 10
    assert cache_entries() == {"jit_f-abc", "jit_g-def"}
    assert cache_entries(folder) == cache_entries()


def test_clear_removes_the_cache_files_and_nothing_else(folder):
    fake_entries(folder)
    (folder / ".lockfile").write_text("")
    (folder / "xla_gpu_per_fusion_autotune_cache_dir").mkdir()
    (folder / "xla_gpu_per_fusion_autotune_cache_dir" / "a.textproto").write_text("y")
    (folder / "notes.txt").write_text("not the cache's")
    (folder / "sub").mkdir()
    assert clear_cache() == 2
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "sub"]
    assert cache_info()["entries"] == 0
    assert clear_cache() == 0


def test_entries_show_what_a_compile_added(folder):
    fake_entries(folder, ["a"])
    before = cache_entries()
    fake_entries(folder, ["b"])
    assert cache_entries() - before == {"b"}


def test_an_explicit_path_wins_over_the_env_var(folder, tmp_path):
    other = tmp_path / "other"
    fake_entries(other, ["k"])
    assert cache_info(other)["entries"] == 1 and cache_info()["entries"] == 0
    assert clear_cache(other) == 1


# ---------------------------------------------------------------------------
# twoway cache
# ---------------------------------------------------------------------------


def test_cli_cache_info_and_clear(folder, capsys):
    assert main(["cache", "info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"path": str(folder), "exists": False, "entries": 0,
                                                    "bytes": 0}
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"folder: {folder} (not created yet)" in out and "entries: 0" in out and "size: 0 bytes" in out
    fake_entries(folder, size=2000)
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"folder: {folder}", "entries: 2 compiled programs", "size: 3.9 KiB"]
    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out == f"removed 2 cached programs from {folder}\n"
    assert cache_info()["entries"] == 0


def test_cache_dir_on_a_file_is_said(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    monkeypatch.setenv(ENV_VAR, str(blocker))
    with pytest.warns(twoway.errors.TwowayWarning, match=f"is a file, not a folder: compiled programs are not cached; "
                                                          f"set {ENV_VAR} to a folder"):
        assert cache_info()["exists"] is False
    assert main(["cache", "info"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and str(blocker) in err and "is a file" in err
    from twoway.engines.jax.cache import enable_jax_cache

    with pytest.raises(TwowayError, match=r"\(a file is there\), so compiled programs are not cached on disk"):
        enable_jax_cache()
    assert blocker.is_file() and blocker.read_text() == ""


def test_a_cache_folder_gives_no_warning(folder, recwarn):
    fake_entries(folder)
    assert cache_info()["entries"] == 2
    assert not [w for w in recwarn if issubclass(w.category, twoway.errors.TwowayWarning)]


def test_cli_cache_needs_an_action(capsys):
    with pytest.raises(SystemExit) as info:
        main(["cache"])
    assert info.value.code == 2
    assert "usage: twoway cache" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# JAX (in subprocesses)
# ---------------------------------------------------------------------------


def test_file_functions_do_not_import_jax(folder):
    """cache.py alone (the package's __init__ bypassed): looking at and clearing the cache never imports JAX."""
    fake_entries(folder)
    proc = run_python(f"""
        import sys, types
        pkg = types.ModuleType("twoway"); pkg.__path__ = [{str(SRC)!r}]; sys.modules["twoway"] = pkg
        from twoway.engines.jax.cache import cache_dir, cache_entries, cache_info, clear_cache
        assert "jax" not in sys.modules, "import"
        cache_dir(); cache_entries(); info = cache_info(); removed = clear_cache()
        assert "jax" not in sys.modules, "use"
        print(info["entries"], removed)
    """, {ENV_VAR: str(folder)})
    assert proc.stdout.split() == ["2", "2"]


ENABLE_AND_COMPILE = """
    import sys
    import jax, jax.numpy as jnp
    from twoway.engines.jax.cache import CacheWatch, cache_info, enable_jax_cache
    path = enable_jax_cache()
    assert enable_jax_cache() == path  # idempotent
    assert jax.config.jax_compilation_cache_dir == str(path)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == -1
    with CacheWatch() as watch:
        jax.jit(lambda x: jnp.sin(x) @ x.T + 1.0)(jnp.ones((3, 3))).block_until_ready()
    print(path, watch.hits, watch.misses, len(watch.new_entries), watch.describe(), cache_info()["entries"],
          sep="|")
"""


def test_enable_caches_a_small_program_and_the_next_process_hits(folder):
    first = run_python(ENABLE_AND_COMPILE, {ENV_VAR: str(folder)}).stdout.strip().split("|")
    path, hits, misses, new, describe, entries = first
    assert path == str(folder) and folder.is_dir()
    assert int(hits) == 0 and int(misses) >= 1 and int(new) >= 1 and describe == "cache miss"
    assert int(entries) == int(new)
    second = run_python(ENABLE_AND_COMPILE, {ENV_VAR: str(folder)}).stdout.strip().split("|")
    path, hits, misses, new, describe, entries = second
    assert int(hits) >= 1 and int(misses) == 0 and int(new) == 0 and describe == "cache hit"
    assert int(entries) == int(first[5])


def test_enable_switches_to_another_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    proc = run_python(f"""
        import jax, jax.numpy as jnp
        from twoway.engines.jax.cache import cache_entries, enable_jax_cache
        enable_jax_cache({str(a)!r})
        jax.jit(lambda x: x * 2.0 + 1.0)(jnp.ones(3)).block_until_ready()
        n_a = len(cache_entries({str(a)!r}))
        enable_jax_cache({str(b)!r})
        jax.jit(lambda x: x * 3.0 - 1.0)(jnp.ones(4)).block_until_ready()
        print(n_a, len(cache_entries({str(a)!r})), len(cache_entries({str(b)!r})))
    """, {})
    n_a, n_a_after, n_b = map(int, proc.stdout.split())
    assert n_a >= 1 and n_a_after == n_a and n_b >= 1


def test_enable_refuses_a_folder_it_cannot_create(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    from twoway.engines.jax.cache import enable_jax_cache

    with pytest.raises(TwowayError, match="The cache folder must be a folder twoway can create"):
        enable_jax_cache(blocker / "cache")


TWO_MODELS_ONE_PROGRAM = """
import sys, warnings
warnings.simplefilter("ignore")
import twoway
from twoway.runs.sbc import sbc_spec
sim = twoway.simulate("additive", 4, 3, seed=1)
for which in sys.argv[1:]:
    spec = "additive" if which == "plain" else sbc_spec("additive", 4, 3)
    f = twoway.fit(spec, sim.data, chains=2, draws=50, tune=50, seed=1, progress=False)
    print(which, f.info["compile_cache"], float(f.posterior["intercept"].mean()))
"""


def test_a_program_served_by_jax_cache_is_not_stored_broken(folder):
    """Two specs with one compiled program (priors are arguments): the second comes from JAX's
    cache in the first process; a later process that loads it first must still run it."""
    def run(*which):
        proc = subprocess.run([sys.executable, "-c", TWO_MODELS_ONE_PROGRAM, *which], capture_output=True,
                              text=True, timeout=300, env={**os.environ, ENV_VAR: str(folder)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        return [line.split() for line in proc.stdout.strip().splitlines()]

    first = run("plain", "fixed")
    assert [r[1] for r in first] == ["miss", "hit"]
    later = run("fixed", "plain")
    assert [r[1] for r in later] == ["hit", "hit"]
    # the same seed and table give the same draws whichever way the program came
    assert {r[0]: r[2] for r in later} == {r[0]: r[2] for r in first}
