"""GMM branch-pruning study (thesis §8.4.3): WS, WW, δ-WW, VIMCO and REINFORCE for K ∈ {2, 5, 10, 20}.

Model: p_θ(z) = Cat(softmax(θ)), p(x | z) = N(10z, 5²), z ∈ {0..C−1}, C = 20; true mixture π_c ∝ c + 5.
Inference network q_φ(z | x) = Cat(softmax(MLP_φ(x))), MLP 1-16-C with tanh (the input is standardised by fixed
constants, an affine reparameterisation of the first layer that only improves conditioning).
Each iteration draws a fresh batch of 100 points from the true model; Adam(1e-3) on θ and φ.

θ-update (all methods): IWAE's θ-gradient ∇_θ log Ẑ_K (= wake-θ). φ-updates:
  ws: sleep-φ on K·B samples (z, x) ~ p_θ (compute-matched to wake-φ with batch B, thesis §8.4);
  ww: wake-φ (Eq. 8.7);  dww: δ-WW, particles from q_δ = 0.8 q + 0.2 Uniform, weights p/q_δ at the drawn sample;
  vimco: Eq. 8.3;  reinforce: raw Eq. 8.2 (no baseline).
All estimators come from ``ocr_jax.estimators``. Metrics every ``eval_every`` iterations: model error
‖softmax(θ) − π‖₂ and inference error mean_x ‖q_φ(·|x) − p_true(·|x)‖₂ over 100 fixed test points.
Seeds are vmapped. Writes ``results.json`` and ``estimators_gmm_*.png`` into the workdir.
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from experiments.study_results import finish_study
from ocr_jax import configs, estimators, objectives

SIGMA = 5.0


def true_probs(c):
    t = jnp.arange(c) + 5.0
    return t / jnp.sum(t)


def log_lik(x, z):
    """log N(x; 10 z, 5²)."""
    return -0.5 * ((x - 10.0 * z) / SIGMA) ** 2 - math.log(SIGMA) - 0.5 * math.log(2 * math.pi)


def q_logits(phi, x):
    """Inference network logits ``[..., C]`` for x ``[...]``."""
    h = jnp.tanh(((x[..., None] - 95.0) / 60.0) * phi["w1"] + phi["b1"])
    return h @ phi["w2"] + phi["b2"]


def init_phi(key, hidden, c):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (hidden,)),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, c)) / math.sqrt(hidden),
        "b2": jnp.zeros(c),
    }


def posterior(log_prior, x):
    """p(z | x) ``[..., C]`` under a prior with log-probabilities ``log_prior [C]``."""
    return jax.nn.softmax(log_prior + log_lik(x[..., None], jnp.arange(log_prior.shape[0])), axis=-1)


def losses(method, theta, phi, x, key, k, delta):
    """Surrogates for one batch x ``[B]`` from the estimator ``method`` of ocr_jax.estimators (ws, ww, dww, vimco,
    reinforce): returns (θ-loss, φ-loss). z is discrete: its log q is a score-function term."""
    estimator = estimators.get(method)
    logits = q_logits(phi, x)  # [B, C]
    log_prior = jax.nn.log_softmax(theta)
    if "log_proposal" in estimator.requires:  # δ-WW draws from the defensive mixture
        z, log_prop = objectives.defensive_categorical_sample(key, jax.lax.stop_gradient(logits), delta, (k,))
        z, log_prop = z.T, log_prop.T  # [B, K]
    else:
        z = jax.random.categorical(key, jax.lax.stop_gradient(logits), shape=(k, x.shape[0])).T  # [B, K]
        log_prop = None
    log_q = jnp.take_along_axis(jax.nn.log_softmax(logits), z, axis=-1)  # [B, K], z carries no gradient
    terms = estimators.LogWeightTerms(
        log_p=log_prior[z] + log_lik(x[:, None], z), log_q_score=log_q, log_proposal=log_prop
    )
    if "log_q_sleep" in estimator.requires:
        # sleep-φ on K·B samples from the current model (compute matching, thesis §8.4)
        k_z, k_x = jax.random.split(jax.random.fold_in(key, 1))
        zs = jax.random.categorical(k_z, jax.lax.stop_gradient(theta), shape=(k * x.shape[0],))
        xs = 10.0 * zs + SIGMA * jax.random.normal(k_x, zs.shape)
        log_q_sleep = jnp.take_along_axis(jax.nn.log_softmax(q_logits(phi, xs)), zs[:, None], axis=-1)[:, 0]
        terms = terms._replace(log_q_sleep=log_q_sleep)
    s, _ = estimator.surrogates(terms, ())
    return s.theta, s.phi


def make_train(cfg, method, k, start):
    c = cfg.num_clusters
    probs = true_probs(c)
    log_probs = jnp.log(probs)
    opt = optax.adam(cfg.learning_rate)
    theta0 = -cfg.adverse_rate * jnp.arange(c, dtype=jnp.float32) if start == "adverse" else jnp.zeros(c)

    def metrics(theta, phi, x_test):
        model_err = jnp.linalg.norm(jax.nn.softmax(theta) - probs)
        q = jax.nn.softmax(q_logits(phi, x_test), -1)
        inf_err = jnp.mean(jnp.linalg.norm(q - posterior(log_probs, x_test), axis=-1))
        return model_err, inf_err

    def step(carry, key):
        theta, phi, opt_t, opt_p = carry
        k_data, k_z, k_loss = jax.random.split(key, 3)
        zd = jax.random.categorical(k_data, log_probs, shape=(cfg.batch_size,))
        x = 10.0 * zd + SIGMA * jax.random.normal(k_z, zd.shape)
        g_t = jax.grad(lambda t: losses(method, t, phi, x, k_loss, k, cfg.delta)[0])(theta)
        g_p = jax.grad(lambda p: losses(method, theta, p, x, k_loss, k, cfg.delta)[1])(phi)
        u_t, opt_t = opt.update(g_t, opt_t, theta)
        u_p, opt_p = opt.update(g_p, opt_p, phi)
        return (optax.apply_updates(theta, u_t), optax.apply_updates(phi, u_p), opt_t, opt_p), None

    def train(key):
        k_init, k_test, k_run = jax.random.split(key, 3)
        phi = init_phi(k_init, cfg.hidden, c)
        kz, kx = jax.random.split(k_test)
        zt = jax.random.categorical(kz, log_probs, shape=(cfg.num_test,))
        x_test = 10.0 * zt + SIGMA * jax.random.normal(kx, zt.shape)
        carry = (theta0, phi, opt.init(theta0), opt.init(phi))
        num_evals = cfg.num_iterations // cfg.eval_every

        def block(carry, key):
            m = metrics(carry[0], carry[1], x_test)
            carry, _ = jax.lax.scan(step, carry, jax.random.split(key, cfg.eval_every))
            return carry, m

        carry, ms = jax.lax.scan(block, carry, jax.random.split(k_run, num_evals))
        final = metrics(carry[0], carry[1], x_test)
        model_err = jnp.concatenate([ms[0], final[0][None]])
        inf_err = jnp.concatenate([ms[1], final[1][None]])
        return model_err, inf_err, jax.nn.softmax(carry[0])

    return jax.jit(jax.vmap(train))


def run(cfg, workdir):
    os.makedirs(workdir, exist_ok=True)
    t_start = time.time()
    keys = jax.random.split(jax.random.PRNGKey(cfg.seed), cfg.num_seeds)
    iters = list(range(0, cfg.num_iterations + 1, cfg.eval_every))
    results = {"config": cfg.to_dict(), "iterations": iters, "runs": {}}
    for start in cfg.starts:
        for method in cfg.methods:
            for k in cfg.num_particles:
                t0 = time.time()
                model_err, inf_err, prior = jax.block_until_ready(make_train(cfg, method, k, start)(keys))
                model_err, inf_err, prior = np.asarray(model_err), np.asarray(inf_err), np.asarray(prior)
                q = lambda a: np.percentile(a, [25, 50, 75], axis=0).tolist()
                support = [int(np.max(np.nonzero(p > 1e-3)[0])) for p in prior]  # largest c with mass > 1e-3
                results["runs"][f"{start}/{method}/K{k}"] = {
                    "model_error_quartiles": q(model_err),
                    "inference_error_quartiles": q(inf_err),
                    "final_model_error_median": float(np.median(model_err[:, -1])),
                    "final_inference_error_median": float(np.median(inf_err[:, -1])),
                    "final_prior_median": np.median(prior, 0).tolist(),
                    "largest_supported_cluster": support,
                    "seconds": time.time() - t0,
                }
                print(
                    f"{start:8s} {method:9s} K={k:2d}: model {np.median(model_err[:, -1]):.4f} "
                    f"inference {np.median(inf_err[:, -1]):.4f} support≤{int(np.median(support))} "
                    f"({time.time() - t0:.0f}s)",
                    flush=True,
                )
    return finish_study(results, cfg, workdir, plot, t_start)


def plot(results, cfg, workdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ws": "tab:blue", "ww": "tab:orange", "dww": "tab:green", "vimco": "tab:red", "reinforce": "tab:purple"}
    names = {"ws": "WS", "ww": "WW", "dww": "δ-WW", "vimco": "VIMCO", "reinforce": "REINFORCE"}
    paths = []
    iters = results["iterations"]
    for start in cfg.starts:
        fig, axes = plt.subplots(2, len(cfg.num_particles), figsize=(4 * len(cfg.num_particles), 7), sharey="row")
        axes = np.atleast_2d(axes)
        for j, k in enumerate(cfg.num_particles):
            for row, metric in enumerate(("model_error_quartiles", "inference_error_quartiles")):
                ax = axes[row, j]
                for method in cfg.methods:
                    lo, med, hi = results["runs"][f"{start}/{method}/K{k}"][metric]
                    ax.plot(iters, med, color=colors[method], label=names[method])
                    ax.fill_between(iters, lo, hi, color=colors[method], alpha=0.2)
                ax.set(
                    yscale="log",
                    title=f"{start} start, K = {k}",
                    xlabel="iteration",
                    ylabel="‖softmax θ − π‖" if row == 0 else "mean ‖q(·|x) − p(·|x)‖",
                )
        axes[0, 0].legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(workdir, f"estimators_gmm_{start}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    # Final errors vs K (the ordering the study is judged by).
    fig, axes = plt.subplots(len(cfg.starts), 2, figsize=(9, 3.5 * len(cfg.starts)), squeeze=False)
    for i, start in enumerate(cfg.starts):
        for j, metric in enumerate(("model_error_quartiles", "inference_error_quartiles")):
            ax = axes[i, j]
            for method in cfg.methods:
                qs = np.array(
                    [
                        [results["runs"][f"{start}/{method}/K{k}"][metric][r][-1] for r in range(3)]
                        for k in cfg.num_particles
                    ]
                )
                ax.errorbar(
                    cfg.num_particles,
                    qs[:, 1],
                    yerr=[qs[:, 1] - qs[:, 0], qs[:, 2] - qs[:, 1]],
                    color=colors[method],
                    label=names[method],
                    marker="o",
                    capsize=3,
                )
            ax.set(
                xscale="log",
                yscale="log",
                xlabel="K",
                title=f"{start}: final {'model' if j == 0 else 'inference'} error",
            )
            ax.set_xticks(list(cfg.num_particles), [str(k) for k in cfg.num_particles])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # log-axis minor labels overlap the K labels
        axes[i, 0].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(workdir, "estimators_gmm_final_vs_K.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return paths + [path]


if __name__ == "__main__":
    # Flags are defined only when run as a script, so the module can be imported (tests) next to the others.
    _CONFIG = configs.define_config_flag("config", "gmm_pruning")
    _WORKDIR = flags.DEFINE_string("workdir", "runs/gmm_pruning", "output directory")
    app.run(lambda argv: run(_CONFIG.value, _WORKDIR.value) and None)
