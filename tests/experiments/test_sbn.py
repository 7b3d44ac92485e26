"""Checks of the sigmoid-belief-net study (thesis App. 8.D): the model's densities against hand computation and
exhaustive enumeration, the estimators' wiring, and a tiny whole run on synthetic data (results, resume, plots)."""

import itertools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import sbn_study
from ocr_jax import diagnostics, objectives
from ocr_jax.configs import sbn as sbn_config

sg = jax.lax.stop_gradient


def _tiny_params(latent_sizes=(2, 1), x_mean=(0.2, 0.5, 0.9), scale=3.0):
    """A small SBN whose posterior is far from q and from uniform (weights scaled up)."""
    params = sbn_study.init_params(jax.random.PRNGKey(0), latent_sizes, jnp.asarray(x_mean))
    return jax.tree.map(lambda a: scale * a, params)


def _all_states(sizes, batch):
    """Every joint state of binary layers of ``sizes`` units, as zs each ``[batch, 2^total, size]``."""
    states = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=sum(sizes))))
    splits = np.cumsum(sizes)[:-1]
    return [jnp.broadcast_to(z, (batch, *z.shape)) for z in jnp.split(states, splits, axis=-1)]


def test_bernoulli_layer_log_prob_is_the_hand_computed_one():
    logits, z = jnp.array([0.3, -1.2, 2.0]), jnp.array([1.0, 0.0, 1.0])
    sigmoid = lambda a: 1 / (1 + math.exp(-a))
    expected = math.log(sigmoid(0.3)) + math.log(1 - sigmoid(-1.2)) + math.log(sigmoid(2.0))
    np.testing.assert_allclose(sbn_study.bernoulli_log_prob(logits, z), expected, rtol=1e-5)
    layer = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.2])}
    # units coded ±1: h = (1, 0) enters as (1, −1)
    np.testing.assert_allclose(sbn_study.affine(layer, jnp.array([1.0, 0.0])), [1.0 - 0.5 + 0.1, -2.0 - 3.0 - 0.2])


def test_init_shapes_and_output_bias_is_the_logit_of_the_mean_pixel():
    x_mean = jnp.array([0.0, 0.25, 1.0])
    params = sbn_study.init_params(jax.random.PRNGKey(0), (4, 3, 2), x_mean)
    gen, inf = params["generative"], params["inference"]
    assert [layer["w"].shape for layer in inf["layers"]] == [(3, 4), (4, 3), (3, 2)]
    assert [layer["w"].shape for layer in gen["layers"]] == [(2, 3), (3, 4), (4, 3)]
    assert gen["prior_logits"].shape == (2,) and np.all(gen["prior_logits"] == 0)
    np.testing.assert_allclose(
        gen["layers"][-1]["b"], [math.log(1e-4 / (1 - 1e-4)), math.log(1 / 3), 9.21024], rtol=1e-4
    )
    x = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    log_p, log_q = sbn_study.log_weight_terms(params, x, jax.random.PRNGKey(1), 7)
    assert log_p.shape == log_q.shape == (2, 7) and np.all(np.isfinite(log_p)) and np.all(log_q <= 0)


def test_tiny_sbn_by_enumeration_normalised_and_estimates_match_exact_log_evidence_and_kl():
    params = _tiny_params()
    theta, phi = params["generative"], params["inference"]
    # p_θ sums to one over every (x, z): 2^3 images × 2^3 latent states
    xs = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=3)))
    log_joint_all = sbn_study.log_joint(theta, xs, _all_states((2, 1), 8))  # [8 images, 8 states]
    np.testing.assert_allclose(jax.nn.logsumexp(log_joint_all), 0.0, atol=1e-5)
    x = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    zs = _all_states((2, 1), 2)
    log_p, log_q = sbn_study.log_joint(theta, x, zs), sbn_study.inference_log_prob(phi, x, zs)
    np.testing.assert_allclose(jax.nn.logsumexp(log_q, axis=-1), 0.0, atol=1e-5)  # q normalised per image
    exact_log_px = jax.nn.logsumexp(log_p, axis=-1)
    exact_kl = jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=-1) + exact_log_px  # KL(q(z|x) ‖ p(z|x))
    assert np.all(exact_kl > 0.1)  # a non-trivial check
    cfg = sbn_config.get_config("quick")
    cfg.eval_batch, cfg.log_marginal_chunk = 2, 5000
    log_p_hat, kl = sbn_study.make_evaluate(cfg, 40_000)(params, x, jax.random.PRNGKey(2))
    np.testing.assert_allclose(log_p_hat, exact_log_px, atol=0.03)
    np.testing.assert_allclose(kl, exact_kl, atol=0.05)


def test_materialised_particles_are_those_of_log_marginal_chunked():
    params = _tiny_params()
    x = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    fn = lambda k, n: sbn_study.particle_log_weights(params, x, k, n)
    key = jax.random.PRNGKey(3)
    for n, chunk in ((10, 4), (12, 4), (5, 9)):
        log_w = diagnostics.log_weights_chunked(fn, key, n, chunk)
        assert log_w.shape == (2, n)
        np.testing.assert_allclose(
            objectives.log_mean_exp(log_w), diagnostics.log_marginal_chunked(fn, key, n, chunk), rtol=1e-5
        )
        log_p_hat, kl = sbn_study.log_evidence_and_kl(log_w)
        np.testing.assert_allclose(kl, log_p_hat - jnp.mean(log_w, -1), rtol=1e-6)
        assert np.all(kl >= 0)


def test_each_group_gets_its_own_surrogates_gradient():
    """WW: θ follows −IWAE with q stopped, φ wake-φ; VIMCO's θ-gradient is the same IWAE one (same particles)."""
    params = _tiny_params()
    x, key, k = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), jax.random.PRNGKey(4), 6

    def by_hand(p):
        log_p, log_q = sbn_study.log_weight_terms(p, x, key, k)
        theta_loss = -jnp.mean(objectives.log_mean_exp(log_p - sg(log_q)))
        phi_loss = -jnp.mean(jnp.sum(jax.nn.softmax(sg(log_p - log_q), -1) * log_q, -1))
        return theta_loss, phi_loss

    g_theta = jax.grad(lambda p: by_hand(p)[0])(params)["generative"]
    g_phi = jax.grad(lambda p: by_hand(p)[1])(params)["inference"]
    ww, bound = sbn_study.method_grads("ww", params, x, key, k)
    vimco, bound_vimco = sbn_study.method_grads("vimco", params, x, key, k)
    close = lambda a, b: jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6), a, b)
    close(ww["generative"], g_theta)
    close(ww["inference"], g_phi)
    close(vimco["generative"], g_theta)
    np.testing.assert_allclose(bound, -by_hand(params)[0], rtol=1e-5)
    np.testing.assert_allclose(bound_vimco, bound, rtol=1e-5)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(vimco["inference"]))


def test_minibatches_are_epochs_of_permutations_and_config_checks():
    idx = sbn_study.minibatch_indices(0, 10, 4, 5)
    assert idx.shape == (5, 4) and sorted(idx.ravel()[:10]) == list(range(10))
    cfg = sbn_config.get_config("quick")
    sbn_study.check_config(cfg, 20)
    with pytest.raises(ValueError, match="multiple of eval_batch"):
        sbn_study.check_config(cfg, 25)
    cfg.methods = ("ww", "reinforce")
    with pytest.raises(ValueError, match="unknown method 'reinforce'"):
        sbn_study.check_config(cfg, 20)


@pytest.mark.slow  # ≈ 90 s on 2 busy cores; experiment-level, outside the default suite
def test_study_runs_every_method_k_and_seed_resumes_and_plots(tmp_path):
    cfg = sbn_config.get_config("quick")
    rng = np.random.default_rng(0)
    data = (
        jnp.asarray(rng.uniform(size=(100, 784)), jnp.float32),
        jnp.asarray(rng.integers(0, 2, (20, 784)), jnp.float32),
    )
    workdir = str(tmp_path)
    results = sbn_study.run(cfg, workdir, data)
    expected = {f"{m}/K{k}/seed{s}" for m in ("ww", "vimco") for k in (2, 5) for s in (0, 1)}
    assert set(results["runs"]) == expected
    for name, r in results["runs"].items():
        assert np.isfinite(r["log_p_hat"]) and r["log_p_hat"] < 0, name
        assert r["kl"] >= 0 and r["min_image_kl"] >= -1e-4, name  # KL ≥ 0 per image (Jensen, same particles)
        assert [s for s, _ in r["train_curve"]] == [5, 10, 15, 20]
        assert [s for s, _, _ in r["test_curve"]] == [0, 10, 20]
        assert np.all(np.isfinite(r["train_curve"])) and np.all(np.isfinite(r["test_curve"]))
    # the seed fixes the start: every method and K begins from the same test log p̂ at step 0 (curve particles)
    starts = {round(results["runs"][f"{m}/K{k}/seed0"]["test_curve"][0][1], 4) for m in ("ww", "vimco") for k in (2, 5)}
    assert len(starts) == 1
    row = results["summary"]["vimco/K5"]
    runs = [results["runs"][f"vimco/K5/seed{s}"] for s in (0, 1)]
    np.testing.assert_allclose(row["log_p_hat"]["mean"], np.mean([r["log_p_hat"] for r in runs]))
    assert "| 5 |" in results["table_markdown"] and all(os.path.exists(p) for p in results["plots"])
    assert len(results["plots"]) == 2
    # resume: nothing is trained again; a new K trains only its runs
    again = sbn_study.run(cfg, workdir, data)
    assert again["runs"]["ww/K2/seed1"] == results["runs"]["ww/K2/seed1"]
    cfg.num_particles, cfg.seeds = (2, 3), (0,)
    grown = sbn_study.run(cfg, workdir, data)
    assert set(grown["runs"]) == expected | {"ww/K3/seed0", "vimco/K3/seed0"}
    assert grown["runs"]["vimco/K2/seed0"] == results["runs"]["vimco/K2/seed0"]
    # report: nothing trained, each row over the seeds that finished (K = 3 has seed 0 only), a cell says so
    cfg.seeds = (0, 1)
    report = sbn_study.run(cfg, workdir, train=False)
    assert report["runs"] == grown["runs"]
    assert report["summary"]["ww/K2"]["seeds"] == 2 and report["summary"]["ww/K3"]["seeds"] == 1
    k3 = report["table_markdown"].splitlines()[-1]
    assert k3.startswith("| 3 |") and k3.count("(1 of 2 seeds)") == 4
    assert "seeds)" not in report["table_markdown"].splitlines()[-2]
    assert report["summary"]["vimco/K3"]["kl"]["mean"] == grown["runs"]["vimco/K3/seed0"]["kl"]
    cfg.num_particles = (7,)
    with pytest.raises(ValueError, match="nothing to report"):
        sbn_study.run(cfg, workdir, train=False)
    cfg.learning_rate = 3e-4
    with pytest.raises(ValueError, match="another config"):
        sbn_study.run(cfg, workdir, data)
