"""TFDS builders: array_record roundtrip without TensorFlow, equality with on-the-fly generation, config naming."""

import sys

import numpy as np
import pytest

from ocr_jax.data import builders
from ocr_jax.data.moving_mnist import make_moving_multi_mnist
from ocr_jax.data.multi_mnist import make_multi_mnist
from ocr_jax.data.synthetic import blob_digits

SOURCES = {"train": blob_digits(60, seed=0), "test": blob_digits(30, seed=1)}


class CountingLoader:
    def __init__(self):
        self.calls = []

    def __call__(self, split):
        self.calls.append(split)
        return SOURCES[split]


@pytest.mark.parametrize(
    "name, config",
    [
        ("multi_mnist", dict(recipe="pyro", num_train=40, num_test=12)),
        ("multi_mnist", dict(recipe="kosiorek", num_train=40, num_test=12, max_digits=3)),
        ("moving_multi_mnist", dict(motion="leave_and_return", num_train=16, num_test=6, num_frames=5)),
        ("moving_multi_mnist_hard", dict(num_train=16, num_test=6)),
    ],
)
def test_builder_roundtrip_equals_generation_without_tensorflow(tmp_path, name, config):
    loader = CountingLoader()
    for split in ("train", "test"):
        built = builders.load_dataset(name, split, data_dir=tmp_path, mnist_loader=loader, **config)
        generated = builders.load_dataset(
            name, split, data_dir=tmp_path / "none", mnist_loader=loader, method="generate", **config
        )
        assert built.keys() == generated.keys()
        for k in generated:
            assert built[k].dtype == generated[k].dtype, k
            np.testing.assert_array_equal(built[k], generated[k], err_msg=k)
    assert "tensorflow" not in sys.modules
    assert not (tmp_path / "none").exists()  # method="generate" writes nothing
    # Prepared once (2 splits), then reused: the second builder call did not regenerate.
    n_calls = len(loader.calls)
    builders.load_dataset(name, "test", data_dir=tmp_path, mnist_loader=loader, **config)
    assert len(loader.calls) == n_calls


def test_splits_use_their_own_digits_and_seeds(tmp_path):
    arrays = builders.load_dataset(
        "multi_mnist",
        "test",
        data_dir=tmp_path,
        mnist_loader=CountingLoader(),
        recipe="kosiorek",
        num_train=8,
        num_test=10,
        method="generate",
    )
    x, y = SOURCES["test"]
    expected = make_multi_mnist(x, y, 10, seed=[0, 1], recipe="kosiorek")
    for k in expected:
        np.testing.assert_array_equal(arrays[k], expected[k])
    moving = builders.load_dataset(
        "moving_multi_mnist",
        "train",
        mnist_loader=CountingLoader(),
        num_train=5,
        num_test=2,
        seed=3,
        method="generate",
        data_dir=tmp_path,
    )
    x, y = SOURCES["train"]
    np.testing.assert_array_equal(moving["frames"], make_moving_multi_mnist(x, y, 5, seed=[3, 0])["frames"])


def test_data_source_random_access(tmp_path):
    builder = builders.get_builder(
        "multi_mnist", data_dir=tmp_path, mnist_loader=CountingLoader(), config="pyro", num_train=20, num_test=4
    )
    builder.download_and_prepare()
    source = builder.as_data_source(split="train")
    assert len(source) == 20
    example = source[3]
    assert example["images"].shape == (50, 50) and example["images"].dtype == np.uint8
    full = builders.read_split(builder, "train")
    np.testing.assert_array_equal(full["images"][example["index"]], example["images"])


def test_config_names():
    assert builders.make_config("multi_mnist").name == "kosiorek"
    assert builders.make_config("multi_mnist", recipe="pyro").name == "pyro"
    assert builders.make_config("moving_multi_mnist_hard").name == "hard"
    assert builders.make_config("moving_multi_mnist", config="bounce_small").num_train == 1000
    # Moving multi-MNIST: the official recipe by default; motion= names the first generator ("bounce_patch").
    assert builders.make_config("moving_multi_mnist").name == "official"
    assert builders.make_config("moving_multi_mnist_hard").recipe == "official"
    c = builders.make_config("moving_multi_mnist", motion="leave_and_return")
    assert c.name == "leave_and_return" and c.recipe == "bounce_patch"
    assert builders.make_config("moving_multi_mnist_hard", recipe="bounce_patch").name == "bounce_hard"
    assert builders.make_config("moving_multi_mnist", recipe="bounce_patch").name == "bounce"
    c = builders.make_config("multi_mnist", recipe="pyro", num_train=100)
    assert c.name == "pyro_num_train-100" and c.recipe == "pyro" and c.num_test == 10_000
    with pytest.raises(TypeError, match="unknown multi_mnist options"):
        builders.make_config("multi_mnist", motion="bounce")
    with pytest.raises(ValueError, match="unknown dataset"):
        builders.get_builder("cifar")
