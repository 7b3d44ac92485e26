r"""AIR trained by VIMCO and by reweighted wake-wake for several particle counts K (thesis §8.4.2, Fig. 8.4.3).

  python -m experiments.air_estimators --config=air_multi_mnist:bernoulli \
      --workdir=runs/air_estimators [--estimators=vimco,ww] [--particles=2,5,10,20] [--config.num_steps=3000] \
      [--results_dir=docs/data/air_estimators]

As in §8.4.2: Bernoulli likelihood on stochastically binarised multi-MNIST (the ``bernoulli`` variant), at most
three steps. One run per (estimator, K) in ``<workdir>/<estimator>_K<K>`` (each resumes if interrupted), K by K
(both estimators at one K before the next K). Every run is then evaluated on the test split:

* ``count_accuracy`` on ``--count_images`` test images (one posterior sample each);
* ``log_marginal`` = mean over the first ``--log_marginal_images`` test images of log p̂(x), a one-sample
  ``--log_marginal_particles``-particle IWAE estimate (thesis: 5000), computed in chunks;
* ``kl`` = KL(q_φ(z|x) ‖ p_θ(z|x)) ≈ log p̂(x) − E_q[log w], the KL from the inference network to the posterior
  under the *current* model (§8.4.2; a proxy for the KL to the true posterior). E_q[log w] is estimated by one
  single-particle log-weight per image, averaged over the same images (the thesis averages 5000 per image; the
  mean over images is the same expectation);
* ``config_fingerprint``: a hash of the run's config; results of another config in the same file are refused;
* ``train_curve``: the training IWAE-K bound of every logged step ``[[step, bound], ...]`` (from the run's
  ``metrics.jsonl``), and ``curve_noise``, the spread of that curve about its own running mean over the second half
  of training (:func:`curve_noise`) — Fig. 8.4.3 (left): "training with VIMCO leads to larger variance". Each
  logged value is one batch's bound, so the spread holds the batches' own variety (how many digits, which) as well
  as the estimator's; runs of one seed draw the same batches, so at equal K the difference is the estimator's.

Each evaluated run is added to ``<results_dir>/results.json`` (default: the workdir) as soon as it is done, and a
run already there at the configured number of steps is neither retrained nor re-evaluated; so a results directory
kept in the repository carries a study that is longer than one session across fresh checkouts, where the
checkpoints in the workdir are lost. Writes ``<results_dir>/air_estimators.png`` (training curves; log p̂, KL and
count accuracy against K per estimator) and a markdown table on stdout.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from ocr_jax import configs


def run_name(estimator: str, num_particles: int) -> str:
    return f"{estimator}_K{num_particles}"


def study_config(base, estimator: str, num_particles: int):
    """``base`` with the estimator and particle count of one run of the study."""
    config = base.copy_and_resolve_references()
    config.task_config.estimator = estimator
    config.task_config.estimator_args = dict()
    config.task_config.num_particles = num_particles
    return config


def evaluate_run(
    config, run_dir: str, *, count_images: int, log_marginal_images: int, log_marginal_particles: int
) -> dict:
    """Count accuracy, log p̂(x) and KL(q‖p_θ(·|x)) of the latest checkpoint of one run (module docstring)."""
    import jax

    from experiments.air_report import restore_params
    from ocr_jax.evaluation.air import eval_summary, evaluate_air
    from ocr_jax.tasks.air import AIRTask

    config.task_config.eval.log_marginal_particles = log_marginal_particles
    config.task_config.eval.log_marginal_chunk = min(config.task_config.eval.log_marginal_chunk, log_marginal_particles)
    task = AIRTask(config.task_config)
    params, step = restore_params(config, run_dir, task)
    params = jax.device_put(params)
    counting = evaluate_air(task, params, step, num_images=count_images, log_marginal_images=0)
    # ELBO and log p̂ on the same first `log_marginal_images` test images, so that their difference is the KL.
    bounds = evaluate_air(task, params, step, num_images=log_marginal_images, log_marginal_images=log_marginal_images)
    return dict(
        step=step,
        count_accuracy=counting["count_accuracy"],
        count_images=counting["num_images"],
        log_marginal=bounds["log_marginal"],
        elbo=bounds["elbo"],
        kl=bounds["log_marginal"] - bounds["elbo"],
        log_marginal_images=bounds["log_marginal_images"],
        log_marginal_particles=log_marginal_particles,
        confusion=eval_summary(counting)["confusion"],
    )


# Config fields that change how a run is shown, saved or scheduled, not what it computes (a run stopped early by
# ``stop_after_seconds`` is stored at fewer steps and trained on by the next call): left out of the fingerprint.
PRESENTATION_FIELDS = ("progress_bar", "checkpoint", *configs.RUN_CONTROL_DEFAULTS)


def config_fingerprint(config) -> str:
    """A short hash of a run's config without :data:`PRESENTATION_FIELDS`: a stored result is reused only for the
    config it was computed with."""
    import hashlib

    fields = {k: v for k, v in config.to_dict().items() if k not in PRESENTATION_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_train_curve(run_dir: str, metric: str = "bound") -> list[list[float]]:
    """``[[step, value], ...]`` of a training metric from ``<run_dir>/metrics.jsonl``, in step order; a step logged
    twice (a run resumed from a checkpoint before it) keeps its last value."""
    curve = {}
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if isinstance(row.get(metric), (int, float)):
                    curve[int(row["step"])] = float(row[metric])
    return [[step, curve[step]] for step in sorted(curve)]


def curve_noise(curve, window: int = 10) -> float:
    """Standard deviation of a training curve about its centred running mean over ``window`` logged points, over the
    second half of the curve: the step-to-step variability of training, with the slow trend removed.

    ``curve``: ``[[step, value], ...]`` (:func:`read_train_curve`). NaN when the second half has fewer than
    ``window`` points."""
    import numpy as np

    values = np.asarray([v for _, v in curve], dtype=np.float64)[len(curve) // 2 :]
    if len(values) < window:
        return float("nan")
    trend = np.convolve(values, np.ones(window) / window, mode="valid")
    lo = (window - 1) // 2
    return float(np.std(values[lo : lo + len(trend)] - trend))


def load_results(results_dir: str) -> dict:
    """The study's ``results.json`` in ``results_dir`` (``{}`` if there is none)."""
    path = os.path.join(results_dir, "results.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def plot(results: dict, path: str) -> str:
    """Fig. 8.4.3 and more: the training IWAE-K bound and the periodic count accuracy against step for every run
    (colour: estimator, line style: K), then log p̂(x), KL(q‖p_θ(z|x)) and count accuracy against K per estimator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ocr_jax import plotting

    estimators = sorted({r["estimator"] for r in results.values()})
    ks = sorted({r["num_particles"] for r in results.values()})
    styles = dict(zip(ks, ("-", "--", ":", "-.") * len(ks)))
    fig, axes = plt.subplots(1, 5, figsize=(19, 3.4))
    tails = []
    window = 10  # the running mean of curve_noise: the trend drawn, the raw batches faint behind it
    for r in results.values():
        curve = np.asarray(r.get("train_curve") or np.zeros((0, 2)))
        if len(curve) >= window:
            color = plotting.color_for(estimators.index(r["estimator"]))
            style = styles[r["num_particles"]]
            axes[0].plot(curve[:, 0], curve[:, 1], style, color=color, lw=0.5, alpha=0.25)
            trend = np.convolve(curve[:, 1], np.ones(window) / window, mode="valid")
            steps = curve[(window - 1) // 2 :][: len(trend), 0]
            axes[0].plot(steps, trend, style, color=color, lw=1.2, label=f"{r['estimator']} K={r['num_particles']}")
            tails.append(trend[len(trend) // 2 :])
    if tails:  # the trends' second half sets the scale: the first steps' bounds are hundreds of nats lower
        tail = np.concatenate(tails)
        spread = max(np.ptp(tail), 1.0)
        axes[0].set_ylim(tail.min() - 1.5 * spread, tail.max() + 1.0 * spread)
        axes[0].legend(fontsize=6, ncol=2)
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel(f"training IWAE-K bound ({window}-log running mean)")
    for r in results.values():
        curve = np.asarray(r.get("count_curve") or np.zeros((0, 2)))
        if len(curve):
            color = plotting.color_for(estimators.index(r["estimator"]))
            axes[1].plot(curve[:, 0], curve[:, 1], styles[r["num_particles"]] + "o", color=color, ms=3)
    axes[1].set_xlabel("training step")
    axes[1].set_ylabel("count accuracy (periodic evaluation)")
    for name, ylabel, ax in (
        ("log_marginal", "test log p̂(x)", axes[2]),
        ("kl", "KL(q ‖ p_θ(z|x))", axes[3]),
        ("count_accuracy", "count accuracy (end, all test images)", axes[4]),
    ):
        for i, est in enumerate(estimators):
            rows = sorted((r for r in results.values() if r["estimator"] == est), key=lambda r: r["num_particles"])
            ax.plot(
                [r["num_particles"] for r in rows],
                [r[name] for r in rows],
                "o-",
                color=plotting.color_for(i),
                label=est,
            )
        particles_axis(ax, ks)
        ax.set_ylabel(ylabel)
    axes[2].legend()
    return finish_figure(fig, "AIR, Bernoulli multi-MNIST: VIMCO vs wake-wake (thesis §8.4.2, Fig. 8.4.3)", path)


def particles_axis(ax, ks) -> None:
    """A log-scale x axis labelled with the particle counts ``ks`` themselves."""
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("particles K")


def finish_figure(fig, title: str, path: str) -> str:
    """Titles and lays out ``fig``, writes it as PNG to ``path``, closes it and returns the path."""
    import matplotlib.pyplot as plt

    from ocr_jax import plotting

    fig.suptitle(title)
    fig.tight_layout()
    out = str(plotting.save_figure(fig, path))
    plt.close(fig)
    return out


def run_study(
    base,
    workdir: str,
    *,
    estimators,
    particles,
    count_images: int,
    log_marginal_images: int,
    log_marginal_particles: int,
    results_dir: str | None = None,
) -> dict:
    """Trains (or resumes) and evaluates one run per (estimator, K), K by K; adds each to results.json as it is done
    and redraws the plot. A run already in ``<results_dir>/results.json`` at ``base.num_steps`` steps is skipped."""
    from experiments.study_results import write_results
    from ocr_jax.training import train

    results_dir = results_dir or workdir
    results = load_results(results_dir)
    for num_particles in (int(k) for k in particles):
        for estimator in estimators:
            name = run_name(estimator, num_particles)
            run_dir = os.path.join(workdir, name)
            config = study_config(base, estimator, num_particles)
            fingerprint = config_fingerprint(config)
            if name in results:
                if results[name].get("config_fingerprint") != fingerprint:
                    raise ValueError(
                        f"{results_dir}/results.json holds a run {name} of another config; choose another "
                        "--results_dir (or move that file) so that neither study's results are lost"
                    )
                if results[name]["step"] == config.num_steps:
                    print(f"[air_estimators] {name}: in {results_dir}/results.json, skipped", flush=True)
                    continue
            print(f"[air_estimators] {name} ({config.num_steps} steps) -> {run_dir}", flush=True)
            train.train_and_evaluate(config, run_dir)  # resumes; returns at once if finished
            curve = read_train_curve(run_dir)
            results[name] = dict(
                estimator=estimator,
                num_particles=num_particles,
                **evaluate_run(
                    config,
                    run_dir,
                    count_images=count_images,
                    log_marginal_images=log_marginal_images,
                    log_marginal_particles=log_marginal_particles,
                ),
                curve_noise=curve_noise(curve),
                train_curve=curve,
                count_curve=read_train_curve(run_dir, "eval/count_accuracy"),
                config_fingerprint=fingerprint,
            )
            summary = {
                k: v
                for k, v in results[name].items()
                if k not in ("confusion", "train_curve", "count_curve", "config_fingerprint")
            }
            print(f"[air_estimators] {name}: " + json.dumps(summary), flush=True)
            write_results(results, results_dir)
            plot(results, os.path.join(results_dir, "air_estimators.png"))
    return results


def main(flag_values) -> None:
    results = run_study(
        flag_values.config,
        flag_values.workdir,
        estimators=flag_values.estimators,
        particles=flag_values.particles,
        count_images=flag_values.count_images,
        log_marginal_images=flag_values.log_marginal_images,
        log_marginal_particles=flag_values.log_marginal_particles,
        results_dir=flag_values.results_dir,
    )
    print("| estimator | K | steps | count accuracy | log p̂(x) | KL(q‖p_θ(z|x)) | training-curve noise |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results.values():
        print(
            f"| {r['estimator']} | {r['num_particles']} | {r['step']} | {r['count_accuracy']:.4f} | "
            f"{r['log_marginal']:.2f} | {r['kl']:.2f} | {r.get('curve_noise', float('nan')):.2f} |"
        )
    out = flag_values.results_dir or flag_values.workdir
    print(f"results: {out}/results.json, figure: {out}/air_estimators.png")


if __name__ == "__main__":
    # Flags are defined only when run as a script, so the module can be imported next to the other experiments.
    configs.define_config_flag("config", None, "AIR config (air_multi_mnist[:VARIANT]) or config file")
    flags.DEFINE_string("workdir", None, "One subdirectory per (estimator, K) is created here.")
    flags.DEFINE_list("estimators", ["vimco", "ww"], "AIR estimators (ocr_jax.tasks.air).")
    flags.DEFINE_list("particles", ["2", "5", "10", "20"], "Particle counts K.")
    flags.DEFINE_integer("count_images", 10_000, "Test images for count accuracy.")
    flags.DEFINE_integer("log_marginal_images", 100, "Test images for log p̂(x) and KL.")
    flags.DEFINE_integer("log_marginal_particles", 5000, "Particles of the log p̂(x) estimate.")
    flags.DEFINE_string("results_dir", None, "Where results.json and the plot are kept (default: the workdir).")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(lambda argv: main(flags.FLAGS))
