"""AIR as a training task: estimator wiring, gradients per group, a tiny run improves its bound, sharding agrees."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ocr_jax import estimators, objectives
from ocr_jax.configs import air_multi_mnist
from ocr_jax.evaluation import air as air_eval
from ocr_jax.tasks import air as air_task
from ocr_jax.training import mesh as mesh_lib
from ocr_jax.training.optimizers import make_optimizers
from ocr_jax.training.train_step import init_train_state, make_train_step
from tests import sharded_step_check


def quick_config(*variants: str) -> ml_collections.ConfigDict:
    return air_multi_mnist.get_config("+".join(("quick",) + variants))


@pytest.fixture(scope="module")
def nvil_setup():
    config = quick_config("nvil")
    task = air_task.AIRTask(config.task_config)
    batch = next(task.train_batches(seed=0, start_step=0, global_batch_size=8, process_index=0, process_count=1))
    params, model_state = task.init(jax.random.PRNGKey(0), batch)
    return task, params, model_state, batch


def group_grads(task, params, model_state, batch, key):
    """d surrogates[g] / d params[g] for every group g."""

    def surrogate(p, g):
        return task.loss(p, model_state, batch, key, jnp.asarray(0))[0][g]

    return {g: jax.grad(surrogate)(params, g)[g] for g in params}


def test_every_group_including_the_baseline_gets_gradients(nvil_setup):
    task, params, model_state, batch = nvil_setup
    grads = group_grads(task, params, model_state, batch, jax.random.PRNGKey(1))
    for group, tree in grads.items():
        norms = [float(jnp.linalg.norm(x)) for x in jax.tree.leaves(tree)]
        assert all(np.isfinite(norms)), group
        assert sum(norms) > 0, f"group {group} receives no gradient"


def test_nvil_baseline_learns(nvil_setup):
    """The baseline's own regression loss falls when only the baseline is trained (Pyro #1374/#1891 pitfalls)."""
    task, params, model_state, batch = nvil_setup
    key = jax.random.PRNGKey(2)

    def baseline_loss(p_base, state):
        p = {**params, "baseline": p_base}
        surrogates, (_, new_state) = task.loss(p, state, batch, key, jnp.asarray(0))
        return surrogates["baseline"], new_state

    loss0, state = baseline_loss(params["baseline"], model_state)
    p_base = params["baseline"]
    step = jax.jit(jax.value_and_grad(baseline_loss, has_aux=True))
    for _ in range(60):
        (loss, state), g = step(p_base, state)
        p_base = jax.tree.map(lambda w, d: w - 1e-3 * d, p_base, g)
    final, _ = baseline_loss(p_base, state)
    assert float(final) < 0.5 * float(loss0)


def test_vimco_wiring_matches_the_library(nvil_setup):
    task, params, _, batch = nvil_setup
    images = batch["images"].astype(np.float32) / 255.0
    out = task.model.infer(params, images, jax.random.key(3), num_particles=4, continue_prob=0.5)
    surrogates, _, bound = air_task.estimator_surrogates(estimators.get("vimco"), task.model, params, out, ())
    log_p = out.log_likelihood + out.log_p_steps.sum(-1)
    expected = objectives.vimco(log_p, out.log_q_reparam.sum(-1), out.log_q_pres.sum(-1))
    np.testing.assert_allclose(surrogates["inference"], expected.phi, rtol=1e-6)
    np.testing.assert_allclose(bound, jnp.mean(jax.nn.logsumexp(out.log_weight, -1) - np.log(4)), rtol=1e-5)


def test_wake_wake_gradients(nvil_setup):
    """WW: θ follows IWAE's θ-gradient; the presence head follows wake-φ Σ_k w̃_k ∇ log q(z_pres,k)."""
    task, params, model_state, batch = nvil_setup
    images = batch["images"].astype(np.float32) / 255.0
    key = jax.random.key(4)
    K = 4

    def ww(p, group):
        out = task.model.infer(p, images, key, num_particles=K, continue_prob=0.5)
        return air_task.estimator_surrogates(estimators.get("ww"), task.model, p, out, ())[0][group]

    def iwae_theta(p):
        out = task.model.infer(p, images, key, num_particles=K, continue_prob=0.5)
        log_p = out.log_likelihood + out.log_p_steps.sum(-1)
        return objectives.iwae(log_p, out.log_q_reparam.sum(-1), out.log_q_pres.sum(-1)).theta

    g_ww = jax.grad(ww)(params, "generative")["generative"]
    g_iwae = jax.grad(iwae_theta)(params)["generative"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_ww, g_iwae)

    # Wake-φ for z_pres: the presence-logit gradient equals -mean_b Σ_k w̃_k ∇ log q(z_pres,k) + reparam part, and
    # the reparam part does not reach presence logits except through... so compare against an explicit construction.
    def explicit(p):
        out = task.model.infer(p, images, key, num_particles=K, continue_prob=0.5)
        log_w = jax.lax.stop_gradient(out.log_weight)
        w = jax.nn.softmax(log_w, -1)
        wake = -jnp.mean(jnp.sum(w * out.log_q_pres.sum(-1), -1))
        log_w_reparam = (
            out.log_likelihood
            + out.log_p_steps.sum(-1)
            - out.log_q_reparam.sum(-1)
            - jax.lax.stop_gradient(out.log_q_pres.sum(-1))
        )
        reparam = -jnp.mean(jax.nn.logsumexp(log_w_reparam, -1))
        return wake + reparam

    g_phi = jax.grad(ww)(params, "inference")["inference"]
    g_explicit = jax.grad(explicit)(params)["inference"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_phi, g_explicit)


def test_bad_config_is_rejected():
    config = quick_config().task_config
    config.estimator = "vimco"
    config.num_particles = 1
    with pytest.raises(ValueError, match="num_particles >= 2"):
        air_task.AIRTask(config)
    config.estimator = "magic"
    with pytest.raises(ValueError, match="unknown estimator 'magic'; registered: .*vimco"):
        air_task.AIRTask(config)
    config.estimator = "dreg"  # needs every latent reparameterised; AIR's z_pres is not
    with pytest.raises(ValueError, match="'dreg' needs log_q_stopped, which AIR does not provide"):
        air_task.AIRTask(config)
    with pytest.raises(ValueError, match="unknown AIR model options"):
        air_task.make_air_config({"not_a_field": 1})


def _train(config, steps):
    task = air_task.AIRTask(config.task_config)
    optimizers, schedules = make_optimizers(config.optimizers)
    mesh = mesh_lib.make_data_mesh()
    batches = task.train_batches(
        seed=0, start_step=0, global_batch_size=config.global_batch_size, process_index=0, process_count=1
    )
    state = init_train_state(task, optimizers, 0, next(batches), mesh)
    step = make_train_step(task, optimizers, mesh=mesh, schedules=schedules)
    history = []
    for i in range(steps):
        state, metrics = step(state, mesh_lib.shard_batch(next(batches), mesh), jax.random.PRNGKey(i))
        history.append(float(metrics["bound"]))
    return task, state, np.asarray(history)


def test_tiny_config_trains_and_its_bound_improves():
    config = quick_config()
    config.optimizers.generative.learning_rate = 1e-3
    config.optimizers.inference.learning_rate = 1e-3
    task, state, history = _train(config, 150)
    assert np.all(np.isfinite(history))
    assert history[-30:].mean() > history[:30].mean() + 20.0, (history[:30].mean(), history[-30:].mean())
    results = air_eval.evaluate_air(task, state.params, 150, num_images=128, log_marginal_images=8)
    assert 0.0 <= results["count_accuracy"] <= 1.0
    assert results["confusion"].sum() == 128
    assert results["log_marginal"] >= results["elbo"] - 5.0  # IWAE-K >= ELBO up to Monte-Carlo noise


def test_sharded_and_single_device_steps_agree():
    sharded_step_check.run_in_subprocess("ocr_jax.configs.air_multi_mnist", "quick+nvil")


def test_fast_switches_from_vimco_to_piwae_after_its_warm_up_steps():
    """``quick+fast``: the train step threads the ``switch`` estimator's call count through the model state, so the
    first ``steps`` training steps take VIMCO's inference loss and the later ones PIWAE's (same samples)."""
    config = quick_config("fast")
    config.task_config.estimator_args.steps = 2
    task, state, history = _train(config, 3)
    assert np.all(np.isfinite(history))
    assert int(state.model_state["estimator"][0]) == 3
    params = state.params
    batch = next(task.train_batches(seed=1, start_step=0, global_batch_size=8, process_index=0, process_count=1))
    key = jax.random.PRNGKey(5)
    vimco, piwae = estimators.get("vimco"), estimators.get("piwae", num_repeats=5, score_baseline="leave_one_out")
    reference = air_task.AIRTask(config.task_config)
    for calls, expected in ((1, vimco), (2, piwae)):
        model_state = {"estimator": (jnp.asarray(calls, jnp.int32), (), ())}
        losses = task.loss(params, model_state, batch, key, jnp.asarray(calls))[0]
        reference.estimator = expected
        want = reference.loss(params, {"estimator": ()}, batch, key, jnp.asarray(calls))[0]
        np.testing.assert_allclose(losses["inference"], want["inference"], rtol=1e-5)
        np.testing.assert_allclose(losses["generative"], want["generative"], rtol=1e-5)
