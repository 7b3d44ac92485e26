"""Evaluate a trained SQAIR run on the test sequences and draw its pictures.

    python -m experiments.sqair_report --config=sqair_mnist:small --workdir=runs/sqair

Reads the latest checkpoint in <workdir>/checkpoints and writes <workdir>/results.json (counting accuracy per frame
and per sequence, confusion of true vs inferred counts, IWAE bound, ELBO, log p(x|z), KL, IWAE-K log p(x); tracking
against the ground-truth identities: matches, misses, identity swaps, re-detections, failure mode; the addition
experiment's test accuracy; ocr_jax/evaluation/sqair.py), and
  reconstructions.png  test sequences with the inferred boxes coloured by object identity, and reconstructions;
  sequences.gif        the same as an animation;
  prior_samples.png    sequences sampled from the generative model;
  conditional.png      the first half of each test sequence inferred, the second half simulated from the prior.
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
from ocr_jax.data import to_unit_float  # noqa: E402
from ocr_jax.evaluation import sqair as sqair_eval  # noqa: E402
from ocr_jax.tasks.sqair import SQAIRTask  # noqa: E402


def write_pictures(task: SQAIRTask, params, results: dict, step: int, workdir: str) -> list[str]:
    ex = results["example"]
    n = len(ex["frames"])
    inputs = ex["frames"].astype(np.float32) / 255.0
    frames = np.concatenate([inputs, np.clip(ex["canvas"], 0, 1)])
    boxes = np.concatenate([ex["boxes"], ex["boxes"]])
    presence = np.concatenate([ex["z_pres"], ex["z_pres"]]) > 0
    ids = np.concatenate([ex["ids"], ex["ids"]])
    # short row titles (they are vertical labels of one cell's height): counts per frame, true then inferred
    titles = [f"true {''.join(map(str, ex['true_counts'][i]))}" for i in range(n)]
    titles += [f"inf. {''.join(map(str, ex['counts'][i]))}" for i in range(n)]
    paths = []
    fig = plotting.plot_frame_strips(
        frames,
        boxes,
        presence,
        color_ids=np.maximum(ids, 0),
        row_titles=titles,
        title=f"SQAIR step {step}: test inputs with inferred boxes (colour = identity), then reconstructions",
    )
    paths.append(str(plotting.save_figure(fig, os.path.join(workdir, "reconstructions.png"))))
    plt.close(fig)
    paths.append(
        str(
            plotting.save_gif(
                frames, os.path.join(workdir, "sequences.gif"), boxes, presence, color_ids=np.maximum(ids, 0), ncols=n
            )
        )
    )

    T = inputs.shape[1]
    samples = jax.device_get(task.model.generate(params, jax.random.key(0), n, T))
    fig = plotting.plot_frame_strips(
        np.clip(samples["canvas"], 0, 1),
        sqair_eval.boxes_of_raw(task, samples["z_where_raw"]),
        samples["z_pres"] > 0,
        color_ids=np.maximum(samples["ids"], 0),
        title="sequences sampled from the generative model (likelihood means)",
    )
    paths.append(str(plotting.save_figure(fig, os.path.join(workdir, "prior_samples.png"))))
    plt.close(fig)

    k = max(1, T // 2)
    cond = jax.device_get(
        task.model.conditional_generate(params, to_unit_float(ex["frames"][:, :k]), jax.random.key(1), T - k)
    )
    z_where_raw = np.concatenate([cond["inferred"]["z_where_raw"][:, 0], cond["rollout"]["z_where_raw"]], axis=1)
    z_pres = np.concatenate([cond["inferred"]["z_pres"][:, 0], cond["rollout"]["z_pres"]], axis=1)
    cond_ids = np.concatenate([cond["inferred"]["ids"][:, 0], cond["rollout"]["ids"]], axis=1)
    rows = np.concatenate([inputs, np.clip(cond["frames"], 0, 1)])
    fig = plotting.plot_frame_strips(
        rows,
        np.concatenate([ex["boxes"], sqair_eval.boxes_of_raw(task, z_where_raw)]),
        np.concatenate([ex["z_pres"], z_pres]) > 0,
        color_ids=np.maximum(np.concatenate([ex["ids"], cond_ids]), 0),
        row_titles=[f"input {i}" for i in range(n)] + [f"rollout {i}" for i in range(n)],
        title=f"conditional generation: frames 0..{k - 1} inferred, {k}..{T - 1} simulated",
    )
    paths.append(str(plotting.save_figure(fig, os.path.join(workdir, "conditional.png"))))
    plt.close(fig)
    return paths


def report(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Full evaluation of the latest checkpoint; writes results.json and pictures into ``workdir``."""
    task = SQAIRTask(config.task_config)
    params, step = restore_sequence_params(config, workdir, task)
    data = task.test_data
    results = sqair_eval.evaluate_sqair(task, params, data, key=jax.random.key(step))
    summary = {"step": step, **{k: v for k, v in results.items() if k != "example"}}
    # Tracking against the ground-truth identities and the addition experiment (§5.D.4): the classifier is trained
    # on the representations of training sequences and tested on the test sequences; the model is frozen.
    ev = task.config.eval
    summary.update(
        sqair_eval.tracking_and_addition(
            task,
            params,
            data,
            key=jax.random.key(step),
            **sqair_eval.tracking_match_options(ev),
            classifier_steps=ev.addition_steps,
            train_data=addition_train_data(task),
        )
    )
    write_results(summary, workdir)
    summary["pictures"] = write_pictures(task, params, results, step, workdir)
    return summary


def main(argv=None):
    run_report(report, config_help="SQAIR config file[:variant]", argv=argv)


if __name__ == "__main__":
    main()
