"""A persistent XLA compilation cache for training runs (JAX's own, ``jax_compilation_cache_dir``).

A run compiles one train step per shape it meets — SQAIR one per curriculum length, ≈ 3 minutes each when its scans
are unrolled on two CPU cores — and compiles them all again when it resumes, and a second seed of the same config
compiles the very same programs (the seed enters only as data). With the cache each program is compiled once per
machine: a resumed run or another seed loads it from disk.

The cache lives in a subdirectory named after this host's CPU (its architecture and feature flags): JAX's cache key
covers the program, jaxlib and the XLA flags but not the CPU an executable was compiled for, so a cache on a shared
home directory must not hand one machine's code to another.
"""

import hashlib
import os
import platform

import jax

DEFAULT_DIR = "~/.cache/ocr_jax/xla"


def host_key() -> str:
    """A short name for this host's CPU: the architecture and a hash of its feature flags (``/proc/cpuinfo`` where
    there is one, ``platform.processor()`` elsewhere)."""
    features = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    features = " ".join(sorted(line.split(":", 1)[1].split()))
                    break
    except OSError:
        pass
    digest = hashlib.sha256(f"{platform.machine()} {features}".encode()).hexdigest()[:12]
    return f"{platform.machine() or 'unknown'}-{digest}"


def enable(directory: str | os.PathLike) -> str:
    """Turns on JAX's persistent compilation cache in ``directory``/:func:`host_key` (``~`` expanded; created if
    missing) and returns that path. Call it before the first compilation; programs that compile in under a second
    are not stored (JAX's default threshold)."""
    path = os.path.join(os.path.expanduser(os.fspath(directory)), host_key())
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def enable_for_cli(flag_value: str | None) -> str | None:
    """The training command's ``--compilation_cache``: a directory turns the cache on there; ``""`` or ``none``
    turns it off; unset, the cache is :data:`DEFAULT_DIR` unless ``JAX_COMPILATION_CACHE_DIR`` already names one
    (JAX then uses that as it is). Returns the directory in use, or None."""
    if flag_value is None:
        if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            return os.environ["JAX_COMPILATION_CACHE_DIR"]
        flag_value = DEFAULT_DIR
    if flag_value.strip().lower() in ("", "none"):
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    return enable(flag_value)
