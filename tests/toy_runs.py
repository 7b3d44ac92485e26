"""Shared by the tests that train the toy VAE for a few steps (training/test_checkpoint, training/test_run_safety): a
small config, a module-wide persistent compilation cache (the runs compile identical programs), and a digest of a
directory."""

import hashlib
import os

import jax
import pytest
from jax._src import compilation_cache

from ocr_jax.configs import toy_vae as toy_vae_config


@pytest.fixture(scope="module", autouse=True)
def persistent_compilation_cache(tmp_path_factory):
    """The runs of a test module compile identical programs; share them through a (test-local) persistent cache.
    A test module uses it by importing it (pytest finds fixtures among a module's names)."""
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])  # the session's cache (tests/conftest.py), if any
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.reset_cache()


def small_toy_config(num_steps: int, *, log_every: int, max_to_keep: int):
    """The quick toy-VAE config, 8 hidden units, batch 16, a checkpoint every 2 steps, no evaluation."""
    config = toy_vae_config.get_config("quick")
    config.num_steps = num_steps
    config.global_batch_size = 16
    config.log_every = log_every
    config.eval_every = 0
    config.checkpoint.every = 2
    config.checkpoint.max_to_keep = max_to_keep
    config.progress_bar = False
    config.task_config.hidden = 8
    return config


def tree_digest(root) -> dict[str, str]:
    """{relative path: sha256} of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            path = os.path.join(d, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out
