"""Evaluate a trained VRNN run on the test sequences and draw its pictures.

    python -m experiments.vrnn_report --workdir=runs/vrnn_cpu [--config=vrnn_mnist:cpu]

Reads the latest checkpoint in <workdir>/checkpoints and writes <workdir>/results.json (the parameter count, and from
ocr_jax/evaluation/vrnn.py: log p(x_{1:T}) as IWAE with eval.log_marginal_particles particles — the thesis'
estimator for Table 5.4.1 — and the FIVO bound with eval.fivo_particles particles beside it; IWAE and ELBO with
eval.num_particles, log p(x|z), KL, the training bound; the addition experiment on the whole latent with SQAIR's
classifier, trained on eval.addition_train_sequences training sequences and tested on the test sequences), and
  reconstructions.png  test sequences and the best particle's reconstructions (likelihood means);
  conditional.png      a particle filter over the first eval.condition_frames frames, then frames simulated from the
                       prior (the predicted rollout), under the inputs;
  prior_samples.png    sequences sampled from the generative model (likelihood means fed back).
"""

from __future__ import annotations

import os

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from experiments.report_cli import addition_train_data, restore_sequence_params, run_report  # noqa: E402
from experiments.study_results import write_results  # noqa: E402
from ocr_jax import plotting  # noqa: E402
from ocr_jax.evaluation import vrnn as vrnn_eval  # noqa: E402
from ocr_jax.models.vrnn import count_parameters  # noqa: E402
from ocr_jax.tasks.vrnn import VRNNTask  # noqa: E402


def write_pictures(task: VRNNTask, params, results: dict, step: int, workdir: str) -> list[str]:
    ex = results["example"]
    n = len(ex["frames"])
    inputs = ex["frames"].astype(np.float32) / 255.0
    T = inputs.shape[1]
    paths = []
    fig = plotting.plot_frame_strips(
        np.concatenate([inputs, np.clip(ex["canvas"], 0, 1)]),
        row_titles=[f"input {i}" for i in range(n)] + [f"recon. {i}" for i in range(n)],
        title=f"VRNN step {step}: inputs, reconstructions",
    )
    paths.append(str(plotting.save_figure(fig, os.path.join(workdir, "reconstructions.png"))))
    plt.close(fig)

    k = int(task.config.eval.condition_frames)
    if 1 <= k < T:
        cond = vrnn_eval.conditional_generate(task, params, ex["frames"], jax.random.key(1), k)
        rows = np.concatenate([cond["reconstruction"], cond["rollout"]], axis=1)
        fig = plotting.plot_frame_strips(
            np.concatenate([inputs, np.clip(rows, 0, 1)]),
            row_titles=[f"input {i}" for i in range(n)] + [f"rollout {i}" for i in range(n)],
            title=f"frames 0..{k - 1} filtered, {k}..{T - 1} predicted",
        )
        paths.append(str(plotting.save_figure(fig, os.path.join(workdir, "conditional.png"))))
        plt.close(fig)

    samples = jax.device_get(task.model.generate(params, jax.random.key(0), n, T))
    fig = plotting.plot_frame_strips(np.clip(samples["frames"], 0, 1), title="samples (likelihood means)")
    paths.append(str(plotting.save_figure(fig, os.path.join(workdir, "prior_samples.png"))))
    plt.close(fig)
    return paths


def report(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Full evaluation of the latest checkpoint; writes results.json and pictures into ``workdir``."""
    task = VRNNTask(config.task_config)
    params, step = restore_sequence_params(config, workdir, task)
    data = task.test_data
    key = jax.random.key(step)
    results = vrnn_eval.evaluate_vrnn(task, params, data, key=key)
    summary = {"step": step, "parameters": count_parameters(task.model.config)["total"]}
    summary.update({k: v for k, v in results.items() if k != "example"})
    summary["addition"] = vrnn_eval.addition(
        task, params, data, addition_train_data(task), key=key, classifier_steps=task.config.eval.addition_steps
    )
    write_results(summary, workdir)
    summary["pictures"] = write_pictures(task, params, results, step, workdir)
    return summary


def main(argv=None):
    run_report(report, config_help="VRNN config file[:variant]", argv=argv)


if __name__ == "__main__":
    main()
