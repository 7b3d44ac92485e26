"""Tests of the training step, optimisers, data order, NaN handling and the CLI (ocr_jax/training,
experiments/main.py)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ocr_jax.configs import toy_vae as toy_vae_config
from ocr_jax.data import deterministic_batches
from ocr_jax.tasks import toy_vae
from ocr_jax.training import optimizers as opt_lib
from ocr_jax.training import tasks
from ocr_jax.training.train import NonFiniteError, train_and_evaluate
from ocr_jax.training.train_step import init_train_state, make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def small_config(num_steps=6):
    config = toy_vae_config.get_config("quick")
    config.num_steps = num_steps
    config.global_batch_size = 16
    config.log_every = 2
    config.eval_every = 0
    config.checkpoint.every = 1000
    config.progress_bar = False
    config.task_config.hidden = 8
    return config


# ---- optimisers -------------------------------------------------------------------------------------------------
def test_rmsprop_config_matches_tf1_rmsprop():
    """TF1 tf.train.RMSPropOptimizer: ms init 1, eps inside sqrt, momentum on the lr-scaled update."""
    cfg = ml_collections.ConfigDict(dict(optimizer="rmsprop", learning_rate=0.1, schedule="constant"))
    opt = opt_lib.make_optimizer(cfg)
    rng = np.random.default_rng(0)
    var = rng.normal(size=5).astype(np.float32)
    ms, mom, ref = np.ones(5, np.float32), np.zeros(5, np.float32), var.copy()
    params, state = jnp.asarray(var), opt.init(jnp.asarray(var))
    for _ in range(4):
        g = rng.normal(size=5).astype(np.float32)
        ms = 0.9 * ms + 0.1 * g**2
        mom = 0.9 * mom + 0.1 * g / np.sqrt(ms + 1e-10)
        ref = ref - mom
        updates, state = opt.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params, ref, rtol=1e-5, atol=1e-6)


def test_schedules_and_clipping():
    pw = opt_lib.make_schedule(
        ml_collections.ConfigDict(
            dict(learning_rate=1.0, schedule="piecewise_constant", boundaries_and_scales={10: 0.1, 20: 0.5})
        )
    )
    assert [float(pw(s)) for s in (0, 10, 25)] == pytest.approx([1.0, 0.1, 0.05])
    ex = opt_lib.make_schedule(
        ml_collections.ConfigDict(dict(learning_rate=2.0, schedule="exponential", decay_steps=100, decay_rate=0.5))
    )
    assert float(ex(200)) == pytest.approx(0.5)
    sgd = opt_lib.make_optimizer(
        ml_collections.ConfigDict(dict(optimizer="sgd", learning_rate=1.0, clip_global_norm=1.0))
    )
    updates, _ = sgd.update(jnp.array([3.0, 4.0]), sgd.init(jnp.zeros(2)))
    np.testing.assert_allclose(updates, [-0.6, -0.8], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown optimizer"):
        opt_lib.make_optimizer(ml_collections.ConfigDict(dict(optimizer="lamb", learning_rate=1.0)))


# ---- per-group gradients ----------------------------------------------------------------------------------------
class CoupledTask:
    """Two groups whose surrogates both depend on both groups: s_a = a²·b + b, s_b = 3·a·b² (per example mean)."""

    def init(self, key, batch):
        return {"a": {"w": jnp.array(2.0)}, "b": {"w": jnp.array(-1.5)}}, {"calls": jnp.zeros((), jnp.int32)}

    def loss(self, params, model_state, batch, key, step):
        a, b = params["a"]["w"], params["b"]["w"]
        x = jnp.mean(batch["x"])
        surrogates = {"a": a**2 * b * x + b, "b": 3.0 * a * b**2 * x}
        return surrogates, ({"x": x}, {"calls": model_state["calls"] + 1})

    def train_batches(self, **kwargs):
        raise NotImplementedError  # not used: the test feeds batches itself.


def test_each_group_gets_gradient_of_its_own_surrogate_only():
    task = CoupledTask()
    optimizers = {"a": optax.sgd(1.0), "b": optax.sgd(0.5)}
    batch = {"x": np.full((4,), 2.0, np.float32)}
    state = init_train_state(task, optimizers, 0, batch)
    step = make_train_step(task, optimizers, donate=False)
    new, metrics = step(state, batch, jax.random.PRNGKey(0))
    a, b, x = 2.0, -1.5, 2.0
    grad_a = 2 * a * b * x  # d s_a / d a (not + 3 b² x from s_b)
    grad_b = 6.0 * a * b * x  # d s_b / d b (not + a² x + 1 from s_a)
    np.testing.assert_allclose(new.params["a"]["w"], a - 1.0 * grad_a, rtol=1e-6)
    np.testing.assert_allclose(new.params["b"]["w"], b - 0.5 * grad_b, rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm/a"], abs(grad_a), rtol=1e-6)
    assert int(new.step) == 1 and int(new.model_state["calls"]) == 1 and bool(metrics["finite"])


def test_a_nonfinite_step_returns_the_input_state_unchanged():
    """The update is skipped as a whole (parameters, optimiser moments, model state, step) when a surrogate is NaN,
    and applied when it is finite, through one compiled step."""
    task = CoupledTask()
    optimizers = {"a": optax.adam(0.1), "b": optax.adam(0.1)}
    good, bad = {"x": np.full((4,), 2.0, np.float32)}, {"x": np.array([2.0, np.nan, 2.0, 2.0], np.float32)}
    step = make_train_step(task, optimizers, donate=False)
    state, metrics = step(init_train_state(task, optimizers, 0, good), good, jax.random.PRNGKey(0))
    assert bool(metrics["finite"]) and int(state.step) == 1
    skipped, metrics = step(state, bad, jax.random.PRNGKey(1))
    assert not bool(metrics["finite"])
    jax.tree.map(np.testing.assert_array_equal, skipped.to_dict(), state.to_dict())
    applied, metrics = step(skipped, good, jax.random.PRNGKey(2))
    assert bool(metrics["finite"]) and int(applied.step) == 2 and int(applied.model_state["calls"]) == 2
    assert float(applied.params["a"]["w"]) != float(state.params["a"]["w"])


class SharedSurrogateTask:
    """Two groups trained by one scalar (as IWAE/VIMCO do): ``shared=True`` returns the same array for both groups
    (one pull-back), ``shared=False`` two equal but distinct arrays (one pull-back each)."""

    def __init__(self, shared: bool):
        self.shared = shared

    def init(self, key, batch):
        ka, kb = jax.random.split(key)
        return {"a": {"w": jax.random.normal(ka, (8, 16))}, "b": {"w": jax.random.normal(kb, (16, 4))}}, {}

    def loss(self, params, model_state, batch, key, step):
        h = jnp.tanh(batch["x"] @ params["a"]["w"])
        loss = jnp.mean(jnp.sin(h @ params["b"]["w"]) ** 2)
        return {"a": loss, "b": loss if self.shared else loss * 1.0}, ({}, model_state)


def test_groups_sharing_one_surrogate_get_the_same_update_from_one_backward_pass():
    from ocr_jax.training.train_step import surrogate_partition

    optimizers = {"a": optax.adam(0.1), "b": optax.sgd(0.5)}
    batch = {"x": np.asarray(np.random.default_rng(0).normal(size=(32, 8)), np.float32)}
    results, dots = {}, {}
    for shared in (True, False):
        task = SharedSurrogateTask(shared)
        state = init_train_state(task, optimizers, 0, batch)
        step = make_train_step(task, optimizers, donate=False)
        results[shared] = step(state, batch, jax.random.PRNGKey(0))
        # Matrix products in the traced step (before XLA's simplifications, which may merge the two pull-backs).
        jaxpr = jax.make_jaxpr(step)(state, batch, jax.random.PRNGKey(0))
        dots[shared] = str(jaxpr).count("dot_general")
    for g in ("a", "b"):
        np.testing.assert_allclose(
            results[True][0].params[g]["w"], results[False][0].params[g]["w"], rtol=1e-6, atol=1e-7
        )
        np.testing.assert_allclose(results[True][1][f"grad_norm/{g}"], results[False][1][f"grad_norm/{g}"], rtol=1e-6)
    assert dots[True] < dots[False], dots  # one pull-back instead of two
    loss = jnp.ones(())
    assert surrogate_partition({"b": loss, "a": loss, "c": loss * 2}) == [["a", "b"], ["c"]]


def test_stop_after_seconds_saves_and_a_rerun_continues(tmp_path):
    config = small_config(num_steps=6)
    config.stop_after_seconds = 1e-9  # stop after the first step
    state = train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 1
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert any(r.get("stopped_on_time") == 1.0 for r in rows)
    config.stop_after_seconds = 0  # disabled: the rerun resumes at step 1 and finishes
    assert int(train_and_evaluate(config, str(tmp_path)).step) == 6


def test_mismatched_groups_are_rejected():
    task = CoupledTask()
    with pytest.raises(ValueError, match="do not match the optimiser groups"):
        init_train_state(task, {"a": optax.sgd(1.0)}, 0, {"x": np.ones(4, np.float32)})


# ---- data order ---------------------------------------------------------------------------------------------------
def test_batches_are_a_function_of_seed_and_step_and_split_over_processes():
    arrays = {"i": np.arange(50)}
    whole = deterministic_batches(arrays, 8, seed=3)
    first = [next(whole)["i"] for _ in range(14)]  # crosses two epochs of 6 steps
    resumed = deterministic_batches(arrays, 8, seed=3, start_step=9)
    np.testing.assert_array_equal(next(resumed)["i"], first[9])
    halves = [
        next(deterministic_batches(arrays, 8, seed=3, start_step=7, process_index=p, process_count=2))["i"]
        for p in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate(halves), first[7])
    assert len(set(np.concatenate(first[:6]))) == 48  # an epoch visits distinct examples
    assert not np.array_equal(first[0], first[6])  # epochs are reshuffled


# ---- NaN / Inf ----------------------------------------------------------------------------------------------------
class NanAtStep(toy_vae.ToyVAETask):
    """The toy VAE, but the batch of step `nan_step` has a NaN pixel."""

    nan_step = 3

    def train_batches(self, *, start_step, **kwargs):
        for step, batch in enumerate(super().train_batches(start_step=start_step, **kwargs), start=start_step):
            if step == self.nan_step:
                batch = {"image": batch["image"].copy()}
                batch["image"][1, 2, 3] = np.nan
            yield batch


def test_nonfinite_step_stops_saves_last_good_state_and_batch(tmp_path):
    tasks.register("toy_vae_nan_test", NanAtStep, overwrite=True)
    config = small_config(num_steps=10)
    config.task = "toy_vae_nan_test"
    with pytest.raises(NonFiniteError, match="non-finite values at step 3"):
        train_and_evaluate(config, str(tmp_path))
    saved = np.load(tmp_path / "nonfinite_batch_step3_process0.npz")
    assert np.isnan(saved["image"][1, 2, 3]) and np.isnan(saved["image"]).sum() == 1
    # The last good state (after 3 updates) was checkpointed; it restores and is finite.
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
    config.task = "toy_vae"
    config.num_steps = 3
    state = train_and_evaluate(config, str(tmp_path))  # resumes at step 3: nothing to do
    assert int(state.step) == 3
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_stop_when_stops_at_first_evaluation_meeting_the_threshold(tmp_path):
    config = small_config(num_steps=8)
    config.eval_every = 2
    config.stop_when = ml_collections.ConfigDict(dict(metric="eval/elbo", at_least=-1e30))  # met at once
    state = train_and_evaluate(config, str(tmp_path / "met"))
    assert int(state.step) == 2 and sorted(os.listdir(tmp_path / "met" / "checkpoints")) == ["2"]
    rows = [json.loads(line) for line in open(tmp_path / "met" / "metrics.jsonl")]
    assert any(r.get("stopped_early") == 1.0 and r["step"] == 2 for r in rows)
    config.stop_when.at_least = 1e30  # never met: trains to num_steps
    assert int(train_and_evaluate(config, str(tmp_path / "never")).step) == 8
    config.stop_when.metric = "eval/no_such_metric"
    with pytest.raises(KeyError, match="no_such_metric"):
        train_and_evaluate(config, str(tmp_path / "bad"))
    assert sorted(os.listdir(tmp_path / "bad" / "checkpoints")) == ["2"]  # the state before the error was saved


def test_steps_per_sec_leaves_out_evaluation_and_checkpoint_time(tmp_path, monkeypatch):
    """The logged training rate counts only training: a fake clock that moves only while the task evaluates or a
    checkpoint is written (1000 s each) must leave every logged steps_per_sec unaffected (air_seeds sums the rates'
    intervals as training time). Before the fix an interval holding an evaluation read ≈ 2 / 1000 steps/s."""
    from ocr_jax.training import checkpoint as checkpoint_lib
    from ocr_jax.training import train as train_lib

    clock = [0.0]
    monkeypatch.setattr(train_lib.time, "perf_counter", lambda: clock[0])

    def slowly(fn):
        def wrapped(*args, **kwargs):
            clock[0] += 1000.0
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(toy_vae.ToyVAETask, "evaluate", slowly(toy_vae.ToyVAETask.evaluate))
    monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", slowly(checkpoint_lib.Checkpointer.save))
    config = small_config(num_steps=8)
    config.eval_every, config.checkpoint.every = 3, 3  # inside the logging intervals (log_every = 2)
    train_and_evaluate(config, str(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    rates = [r["steps_per_sec"] for r in rows if "steps_per_sec" in r]
    assert len(rates) == 4 and any("eval/elbo" in r for r in rows)
    assert min(rates) > 1.0  # 2 steps over ≈ 0 s of (fake) training time, not over 1000 s


# ---- CLI as a new user runs it --------------------------------------------------------------------------------------
def run_cli(workdir, cache_dir, *overrides):
    cmd = [
        sys.executable,
        "-m",
        "experiments.main",
        "--config=toy_vae:quick",
        f"--workdir={workdir}",
        "--config.log_every=10",
        "--config.eval_every=20",
        "--config.checkpoint.every=20",
        "--config.task_config.hidden=8",
        *overrides,
    ]
    # The persistent compilation cache lets the resumed run reuse the first run's compiled programs.
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_cli_quick_config_trains_checkpoints_logs_and_resumes(tmp_path):
    workdir = tmp_path / "run"
    first = run_cli(workdir, tmp_path / "jax_cache", "--config.num_steps=40")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "40/40" in first.stderr  # tqdm progress bar
    assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "40"]
    second = run_cli(workdir, tmp_path / "jax_cache", "--config.num_steps=80")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "80/80" in second.stderr and "elbo=" in second.stderr
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["40", "60", "80"]  # keep-last-3
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    compiles = [r["step"] for r in rows if "compile_seconds" in r]
    assert compiles == [0, 40]  # the second run started at step 40
    train_steps = [r["step"] for r in rows if "elbo" in r]
    assert train_steps == list(range(10, 81, 10))
    assert all(isinstance(r["elbo"], float) and "steps_per_sec" in r for r in rows if "elbo" in r)
    assert [r["step"] for r in rows if "eval/elbo" in r] == [20, 40, 60, 80]
    events = os.listdir(workdir / "tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in events)
    tags = set()  # TensorBoard event records hold their tags verbatim.
    for name in events:
        with open(workdir / "tensorboard" / name, "rb") as f:
            data = f.read()
        tags |= {t for t in (b"images/reconstructions", b"eval/elbo", b"elbo") if t in data}
    assert tags == {b"images/reconstructions", b"eval/elbo", b"elbo"}
    config = json.load(open(workdir / "config.json"))
    assert config["num_steps"] == 80
