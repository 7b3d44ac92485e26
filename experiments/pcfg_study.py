"""PCFG study (thesis §8.4.1, Fig. 8.4.1; appendix 8.A): WS, WW, VIMCO and REINFORCE for K ∈ {2, 5, 10, 20}.

Model (``ocr_jax.models.pcfg``): the astronomers PCFG with learned production logits θ (N(0, 1) at the start),
derivations capped at ``max_expansions`` expansions, likelihood p(x | z) = exp(−Levenshtein(x, s(z))²); inference
network q_φ(z | x): sentence GRU, expansion GRU over [sentence embedding, previous production, address], per
non-terminal MLP heads. Each iteration draws ``batch_size`` = 2 fresh sentences from the true (capped) PCFG; Adam with
default hyperparameters on θ and φ.

θ-update (all methods): ∇_θ log Ẑ_K (wake-θ = IWAE's θ-gradient). φ-updates, all from ``ocr_jax.estimators``:
  ws: sleep-φ on K·B derivations (z, x) ~ p_θ (compute-matched to wake-φ with batch B, thesis §8.4);
  ww: wake-φ (Eq. 8.7);  vimco: Eq. 8.3;  reinforce: raw Eq. 8.2 (no baseline).
Metrics every ``eval_every`` iterations (thesis Fig. 8.4.1): the generative error (1/N) Σ_nt KL(p_true(·|nt) ‖
p_θ(·|nt)) and the inference error −mean log q_φ(z | x) over ``num_eval`` fixed derivations (z, x) ~ p_true (the
sleep-φ loss: E_p(x) KL(p(z|x) ‖ q_φ(z|x)) plus the constant E_p(x) H(p(z|x))). After training, the rate at which
q_φ's samples for the test sentence reproduce it exactly (s(z) = x, thesis Fig. 8.4.2 / 8.A.2).

Runs are vmapped (one jitted program per method group and K). Writes ``results.json`` and ``pcfg_*.png`` into the
workdir; ``results.json`` after every (group, K), and a rerun with the same workdir trains only the (group, K) not
yet in it (a study resumes across interruptions and fresh checkouts; adding K trains only the new ones).
Usage: see ocr_jax/configs/pcfg.py.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import app, flags

from experiments.study_results import finish_study, load_resumable_results, save_study_figure, write_results
from ocr_jax import configs, estimators
from ocr_jax.models import pcfg

# The terms this model gives the estimators: a score-function latent (the derivation) and sleep-phase log q.
PROVIDED_TERMS = frozenset({"log_p", "log_q_score", "log_q_sleep"})
GRAMMARS = {"astronomers": pcfg.ASTRONOMERS}
# Config fields that choose which groups run; every other field (the methods too: they decide the compiled groups,
# and a group's trajectories depend on them) must match a workdir's saved config to resume it.
RUN_SELECTORS = ("num_particles",)
NP, VP = pcfg.ASTRONOMERS.non_terminals.index("NP"), pcfg.ASTRONOMERS.non_terminals.index("VP")  # reported probs


def grammar_of(cfg) -> pcfg.Grammar:
    if cfg.grammar not in GRAMMARS:
        raise ValueError(f"unknown grammar {cfg.grammar!r}; known: {', '.join(GRAMMARS)}")
    return GRAMMARS[cfg.grammar]


def network_of(cfg) -> pcfg.InferenceNetwork:
    return pcfg.network_for(
        grammar_of(cfg),
        sentence_features=cfg.sentence_features,
        hidden_features=cfg.hidden_features,
        head_features=tuple(cfg.head_features),
    )


def init_params(cfg, key):
    """{"generative": θ [N, J], "inference": φ} for one run."""
    grammar, net = grammar_of(cfg), network_of(cfg)
    k_theta, k_phi = jax.random.split(key)
    tokens = jnp.zeros((1, grammar.max_length(cfg.max_expansions)), jnp.int32)
    phi = net.init(k_phi, tokens, jnp.ones(1, jnp.int32), jnp.zeros(1, jnp.int32))
    return {"generative": pcfg.init_production_logits(k_theta, grammar), "inference": phi}


def needs_sleep(method: str) -> bool:
    return "log_q_sleep" in estimators.get(method).requires


def log_weight_terms(cfg, sleep, params, x_tokens, x_length, key, num_particles):
    """The model's terms for sentences ``x_tokens [B, L]``: LogWeightTerms ``[B, K]`` (and the q-samples).

    log p = log p_θ^T(z_k) − L(x, s(z_k))²; log q_score = log q_φ(z_k | x) at stopped samples; with ``sleep``,
    log_q_sleep = log q_φ(z | x) at K·B derivations (z, x) ~ p_θ^T (compute matching, thesis §8.4)."""
    grammar, net = grammar_of(cfg), network_of(cfg)
    k_q, k_sleep = jax.random.split(key)
    log_probs = pcfg.production_log_probs(params["generative"], grammar)
    z, log_q = pcfg.sample_q(
        net, params["inference"], grammar, k_q, x_tokens, x_length, num_particles, cfg.max_expansions
    )
    log_lik = pcfg.log_likelihood(x_tokens[:, None], x_length[:, None], z.tokens, z.length)
    terms = estimators.LogWeightTerms(log_p=pcfg.derivation_log_prob(log_probs, z) + log_lik, log_q_score=log_q)
    if sleep:
        zs = pcfg.sample_model(k_sleep, log_probs, grammar, cfg.max_expansions, (num_particles * x_tokens.shape[0],))
        terms = terms._replace(log_q_sleep=pcfg.score_q(net, params["inference"], grammar, zs, zs.tokens, zs.length))
    return terms, z


def gradients(cfg, methods, index, params, x_tokens, x_length, key, num_particles):
    """Gradients {"generative": ∇θ, "inference": ∇φ} of the estimator ``methods[index]`` (``index`` may be traced:
    the methods of a group share one compiled program, each run's surrogates picked by index), with one pull-back per
    distinct surrogate; and (log Ẑ_K averaged over the batch, fraction of q's samples that reached the cap)."""
    ests = [estimators.get(m) for m in methods]
    sleep = any(needs_sleep(m) for m in methods)
    shared = {}

    def surrogates(p):
        terms, z = log_weight_terms(cfg, sleep, p, x_tokens, x_length, key, num_particles)
        ss = [e.surrogates(terms, ())[0] for e in ests]
        shared["same"] = all(s.theta is s.phi for s in ss)

        def pick(field):
            return jnp.stack([getattr(s, field) for s in ss])[index]

        return (pick("theta"), pick("phi")), (pick("bound"), jnp.mean(z.capped))

    _, pull, aux = jax.vjp(surrogates, params, has_aux=True)
    one, zero = jnp.ones(()), jnp.zeros(())
    g_theta = pull((one, zero))[0]
    if shared["same"]:  # VIMCO, REINFORCE alone: one surrogate for both groups
        return g_theta, aux
    g_phi = pull((zero, one))[0]
    return {"generative": g_theta["generative"], "inference": g_phi["inference"]}, aux


def method_groups(cfg) -> list[list[str]]:
    """The methods trained by one compiled program each: with ``group_methods``, those that need the sleep pass and
    the others (no method pays for a pass it does not use); otherwise one method per program."""
    if not cfg.group_methods:
        return [[m] for m in cfg.methods]
    groups = [[m for m in cfg.methods if needs_sleep(m)], [m for m in cfg.methods if not needs_sleep(m)]]
    return [g for g in groups if g]


def eval_set(cfg) -> pcfg.Derivation:
    """``num_eval`` derivations from the true PCFG for the sleep-φ metric: fixed and shared by every run and method
    (paired comparisons)."""
    grammar = grammar_of(cfg)
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 12345)
    return pcfg.sample_model(key, grammar.true_log_probs(), grammar, cfg.max_expansions, (cfg.num_eval,))


def make_metrics(cfg):
    """Jitted params [runs] -> (generative error [runs], inference error [runs]) (one compile for every method)."""
    grammar, net, d = grammar_of(cfg), network_of(cfg), eval_set(cfg)
    true_log_probs = grammar.true_log_probs()

    def metrics(params):
        log_probs = pcfg.production_log_probs(params["generative"], grammar)
        return (
            pcfg.mean_production_kl(true_log_probs, log_probs, grammar),
            pcfg.expected_log_q(net, params["inference"], grammar, d),
        )

    return jax.jit(jax.vmap(metrics))


def make_init(cfg, num_methods):
    """Jitted keys [runs] -> (params, Adam state) [runs, methods]: each run's methods start from the same θ and φ."""
    opt = optax.adam(cfg.learning_rate)

    def init(key):
        params = jax.tree.map(lambda a: jnp.broadcast_to(a, (num_methods, *a.shape)), init_params(cfg, key))
        return params, opt.init(params)

    return jax.jit(jax.vmap(init))


def make_chunk(cfg, methods, num_particles):
    """Jitted ((params, Adam state) [runs, methods], keys [runs]) -> (the same after ``eval_every`` iterations,
    (log Ẑ_K, fraction of q-samples capped) averaged over them [runs, methods]). Within a run, every method sees the
    same sentences (paired comparisons). One compile per method group and K."""
    grammar = grammar_of(cfg)
    for m in methods:
        estimators.check_applicable(estimators.get(m), PROVIDED_TERMS, num_particles, "the PCFG model")
    true_log_probs = grammar.true_log_probs()
    opt = optax.adam(cfg.learning_rate)
    index = jnp.arange(len(methods))

    def step(carry, key):
        params, opt_state = carry
        k_data, k_loss = jax.random.split(key)
        x = pcfg.sample_model(k_data, true_log_probs, grammar, cfg.max_expansions, (cfg.batch_size,))

        def one(p, i):
            k = jax.random.fold_in(k_loss, i)
            return gradients(cfg, methods, i, p, x.tokens, x.length, k, num_particles)

        grads, (bound, capped) = jax.vmap(one)(params, index)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (bound, capped)

    def chunk(carry, key):
        carry, (bound, capped) = jax.lax.scan(step, carry, jax.random.split(key, cfg.eval_every))
        return carry, (jnp.mean(bound, 0), jnp.mean(capped, 0))

    return jax.jit(jax.vmap(chunk))


def train_group(cfg, methods, num_particles, keys, metrics=None):
    """Trains the ``methods`` of one group on ``len(keys)`` runs (vmapped) for ``num_iterations``; returns
    ({method: {metric: [runs, evals]}} as numpy, final params [runs, methods], seconds compiling the chunk, seconds
    training). ``metrics``: :func:`make_metrics`, shared across calls."""
    metrics = make_metrics(cfg) if metrics is None else metrics
    k_init, k_run = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    carry = make_init(cfg, len(methods))(k_init)
    t0 = time.time()
    chunk = make_chunk(cfg, methods, num_particles).lower(carry, k_run).compile()
    t_compile = time.time() - t0
    names = ("p_error", "q_error", "log_evidence_bound", "q_capped_fraction")
    history = {m: {name: [] for name in names} for m in methods}

    def evaluate(params):
        for j, m in enumerate(methods):
            p_err, q_err = metrics(jax.tree.map(lambda a, j=j: a[:, j], params))
            history[m]["p_error"].append(np.asarray(p_err))
            history[m]["q_error"].append(np.asarray(q_err))

    evaluate(carry[0])  # outside the timing: the first call may compile `metrics`
    t0 = time.time()
    # A bar in a terminal only (disable=None): logs keep the one line per group that `run` prints.
    chunks = tqdm.trange(
        cfg.num_iterations // cfg.eval_every, desc=f"{'+'.join(methods)} K={num_particles}", unit="chunk", disable=None
    )
    for e in chunks:
        carry, (bound, capped) = chunk(carry, jax.vmap(jax.random.fold_in, in_axes=(0, None))(k_run, e))
        for j, m in enumerate(methods):
            history[m]["log_evidence_bound"].append(np.asarray(bound[:, j]))
            history[m]["q_capped_fraction"].append(np.asarray(capped[:, j]))
        evaluate(carry[0])
    t_train = time.time() - t0
    out = {m: {name: np.stack(v, axis=1) for name, v in h.items()} for m, h in history.items()}
    return out, carry[0], t_compile, t_train


def make_match_rate(cfg):
    """Jitted φ [runs] -> per run, the fraction of ``num_test_samples`` derivations z ~ q_φ(· | x) with s(z) = x for
    the test sentence (thesis Fig. 8.4.2 / 8.A.2)."""
    grammar, net = grammar_of(cfg), network_of(cfg)
    tokens, length = grammar.encode(cfg.test_sentence, grammar.max_length(cfg.max_expansions))
    key = jax.random.PRNGKey(cfg.seed + 1)

    def one(phi):
        z, _ = pcfg.sample_q(net, phi, grammar, key, tokens, length, cfg.num_test_samples, cfg.max_expansions)
        return jnp.mean(pcfg.levenshtein(z.tokens, z.length, tokens, length) == 0)

    return jax.jit(jax.vmap(one))


def quartiles(a) -> list:
    return np.percentile(np.asarray(a), [25, 50, 75], axis=0).tolist()


def table_markdown(results, cfg) -> str:
    """Fig. 8.4.1's end points as a table: per (method, K) in ``results["runs"]``, the final generative and inference
    errors, median [25 %, 75 %] over runs, and the test sentence's exact-match rate of q (median over runs, and how
    many runs reproduce it at all); the first row gives the errors at iteration 0 (shared by every method)."""
    runs = results["runs"]
    lines = [
        "| method | K | generative error, KL | inference error, −E log q | test sentence: median rate (runs > 0) |",
        "| --- | --- | --- | --- | --- |",
    ]

    def cell(quartiles, digits):
        lo, med, hi = (q[-1] for q in quartiles)
        return f"{med:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

    present = [(m, k) for k in cfg.num_particles for m in cfg.methods if f"{m}/K{k}" in runs]
    if present:
        first = runs[f"{present[0][0]}/K{present[0][1]}"]
        start = {name: [q[:1] for q in first[name]] for name in LABELS}
        p0, q0 = cell(start["p_error_quartiles"], 4), cell(start["q_error_quartiles"], 2)
        lines.append(f"| start | — | {p0} | {q0} | — |")
    for m, k in present:
        r = runs[f"{m}/K{k}"]
        match = np.asarray(r["test_sentence_match_rate"])
        lines.append(
            f"| {NAMES[m]} | {k} | {cell(r['p_error_quartiles'], 4)} | {cell(r['q_error_quartiles'], 2)} | "
            f"{100 * np.median(match):.1f} % ({int(np.sum(match > 0))} of {match.size}) |"
        )
    return "\n".join(lines)


def run(cfg, workdir, train=True):
    """Trains every (method group, K) not yet in ``<workdir>/results.json`` (resumable), then tabulates and plots.
    ``train=False`` (the script's ``--report``) trains nothing: it tabulates and plots the runs the file holds."""
    if cfg.num_iterations % cfg.eval_every:
        raise ValueError(f"num_iterations ({cfg.num_iterations}) must be a multiple of eval_every ({cfg.eval_every})")
    os.makedirs(workdir, exist_ok=True)
    t_start = time.time()
    keys = jax.random.split(jax.random.PRNGKey(cfg.seed), cfg.num_runs)
    iters = list(range(0, cfg.num_iterations + 1, cfg.eval_every))
    grammar = grammar_of(cfg)
    results = load_resumable_results(cfg, workdir, RUN_SELECTORS)
    results.update(
        iterations=iters,
        true_np_probs=list(grammar.probabilities[grammar.non_terminals.index("NP")]),
        true_vp_probs=list(grammar.probabilities[grammar.non_terminals.index("VP")]),
    )
    metrics, match_rate = (make_metrics(cfg), make_match_rate(cfg)) if train else (None, None)  # built for training
    for k in cfg.num_particles if train else ():
        for methods in method_groups(cfg):
            if all(f"{method}/K{k}" in results["runs"] for method in methods):
                continue  # trained by an earlier call (the same compiled group, so the same trajectories)
            outs, params, t_compile, t_run = train_group(cfg, methods, k, keys, metrics)
            for j, method in enumerate(methods):
                out = outs[method]
                phi = jax.tree.map(lambda a, j=j: a[:, j], params["inference"])
                match = np.asarray(match_rate(phi))
                log_probs = pcfg.production_log_probs(params["generative"][:, j], grammar_of(cfg))
                probs = np.exp(np.asarray(log_probs))
                results["runs"][f"{method}/K{k}"] = {
                    "p_error_quartiles": quartiles(out["p_error"]),
                    "q_error_quartiles": quartiles(out["q_error"]),
                    "final_p_error": out["p_error"][:, -1].tolist(),
                    "final_q_error": out["q_error"][:, -1].tolist(),
                    "log_evidence_bound_quartiles": quartiles(out["log_evidence_bound"]),
                    "q_capped_fraction_quartiles": quartiles(out["q_capped_fraction"]),
                    "test_sentence_match_rate": match.tolist(),
                    "final_np_probs_median": np.median(probs[:, NP], axis=0).tolist(),
                    "final_vp_probs_median": np.median(probs[:, VP, :2], axis=0).tolist(),
                    "group": methods,
                    "group_compile_seconds": t_compile,
                    "group_run_seconds": t_run,
                    "group_seconds_per_iteration": t_run / cfg.num_iterations,
                }
                print(
                    f"{method:9s} K={k:2d}: p-error {np.median(out['p_error'][:, -1]):.4f} "
                    f"q-error {np.median(out['q_error'][:, -1]):.2f} match {np.median(match):.2f}",
                    flush=True,
                )
            print(
                f"  group {'+'.join(methods)} K={k}: compile {t_compile:.0f}s, {t_run / cfg.num_iterations:.3f}s per "
                f"iteration for {cfg.num_runs} runs (evaluation included)",
                flush=True,
            )
            results["seconds"] = time.time() - t_start
            write_results(results, workdir)  # after every group: a partial run is kept
    if not any(f"{m}/K{k}" in results["runs"] for m in cfg.methods for k in cfg.num_particles):
        raise ValueError(f"{workdir}/results.json has none of the runs this config selects; nothing to report")
    results["table_markdown"] = table_markdown(results, cfg)
    print(results["table_markdown"])
    return finish_study(results, cfg, workdir, plot, t_start, trained=train)


COLORS = {"ws": "tab:blue", "ww": "tab:orange", "vimco": "tab:red", "reinforce": "tab:purple"}
NAMES = {"ws": "WS", "ww": "WW", "vimco": "VIMCO", "reinforce": "REINFORCE"}
LABELS = {
    "p_error_quartiles": "mean KL(p_true ‖ p_θ) per non-terminal",
    "q_error_quartiles": "−E log q(z|x) (KL(p(z|x) ‖ q) + const)",
}


def plot(results, cfg, workdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iters = results["iterations"]
    ks = list(cfg.num_particles)
    # Thesis Fig. 8.4.1: rows = the two errors, columns = K, one line per method (median and IQR over runs).
    fig, axes = plt.subplots(2, len(ks), figsize=(3.5 * len(ks), 6), sharey="row", squeeze=False)
    for j, k in enumerate(ks):
        for row, metric in enumerate(LABELS):
            ax = axes[row, j]
            for method in (m for m in cfg.methods if f"{m}/K{k}" in results["runs"]):  # a report may lack some
                lo, med, hi = results["runs"][f"{method}/K{k}"][metric]
                ax.plot(iters, med, color=COLORS[method], label=NAMES[method])
                ax.fill_between(iters, lo, hi, color=COLORS[method], alpha=0.2)
            ax.set(title=f"K = {k}", xlabel="iteration", ylabel=LABELS[metric] if j == 0 else None)
    axes[0, 0].legend(fontsize=8)
    paths = [save_study_figure(fig, workdir, "pcfg_errors.png")]
    # Final errors against K (the ordering the study is judged by).
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, LABELS, strict=True):
        for method in cfg.methods:
            done = [k for k in ks if f"{method}/K{k}" in results["runs"]]
            if not done:
                continue
            qs = np.array([[results["runs"][f"{method}/K{k}"][metric][r][-1] for r in range(3)] for k in done])
            ax.errorbar(
                done,
                qs[:, 1],
                yerr=[qs[:, 1] - qs[:, 0], qs[:, 2] - qs[:, 1]],
                color=COLORS[method],
                label=NAMES[method],
                marker="o",
                capsize=3,
            )
        ax.set(xscale="log", xlabel="K", title=f"final: {LABELS[metric]}")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axes[0].legend(fontsize=8)
    paths.append(save_study_figure(fig, workdir, "pcfg_final_vs_K.png"))
    # Thesis Fig. 8.A.3: NP's learned production probabilities (median over runs) at the largest K trained.
    k = max((k for k in ks if any(f"{m}/K{k}" in results["runs"] for m in cfg.methods)), default=None)
    if k is not None:
        rules = [" ".join(rhs) for rhs in grammar_of(cfg).productions[NP]]
        bars = [("true", "black", results["true_np_probs"])] + [
            (NAMES[m], COLORS[m], results["runs"][f"{m}/K{k}"]["final_np_probs_median"])
            for m in cfg.methods
            if f"{m}/K{k}" in results["runs"]
        ]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        width = 0.8 / len(bars)
        for i, (name, color, probs) in enumerate(bars):
            ax.bar(np.arange(len(rules)) + (i - (len(bars) - 1) / 2) * width, probs, width, color=color, label=name)
        ax.set_xticks(np.arange(len(rules)), [f"NP → {r}" for r in rules], fontsize=8)
        ax.set(ylabel="production probability", title=f"NP's productions after training, K = {k} (median over runs)")
        ax.legend(fontsize=8)
        paths.append(save_study_figure(fig, workdir, "pcfg_np_probabilities.png"))
    return paths


if __name__ == "__main__":
    # Flags are defined only when run as a script, so the module can be imported (tests) next to the others.
    _CONFIG = configs.define_config_flag("config", "pcfg")
    _WORKDIR = flags.DEFINE_string("workdir", "runs/pcfg", "output directory")
    _REPORT = flags.DEFINE_bool("report", False, "tabulate and plot the runs in <workdir>/results.json, train none")
    app.run(lambda argv: run(_CONFIG.value, _WORKDIR.value, train=not _REPORT.value) and None)
