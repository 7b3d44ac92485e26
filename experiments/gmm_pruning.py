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

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import app, flags

from experiments.study_results import finish_study, save_study_figure
from ocr_jax import configs, estimators, objectives
from ocr_jax.distributions import categorical_sample

SIGMA = 5.0


def true_probs(c):
    t = jnp.arange(c) + 5.0
    return t / jnp.sum(t)


def true_observations(key, c, n):
    """``n`` observations x ``[n]`` from the true mixture with ``c`` clusters."""
    k_z, k_x = jax.random.split(key)
    z = categorical_sample(k_z, jnp.log(true_probs(c)), (n,))
    return 10.0 * z + SIGMA * jax.random.normal(k_x, z.shape)


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
        z = categorical_sample(key, logits, (k, x.shape[0])).T  # [B, K]
        log_prop = None
    log_q = jnp.take_along_axis(jax.nn.log_softmax(logits), z, axis=-1)  # [B, K], z carries no gradient
    terms = estimators.LogWeightTerms(
        log_p=log_prior[z] + log_lik(x[:, None], z), log_q_score=log_q, log_proposal=log_prop
    )
    if "log_q_sleep" in estimator.requires:
        # sleep-φ on K·B samples from the current model (compute matching, thesis §8.4)
        k_z, k_x = jax.random.split(jax.random.fold_in(key, 1))
        zs = categorical_sample(k_z, theta, (k * x.shape[0],))
        xs = 10.0 * zs + SIGMA * jax.random.normal(k_x, zs.shape)
        log_q_sleep = jnp.take_along_axis(jax.nn.log_softmax(q_logits(phi, xs)), zs[:, None], axis=-1)[:, 0]
        terms = terms._replace(log_q_sleep=log_q_sleep)
    s, _ = estimator.surrogates(terms, ())
    return s.theta, s.phi


def start_logits(cfg, start):
    """θ at the start ``[C]``: "adverse" = logits −rate·c (probabilities ∝ exp(−rate·c)), "equal" = zeros."""
    if start == "adverse":
        return -cfg.adverse_rate * jnp.arange(cfg.num_clusters, dtype=jnp.float32)
    if start == "equal":
        return jnp.zeros(cfg.num_clusters)
    raise ValueError(f"unknown start {start!r}: choose 'adverse' or 'equal'")


def hinton_inputs(c):
    """The observations whose q_φ(·|x) the Hinton diagrams show: every other cluster mean, x = 10c ``[C/2]``."""
    return 10.0 * jnp.arange(0, c, 2, dtype=jnp.float32)


def make_train(cfg, method, k):
    """One compiled program for a method and K: every start and seed at once.

    Returns ``train(theta0 [S, C], keys [R, 2])`` -> dict of ``[S, R, ...]`` arrays: ``model_error``,
    ``inference_error`` and ``phi_grad_std`` ``[S, R, E + 1]`` (E = iterations / eval_every; the last entry is
    after the final iteration), ``prior`` ``[S, R, C]`` (final softmax θ) and the Hinton snapshots at the start,
    middle and end of training, ``hinton_prior [S, R, 3, C]`` and ``hinton_q [S, R, 3, X, C]`` (q_φ(·|x) at the
    ``hinton_inputs``). Both starts use the same seeds' keys, so they differ only in θ's start.

    ``phi_grad_std`` is thesis Fig. 8.C.1's (1/D_φ) Σ_d std(g_d) over 10 draws of the training step's φ-gradient
    estimator (each with its own batch of fresh data and particles) at the current parameters.
    """
    c = cfg.num_clusters
    probs = true_probs(c)
    log_probs = jnp.log(probs)
    opt = optax.adam(cfg.learning_rate)
    num_evals = cfg.num_iterations // cfg.eval_every
    x_hinton = hinton_inputs(c)

    def grads(theta, phi, key):
        k_data, k_loss = jax.random.split(key)
        x = true_observations(k_data, c, cfg.batch_size)
        g_t = jax.grad(lambda t: losses(method, t, phi, x, k_loss, k, cfg.delta)[0])(theta)
        g_p = jax.grad(lambda p: losses(method, theta, p, x, k_loss, k, cfg.delta)[1])(phi)
        return g_t, g_p

    def metrics(theta, phi, x_test, key):
        model_err = jnp.linalg.norm(jax.nn.softmax(theta) - probs)
        q = jax.nn.softmax(q_logits(phi, x_test), -1)
        inf_err = jnp.mean(jnp.linalg.norm(q - posterior(log_probs, x_test), axis=-1))
        g_phi = jax.vmap(lambda kk: grads(theta, phi, kk)[1])(jax.random.split(key, 10))
        stds = [jnp.std(g, axis=0).ravel() for g in jax.tree.leaves(g_phi)]
        grad_std = jnp.mean(jnp.concatenate(stds))
        return model_err, inf_err, grad_std

    def snapshot(theta, phi):
        return jax.nn.softmax(theta), jax.nn.softmax(q_logits(phi, x_hinton), -1)

    def step(carry, key):
        theta, phi, opt_t, opt_p = carry
        g_t, g_p = grads(theta, phi, key)
        u_t, opt_t = opt.update(g_t, opt_t, theta)
        u_p, opt_p = opt.update(g_p, opt_p, phi)
        return (optax.apply_updates(theta, u_t), optax.apply_updates(phi, u_p), opt_t, opt_p), None

    def train(theta0, key):
        k_init, k_test, k_run, k_eval = jax.random.split(key, 4)
        phi = init_phi(k_init, cfg.hidden, c)
        x_test = true_observations(k_test, c, cfg.num_test)
        carry = (theta0, phi, opt.init(theta0), opt.init(phi))
        eval_keys = jax.random.split(k_eval, num_evals + 1)

        def block(carry, keys):
            k_block, k_metric = keys
            m = metrics(carry[0], carry[1], x_test, k_metric)
            snap = snapshot(carry[0], carry[1])
            carry, _ = jax.lax.scan(step, carry, jax.random.split(k_block, cfg.eval_every))
            return carry, (m, snap)

        carry, (ms, snaps) = jax.lax.scan(block, carry, (jax.random.split(k_run, num_evals), eval_keys[:-1]))
        final = metrics(carry[0], carry[1], x_test, eval_keys[-1])
        final_snap = snapshot(carry[0], carry[1])
        series = [jnp.concatenate([m, f[None]]) for m, f in zip(ms, final)]
        rows = jnp.array([0, num_evals // 2])  # start and middle; the end is final_snap
        return {
            "model_error": series[0],
            "inference_error": series[1],
            "phi_grad_std": series[2],
            "prior": final_snap[0],
            "hinton_prior": jnp.concatenate([snaps[0][rows], final_snap[0][None]]),
            "hinton_q": jnp.concatenate([snaps[1][rows], final_snap[1][None]]),
        }

    return jax.jit(jax.vmap(jax.vmap(train, in_axes=(None, 0)), in_axes=(0, None)))


def quartiles(a):
    """25th, 50th and 75th percentiles over seeds (axis 0) as nested lists."""
    return np.percentile(a, [25, 50, 75], axis=0).tolist()


def largest_supported_cluster(prior, mass=1e-3):
    """The largest c with p_θ(c) > ``mass`` for each row of ``prior [R, C]`` (the end of the pruned support)."""
    return [int(np.max(np.nonzero(p > mass)[0])) for p in prior]


def partial_dir(cfg, workdir):
    """``<workdir>/partial``, where each finished (method, K) is kept so that an interrupted study resumes; refuses
    a workdir whose partial results came from another config."""
    partial = os.path.join(workdir, "partial")
    os.makedirs(partial, exist_ok=True)
    path = os.path.join(partial, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved != json.loads(cfg.to_json()):
            raise ValueError(f"{workdir} holds partial results of another config ({path}); use a fresh --workdir")
    else:
        with open(path, "w") as f:
            f.write(cfg.to_json())
    return partial


def run(cfg, workdir):
    os.makedirs(workdir, exist_ok=True)
    t_start = time.time()
    keys = jax.random.split(jax.random.PRNGKey(cfg.seed), cfg.num_seeds)
    theta0 = jnp.stack([start_logits(cfg, s) for s in cfg.starts])
    iters = list(range(0, cfg.num_iterations + 1, cfg.eval_every))
    results = {
        "config": cfg.to_dict(),
        "iterations": iters,
        "hinton_x": np.asarray(hinton_inputs(cfg.num_clusters)).tolist(),
        "runs": {},
    }
    combos = [(m, k) for m in cfg.methods for k in cfg.num_particles]
    partial = partial_dir(cfg, workdir)
    results["compute_seconds"] = 0.0  # over every (method, K), including runs before a resume
    for method, k in tqdm.tqdm(combos, desc="gmm (method, K)", disable=None):
        path = os.path.join(partial, f"{method}_K{k}.npz")
        if os.path.exists(path):  # finished before an interruption: resume after it
            with np.load(path) as f:
                out = {name: f[name] for name in f.files if name != "seconds"}
                seconds = float(f["seconds"])
        else:
            t0 = time.time()
            out = jax.tree.map(np.asarray, jax.block_until_ready(make_train(cfg, method, k)(theta0, keys)))
            seconds = time.time() - t0
            np.savez(path + ".tmp.npz", seconds=seconds, **out)
            os.replace(path + ".tmp.npz", path)
        results["compute_seconds"] += seconds
        for s, start in enumerate(cfg.starts):
            o = {name: v[s] for name, v in out.items()}
            support = largest_supported_cluster(o["prior"])
            results["runs"][f"{start}/{method}/K{k}"] = {
                "model_error_quartiles": quartiles(o["model_error"]),
                "inference_error_quartiles": quartiles(o["inference_error"]),
                "phi_grad_std_quartiles": quartiles(o["phi_grad_std"]),
                "final_model_error_median": float(np.median(o["model_error"][:, -1])),
                "final_inference_error_median": float(np.median(o["inference_error"][:, -1])),
                "final_prior_median": np.median(o["prior"], 0).tolist(),
                "largest_supported_cluster": support,
                # seed 0's snapshots (start, middle, end): one run, as the thesis' diagrams show one
                "hinton_prior_seed0": o["hinton_prior"][0].tolist(),
                "hinton_q_seed0": o["hinton_q"][0].tolist(),
                "seconds_all_starts": seconds,
            }
            tqdm.tqdm.write(
                f"{start:8s} {method:9s} K={k:2d}: model {np.median(o['model_error'][:, -1]):.4f} "
                f"inference {np.median(o['inference_error'][:, -1]):.4f} support≤{int(np.median(support))} "
                f"(both starts {seconds:.0f}s)"
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
        rows = ("model_error_quartiles", "inference_error_quartiles", "phi_grad_std_quartiles")
        ylabels = ("‖softmax θ − π‖", "mean ‖q(·|x) − p(·|x)‖", "std of the φ-gradient (Fig. 8.C.1)")
        fig, axes = plt.subplots(
            3, len(cfg.num_particles), figsize=(4 * len(cfg.num_particles), 10), sharey="row", squeeze=False
        )
        for j, k in enumerate(cfg.num_particles):
            for row, metric in enumerate(rows):
                ax = axes[row, j]
                for method in cfg.methods:
                    lo, med, hi = results["runs"][f"{start}/{method}/K{k}"][metric]
                    ax.plot(iters, med, color=colors[method], label=names[method])
                    ax.fill_between(iters, lo, hi, color=colors[method], alpha=0.2)
                ax.set(
                    yscale="log",
                    title=f"{start} start, K = {k}",
                    xlabel="iteration",
                    ylabel=ylabels[row],
                )
        axes[0, 0].legend(fontsize=8)
        paths.append(save_study_figure(fig, workdir, f"estimators_gmm_{start}.png"))
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
    paths.append(save_study_figure(fig, workdir, "estimators_gmm_final_vs_K.png"))
    return paths + plot_hinton(results, cfg, workdir, plt)


def plot_hinton(results, cfg, workdir, plt):
    """Thesis Fig. 8.4.5 for each start and the smallest and largest K: rows = start, middle, end of training;
    one panel per method; in a panel, column 0 is p_θ(z) and the others q_φ(z | x) at the ``hinton_x``; a square's
    area is proportional to the probability (seed 0)."""
    paths = []
    x = results["hinton_x"]
    for start in cfg.starts:
        for k in sorted({min(cfg.num_particles), max(cfg.num_particles)}):
            fig, axes = plt.subplots(3, len(cfg.methods), figsize=(2.6 * len(cfg.methods), 8.5), squeeze=False)
            for j, method in enumerate(cfg.methods):
                r = results["runs"][f"{start}/{method}/K{k}"]
                for i, stage in enumerate(("start", "middle", "end")):
                    pmfs = np.column_stack([r["hinton_prior_seed0"][i], np.asarray(r["hinton_q_seed0"][i]).T])
                    cols, zs = np.meshgrid(np.arange(pmfs.shape[1]), np.arange(pmfs.shape[0]))
                    ax = axes[i, j]
                    ax.scatter(
                        cols.ravel(),
                        zs.ravel(),
                        s=120 * pmfs.ravel(),
                        marker="s",
                        c=np.where(cols == 0, "tab:red", "k").ravel(),
                    )
                    ax.set(xlim=(-0.7, pmfs.shape[1] - 0.3), ylim=(-0.7, pmfs.shape[0] - 0.3))
                    ax.set_xticks(range(pmfs.shape[1]), ["p(z)"] + [f"{v:g}" for v in x], fontsize=5, rotation=90)
                    ax.set_yticks(range(0, pmfs.shape[0], 5))
                    ax.tick_params(axis="y", labelsize=6)
                    if i == 0:
                        ax.set_title(f"{method}", fontsize=9)
                    if j == 0:
                        ax.set_ylabel(f"{stage}: z", fontsize=8)
            fig.suptitle(f"{start} start, K = {k}: p_θ(z) (red) and q_φ(z | x) at x (black), seed 0")
            paths.append(save_study_figure(fig, workdir, f"estimators_gmm_hinton_{start}_K{k}.png"))
    return paths


if __name__ == "__main__":
    # Flags are defined only when run as a script, so the module can be imported (tests) next to the others.
    _CONFIG = configs.define_config_flag("config", "gmm_pruning")
    _WORKDIR = flags.DEFINE_string("workdir", "runs/gmm_pruning", "output directory")
    app.run(lambda argv: run(_CONFIG.value, _WORKDIR.value) and None)
