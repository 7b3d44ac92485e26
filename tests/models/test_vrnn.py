"""VRNN (ocr_jax.models.vrnn, ocr_jax.tasks.vrnn, ocr_jax.evaluation.vrnn): parameter counts against the thesis, the
log-weight's densities, causality, training through the estimator interface (FIVO and IWAE; VIMCO refused), and the
evaluation, whose addition experiment goes through SQAIR's classifier code."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocr_jax import configs
from ocr_jax.estimators import fivo
from ocr_jax.evaluation import sqair as sqair_eval
from ocr_jax.evaluation import vrnn as vrnn_eval
from ocr_jax.models.vrnn import (
    THESIS_PARAMETERS,
    TransposedConvDecoder,
    VRNNConfig,
    count_parameters,
)
from ocr_jax.tasks.vrnn import VRNNTask

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# thesis App. 5.D.3: small / medium / large sizes and their parameter counts
MLP_SIZES = {"small": (128, 2, 1.2e6), "medium": (256, 3, 2.1e6), "large": (512, 4, 9.8e6)}
CONV_SIZES = {
    "small": (128, (32, 32, 64, 64), (2, 2, 2, 2), 0.8e6),
    "medium": (256, (32, 32, 32, 64, 64, 64), (1, 2, 1, 2, 1, 2), 2.6e6),
    "large": (512, (32, 32, 32, 64, 64, 64, 64, 64), (1, 2, 1, 2, 1, 2, 1, 1), 6.1e6),
}


def mlp_config(size):
    h, layers, _ = MLP_SIZES[size]
    return VRNNConfig(hidden=h, data_hidden=h, rnn_hidden=h, num_layers=layers, data_layers=layers)


def conv_config(size):
    h, channels, strides, _ = CONV_SIZES[size]
    return VRNNConfig(arch="conv", hidden=h, rnn_hidden=h, num_layers=1, conv_channels=channels, conv_strides=strides)


def dense(i, o):
    return i * o + o


def mlp_count(i, hidden, layers, o):
    sizes = [i] + [hidden] * layers + [o]
    return sum(dense(a, b) for a, b in zip(sizes, sizes[1:]))


def test_parameter_counts_against_the_thesis():
    """CONV-VRNN (the reported 2.6M) within 10 %, and the small MLP-VRNN and the large CONV-VRNN too. The medium
    MLP-VRNN ("2.1M") is out of reach of its stated sizes: the count equals the architecture's closed form, and even
    without any hidden layer (L = L′ = 0) a VRNN with H = J = 256 on 2,500 pixels has more than 2.1M·1.1."""
    counts = {}
    for size in ("small", "medium", "large"):
        counts["mlp", size] = count_parameters(mlp_config(size))["total"]
        counts["conv", size] = count_parameters(conv_config(size))["total"]
    print({k: f"{v / 1e6:.2f}M" for k, v in counts.items()})
    assert abs(counts["conv", "medium"] / THESIS_PARAMETERS["conv"] - 1) < 0.1
    assert abs(counts["conv", "medium"] / CONV_SIZES["medium"][-1] - 1) < 0.1
    assert abs(counts["conv", "large"] / CONV_SIZES["large"][-1] - 1) < 0.1
    assert abs(counts["mlp", "small"] / MLP_SIZES["small"][-1] - 1) < 0.1
    # the MLP-VRNN by hand: ψ^x, ψ^z, LSTM, prior (mean and std heads), q's two MLPs, ψ^dec
    H, L, D, E, P = 256, 3, 165, 165, 2500
    by_hand = (
        mlp_count(P, H, L, E)
        + mlp_count(D, H, L, E)
        + 4 * (dense(2 * E, H) + H * H)
        + mlp_count(H, H, L, 2 * D)
        + 2 * mlp_count(H + E, H, L, D)
        + mlp_count(E + H, H, L, P)
    )
    assert counts["mlp", "medium"] == by_hand
    bare = count_parameters(VRNNConfig(num_layers=0, data_layers=0))["total"]
    assert bare > 1.1 * THESIS_PARAMETERS["mlp"], bare


def test_conv_decoder_mirrors_the_encoder_to_the_frame_size():
    for shape, strides in (((50, 50), (1, 2, 1, 2, 1, 2)), ((24, 20), (2, 2)), ((7, 9), (2, 1, 2))):
        config = VRNNConfig(image_shape=shape, arch="conv", conv_channels=(4,) * len(strides), conv_strides=strides)
        decoder = TransposedConvDecoder(tuple(config.conv_sizes()), config.conv_channels, strides)
        out = jax.eval_shape(decoder.init_with_output, jax.random.key(0), jnp.zeros((2, 3, 5)))[0]
        assert out.shape == (2, 3) + shape, (shape, out.shape)
    assert VRNNConfig().conv_sizes() == [(50, 50), (50, 50), (25, 25), (25, 25), (13, 13), (13, 13), (7, 7)]
    with pytest.raises(ValueError, match="arch must be one of"):
        VRNNConfig(arch="transformer")
    with pytest.raises(ValueError, match="obs_std must be"):
        VRNNConfig(obs_std=0.0)


def test_conv_decoder_by_phases_equals_flax_conv_transpose_with_the_same_parameters():
    """VRNNConfig.deconv changes how ψ^dec is computed, not what: one parameter tree, the same frames and gradients."""
    config = VRNNConfig(arch="conv", conv_channels=(4, 4, 8, 8), conv_strides=(1, 2, 1, 2), image_shape=(25, 23))
    args = (tuple(config.conv_sizes()), config.conv_channels, config.conv_strides)
    by_phases, by_lax = TransposedConvDecoder(*args, deconv="phases"), TransposedConvDecoder(*args, deconv="lax")
    features = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 6)), jnp.float32)
    params = by_phases.init(jax.random.key(0), features)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, by_lax.init(jax.random.key(0), features))
    np.testing.assert_allclose(by_phases.apply(params, features), by_lax.apply(params, features), rtol=1e-5, atol=1e-5)
    grad = lambda d: jax.grad(lambda p: jnp.sum(jnp.sin(d.apply(p, features))))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grad(by_phases), grad(by_lax))
    with pytest.raises(ValueError, match="deconv must be one of"):
        VRNNConfig(deconv="fft")


def test_task_config_names_model_options_under_model_and_refuses_unknown_ones():
    """The model's options live under ``task_config.model`` (as SQAIR's: every VRNNConfig field but image_shape); a
    model option at the top level (the layout before) or a misspelt one is an error that says where it belongs."""
    import ml_collections

    from ocr_jax.tasks.vrnn import default_model_config, default_task_config, model_config

    assert default_model_config() == {
        f.name: f.default for f in dataclasses.fields(VRNNConfig) if f.name != "image_shape"
    }
    cfg = default_task_config()
    assert model_config(cfg) == VRNNConfig()  # the task's defaults are the model's (MLP-VRNN, 50×50)
    cfg.canvas_size = 24
    cfg.model.update(hidden=12, arch="conv", conv_channels=[8, 8], conv_strides=[2, 2], obs_std=0.5)
    c = model_config(cfg)
    assert (c.image_shape, c.hidden, c.arch, c.conv_channels, c.obs_std) == ((24, 24), 12, "conv", (8, 8), 0.5)
    with pytest.raises(ValueError, match=r"unknown VRNN task options \['hidden'\].*task_config.model.hidden"):
        VRNNTask(ml_collections.ConfigDict(dict(data="blobs", hidden=8)))
    with pytest.raises(ValueError, match=r"unknown VRNN task options \['likelihood_sigma'\].*model.obs_std"):
        VRNNTask(ml_collections.ConfigDict(dict(data="blobs", likelihood_sigma=0.3)))
    with pytest.raises(ValueError, match=r"unknown VRNN task options \['hiden'\]"):
        VRNNTask(ml_collections.ConfigDict(dict(data="blobs", hiden=8)))
    cfg.model.hiden = 8
    with pytest.raises(ValueError, match=r"unknown VRNN model options \['hiden'\] in task_config.model"):
        model_config(cfg)


def quick_task(**overrides):
    config = configs.get_config("vrnn_mnist:quick").task_config
    config.update(overrides)
    return VRNNTask(config)


@pytest.fixture(scope="module")
def task_and_params():
    task = quick_task()
    return task, task.model.init(jax.random.key(0))


def test_log_weights_are_the_model_densities_and_steps_are_causal(task_and_params):
    """log α_t = log p(z_t|·) + log N(x_t; mean_t, 0.3²) − log q(z_t|·), with the likelihood recomputed from the
    returned means; with resampling off Σ_t log α_t are the filter's final log-weights; frame t changes nothing
    before step t."""
    task, params = task_and_params
    frames = task.test_data["frames"][:2].astype(np.float32) / 255.0
    run = jax.jit(
        lambda f: task.run_filter(params, f, jax.random.key(1), 3, fivo.FilterSettings("never"), with_canvas=True)
    )
    r = run(frames)
    out = r.outputs
    chex_shapes = (out.z.shape, out.canvas.shape, r.log_alpha.shape)
    assert chex_shapes == ((3, 2, 3, 8), (3, 2, 3, 24, 24), (3, 2, 3))
    x = np.swapaxes(frames, 0, 1)[:, :, None]  # [T, B, 1, H, W]
    log_lik = -0.5 * (((x - out.canvas) / 0.3) ** 2).sum((-2, -1)) - 24 * 24 * (
        math.log(0.3) + 0.5 * math.log(2 * math.pi)
    )
    np.testing.assert_allclose(out.log_likelihood, log_lik, rtol=1e-4)
    np.testing.assert_allclose(r.log_alpha, out.log_p_z + out.log_likelihood - out.log_q_z, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(r.log_weights, r.log_alpha.sum(0), rtol=1e-5)
    changed = frames.copy()
    changed[:, 2] = 1.0 - changed[:, 2]
    r2 = run(changed)
    np.testing.assert_allclose(r2.log_alpha[:2], r.log_alpha[:2], rtol=1e-6)
    assert np.all(np.abs(np.asarray(r2.log_alpha[2] - r.log_alpha[2])) > 1.0)


def test_unrolled_filter_gives_the_same_bound_and_bad_unroll_is_refused(task_and_params):
    """task_config.filter_unroll changes how the filter's scan is compiled, not what it computes."""
    task, params = task_and_params
    unrolled = quick_task(filter_unroll=3)
    frames = task.test_data["frames"][:2]
    bound = lambda t: jax.jit(lambda f: t.run_filter(params, f, jax.random.key(4), 3).log_p_hat)(frames)
    np.testing.assert_allclose(bound(unrolled), bound(task), rtol=1e-5)
    with pytest.raises(ValueError, match="filter_unroll must be an integer >= 1"):
        quick_task(filter_unroll=0)
    assert configs.get_config("vrnn_mnist:conv").task_config.filter_unroll == 10
    assert configs.get_config("vrnn_mnist").task_config.filter_unroll == 1


def test_task_trains_through_the_estimator_interface(task_and_params):
    """FIVO: the surrogate is −mean log p̂ per frame, the same for θ and φ (its gradient: the slow tests below);
    other estimators run the filter without resampling; VIMCO, DReG and K = 1 FIVO are refused."""
    task, params = task_and_params
    batch = {"frames": task.train_frames[:4]}
    key = jax.random.key(2)

    @jax.jit
    def fivo_step(params):
        surrogates, (metrics, _) = task.loss(params, {}, batch, key, 0)
        return surrogates, metrics, task.run_filter(params, batch["frames"], key, 3).log_p_hat

    surrogates, metrics, log_p_hat = fivo_step(params)
    assert task.filter_settings == fivo.FilterSettings("ess", 0.5)
    np.testing.assert_allclose(surrogates["generative"], -np.mean(log_p_hat) / 3, rtol=1e-5)
    np.testing.assert_array_equal(surrogates["inference"], surrogates["generative"])
    np.testing.assert_allclose(metrics["bound"], np.mean(log_p_hat), rtol=1e-5)
    assert quick_task(estimator="iwae").filter_settings.resampling == "never"  # its loss: the slow test below
    with pytest.raises(ValueError, match="FIVO cannot be combined with VIMCO"):
        quick_task(estimator="vimco")
    with pytest.raises(ValueError, match="'dreg' needs log_q_stopped"):
        quick_task(estimator="dreg")
    with pytest.raises(ValueError, match="num_particles >= 2"):
        quick_task(num_particles=1)


def test_addition_on_features_is_sqair_s_addition_experiment(monkeypatch):
    """The refactor that lets VRNN use SQAIR's addition code: SQAIR's addition_experiment hands exactly its
    z_what·z_pres features, data and classifier settings to addition_on_features (the code that trains the
    classifier, unchanged) and returns its result."""
    rng = np.random.default_rng(0)
    n, T, N, Dw = 6, 3, 2, 4
    outputs = [
        dict(
            z_what=rng.normal(size=(n, T, N, Dw)),
            z_pres=rng.integers(0, 2, (n, T, N)),
            ids=np.broadcast_to(rng.permutation(N), (n, T, N)),  # the slots out of identity order
        )
        for _ in range(2)
    ]
    data = [dict(labels=rng.integers(0, 10, (n, 2)), presence=rng.integers(0, 2, (n, T, 2))) for _ in range(2)]
    calls = []
    monkeypatch.setattr(sqair_eval, "addition_on_features", lambda *a, **kw: calls.append((a, kw)) or "result")
    assert sqair_eval.addition_experiment(outputs[0], data[0], outputs[1], data[1], steps=7) == "result"
    ((args, kw),) = calls
    for features, o in zip(args[::2], outputs):
        np.testing.assert_array_equal(features, sqair_eval.addition_features(o["z_what"], o["z_pres"], o["ids"]))
        assert features.shape == (n, T, N * Dw)
    assert args[1] is data[0] and args[3] is data[1] and kw == dict(steps=7)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"need \[n, T, F\]"):
        sqair_eval.addition_on_features(np.zeros((n, 5)), data[0], np.zeros((n, T, 5)), data[1], steps=1)


@pytest.mark.slow
def test_fivo_gradient_reaches_both_parameter_groups(task_and_params):
    task, params = task_and_params
    batch = {"frames": task.train_frames[:4]}
    grads = jax.jit(jax.grad(lambda p: task.loss(p, {}, batch, jax.random.key(2), 0)[0]["generative"]))(params)
    for g in ("generative", "inference"):  # θ and φ share the surrogate: one gradient serves both groups
        norm = sum(float(jnp.sum(jnp.square(a))) for a in jax.tree.leaves(grads[g]))
        assert np.isfinite(norm) and norm > 0, g


@pytest.mark.slow
def test_iwae_loss_is_iwae_over_whole_sequences(task_and_params):
    """With estimator iwae the filter never resamples and the surrogate is −IWAE_K per frame of its log-weights."""
    _, params = task_and_params
    iwae = quick_task(estimator="iwae")
    batch, key = {"frames": iwae.train_frames[:4]}, jax.random.key(2)

    @jax.jit
    def iwae_step(params):
        surrogates, (metrics, _) = iwae.loss(params, {}, batch, key, 0)
        return surrogates, metrics, iwae.run_filter(params, batch["frames"], key, 3).log_weights

    s, m, log_w = iwae_step(params)
    log_w = np.asarray(log_w, np.float64)
    iwae_bound = np.mean(np.log(np.mean(np.exp(log_w - log_w.max(-1, keepdims=True)), -1)) + log_w.max(-1))
    np.testing.assert_allclose(s["generative"], -iwae_bound / 3, rtol=1e-5)
    assert float(m["resampling_rate"]) == 0.0


@pytest.mark.slow
def test_evaluation_pictures_and_addition_on_quick_vrnn(task_and_params):
    """evaluate_vrnn's quantities are consistent (elbo = log p(x|z) − KL ≤ IWAE, KL ≥ 0 in expectation), the
    addition experiment runs VRNN's latents through SQAIR's classifier, and conditional generation and sampling
    have the promised shapes."""
    task, params = task_and_params
    results = vrnn_eval.evaluate_vrnn(task, params, task.test_data, key=jax.random.key(0), num_sequences=16)
    np.testing.assert_allclose(results["elbo"], results["log_likelihood"] - results["kl"], rtol=1e-6)
    assert results["iwae"] >= results["elbo"] and results["kl"] > 0
    assert results["log_marginal_estimator"] == "iwae" and results["log_marginal_particles"] == 20
    assert np.isfinite(results["fivo_log_marginal"]) and results["fivo_particles"] == 10
    assert results["example"]["canvas"].shape == (2, 3, 24, 24)
    addition = vrnn_eval.addition(
        task, params, task.test_data, task.test_data, key=jax.random.key(0), num_sequences=16, classifier_steps=20
    )
    assert addition["num_test"] == 16 * 3 and addition["num_classes"] == 19 and addition["steps"] == 20
    features = vrnn_eval.latent_features(task, params, task.test_data["frames"][:16], jax.random.key(0))
    np.testing.assert_allclose(features, np.concatenate([results["example"]["z"], features[2:]]), rtol=1e-6)
    cond = vrnn_eval.conditional_generate(task, params, task.test_data["frames"][:2], jax.random.key(1), 2)
    assert cond["reconstruction"].shape == (2, 2, 24, 24) and cond["rollout"].shape == (2, 1, 24, 24)
    samples = task.model.generate(params, jax.random.key(0), 3, 4)
    assert samples["frames"].shape == (3, 4, 24, 24) and samples["z"].shape == (3, 4, 8)
    assert np.all((samples["frames"] > 0) & (samples["frames"] < 1))


@pytest.mark.slow
def test_quick_config_trains_from_the_command_line_and_reports(tmp_path):
    """vrnn_mnist:quick through the shared training loop (the bound improves) and experiments/vrnn_report."""
    workdir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "experiments.main", "--config=vrnn_mnist:quick", f"--workdir={workdir}"]
    result = subprocess.run(cmd + ["--config.progress_bar=False"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    bounds = [m["bound_per_frame"] for m in metrics if "bound_per_frame" in m]
    assert bounds[-1] > bounds[0] + 10, bounds
    report = [sys.executable, "-m", "experiments.vrnn_report", f"--workdir={workdir}"]
    result = subprocess.run(report, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.load(open(workdir / "results.json"))
    assert summary["step"] == 200 and summary["addition"]["num_classes"] == 19
    assert (
        summary["parameters"]
        == count_parameters(VRNNTask(configs.get_config("vrnn_mnist:quick").task_config).model.config)["total"]
    )
    for name in ("reconstructions.png", "conditional.png", "prior_samples.png"):
        assert (workdir / name).stat().st_size > 1000
