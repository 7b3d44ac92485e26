"""The MLP-AIR baseline of thesis Table 5.4.1: AIR trained frame-wise on SQAIR's moving multi-MNIST, evaluated on
SQAIR's test sequences in SQAIR's units (per 10-frame sequence), next to a SQAIR run and the paper's numbers.

    python -m experiments.main --config=air_multi_mnist:moving --workdir=runs/air_moving
    python -m experiments.air_frames_report --config=air_multi_mnist:moving \
        --workdir=runs/air_moving --sqair_results=runs/sqair_cpu/results.json

Reads the latest checkpoint in <workdir>/checkpoints and writes <workdir>/results.json
(``ocr_jax.evaluation.air.evaluate_air_on_sequences``: counting accuracy per frame and per sequence, IWAE bound,
ELBO, log p(x|z) and KL summed over the frames, IWAE-K log p(x_{1:T}) = Σ_t log p̂(x_t), tracking with AIR's step
index as identity, the addition experiment), reconstructions.png (test sequences with AIR's boxes coloured by step,
and reconstructions), and table.md: the Table 5.4.1 columns for this run, the SQAIR runs given by --sqair_results
(comma-separated results.json files of experiments/sqair_report.py) and the paper.
"""

from __future__ import annotations

import json
import os

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from experiments.report_cli import run_report  # noqa: E402
from experiments.study_results import write_results  # noqa: E402
from ocr_jax import api, plotting  # noqa: E402
from ocr_jax.evaluation import air as air_eval  # noqa: E402
from ocr_jax.evaluation import sqair as sqair_eval  # noqa: E402
from ocr_jax.tasks.air import AIRTask, load_moving_sequences  # noqa: E402
from ocr_jax.training import train  # noqa: E402

# Thesis Table 5.4.1 (per 10-frame sequence, nats; ../shared/spec/SQAIR.md).
PAPER_ROWS = {
    "CONV-SQAIR (paper)": dict(
        log_marginal=6784.8, log_likelihood=6923.8, kl=134.6, count_accuracy=0.9974, addition=0.9990
    ),
    "MLP-SQAIR (paper)": dict(
        log_marginal=6617.6, log_likelihood=6786.5, kl=164.5, count_accuracy=0.9986, addition=0.9998
    ),
    "MLP-AIR (paper)": dict(
        log_marginal=6443.6, log_likelihood=6830.6, kl=352.6, count_accuracy=0.9058, addition=0.8644
    ),
}
COLUMNS = (
    ("log_marginal", "log p(x_1:T)", "{:.1f}"),
    ("log_likelihood", "log p(x|z)", "{:.1f}"),
    ("kl", "KL(q‖p)", "{:.1f}"),
    ("count_accuracy", "counting acc.", "{:.4f}"),
    ("addition", "addition acc.", "{:.4f}"),
)


def sqair_name(results_path: str) -> str:
    """ "MLP-SQAIR" or "CONV-SQAIR" from the config of the run beside a SQAIR ``results.json`` (``api.load_config``,
    its model's ``arch``); "SQAIR" when that directory holds no run config."""
    try:
        config = api.load_config(os.path.dirname(os.path.abspath(results_path)))
    except FileNotFoundError:
        return "SQAIR"
    arch = config.get("task_config", {}).get("model", {}).get("arch")
    return f"{arch.upper()}-SQAIR" if arch else "SQAIR"


def table_row(results: dict) -> dict:
    """The Table 5.4.1 columns of a results.json (this script's or experiments/sqair_report.py's)."""
    addition = results.get("addition")
    return dict(
        log_marginal=results.get("log_marginal"),
        log_likelihood=results.get("log_likelihood"),
        kl=results.get("kl"),
        count_accuracy=results.get("count_accuracy"),
        addition=addition["test_accuracy"] if addition else None,
    )


def markdown_table(rows: dict[str, dict]) -> str:
    """``{model name: table_row}`` -> a markdown table (missing values as n/a)."""
    lines = ["| model | " + " | ".join(c[1] for c in COLUMNS) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    for name, row in rows.items():
        cells = [fmt.format(row[k]) if row.get(k) is not None else "n/a" for k, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_reconstructions(
    task: AIRTask, params, sequences: dict, step: int, workdir: str, num_sequences: int = 4
) -> str:
    frames = sequences["frames"][:num_sequences]
    n, T = frames.shape[:2]
    r = jax.device_get(
        air_eval.eval_batch(task, params, frames.reshape(-1, *frames.shape[2:]), jax.random.key(step), step)
    )
    shape = (n, T)
    canvas = np.clip(r["canvas"], 0, 1).reshape(*shape, *frames.shape[2:])
    boxes = r["boxes"].reshape(*shape, *r["boxes"].shape[1:])
    presence = r["z_pres"].reshape(*shape, -1) > 0
    slots = np.broadcast_to(np.arange(presence.shape[-1]), presence.shape)
    counts = r["counts"].reshape(shape)
    titles = [f"true {''.join(map(str, sequences['counts'][i]))}" for i in range(n)]  # short: vertical labels
    titles += [f"inf. {''.join(map(str, counts[i]))}" for i in range(n)]
    fig = plotting.plot_frame_strips(
        np.concatenate([frames.astype(np.float32) / 255.0, canvas]),
        np.concatenate([boxes, boxes]),
        np.concatenate([presence, presence]),
        color_ids=np.concatenate([slots, slots]),
        row_titles=titles,
        title=f"AIR (frame-wise) step {step}: test sequences with inferred boxes (colour = AIR step, no identities), "
        "then reconstructions",
    )
    path = str(plotting.save_figure(fig, os.path.join(workdir, "reconstructions.png")))
    plt.close(fig)
    return path


def report(config: ml_collections.ConfigDict, workdir: str, sqair_results: str | None = None) -> dict:
    """Evaluates the latest checkpoint of a frame-wise AIR run on SQAIR's test sequences (module docstring)."""
    cfg = config.task_config
    if cfg.data.name != "moving_multi_mnist":
        raise ValueError(
            "air_frames_report evaluates AIR trained on moving multi-MNIST frames "
            f"(the ':moving' config variant); this config's data is {cfg.data.name!r}"
        )
    task = AIRTask(cfg)
    cfg = task.config  # the task's defaults updated with the config file's values
    sequences = load_moving_sequences(cfg.data, "test")
    batch = {
        "images": sequences["frames"].reshape(-1, *sequences["frames"].shape[2:])[: config.global_batch_size],
        "counts": sequences["counts"].reshape(-1)[: config.global_batch_size],
    }
    params, step = train.restore_params(config, workdir, task, batch)
    params = jax.device_put(params)
    ev = cfg.eval
    num_seq = min(len(sequences["frames"]), max(1, ev.num_images // sequences["frames"].shape[1]))
    sequences = {k: v[:num_seq] for k, v in sequences.items()}
    train_cfg = ml_collections.ConfigDict(cfg.data.to_dict())
    train_cfg.num_train = ev.addition_train_sequences
    results = air_eval.evaluate_air_on_sequences(
        task,
        params,
        step,
        sequences,
        key=jax.random.key(step),
        num_particles=ev.sequence_particles,
        log_marginal_sequences=max(1, ev.log_marginal_images // sequences["frames"].shape[1]),
        train_sequences=load_moving_sequences(train_cfg, "train"),
        classifier_steps=ev.addition_steps,
        **sqair_eval.tracking_match_options(ev),
    )
    results["estimator"] = cfg.estimator
    write_results(results, workdir)

    rows = {f"MLP-AIR, frame-wise (this run, step {step})": table_row(results)}
    for path in filter(None, (sqair_results or "").split(",")):
        with open(path) as f:
            sq = json.load(f)
        run_name = os.path.basename(os.path.dirname(os.path.abspath(path)))
        rows[f"{sqair_name(path)} ({run_name}, step {sq.get('step')})"] = table_row(sq)
    rows.update(PAPER_ROWS)
    table = markdown_table(rows)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(table)
    results["table"] = table
    results["pictures"] = [write_reconstructions(task, params, sequences, step, workdir)]
    return results


def main(argv=None):
    run_report(
        report,
        config_help="AIR config file[:variant] (the ':moving' one)",
        argv=argv,
        optional_flags={"sqair_results": "SQAIR runs' results.json files (comma-separated), for the table"},
        text_key="table",
    )


if __name__ == "__main__":
    main()
