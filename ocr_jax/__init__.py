"""ocr_jax: object-centric generative models (AIR, SQAIR) and variational gradient estimators in JAX.

Inference with trained runs (``ocr_jax.api``; imported on first use, so ``import ocr_jax`` stays light):
``load_run(workdir) -> Run``, ``infer_sequences(run, frames)`` (SQAIR), ``infer_images(run, images)`` (AIR).
"""

__version__ = "0.1.0"

_API = ("Run", "load_run", "infer_sequences", "infer_images")
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        from ocr_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'ocr_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
