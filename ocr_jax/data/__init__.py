"""Data: MNIST, multi-MNIST (AIR), moving multi-MNIST (SQAIR), TFDS builders, deterministic batches and the uint8 ->
float conversion."""

from ocr_jax.data.iterators import deterministic_batches, to_unit_float
from ocr_jax.data.mnist import load_mnist
from ocr_jax.data.multi_mnist import make_multi_mnist

__all__ = ["deterministic_batches", "load_mnist", "make_multi_mnist", "to_unit_float"]
