"""Evaluate a trained AIR run on the test split and draw its pictures.

    python -m experiments.air_report --config=air_multi_mnist --workdir=runs/air

Reads the latest checkpoint in <workdir>/checkpoints and writes <workdir>/results.json (count accuracy, confusion
matrix, ELBO, log p(x|z), KL, IWAE-K log p(x)), reconstructions.png (inputs with inferred boxes coloured by step,
and reconstructions), confusion.png and prior_samples.png.
"""

from __future__ import annotations

import os

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from experiments.report_cli import run_report  # noqa: E402
from experiments.study_results import write_results  # noqa: E402
from ocr_jax import plotting  # noqa: E402
from ocr_jax import spatial_transformer as st  # noqa: E402
from ocr_jax.evaluation import air as air_eval  # noqa: E402
from ocr_jax.tasks.air import AIRTask  # noqa: E402
from ocr_jax.training import train  # noqa: E402


def restore_params(config: ml_collections.ConfigDict, workdir: str, task: AIRTask):
    """The parameters of the latest checkpoint in ``<workdir>/checkpoints`` and its step."""
    batch = next(
        task.train_batches(
            seed=config.seed, start_step=0, global_batch_size=config.global_batch_size, process_index=0, process_count=1
        )
    )
    return train.restore_params(config, workdir, task, batch)


def write_pictures(task: AIRTask, params, results: dict, step: int, workdir: str) -> list[str]:
    ex = results["example"]
    n = len(ex["images"])
    titles = [f"true {t} / inferred {c}" for t, c in zip(ex["true_counts"], ex["counts"])]
    images = np.concatenate([ex["images"].astype(np.float32) / 255.0, np.clip(ex["canvas"], 0, 1)])
    boxes = np.concatenate([ex["boxes"], ex["boxes"]])
    presence = np.concatenate([ex["z_pres"], ex["z_pres"]]) > 0
    fig = plotting.plot_images(
        images,
        boxes,
        presence,
        titles=titles + [""] * n,
        ncols=n if n <= 8 else n // 2,
        title=f"AIR step {step}: test inputs with inferred glimpses (colour = step), then reconstructions",
    )
    paths = [str(plotting.save_figure(fig, os.path.join(workdir, "reconstructions.png")))]
    plt.close(fig)

    confusion = np.asarray(results["confusion"])
    fig, ax = plt.subplots(figsize=(3.2, 3.0))
    ax.imshow(confusion, cmap="Blues")
    for (i, j), v in np.ndenumerate(confusion):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set_xlabel("inferred count")
    ax.set_ylabel("true count")
    ax.set_title(f"count accuracy {results['count_accuracy']:.4f}", fontsize=9)
    fig.tight_layout()
    paths.append(str(plotting.save_figure(fig, os.path.join(workdir, "confusion.png"))))
    plt.close(fig)

    # The count prior is annealed towards zero during training (a regulariser, AIR.md); sampled at its final value
    # almost every scene is empty, so the picture uses the initial continue probability.
    picture_rho = float(task.config.count_prior.start)
    samples = task.model.generate(params, jax.random.key(0), 16, continue_prob=picture_rho)
    boxes = np.asarray(jax.vmap(lambda z: st.z_where_to_box(z, task.model.config.canvas_shape))(samples.z_where))
    fig = plotting.plot_images(
        np.clip(np.asarray(samples.canvas), 0, 1),
        boxes,
        np.asarray(samples.z_pres) > 0,
        title=f"samples from the generative model (likelihood means), count prior ρ = {picture_rho}",
    )
    paths.append(str(plotting.save_figure(fig, os.path.join(workdir, "prior_samples.png"))))
    plt.close(fig)
    return paths


def report(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Full test-split evaluation of the latest checkpoint; writes results.json and pictures into `workdir`."""
    task = AIRTask(config.task_config)
    params, step = restore_params(config, workdir, task)
    ev = config.task_config.eval
    results = air_eval.evaluate_air(
        task, params, step, num_images=ev.num_images, log_marginal_images=ev.log_marginal_images
    )
    summary = air_eval.eval_summary(results)
    summary["estimator"] = config.task_config.estimator
    summary["recipe"] = config.task_config.data.recipe
    summary["count_prior"] = config.task_config.count_prior.to_dict()
    write_results(summary, workdir)
    summary["pictures"] = write_pictures(task, params, results, step, workdir)
    return summary


def main(argv=None):
    run_report(report, config_help="AIR config file[:variant]", argv=argv)


if __name__ == "__main__":
    main()
