"""Suite-wide set-up: one persistent XLA compilation cache for the whole test session.

Most of the suite's wall-clock is XLA compiling, and many tests compile the very same programs: the same tiny AIR and
SQAIR configs jitted afresh in each test (``jax.jit`` of a new function object compiles again), in both pytest-xdist
workers, and in the training commands that tests start in-process or as subprocesses. JAX's persistent cache
(``jax_compilation_cache_dir``) keys an executable on its program, jaxlib and XLA flags, so the second compile of a
program is a load from disk.

The cache is a fresh temporary directory per session, made by the controlling process and shared with its workers
and subprocesses through ``OCR_JAX_TEST_COMPILATION_CACHE`` (and ``JAX_COMPILATION_CACHE_DIR``, which the training
command defers to), and removed at the end: a run of the suite never reads what an earlier run compiled, so its
wall-clock is that of a clean clone. Set ``OCR_JAX_TEST_COMPILATION_CACHE`` yourself to keep a cache between runs,
or to ``none`` to compile everything.

Tests can also compile with LLVM's optimisation off (``--xla_backend_optimization_level=0`` in ``XLA_FLAGS``, for this
process, its workers and the commands tests start): XLA's own HLO passes (fusion, layout, algebraic simplification)
still run, so the programs compute what users' programs compute, but compiling them takes about half the time, and
these tests' arrays are too small for LLVM's vectorisation to matter. Measured on tests/tasks/test_air.py (one
process, user CPU seconds of ``/usr/bin/time python -m pytest tests/tasks/test_air.py``, beside a training run): 301
without either (``OCR_JAX_TEST_COMPILATION_CACHE=none OCR_JAX_TEST_XLA_FLAGS=``), 250 with the cache alone
(``OCR_JAX_TEST_XLA_FLAGS=``), 175 with both (the default); with both, the whole default suite on a clean clone
went from 1317 s to 660 s (README, with six experiment-level checks moved to slow).
``OCR_JAX_TEST_XLA_FLAGS`` names the added flags (empty: none added); the session cache is on by default
(``OCR_JAX_TEST_COMPILATION_CACHE`` unset, or ``new``).

Both were off for a day (2026-12-06) after two clean-clone runs failed two tests by one float32 ulp
(tests/data/test_iterators.py::test_to_unit_float..., tests/models/test_pcfg.py::test_hand_built...). The CI run that
had neither failed the same two tests the same way, so neither setting was the cause: those tests compared an eager
and a jitted float32 result (and a gradient and its closed form) to the last bit, and which of true division or
multiplication by the reciprocal XLA emits differs between machines and programs. They now allow one ulp.
"""

import os
import shutil
import tempfile

import jax
import pytest

from ocr_jax.training import compile_cache

CACHE_ENV = "OCR_JAX_TEST_COMPILATION_CACHE"
XLA_FLAGS_ENV = "OCR_JAX_TEST_XLA_FLAGS"
DEFAULT_TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"  # LLVM -O0: half the compile time (see above)
MIN_COMPILE_SECONDS = 0.2  # programs faster to compile than to read back are not stored
_MADE_HERE = pytest.StashKey[str]()


def pytest_configure(config):
    test_flags = os.environ.get(XLA_FLAGS_ENV, DEFAULT_TEST_XLA_FLAGS).split()
    user_flags = os.environ.get("XLA_FLAGS", "").split()
    user_names = {f.split("=")[0] for f in user_flags}
    added = [f for f in test_flags if f.split("=")[0] not in user_names]
    os.environ["XLA_FLAGS"] = " ".join(user_flags + added)  # read when XLA's CPU backend starts: no test has run yet
    controller = os.environ.get("PYTEST_XDIST_WORKER") is None
    os.environ.setdefault(CACHE_ENV, "new")
    if controller and os.environ[CACHE_ENV] == "new":
        os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="ocr_jax_test_xla_")
        config.stash[_MADE_HERE] = os.environ[CACHE_ENV]
    if os.environ[CACHE_ENV].strip().lower() in ("", "none"):
        return
    path = compile_cache.enable(os.environ[CACHE_ENV])  # the training command's cache, in a per-CPU subdirectory
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(MIN_COMPILE_SECONDS)


def pytest_unconfigure(config):
    made_here = config.stash.get(_MADE_HERE, None)
    if made_here:
        shutil.rmtree(made_here, ignore_errors=True)
        os.environ.pop(CACHE_ENV, None)
