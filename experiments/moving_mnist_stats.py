"""Overlap and off-canvas statistics of the moving multi-MNIST recipes (docs/datasets.md quotes its output).

    python -m experiments.moving_mnist_stats                      # 10k sequences from MNIST train, seed 0
    python -m experiments.moving_mnist_stats --num 60000 --json /tmp/stats.json

For each recipe (official; bounce_patch with motion bounce and leave_and_return) it generates the sequences with
`make_moving_multi_mnist`, times that, and prints `overlap_statistics` as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--num", type=int, default=10_000, help="sequences per recipe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    digits, labels = load_mnist(args.split)
    results = {}
    for name, kw in VARIANTS.items():
        start = time.perf_counter()
        data = make_moving_multi_mnist(digits, labels, args.num, seed=args.seed, **kw)
        seconds = time.perf_counter() - start
        results[name] = {**overlap_statistics(data), "generate_s": round(seconds, 2)}
    print(f"{args.num} sequences from MNIST {args.split}, seed {args.seed}")
    print("| recipe | " + " | ".join(COLUMNS) + " | frames with ≥ 2 visible digits | digit-frames | generate |")
    print("| --- " * (len(COLUMNS) + 4) + "|")
    for name, r in results.items():
        print(
            f"| {name} | "
            + " | ".join(f"{100 * r[c]:.1f} %" for c in COLUMNS)
            + f" | {r['num_multi_digit_frames']} | {r['num_digit_frames']} | {r['generate_s']} s |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
