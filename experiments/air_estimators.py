r"""AIR trained by VIMCO and by reweighted wake-wake for several particle counts K (thesis §8.4.2, Fig. 8.4.3).

  python -m experiments.air_estimators --config=air_multi_mnist:bernoulli \
      --workdir=runs/air_estimators [--estimators=vimco,ww] [--particles=2,5,10,20] [--config.num_steps=3000]

As in §8.4.2: Bernoulli likelihood on stochastically binarised multi-MNIST (the ``bernoulli`` variant), at most
three steps. One run per (estimator, K) in ``<workdir>/<estimator>_K<K>`` (each resumes if interrupted; finished
runs are not retrained). Every run is then evaluated on the test split:

* ``count_accuracy`` on ``--count_images`` test images (one posterior sample each);
* ``log_marginal`` = mean over the first ``--log_marginal_images`` test images of log p̂(x), a one-sample
  ``--log_marginal_particles``-particle IWAE estimate (thesis: 5000), computed in chunks;
* ``kl`` = KL(q_φ(z|x) ‖ p_θ(z|x)) ≈ log p̂(x) − E_q[log w], the KL from the inference network to the posterior
  under the *current* model (§8.4.2; a proxy for the KL to the true posterior). E_q[log w] is estimated by one
  single-particle log-weight per image, averaged over the same images (the thesis averages 5000 per image; the
  mean over images is the same expectation).

Writes ``<workdir>/results.json``, a markdown table on stdout and ``<workdir>/air_estimators.png`` (log p̂ and KL
against K per estimator).
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


def plot(results: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ocr_jax import plotting

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for name, ylabel, ax in (
        ("log_marginal", "test log p̂(x)", axes[0]),
        ("kl", "KL(q ‖ p_θ(z|x))", axes[1]),
        ("count_accuracy", "count accuracy", axes[2]),
    ):
        for i, est in enumerate(sorted({r["estimator"] for r in results.values()})):
            rows = sorted((r for r in results.values() if r["estimator"] == est), key=lambda r: r["num_particles"])
            ax.plot(
                [r["num_particles"] for r in rows],
                [r[name] for r in rows],
                "o-",
                color=plotting.color_for(i),
                label=est,
            )
        ks = sorted({r["num_particles"] for r in results.values()})
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("particles K")
        ax.set_ylabel(ylabel)
    axes[0].legend()
    fig.suptitle("AIR, Bernoulli multi-MNIST: VIMCO vs wake-wake (thesis §8.4.2)")
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
) -> dict:
    """Trains (or resumes) and evaluates one run per (estimator, K); writes results.json and the plot."""
    from ocr_jax.training import train

    results = {}
    for estimator in estimators:
        for num_particles in (int(k) for k in particles):
            name = run_name(estimator, num_particles)
            run_dir = os.path.join(workdir, name)
            config = study_config(base, estimator, num_particles)
            print(f"[air_estimators] {name} ({config.num_steps} steps) -> {run_dir}", flush=True)
            train.train_and_evaluate(config, run_dir)  # resumes; returns at once if finished
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
            )
            print(
                f"[air_estimators] {name}: " + json.dumps({k: v for k, v in results[name].items() if k != "confusion"}),
                flush=True,
            )
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(results, os.path.join(workdir, "air_estimators.png"))
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
    )
    print("| estimator | K | steps | count accuracy | log p̂(x) | KL(q‖p_θ(z|x)) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results.values():
        print(
            f"| {r['estimator']} | {r['num_particles']} | {r['step']} | {r['count_accuracy']:.4f} | "
            f"{r['log_marginal']:.2f} | {r['kl']:.2f} |"
        )
    print(f"wrote {flag_values.workdir}/results.json and {flag_values.workdir}/air_estimators.png")


if __name__ == "__main__":
    # Flags are defined only when run as a script, so the module can be imported next to the other experiments.
    configs.define_config_flag("config", None, "AIR config (air_multi_mnist[:VARIANT]) or config file")
    flags.DEFINE_string("workdir", None, "One subdirectory per (estimator, K) is created here.")
    flags.DEFINE_list("estimators", ["vimco", "ww"], "AIR estimators (ocr_jax.tasks.air).")
    flags.DEFINE_list("particles", ["2", "5", "10", "20"], "Particle counts K.")
    flags.DEFINE_integer("count_images", 10_000, "Test images for count accuracy.")
    flags.DEFINE_integer("log_marginal_images", 100, "Test images for log p̂(x) and KL.")
    flags.DEFINE_integer("log_marginal_particles", 5000, "Particles of the log p̂(x) estimate.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(lambda argv: main(flags.FLAGS))
