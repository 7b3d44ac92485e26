"""ocr_jax: object-centric generative models (AIR, SQAIR) and variational gradient estimators in JAX."""

__version__ = "0.1.0"
