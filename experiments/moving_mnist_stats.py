"""Overlap and off-canvas statistics of the moving multi-MNIST recipes (docs/datasets.md quotes its output).

    python -m experiments.moving_mnist_stats                      # 10k sequences from MNIST train, seed 0
    python -m experiments.moving_mnist_stats --num=60000 --json=/tmp/stats.json

For each recipe (official; bounce_patch with motion bounce and leave_and_return) it generates the sequences with
`make_moving_multi_mnist`, times that, and prints `overlap_statistics` as a markdown table.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

from ocr_jax import cli
from ocr_jax.data.mnist import load_mnist
from ocr_jax.data.moving_mnist import make_moving_multi_mnist, overlap_statistics

VARIANTS = {
    "official": dict(recipe="official"),
    "bounce_patch (motion=bounce)": dict(recipe="bounce_patch", motion="bounce"),
    "bounce_patch (motion=leave_and_return)": dict(recipe="bounce_patch", motion="leave_and_return"),
}
COLUMNS = (
    "overlap",
    "overlap_large",
    "overlap_of_multi_digit_sequence_frames",
    "partly_outside",
    "wholly_outside",
    "count_below_sequence_count",
)


_SPLIT = flags.DEFINE_enum("split", "train", ["train", "test"], "MNIST split the digits come from")
_NUM = flags.DEFINE_integer("num", 10_000, "sequences per recipe")
_SEED = flags.DEFINE_integer("seed", 0, "generator seed")
_JSON = flags.DEFINE_string("json", None, "also write the results here")


def run(split: str = "train", num: int = 10_000, seed: int = 0, json_path: str | None = None) -> dict:
    """Generates ``num`` sequences per recipe from MNIST ``split``, prints the markdown table, writes the results to
    ``json_path`` if given and returns them."""
    digits, labels = load_mnist(split)
    results = {}
    for name, kw in VARIANTS.items():
        start = time.perf_counter()
        data = make_moving_multi_mnist(digits, labels, num, seed=seed, **kw)
        seconds = time.perf_counter() - start
        results[name] = {**overlap_statistics(data), "generate_s": round(seconds, 2)}
    print(f"{num} sequences from MNIST {split}, seed {seed}")
    print("| recipe | " + " | ".join(COLUMNS) + " | frames with ≥ 2 visible digits | digit-frames | generate |")
    print("| --- " * (len(COLUMNS) + 4) + "|")
    for name, r in results.items():
        print(
            f"| {name} | "
            + " | ".join(f"{100 * r[c]:.1f} %" for c in COLUMNS)
            + f" | {r['num_multi_digit_frames']} | {r['num_digit_frames']} | {r['generate_s']} s |"
        )
    if json_path:
        with open(json_path, "w") as f:
            args = dict(split=split, num=num, seed=seed, json=json_path)
            json.dump({"args": args, "results": results}, f, indent=2)
    return results


def main(argv):
    cli.start_script(argv)
    run(_SPLIT.value, _NUM.value, _SEED.value, _JSON.value)


if __name__ == "__main__":
    app.run(main)
