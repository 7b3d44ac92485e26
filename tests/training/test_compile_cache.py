"""The persistent compilation cache of the training command (ocr_jax/training/compile_cache.py)."""

import os

import jax
import jax.numpy as jnp
import pytest
from jax._src import compilation_cache

from ocr_jax.training import compile_cache


@pytest.fixture
def restore_cache_config():
    """Leaves JAX's cache settings as they were (the session's cache of tests/conftest.py, or none)."""
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.reset_cache()


def test_host_key_names_the_architecture_and_is_stable():
    key = compile_cache.host_key()
    assert key == compile_cache.host_key()
    arch, digest = key.rsplit("-", 1)
    assert arch and len(digest) == 12 and int(digest, 16) >= 0


def test_a_program_compiled_once_is_loaded_from_disk_after_the_in_memory_caches_are_cleared(
    tmp_path, restore_cache_config
):
    path = compile_cache.enable(tmp_path / "cache")
    assert path == os.path.join(tmp_path, "cache", compile_cache.host_key()) and os.path.isdir(path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    events = []
    listener = lambda name, **kwargs: events.append(name)  # noqa: E731
    jax.monitoring.register_event_listener(listener)
    try:

        def f(x):
            return jnp.tanh(x @ x.T).sum() * 3.0

        x = jnp.arange(12.0).reshape(3, 4)
        first = jax.jit(f)(x)
        assert os.listdir(path), "the compiled program was not written to the cache"
        assert "/jax/compilation_cache/cache_hits" not in events
        jax.clear_caches()
        second = jax.jit(f)(x)
        assert "/jax/compilation_cache/cache_hits" in events
        assert first == second
    finally:
        jax.monitoring.unregister_event_listener(listener)


def test_the_command_line_value_turns_the_cache_on_off_or_defers_to_the_environment(
    tmp_path, monkeypatch, restore_cache_config
):
    assert compile_cache.enable_for_cli("none") is None and jax.config.jax_compilation_cache_dir is None
    assert compile_cache.enable_for_cli("") is None
    assert compile_cache.enable_for_cli(str(tmp_path)) == jax.config.jax_compilation_cache_dir
    assert jax.config.jax_compilation_cache_dir.startswith(str(tmp_path))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert compile_cache.enable_for_cli(None) == str(tmp_path / "env")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache.enable_for_cli(None).startswith(str(tmp_path / "home" / ".cache" / "ocr_jax" / "xla"))
