"""Sigmoid belief nets trained by WW and VIMCO for several K (thesis appendix 8.D, Fig. 8.D.1; issue #17 item 2).

Model (three stochastic layers of 200 binary units, as Mnih & Rezende 2016): generative
p_θ(z_L) = Π Bernoulli(σ(b)) with learned logits b, then p_θ(z_{l−1} | z_l) and p_θ(x | z_1) each one linear layer and
a factorised Bernoulli; inference network q_φ(z_1 | x) q_φ(z_2 | z_1) … q_φ(z_L | z_{L−1}), linear layers too. As in
the thesis authors' public code for this experiment, a binary unit enters the next layer as 2z − 1 (an affine
reparameterisation of that layer), weights and biases start U(±1/√fan_in), the prior logits at 0 and the bias of
p(x | z_1) at logit(mean training pixel). Binarised MNIST: dynamic binarisation of the training images, the test
images binarised once with a fixed seed (``mnist_bounds.load_data``). Batch 24, Adam on θ and φ.

Methods, from ``ocr_jax.estimators`` with LogWeightTerms(log_p = log p_θ(x, z_k), log_q_score = log q_φ(z_k | x)):
  ww: θ follows IWAE's θ-gradient ∇_θ log Ẑ_K (wake-θ), φ follows wake-φ (Eq. 8.7);
  vimco: one surrogate for θ and φ, Eq. 8.3 (θ: the same IWAE gradient).
Metrics: the training IWAE_K bound (mean over each block of ``log_every`` steps); on the test images
log p̂(x) = log (1/S) Σ_s w_s with S = ``log_marginal_particles`` particles (IWAE-S, the estimate of
``diagnostics.log_marginal_chunked``) and KL(q_φ(z|x) ‖ p_θ(z|x)) ≈ log p̂(x) − (1/S) Σ_s log w_s over the *same*
particles (ESTIMATORS.md / CORRECTIONS.md: the KL of AIR's §8.4.2, not Table 7.5.1's KL(Q‖P)); per image it is ≥ 0
exactly (Jensen on one sample). The same two on a test subset with fewer particles every ``eval_every`` steps give
the curves of Fig. 8.D.1 (left).

Each (method, K, seed) is one run, kept in ``<workdir>/results.json`` as soon as it finishes; a rerun skips finished
runs (a study resumes after an interruption, and growing ``num_particles`` or ``seeds`` trains only the new runs).
Seeds fix the initial parameters, the minibatch order and the evaluation particles, shared by every method and K.
One jitted program per (method, K) (``log_every`` steps under ``lax.scan``) serves all its seeds.
Writes ``results.json``, ``sbn_fig_8D1.png`` (three panels) and ``sbn_train_bound.png``. Usage: ocr_jax/configs/sbn.py.
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import app, flags

from experiments.mnist_bounds import load_data
from experiments.study_results import finish_study, load_resumable_results, save_study_figure, write_results
from ocr_jax import configs, diagnostics, estimators, objectives

# Config fields that choose which runs exist; every other field must match a workdir's saved config to resume it.
RUN_SELECTORS = ("methods", "num_particles", "seeds")
NAMES = {"ww": "WW", "vimco": "VIMCO"}


# ----------------------------------------------------------------------------------------------------------------
# the model


def bernoulli_log_prob(logits, z):
    """Σ_i log Bernoulli(z_i; σ(l_i)) = Σ_i z_i l_i − softplus(l_i) over the last axis (broadcasting ``logits``
    against ``z``): ``[..., H] -> [...]``."""
    return jnp.sum(z * logits - jax.nn.softplus(logits), axis=-1)


def affine(layer, h):
    """One linear layer on binary units coded ±1: ``(2h − 1) @ w + b``, ``[..., I] -> [..., O]``."""
    return (2.0 * h - 1.0) @ layer["w"] + layer["b"]


def init_layer(key, fan_in, fan_out):
    bound = 1.0 / math.sqrt(fan_in)
    k_w, k_b = jax.random.split(key)
    return {
        "w": jax.random.uniform(k_w, (fan_in, fan_out), minval=-bound, maxval=bound),
        "b": jax.random.uniform(k_b, (fan_out,), minval=-bound, maxval=bound),
    }


def init_params(key, latent_sizes, x_mean):
    """{"generative": θ, "inference": φ} for latent layers of ``latent_sizes`` = (|z_1|, …, |z_L|) units (z_1 next
    to x) and data of ``x_mean.shape[-1]`` pixels; θ = {"prior_logits" [|z_L|], "layers": z_L→z_{L−1}, …, z_1→x},
    φ = {"layers": x→z_1, …, z_{L−1}→z_L}. The bias of p(x | z_1) starts at logit(clip(x_mean, 1e-4, 1 − 1e-4))."""
    sizes = [int(x_mean.shape[-1]), *latent_sizes]  # x, z_1, ..., z_L
    n = len(latent_sizes)
    k_inf, k_gen = jax.random.split(key)
    inference = [init_layer(k, sizes[i], sizes[i + 1]) for i, k in enumerate(jax.random.split(k_inf, n))]
    generative = [init_layer(k, sizes[n - i], sizes[n - i - 1]) for i, k in enumerate(jax.random.split(k_gen, n))]
    mean = jnp.clip(x_mean, 1e-4, 1 - 1e-4)
    generative[-1]["b"] = jnp.log(mean) - jnp.log1p(-mean)
    return {
        "generative": {"prior_logits": jnp.zeros(sizes[-1]), "layers": generative},
        "inference": {"layers": inference},
    }


def log_joint(theta, x, zs):
    """log p_θ(x, z) ``[B, K]`` for x ``[B, D]`` and zs = (z_1, …, z_L), each ``[B, K, |z_l|]`` in {0, 1}:
    log p(z_L) + Σ_l log p(z_{l−1} | z_l) + log p(x | z_1)."""
    h = zs[-1]
    log_p = bernoulli_log_prob(theta["prior_logits"], h)
    for layer, target in zip(theta["layers"], [*reversed(zs[:-1]), x[:, None, :]], strict=True):
        log_p = log_p + bernoulli_log_prob(affine(layer, h), target)
        h = target
    return log_p


def _inference_pass(phi, x, choose):
    """Walks q_φ from x up: layer l's logits from the layer below, ``choose(l, logits)`` gives z_l. Returns
    (zs, log q_φ(z | x) ``[B, K]``)."""
    h, zs, log_q = x[:, None, :], [], 0.0
    for l, layer in enumerate(phi["layers"]):
        logits = affine(layer, h)
        z = choose(l, logits)
        log_q = log_q + bernoulli_log_prob(logits, z)
        zs.append(z)
        h = z
    return zs, log_q


def sample_q(phi, x, key, num_particles):
    """K = ``num_particles`` draws z ~ q_φ(z | x) for x ``[B, D]``: (zs, each ``[B, K, |z_l|]``, log q ``[B, K]``).
    The samples carry no gradient; log q does (w.r.t. φ): the score-function terms."""
    keys = jax.random.split(key, len(phi["layers"]))

    def draw(l, logits):
        shape = (x.shape[0], num_particles, logits.shape[-1])
        return jax.random.bernoulli(keys[l], jax.nn.sigmoid(logits), shape).astype(x.dtype)

    return _inference_pass(phi, x, draw)


def inference_log_prob(phi, x, zs):
    """log q_φ(z | x) ``[B, K]`` at given zs (each ``[B, K, |z_l|]``)."""
    return _inference_pass(phi, x, lambda l, logits: zs[l])[1]


def log_weight_terms(params, x, key, num_particles):
    """(log p_θ(x, z_k), log q_φ(z_k | x)), each ``[B, K]``, for x ``[B, D]`` binary and z_k ~ q_φ(z | x)."""
    zs, log_q = sample_q(params["inference"], x, key, num_particles)
    return log_joint(params["generative"], x, zs), log_q


def particle_log_weights(params, x, key, num_particles):
    """log w_k = log p_θ(x, z_k) − log q_φ(z_k | x) ``[B, K]``."""
    return jnp.subtract(*log_weight_terms(params, x, key, num_particles))


# ----------------------------------------------------------------------------------------------------------------
# training


def surrogates(method, params, x, key, num_particles):
    """The estimator ``method`` (ww, vimco) of ocr_jax.estimators on one batch x ``[B, D]``: its Surrogates. z is
    discrete: its log q is a score-function term."""
    log_p, log_q = log_weight_terms(params, x, key, num_particles)
    s, _ = estimators.get(method).surrogates(estimators.LogWeightTerms(log_p=log_p, log_q_score=log_q), ())
    return s


def method_grads(method, params, x, key, num_particles):
    """(∇_θ of the θ-surrogate and ∇_φ of the φ-surrogate, like ``params``; the batch's IWAE_K bound), from one
    forward pass and one pull-back per group (XLA drops the other group's half of each)."""

    def pair(p):
        s = surrogates(method, p, x, key, num_particles)
        return jnp.stack([s.theta, s.phi]), s.bound

    _, pull, bound = jax.vjp(pair, params, has_aux=True)
    (g_theta,), (g_phi,) = pull(jnp.array([1.0, 0.0])), pull(jnp.array([0.0, 1.0]))
    return {"generative": g_theta["generative"], "inference": g_phi["inference"]}, bound


def optimizer(cfg):
    return optax.adam(cfg.learning_rate)


def make_train_block(cfg, method, num_particles):
    """Jitted ``(params, Adam state, x_train [N, D] in [0, 1], idx [L, B], key) -> (params, Adam state,
    IWAE_K bound per step [L])``: L = ``log_every`` steps, step s on the images ``idx[s]``, binarised afresh."""
    opt = optimizer(cfg)

    def block(params, opt_state, x_train, idx, key):
        def step(carry, inputs):
            params, opt_state = carry
            rows, k = inputs
            k_bin, k_z = jax.random.split(k)
            x = jax.random.bernoulli(k_bin, x_train[rows]).astype(x_train.dtype)  # dynamic binarisation
            grads, bound = method_grads(method, params, x, k_z, num_particles)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), bound

        (params, opt_state), bounds = jax.lax.scan(
            step, (params, opt_state), (idx, jax.random.split(key, idx.shape[0]))
        )
        return params, opt_state, bounds

    return jax.jit(block)


def minibatch_indices(seed, num_train, batch_size, num_steps):
    """``[num_steps, batch_size]`` training-image indices: consecutive epochs, each a fresh permutation."""
    rng = np.random.default_rng(seed)
    epochs = -(-num_steps * batch_size // num_train)
    order = np.concatenate([rng.permutation(num_train) for _ in range(epochs)])
    return order[: num_steps * batch_size].reshape(num_steps, batch_size).astype(np.int32)


# ----------------------------------------------------------------------------------------------------------------
# evaluation


def log_evidence_and_kl(log_w):
    """From S log-weights ``[..., S]`` of one set of particles: (log p̂ = log (1/S) Σ_s w_s, KL(q‖p_θ(z|x)) ≈ log p̂ −
    (1/S) Σ_s log w_s), each ``[...]``; the second is ≥ 0 (Jensen)."""
    log_p_hat = objectives.log_mean_exp(log_w)
    return log_p_hat, log_p_hat - jnp.mean(log_w, axis=-1)


def make_evaluate(cfg, num_particles):
    """Jitted ``(params, x [N, D] binary, key) -> (log p̂(x) [N], KL(q‖p_θ(z|x)) [N])`` with ``num_particles``
    particles per image, ``cfg.eval_batch`` images and ``cfg.log_marginal_chunk`` particles at a time."""

    def batch(params, x, key):
        fn = lambda k, n: particle_log_weights(params, x, k, n)
        return log_evidence_and_kl(diagnostics.log_weights_chunked(fn, key, num_particles, cfg.log_marginal_chunk))

    @jax.jit
    def evaluate(params, x, key):
        xs = x.reshape(-1, cfg.eval_batch, x.shape[-1])
        log_p_hat, kl = jax.lax.map(lambda a: batch(params, *a), (xs, jax.random.split(key, xs.shape[0])))
        return log_p_hat.reshape(-1), kl.reshape(-1)

    return evaluate


def check_config(cfg, num_test):
    """ValueError unless the methods are WW and VIMCO and the step and image counts divide as the loops need."""
    problems = [f"unknown method {m!r}: choose from {sorted(NAMES)}" for m in cfg.methods if m not in NAMES]
    if cfg.num_steps % cfg.log_every or cfg.eval_every % cfg.log_every:
        problems.append(f"num_steps and eval_every must be multiples of log_every ({cfg.log_every})")
    for name, n in (("num_test", num_test), ("curve_num_test", cfg.curve_num_test)):
        if n % cfg.eval_batch:
            problems.append(f"{name} ({n}) must be a multiple of eval_batch ({cfg.eval_batch})")
    if cfg.curve_num_test > num_test:
        problems.append(f"curve_num_test ({cfg.curve_num_test}) exceeds the test images ({num_test})")
    if problems:
        raise ValueError("; ".join(problems))


# ----------------------------------------------------------------------------------------------------------------
# one run and the study


def train_run(cfg, method, k, seed, block, evaluators, x_train, x_test):
    """Trains ``method`` with K = ``k`` from seed ``seed`` (``block``: :func:`make_train_block` for them;
    ``evaluators``: (curve, final) from :func:`make_evaluate`) and returns its results (JSON-able)."""
    k_init, k_train, k_curve, k_final = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = init_params(k_init, cfg.latent_sizes, jnp.mean(x_train, axis=0))
    opt_state = optimizer(cfg).init(params)
    idx = minibatch_indices(seed, x_train.shape[0], cfg.batch_size, cfg.num_steps)
    idx = idx.reshape(-1, cfg.log_every, cfg.batch_size)
    curve_fn, final_fn = evaluators
    x_curve = x_test[: cfg.curve_num_test]
    train_curve, test_curve, eval_seconds, block_seconds = [], [], 0.0, []

    def curve_point(step):
        t = time.time()
        log_p_hat, kl = curve_fn(params, x_curve, jax.random.fold_in(k_curve, step))
        test_curve.append([step, float(jnp.mean(log_p_hat)), float(jnp.mean(kl))])
        return time.time() - t

    bar = tqdm.trange(idx.shape[0], desc=f"{NAMES[method]} K={k} seed {seed}", disable=None, mininterval=5)
    for b in bar:
        step = b * cfg.log_every
        if step % cfg.eval_every == 0:
            eval_seconds += curve_point(step)
        t = time.time()
        params, opt_state, bounds = block(
            params, opt_state, x_train, jnp.asarray(idx[b]), jax.random.fold_in(k_train, b)
        )
        train_curve.append([step + cfg.log_every, float(jnp.mean(bounds))])  # float() waits for the block
        block_seconds.append(time.time() - t)
        bar.set_postfix(bound=f"{train_curve[-1][1]:.2f}", refresh=False)
    eval_seconds += curve_point(cfg.num_steps)
    t = time.time()
    log_p_hat, kl = final_fn(params, x_test, k_final)
    log_p_hat, kl = np.asarray(log_p_hat), np.asarray(kl)
    final_seconds = time.time() - t
    # the first block includes compiling (when this is the first run of the (method, K)); the rest time the steps
    steady = block_seconds[1:] or block_seconds
    out = {
        "log_p_hat": float(log_p_hat.mean()),
        "kl": float(kl.mean()),
        "min_image_kl": float(kl.min()),
        "train_curve": train_curve,
        "test_curve": test_curve,
        "steps": cfg.num_steps,
        "train_seconds": float(sum(block_seconds)),
        "first_block_seconds": block_seconds[0],
        "seconds_per_step": float(np.mean(steady)) / cfg.log_every,
        "curve_eval_seconds": eval_seconds,
        "final_eval_seconds": final_seconds,
    }
    tqdm.tqdm.write(
        f"{NAMES[method]:5s} K={k:4d} seed {seed}: log p̂ {out['log_p_hat']:.2f}, KL {out['kl']:.2f} "
        f"({out['seconds_per_step'] * 1e3:.1f} ms/step, final evaluation {final_seconds:.0f}s)"
    )
    return out


def run_key(method, k, seed):
    return f"{method}/K{k}/seed{seed}"


def summarise(results, cfg):
    """Per (method, K): mean and std (ddof 1 when ≥ 2 seeds) over the finished seeds of the final log p̂ and KL, the
    mean test curve ``[[step, log p̂, KL]]`` and mean training curve ``[[step, bound]]`` over them, and ``seeds``
    (how many). A (method, K) with no finished seed has no row."""
    table = {}
    for method in cfg.methods:
        for k in cfg.num_particles:
            runs = [results["runs"][key] for s in cfg.seeds if (key := run_key(method, k, s)) in results["runs"]]
            if not runs:
                continue
            row = {"seeds": len(runs)}
            for name in ("log_p_hat", "kl", "seconds_per_step"):
                v = np.array([r[name] for r in runs])
                row[name] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
            row["test_curve"] = np.mean([r["test_curve"] for r in runs], axis=0).tolist()
            row["train_curve"] = np.mean([r["train_curve"] for r in runs], axis=0).tolist()
            table[f"{method}/K{k}"] = row
    return table


def table_markdown(summary, cfg):
    """Fig. 8.D.1 (middle, right) as a table: per K, each method's final log p̂ and KL (mean ± std over seeds; a
    cell over fewer seeds than ``cfg.seeds`` says how many, a method with none is "—")."""
    head = [f"{NAMES[m]} log p̂" for m in cfg.methods] + [f"{NAMES[m]} KL" for m in cfg.methods]
    lines = ["| K | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(head)]

    def cell(row, name):
        if row is None:
            return "—"
        text = f"{row[name]['mean']:.2f} ± {row[name]['std']:.2f}"
        return text if row["seeds"] == len(cfg.seeds) else f"{text} ({row['seeds']} of {len(cfg.seeds)} seeds)"

    for k in cfg.num_particles:
        rows = [summary.get(f"{m}/K{k}") for m in cfg.methods]
        if any(rows):
            cells = [cell(row, name) for name in ("log_p_hat", "kl") for row in rows]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(cfg, workdir, data=None, train=True):
    """Trains every (method, K, seed) not yet in ``<workdir>/results.json`` (resumable), then summarises and plots.
    ``data``: (x_train ``[N, D]`` in [0, 1], x_test ``[M, D]`` binary) as ``mnist_bounds.load_data`` returns them
    (default: MNIST, the first ``cfg.num_test`` test images). ``train=False`` (the script's ``--report``) trains
    nothing: it summarises and plots the runs already in the file, each row over the seeds that have finished."""
    os.makedirs(workdir, exist_ok=True)
    t_start = time.time()
    results = load_resumable_results(cfg, workdir, RUN_SELECTORS)
    if train:
        x_train, x_test = load_data(cfg) if data is None else data
        check_config(cfg, x_test.shape[0])
        evaluators = (make_evaluate(cfg, cfg.curve_particles), make_evaluate(cfg, cfg.log_marginal_particles))
        for method in cfg.methods:
            for k in cfg.num_particles:
                todo = [s for s in cfg.seeds if run_key(method, k, s) not in results["runs"]]
                if not todo:
                    continue
                block = make_train_block(cfg, method, k)  # one compile for all seeds of this (method, K)
                for seed in todo:
                    results["runs"][run_key(method, k, seed)] = train_run(
                        cfg, method, k, seed, block, evaluators, x_train, x_test
                    )
                    write_results(results, workdir)
    results["summary"] = summarise(results, cfg)
    if not results["summary"]:
        raise ValueError(f"{workdir}/results.json has none of the runs this config selects; nothing to report")
    results["table_markdown"] = table_markdown(results["summary"], cfg)
    print(results["table_markdown"])
    return finish_study(results, cfg, workdir, plot, t_start, trained=train)


# ----------------------------------------------------------------------------------------------------------------
# plots


def _method_colors(cfg):
    """{(method, K): colour}: blues for WW, reds for VIMCO, darker for larger K."""
    import matplotlib

    maps = {"ww": matplotlib.colormaps["Blues"], "vimco": matplotlib.colormaps["Reds"]}
    n = len(cfg.num_particles)
    return {
        (m, k): maps[m](0.35 + 0.6 * i / max(n - 1, 1)) for m in cfg.methods for i, k in enumerate(cfg.num_particles)
    }


def plot(results, cfg, workdir):
    """Fig. 8.D.1: (left) test log p̂ during training (curve particles and images), (middle) final log p̂ against K,
    (right) final KL(q‖p_θ(z|x)) against K, mean over seeds (± std); and the training IWAE_K bound per K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, colors, ks = results["summary"], _method_colors(cfg), list(cfg.num_particles)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for m in cfg.methods:
        done = [k for k in ks if f"{m}/K{k}" in summary]  # a report may hold only some of them
        for k in done:
            curve = np.array(summary[f"{m}/K{k}"]["test_curve"])
            axes[0].plot(curve[:, 0], curve[:, 1], color=colors[m, k], label=f"{NAMES[m]} K={k}")
        for ax, name in zip(axes[1:], ("log_p_hat", "kl"), strict=True):
            mean = [summary[f"{m}/K{k}"][name]["mean"] for k in done]
            std = [summary[f"{m}/K{k}"][name]["std"] for k in done]
            ax.errorbar(done, mean, yerr=std, color=colors[m, ks[-1]], marker="o", capsize=3, label=NAMES[m])
    axes[0].set(
        xlabel="iteration",
        ylabel=f"test log p̂(x), {cfg.curve_particles} particles",
        title=f"Training ({cfg.curve_num_test} test images)",
    )
    axes[0].legend(fontsize=6, ncol=2)
    labels = (f"log p̂(x), {cfg.log_marginal_particles} particles", "KL(q_φ(z|x) ‖ p_θ(z|x))")
    for ax, label in zip(axes[1:], labels, strict=True):
        ax.set(xscale="log", xlabel="K", ylabel=label, title=f"End of training ({cfg.num_steps} steps)")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend(fontsize=8)
    fig.suptitle(f"Sigmoid belief nets {'-'.join(map(str, cfg.latent_sizes))}: WW vs VIMCO (thesis Fig. 8.D.1)")
    paths = [save_study_figure(fig, workdir, "sbn_fig_8D1.png")]
    fig, axes = plt.subplots(1, len(ks), figsize=(3.6 * len(ks), 3.4), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        for m in (m for m in cfg.methods if f"{m}/K{k}" in summary):
            curve = np.array(summary[f"{m}/K{k}"]["train_curve"])
            ax.plot(curve[:, 0], curve[:, 1], color=colors[m, ks[-1]], label=NAMES[m])
        ax.set(title=f"K = {k}", xlabel="iteration", ylabel=f"training IWAE bound (mean of {cfg.log_every} steps)")
    axes[0, 0].legend(fontsize=8)
    return [*paths, save_study_figure(fig, workdir, "sbn_train_bound.png")]


if __name__ == "__main__":
    # Flags are defined only when run as a script, so the module can be imported (tests) next to the others.
    _CONFIG = configs.define_config_flag("config", "sbn")
    _WORKDIR = flags.DEFINE_string("workdir", "runs/sbn", "output directory")
    _REPORT = flags.DEFINE_bool("report", False, "summarise and plot the runs in <workdir>/results.json, train none")
    app.run(lambda argv: run(_CONFIG.value, _WORKDIR.value, train=not _REPORT.value) and None)
