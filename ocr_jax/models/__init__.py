"""Object-centric models (AIR, SQAIR) and their shared Linen building blocks."""

from ocr_jax.models.air import AIR, AIRConfig, AIROutput, AIRSample, NVILBaseline, validate_images

__all__ = ["AIR", "AIRConfig", "AIROutput", "AIRSample", "NVILBaseline", "validate_images"]
