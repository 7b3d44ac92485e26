"""TFDS builders for multi-MNIST and moving multi-MNIST, stored as array_record and read without TensorFlow.

    builder = MultiMnist(config="kosiorek", data_dir=...)
    builder.download_and_prepare()
    source = builder.as_data_source(split="train")   # random access; source[i] is a dict of numpy arrays

or in one call, as stacked numpy arrays:

    arrays = load_dataset("multi_mnist", "train", recipe="pyro")
    arrays = load_dataset("moving_multi_mnist_hard", "test", method="generate")  # same arrays, no files

Each split's examples are exactly `make_multi_mnist` / `make_moving_multi_mnist` of that split's MNIST digits with seed
`[config.seed, 0]` (train) or `[config.seed, 1]` (test), so `method="builder"` and `method="generate"` return equal
arrays. Example i of the split is stored under key i and read back in key order.

TensorFlow is never imported: `_info` builds `tfds.core.DatasetInfo(builder=self, ...)` directly (the
`dataset_info_from_configs` helper looks for metadata files next to the module and fails outside a packaged dataset).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ocr_jax.data.mnist import load_mnist
from ocr_jax.data.moving_mnist import make_moving_multi_mnist
from ocr_jax.data.multi_mnist import make_multi_mnist

SPLIT_IDS = {"train": 0, "test": 1}
MnistLoader = Callable[[str], tuple[np.ndarray, np.ndarray]]


def _default_mnist_loader(split: str):
    return load_mnist(split)


def split_seed(seed: int, split: str) -> list[int]:
    """The generator seed of a split: `[seed, 0]` for train, `[seed, 1]` for test."""
    return [int(seed), SPLIT_IDS[split]]


@dataclasses.dataclass(eq=False)
class MultiMnistConfig(tfds.core.BuilderConfig):
    recipe: str = "kosiorek"
    max_digits: int = 2
    canvas_size: int = 50
    num_train: int = 60_000
    num_test: int = 10_000
    seed: int = 0


@dataclasses.dataclass(eq=False)
class MovingMultiMnistConfig(tfds.core.BuilderConfig):
    recipe: str = "official"
    motion: str | None = None  # recipe="bounce_patch" only
    hard: bool = False
    num_frames: int = 10
    max_digits: int = 2
    canvas_size: int = 50
    num_train: int = 60_000
    num_test: int = 10_000
    seed: int = 0


def _tensor(shape, dtype, encoding=tfds.features.Encoding.BYTES):
    # Raw bytes: the default encoding stores integers as int64 lists in a proto, ~10× slower to write for frames.
    return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=encoding)


def _pixels(shape):
    # zlib: mostly-black canvases shrink ~40× (moving train: 1.5 GB → ~40 MB). It also keeps a split's serialized size
    # under TFDS's 1 GB in-memory shuffle buffer; beyond it TFDS spills to temporary files through tf.io.gfile,
    # which needs TensorFlow.
    return _tensor(shape, np.uint8, tfds.features.Encoding.ZLIB)


def _num_examples(config, split: str) -> int:
    return {"train": config.num_train, "test": config.num_test}[split]


class _Base(tfds.core.GeneratorBasedBuilder):
    """Common plumbing: an injectable MNIST loader and array generation per split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's default resolves the path through `importlib_resources`, which is not installed (and not needed):
        # with this module's own file, `download_and_prepare` finds no checksums file and downloads nothing.
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, mnist_loader: MnistLoader | None = None, **kwargs):
        self._mnist_loader = mnist_loader or _default_mnist_loader
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def generate_arrays(self, split: str) -> dict[str, np.ndarray]:
        """The split as a dict of stacked numpy arrays, without touching the disk."""
        digits, labels = self._mnist_loader(split)
        return self._make(
            digits, labels, _num_examples(self.builder_config, split), split_seed(self.builder_config.seed, split)
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the digits come from ocr_jax.data.mnist
        return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split):
        arrays = self.generate_arrays(split)
        n = len(next(iter(arrays.values())))
        for i in range(n):
            yield i, {"index": i, **{k: v[i] for k, v in arrays.items()}}


class MultiMnist(_Base):
    """Multi-MNIST for AIR (see ocr_jax.data.multi_mnist)."""

    BUILDER_CONFIGS = [
        MultiMnistConfig(name="kosiorek", recipe="kosiorek", description="28×28 digits, no overlap of digit boxes"),
        MultiMnistConfig(
            name="official",
            recipe="official",
            description="the SQAIR authors' create_mnist: tight-cropped 28×28 digits anywhere inside, no box overlap",
        ),
        MultiMnistConfig(name="pyro", recipe="pyro", description="digits scaled by 1/s, s~N(1.3,0.1); Pyro's AIR data"),
        MultiMnistConfig(name="kosiorek_small", recipe="kosiorek", num_train=2_000, num_test=500),
        MultiMnistConfig(name="official_small", recipe="official", num_train=2_000, num_test=500),
        MultiMnistConfig(name="pyro_small", recipe="pyro", num_train=2_000, num_test=500),
    ]

    def _info(self):
        c = self.builder_config
        h, k = c.canvas_size, c.max_digits
        return tfds.core.DatasetInfo(
            builder=self,
            description="0..max_digits MNIST digits on a canvas, with counts, labels and tight boxes.",
            features=tfds.features.FeaturesDict(
                {
                    "index": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "images": _pixels((h, h)),
                    "counts": _tensor(shape=(), dtype=np.int32),
                    "labels": _tensor(shape=(k,), dtype=np.int32),
                    "boxes": _tensor(shape=(k, 4), dtype=np.float32),
                    "presence": _tensor(shape=(k,), dtype=np.bool_),
                }
            ),
        )

    def _make(self, digits, labels, n, seed):
        c = self.builder_config
        return make_multi_mnist(
            digits, labels, n, seed=seed, canvas_size=c.canvas_size, max_digits=c.max_digits, recipe=c.recipe
        )


class MovingMultiMnist(_Base):
    """Moving multi-MNIST for SQAIR (see ocr_jax.data.moving_mnist)."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "2.0.0": "recipe='official' (the SQAIR authors' generator) is the default; the first generator is "
        "recipe='bounce_patch' (configs bounce, leave_and_return, bounce_hard); 'hard' is now official + "
        "hard; new features sequence_counts and full_boxes.",
    }
    _PATCH = dict(recipe="bounce_patch")
    _SMALL = dict(num_train=1_000, num_test=200)
    BUILDER_CONFIGS = [
        MovingMultiMnistConfig(
            name="official",
            description="the official SQAIR generator (default): tight "
            "templates, corner bounded to [0, 50], noisy constant acceleration, pixel maximum",
        ),
        MovingMultiMnistConfig(
            name="hard", hard=True, description="official recipe; digits appear and disappear at arbitrary frames"
        ),
        MovingMultiMnistConfig(
            name="bounce",
            motion="bounce",
            **_PATCH,
            description="first generator: whole 28×28 patch bounces inside [0, 22]²",
        ),
        MovingMultiMnistConfig(
            name="leave_and_return",
            motion="leave_and_return",
            **_PATCH,
            description="first generator: the patch centre bounces off the canvas edges",
        ),
        MovingMultiMnistConfig(
            name="bounce_hard",
            motion="bounce",
            hard=True,
            **_PATCH,
            description="first generator, digits appear and disappear at arbitrary frames",
        ),
        MovingMultiMnistConfig(name="official_small", **_SMALL),
        MovingMultiMnistConfig(name="hard_small", hard=True, **_SMALL),
        MovingMultiMnistConfig(name="bounce_small", motion="bounce", **_PATCH, **_SMALL),
        MovingMultiMnistConfig(name="leave_and_return_small", motion="leave_and_return", **_PATCH, **_SMALL),
        MovingMultiMnistConfig(name="bounce_hard_small", motion="bounce", hard=True, **_PATCH, **_SMALL),
    ]

    def _info(self):
        c = self.builder_config
        t, h, k = c.num_frames, c.canvas_size, c.max_digits
        return tfds.core.DatasetInfo(
            builder=self,
            description="Sequences of moving MNIST digits with per-frame counts, boxes and presence per identity.",
            features=tfds.features.FeaturesDict(
                {
                    "index": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "frames": _pixels((t, h, h)),
                    "counts": _tensor(shape=(t,), dtype=np.int32),
                    "sequence_counts": _tensor(shape=(), dtype=np.int32),
                    "boxes": _tensor(shape=(t, k, 4), dtype=np.float32),
                    "full_boxes": _tensor(shape=(t, k, 4), dtype=np.float32),
                    "presence": _tensor(shape=(t, k), dtype=np.bool_),
                    "labels": _tensor(shape=(k,), dtype=np.int32),
                    "positions": _tensor(shape=(t, k, 2), dtype=np.float32),
                    "velocities": _tensor(shape=(t, k, 2), dtype=np.float32),
                }
            ),
        )

    def _make(self, digits, labels, n, seed):
        c = self.builder_config
        return make_moving_multi_mnist(
            digits,
            labels,
            n,
            seed=seed,
            num_frames=c.num_frames,
            canvas_size=c.canvas_size,
            max_digits=c.max_digits,
            recipe=c.recipe,
            motion=c.motion,
            hard=c.hard,
        )


# ----------------------------------------------------------------------------------------------------------------------
# One-call loading.

DATASETS = {
    "multi_mnist": (MultiMnist, MultiMnistConfig, "kosiorek", {}),
    "moving_multi_mnist": (MovingMultiMnist, MovingMultiMnistConfig, "official", {}),
    "moving_multi_mnist_hard": (MovingMultiMnist, MovingMultiMnistConfig, "hard", {"hard": True}),
}


def make_config(name: str, **overrides):
    """A builder config for dataset `name`: a named config (`config="pyro"`) plus field overrides.

    Overridden configs get a name that spells out every field that differs from the named base config, so that
    different data never share a directory. For moving multi-MNIST, `motion=` without `recipe=` implies
    `recipe="bounce_patch"` (the only recipe with a motion option).
    """
    builder_cls, config_cls, default, implied = DATASETS[name]
    base_name = overrides.pop("config", None)
    if base_name is None:  # pick the named config that matches recipe/motion/hard, if one does
        if config_cls is MovingMultiMnistConfig:
            if overrides.get("motion") is not None and "recipe" not in overrides:
                overrides["recipe"] = "bounce_patch"
            hard = overrides.get("hard", implied.get("hard", False))
            if overrides.get("recipe", "official") == "official":
                key = "hard" if hard else "official"
            else:
                key = (overrides.get("motion") or "bounce") + ("_hard" if hard else "")
        else:
            key = overrides.get("recipe")
        base_name = key if key in {c.name for c in builder_cls.BUILDER_CONFIGS} else default
    base = {c.name: c for c in builder_cls.BUILDER_CONFIGS}[base_name]
    fields = {
        f.name: getattr(base, f.name)
        for f in dataclasses.fields(config_cls)
        if f.name not in {x.name for x in dataclasses.fields(tfds.core.BuilderConfig)}
    }
    overrides = {**implied, **overrides}
    unknown = set(overrides) - set(fields)
    if unknown:
        raise TypeError(f"unknown {name} options {sorted(unknown)}; valid: {sorted(fields)}")
    changed = {k: v for k, v in overrides.items() if v != fields[k]}
    if not changed:
        return base
    fields.update(changed)
    suffix = "_".join(f"{k}-{str(v).lower()}" for k, v in sorted(changed.items()))
    return config_cls(name=f"{base.name}_{suffix}", version=base.version, **fields)


def get_builder(name: str, *, data_dir=None, mnist_loader: MnistLoader | None = None, **config):
    """The TFDS builder for `name` ("multi_mnist", "moving_multi_mnist", "moving_multi_mnist_hard")."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    builder_cls = DATASETS[name][0]
    if data_dir is None:
        from ocr_jax.data.mnist import default_data_dir

        data_dir = default_data_dir() / "tfds"
    return builder_cls(config=make_config(name, **config), data_dir=str(data_dir), mnist_loader=mnist_loader)


def read_split(builder, split: str) -> dict[str, np.ndarray]:
    """Reads a prepared split back through `as_data_source`, stacked into numpy arrays in generation order.

    TFDS stores examples in a hash-shuffled order; the stored `index` feature restores the generator's order.
    """
    source = builder.as_data_source(split=split)
    n = len(source)
    dtypes = {k: np.dtype(f.np_dtype) for k, f in builder.info.features.items()}
    out = None
    step = 4096
    for start in range(0, n, step):
        items = source.__getitems__(list(range(start, min(start + step, n))))
        if out is None:
            out = {k: np.empty((n,) + np.shape(v), dtypes[k]) for k, v in items[0].items()}
        for k in out:
            out[k][start : start + len(items)] = np.stack([it[k] for it in items])
    index = out.pop("index")
    if not np.array_equal(np.sort(index), np.arange(n)):
        raise RuntimeError(f"{builder.data_dir}: split {split} does not hold examples 0..{n - 1}; rebuild it")
    order = np.argsort(index)
    return {k: v[order] for k, v in out.items()}


def load_dataset(
    name: str, split: str, *, data_dir=None, method: str = "builder", mnist_loader: MnistLoader | None = None, **config
) -> dict[str, np.ndarray]:
    """A split of a dataset as a dict of numpy arrays.

    Args:
      name: "multi_mnist", "moving_multi_mnist" or "moving_multi_mnist_hard".
      split: "train" or "test".
      data_dir: TFDS data directory (default `$OCR_JAX_DATA_DIR/tfds`, i.e. `~/.cache/ocr_jax/tfds`).
      method: "builder" (prepare the array_record files if missing, then read them back) or "generate" (generate the
        same arrays in memory, writing nothing).
      mnist_loader: `split -> (digits, labels)`; default `ocr_jax.data.load_mnist`.
      **config: `config=` (a named builder config) and/or config fields, e.g. `recipe="pyro"`, `num_train=1000`.
    """
    builder = get_builder(name, data_dir=data_dir, mnist_loader=mnist_loader, **config)
    if method == "generate":
        return builder.generate_arrays(split)
    if method != "builder":
        raise ValueError(f"method must be 'builder' or 'generate', got {method!r}")
    try:
        builder.download_and_prepare()
    except ModuleNotFoundError as e:
        if e.name != "tensorflow":
            raise
        raise RuntimeError(
            f"preparing {name} needed TensorFlow: TFDS spills a split larger than 1 GB (serialized) to temporary "
            "files through tf.io.gfile. Use method='generate' (same arrays, in memory) or fewer examples."
        ) from e
    return read_split(builder, split)
