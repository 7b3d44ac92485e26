"""Data: MNIST, multi-MNIST (AIR), moving multi-MNIST (SQAIR), TFDS builders and batch iterators."""

from ocr_jax.data.iterators import batch_iterator, images_to_float
from ocr_jax.data.mnist import load_mnist
from ocr_jax.data.multi_mnist import make_multi_mnist

__all__ = ["batch_iterator", "images_to_float", "load_mnist", "make_multi_mnist"]
