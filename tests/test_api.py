"""ocr_jax.api: load a trained run (config.json + checkpoint, no data, no optimisers) and infer with it — AIR on
images, SQAIR on sequences. The runs are the quick configs (synthetic data, no download) run for two steps by the
training loop, `train_and_evaluate`: AIR with its real train step; SQAIR with a stand-in train step by default (its
real one takes ~30 s to compile on a 2-core CPU) and with the real one in the slow test at the end."""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ocr_jax
from ocr_jax import api
from ocr_jax import spatial_transformer as st
from ocr_jax.configs import air_multi_mnist, sqair_mnist
from ocr_jax.evaluation import sqair as sqair_eval
from ocr_jax.models.air import where_transform
from ocr_jax.models.sqair import where_to_transform
from ocr_jax.tasks import air as air_task
from ocr_jax.tasks import sqair as sqair_task
from ocr_jax.training import train as train_lib
from ocr_jax.training.checkpoint import CheckpointError
from ocr_jax.training.train import train_and_evaluate

NUM_STEPS = 2


def two_steps(config):
    """Two training steps, a checkpoint after each, no evaluation."""
    config.num_steps = NUM_STEPS
    config.global_batch_size = 8
    config.eval_every = 0
    config.log_every = NUM_STEPS
    config.checkpoint.every = 1
    config.progress_bar = False
    return config


def train(config, workdir):
    return workdir, jax.tree.map(np.asarray, jax.device_get(train_and_evaluate(config, str(workdir)).params))


@pytest.fixture(scope="module")
def air_trained(tmp_path_factory):
    config = two_steps(air_multi_mnist.get_config("quick"))
    config.task_config.data.update(num_train=32, num_test=8)
    return train(config, tmp_path_factory.mktemp("air"))


def sqair_config():
    config = two_steps(sqair_mnist.get_config("quick"))
    config.task_config.update(num_train=16, num_eval=4)
    return config


def stand_in_train_step(task, optimizers, **kwargs):
    """For `train_and_evaluate`: moves every parameter by 0.01 per step (so consecutive checkpoints differ) instead of
    SQAIR's gradient step. Everything else (config.json, the initial state, the data for its shapes, checkpoints) is
    the real loop's."""

    def step(state, batch, key):
        params = jax.tree.map(lambda p: p + 0.01, state.params)
        return state.replace(step=state.step + 1, params=params), {"finite": jnp.array(True)}

    return jax.jit(step)


@pytest.fixture(scope="module")
def sqair_trained(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_lib, "make_train_step", stand_in_train_step)
        return train(sqair_config(), tmp_path_factory.mktemp("sqair"))


@pytest.fixture(scope="module")
def air_run(air_trained):
    return api.load_run(air_trained[0])


@pytest.fixture(scope="module")
def sqair_run(sqair_trained):
    return api.load_run(sqair_trained[0])


def tree_digest(root):
    return {
        os.path.relpath(os.path.join(d, n), root): hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest()
        for d, _, files in os.walk(root)
        for n in files
    }


def forbid(monkeypatch, module, *names):
    for name in names:

        def refuse(*args, _name=name, **kwargs):
            raise AssertionError(f"load_run must not call {module.__name__}.{_name}")

        monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize("name", ["air", "sqair"])
def test_load_run_restores_the_checkpoint_without_data_or_optimisers(name, request, monkeypatch):
    workdir, final_params = request.getfixturevalue(f"{name}_trained")
    from ocr_jax.data import builders, iterators, mnist, moving_mnist, multi_mnist, synthetic
    from ocr_jax.training import optimizers, train_step
    from ocr_jax.training import train as train_lib

    forbid(monkeypatch, moving_mnist, "load_moving_multi_mnist", "make_moving_multi_mnist")
    forbid(monkeypatch, multi_mnist, "make_multi_mnist")
    forbid(monkeypatch, builders, "load_dataset")
    forbid(monkeypatch, mnist, "load_mnist")
    forbid(monkeypatch, synthetic, "blob_digits")
    forbid(monkeypatch, air_task, "load_multi_mnist", "load_moving_sequences", "deterministic_batches")
    forbid(monkeypatch, sqair_task, "load_sequences", "make_sequences", "deterministic_batches")
    forbid(monkeypatch, iterators, "deterministic_batches")
    forbid(monkeypatch, optimizers, "make_optimizer", "make_optimizers")
    forbid(monkeypatch, train_step, "init_train_state")
    forbid(monkeypatch, train_lib, "restore_params")
    before = tree_digest(workdir)

    run = ocr_jax.load_run(workdir)
    assert (run.task_name, run.step, run.config.task) == (name, NUM_STEPS, name)
    assert run.model is run.task.model and type(run.model).__name__ == name.upper()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.params), final_params)
    assert all(isinstance(p, jax.Array) for p in jax.tree.leaves(run.params))
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.step = 0
    assert "params" not in repr(run) and f"step={NUM_STEPS}" in repr(run)

    first = api.load_run(str(workdir), step=1)
    assert first.step == 1
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(jax.device_get(first.params)), jax.tree.leaves(final_params))
    )
    with pytest.raises(CheckpointError, match=r"step 7 .*steps saved: \[1, 2\]"):
        api.load_run(workdir, step=7)
    assert tree_digest(workdir) == before  # nothing written


def test_load_run_errors_are_clear(air_trained, tmp_path):
    workdir = air_trained[0]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        api.load_run(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="config.json"):
        api.load_run(tmp_path)
    config = json.loads((workdir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="no checkpoints directory"):
        api.load_run(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        api.load_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "task": "toy_vae"}))
    with pytest.raises(ValueError, match=r"'toy_vae' has no inference API; load_run supports \['air', 'sqair'\]"):
        api.load_run(tmp_path)
    # A checkpoint that does not fit the model the config describes.
    config["task_config"]["model"]["z_what_dim"] = 5
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.rmtree(tmp_path / "checkpoints")
    shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")
    with pytest.raises(CheckpointError, match="does not fit the air model"):
        api.load_run(tmp_path)


def test_load_run_reads_a_run_made_before_the_tasks_moved(air_trained, tmp_path):
    """Runs made before issue #14 name their task module by its old name (runs/sqair_cpu256: ocr_jax.models.sqair_task;
    now ocr_jax.tasks.sqair): load_run builds the task from ``config.task`` and still reads them."""
    workdir, final_params = air_trained
    config = json.loads((workdir / "config.json").read_text())
    assert config["task_module"] == "ocr_jax.tasks.air"
    (tmp_path / "config.json").write_text(json.dumps({**config, "task_module": "ocr_jax.models.air_task"}))
    shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")
    run = api.load_run(tmp_path)
    assert (run.task_name, run.step, type(run.task).__module__) == ("air", NUM_STEPS, "ocr_jax.tasks.air")
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.params), final_params)


def test_import_ocr_jax_stays_light():
    code = "import sys, ocr_jax; assert 'jax' not in sys.modules, 'jax imported'; assert callable(ocr_jax.load_run)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert ocr_jax.infer_sequences is api.infer_sequences and ocr_jax.Run is api.Run


def test_infer_sequences_outputs(sqair_run):
    run = sqair_run
    c = run.model.config
    B, T, N = 3, c.max_seq_len, c.max_objects
    frames = np.random.default_rng(0).integers(0, 256, (B, T, *c.image_shape)).astype(np.uint8)
    key = jax.random.key(0)  # the default key (None: seed 0)
    out = api.infer_sequences(run, frames, num_particles=2)
    shapes = dict(
        counts=(B, T),
        present_counts=(B, T),
        visible=(B, T, N),
        boxes=(B, T, N, 4),
        ids=(B, T, N),
        presence=(B, T, N),
        z_what=(B, T, N, c.z_what_dim),
        z_where=(B, T, N, 4),
        z_where_raw=(B, T, N, 4),
        log_weight=(B,),
    )
    assert {k: v.shape for k, v in out.items()} == shapes
    assert all(isinstance(v, np.ndarray) for v in out.values())
    assert (out["counts"].dtype, out["ids"].dtype, out["presence"].dtype) == (np.int32, np.int32, np.bool_)
    np.testing.assert_array_equal(out["present_counts"], out["presence"].sum(-1))
    np.testing.assert_array_equal(out["counts"], out["visible"].sum(-1))
    assert not np.any(out["visible"] & ~out["presence"])  # in view implies present
    # the official shift map keeps every glimpse's centre on the canvas: every present object is in view
    np.testing.assert_array_equal(out["visible"], out["presence"])
    np.testing.assert_array_equal(
        out["visible"], sqair_eval.visible_objects(out["boxes"], out["presence"], c.image_shape)
    )
    assert np.all((out["ids"] >= 0) == out["presence"])
    # z_where, as infer_images': the spatial-transformer parameters, exactly the transform of the Gaussian latent
    # z_where_raw; the boxes are z_where_to_box of it, bit for bit as before z_where was renamed (when they were
    # computed as below from the latent, then called z_where).
    np.testing.assert_array_equal(
        out["z_where"], where_to_transform(jnp.asarray(out["z_where_raw"]), c.where_map, c.shift_bound)
    )
    before = np.asarray(st.z_where_to_box(run.model.to_transform(jnp.asarray(out["z_where_raw"])), c.image_shape))
    np.testing.assert_array_equal(out["boxes"], np.where(out["presence"][..., None], before, 0.0))
    for boxes in (sqair_eval.boxes_of(run.task, out["z_where"]), sqair_eval.boxes_of_raw(run.task, out["z_where_raw"])):
        np.testing.assert_array_equal(out["boxes"], np.where(out["presence"][..., None], boxes, 0.0))
    # The latents are the model's: sequence 0 is the best of the K particles of infer with key fold_in(key, 0).
    direct = jax.jit(lambda x, k: run.model.infer(run.params, x, k, 2))(frames[:1] / 255.0, jax.random.fold_in(key, 0))
    best = int(np.argmax(direct.log_weight[0]))
    for name in ("z_where", "z_where_raw", "z_what"):
        np.testing.assert_allclose(out[name][0], direct[name][0, best], rtol=1e-5, atol=1e-5, err_msg=name)
    assert np.all(np.isfinite(out["log_weight"]))

    def same(a, b):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # Reproducible by default; uint8 = float / 255; old- and new-style keys with the same bits agree.
    same(out, api.infer_sequences(run, frames.astype(np.float64) / 255.0, num_particles=2, key=jax.random.key(0)))
    same(
        api.infer_sequences(run, frames, num_particles=2, key=jax.random.PRNGKey(3)),
        api.infer_sequences(run, frames, num_particles=2, key=3),
    )
    assert not np.array_equal(out["log_weight"], api.infer_sequences(run, frames, num_particles=2, key=4)["log_weight"])
    # posterior means: the model's infer(posterior_means=True) for the chosen particle; a Python bool only
    at_means = api.infer_sequences(run, frames, num_particles=2, key=jax.random.key(0), posterior_means=True)
    direct = jax.jit(lambda x, k: run.model.infer(run.params, x, k, 2, posterior_means=True))(
        frames[:1] / 255.0, jax.random.fold_in(jax.random.key(0), 0)
    )
    best = int(np.argmax(direct.log_weight[0]))
    np.testing.assert_allclose(at_means["z_what"][0], direct.z_what[0, best], rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="posterior_means"):
        api.infer_sequences(run, frames, posterior_means=1)


def test_infer_images_picks_the_best_particle_independently_of_batching(air_run):
    run = air_run
    c = run.model.config
    B, K, N = 5, 3, c.max_steps
    images_uint8 = np.random.default_rng(1).integers(0, 256, (B, *c.canvas_shape)).astype(np.uint8)
    images = images_uint8 / np.float32(255.0)
    key = jax.random.key(7)
    out = api.infer_images(run, images, key=key, num_particles=K, batch_size=2)  # chunks 2, 2, 1 (+1 padding)
    shapes = dict(
        counts=(B,),
        boxes=(B, N, 4),
        presence=(B, N),
        z_what=(B, N, c.z_what_dim),
        z_where=(B, N, 3),
        z_where_raw=(B, N, 3),
        log_weight=(B,),
    )
    assert {k: v.shape for k, v in out.items()} == shapes
    assert (out["counts"].dtype, out["presence"].dtype, out["boxes"].dtype) == (np.int32, np.bool_, np.float32)
    np.testing.assert_array_equal(out["counts"], out["presence"].sum(-1))
    assert np.all(np.diff(out["presence"].astype(int), axis=-1) <= 0)  # present steps first
    expected_boxes = np.where(out["presence"][..., None], st.z_where_to_box(out["z_where"], c.canvas_shape), 0.0)
    np.testing.assert_allclose(out["boxes"], expected_boxes, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(
        out["z_where"], where_transform(jnp.asarray(out["z_where_raw"]), c), rtol=1e-6, atol=1e-6
    )

    # Image i uses fold_in(key, i): the best of the K particles model.infer draws with that key, whatever the batching.
    rho = run.task.continue_prob(run.step)
    infer = jax.jit(lambda x, k: run.model.infer(run.params, x, k, num_particles=K, continue_prob=rho).log_weight)
    log_w = np.concatenate([np.asarray(infer(images[i : i + 1], jax.random.fold_in(key, i))) for i in range(B)])
    np.testing.assert_allclose(out["log_weight"], log_w.max(1), rtol=1e-5)
    again = api.infer_images(run, images_uint8, key=jax.random.key_data(key), num_particles=K, batch_size=2)
    by_hand = api.infer_images(dataclasses.replace(run, task=None), images, key=key, num_particles=K, batch_size=2)
    for k in out:  # uint8 = float / 255; the old-style key with the same bits gives the same particles; a Run without
        np.testing.assert_array_equal(out[k], again[k], err_msg=k)  # its task rebuilds it from the config
        np.testing.assert_array_equal(out[k], by_hand[k], err_msg=k)


BAD_INPUTS = [
    ("rank", "shape"),
    ("size", "pixels"),
    ("too_long", "max_seq_len"),
    ("above_one", r"\[0, 1\]"),
    ("negative", r"\[0, 1\]"),
    ("nan", "NaN"),
    ("int32", "dtype int32"),
    ("bool", "dtype bool"),
    ("empty", "empty"),
    ("particles", "num_particles"),
    ("batch_size", "batch_size"),
    ("key", "key must be"),
]


@pytest.mark.parametrize(
    "task, case, match",
    [
        (task, case, match)
        for task in ("air", "sqair")
        for case, match in BAD_INPUTS
        if (task, case) != ("air", "too_long")
    ],
)
def test_bad_inputs_raise_value_error(task, case, match, request):
    run = request.getfixturevalue(f"{task}_run")
    infer = api.infer_images if task == "air" else api.infer_sequences
    shape = (2, *run.model.config.canvas_shape) if task == "air" else (2, 2, *run.model.config.image_shape)
    x = np.full(shape, 0.5, np.float32)
    kwargs = {}
    if case == "rank":
        x = x[0]
    elif case == "size":
        x = x[..., :-1, :]
    elif case == "too_long":  # SQAIR only: images have no time axis
        x = np.zeros((1, run.model.config.max_seq_len + 1, *shape[2:]), np.float32)
    elif case == "above_one":
        x[0, 0, 0] = 1.5
    elif case == "negative":
        x[-1, -1, -1] = -0.1
    elif case == "nan":
        x[0, -1, 0] = np.nan
    elif case == "int32":
        x = x.astype(np.int32)
    elif case == "bool":
        x = x > 0
    elif case == "empty":
        x = x[:0]
    elif case == "particles":
        kwargs["num_particles"] = 0
    elif case == "batch_size":
        kwargs["batch_size"] = -1
    elif case == "key":
        kwargs["key"] = np.zeros(3, np.uint32)
    with pytest.raises(ValueError, match=match):
        infer(run, x, **kwargs)


def test_the_wrong_function_names_the_right_one(air_run, sqair_run):
    with pytest.raises(ValueError, match=r"AIR run .*use ocr_jax.infer_images"):
        api.infer_sequences(air_run, np.zeros((1, 1, 50, 50), np.float32))
    with pytest.raises(ValueError, match=r"SQAIR run .*use ocr_jax.infer_sequences"):
        api.infer_images(sqair_run, np.zeros((1, 24, 24), np.float32))
    with pytest.raises(TypeError, match="load_run"):
        api.infer_images("runs/air", np.zeros((1, 50, 50), np.float32))


@pytest.mark.slow
def test_load_run_and_infer_after_real_sqair_training(tmp_path):
    """As the default tests, with SQAIR's real train step (about a minute on a 2-core CPU)."""
    workdir, final_params = train(sqair_config(), tmp_path)
    run = api.load_run(workdir)
    assert run.step == NUM_STEPS
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.params), final_params)
    c = run.model.config
    out = api.infer_sequences(run, np.zeros((2, c.max_seq_len, *c.image_shape), np.uint8), num_particles=2)
    assert out["boxes"].shape == (2, c.max_seq_len, c.max_objects, 4)
    np.testing.assert_array_equal(out["counts"], out["presence"].sum(-1))  # the official map: all in view


def test_sqair_diagnose_frame_terms_add_up_to_the_log_weight(sqair_run):
    """experiments/sqair_diagnose: per-frame means whose sum over frames is the mean log-weight; frame 1 propagates
    nothing."""
    from experiments import sqair_diagnose

    frames = np.asarray(jax.random.uniform(jax.random.key(3), (4, 3) + sqair_run.model.config.image_shape))
    terms = sqair_diagnose.frame_terms(sqair_run, frames, num_particles=2)
    assert all(len(v) == 3 for v in terms.values())
    assert terms["num_propagated"][0] == 0 and terms["log_p_prop"][0] == 0 and terms["log_q_prop"][0] == 0
    out = sqair_run.model.infer(sqair_run.params, frames, jax.random.key(0), 2)
    total = sum(np.sum(terms[k]) for k in ("log_likelihood", "log_p_disc", "log_p_prop")) - sum(
        np.sum(terms[k]) for k in ("log_q_disc", "log_q_prop")
    )
    np.testing.assert_allclose(total, float(np.mean(out["log_weight"])), rtol=1e-3, atol=0.05)
    assert sum(terms["num_discovered"][1:]) > 0  # the run discovers after frame 1 when open, so closing shows
    closed = sqair_diagnose.frame_terms(sqair_run, frames, num_particles=2, disc_later_presence_bias=-np.inf)
    assert closed["num_discovered"][1:] == [0.0, 0.0]
    assert closed["num_discovered"][0] == terms["num_discovered"][0]


def test_sqair_diagnose_crossings_on_a_run(sqair_run, tmp_path):
    """experiments/sqair_diagnose --crossings on a run: the summary of its best particles on test sequences, and the
    picture where a sequence has an exchange."""
    from experiments import sqair_diagnose

    result = sqair_diagnose.crossings(sqair_run, str(tmp_path), sequences=8, frames=3, particles=2)
    n = min(8, len(sqair_run.task.test_data["frames"]))
    assert (result["sequences"], result["frames"], result["step"]) == (n, 3, sqair_run.step)
    assert 0 <= result["crossing_sequences"] <= result["two_digit_sequences"] <= n
    assert result["sequences_with_exchanges"] == len(result["exchange_sequence_indices"])
    assert result["crossing_sequences_with_exchanges"] <= result["sequences_with_exchanges"] <= result["exchanges"]
    assert result["exchanges"] <= result["swaps"]
    if result["exchange_sequence_indices"]:
        assert os.path.isfile(result["picture"])
    else:
        assert result["picture"] is None
    json.dumps(result)


def test_sqair_diagnose_count_errors_and_edges_on_a_run(sqair_run):
    """experiments/sqair_diagnose --count_errors and --edges on a run read the same test sequences with the same
    inference: the same count accuracy; every frame has one cause, and the wrong frames per cause add up."""
    from experiments import sqair_diagnose

    n = min(6, len(sqair_run.task.test_data["frames"]))
    errors = sqair_diagnose.count_errors(sqair_run, sequences=6, frames=3, particles=2)
    edges = sqair_diagnose.edge_counts(sqair_run, sequences=6, frames=3, particles=2)
    assert (errors["sequences"], errors["frames"], edges["sequences"]) == (n, 3, n)
    assert errors["count_accuracy"] == pytest.approx(edges["count_accuracy"]["run"]["all"])
    causes = errors["causes"]
    assert sum(c["frames"] for c in causes.values()) == n * 3
    wrong = sum(c["under"] + c["over"] for c in causes.values())
    assert wrong == round((1 - errors["count_accuracy"]) * n * 3)
    json.dumps(errors), json.dumps(edges)


@pytest.mark.parametrize("task", ["sqair", "air"])
def test_count_external_scores_a_file_through_the_public_api(task, request, tmp_path):
    """experiments/count_external on a file of frames (images) and labels: the counts it scores are the public API's
    with the same particles and key, item by item, whatever ``num`` takes; the CLI writes the same numbers."""
    from experiments import count_external as ce

    run = request.getfixturevalue(f"{task}_run")
    rng = np.random.default_rng(3)
    if task == "sqair":
        c = run.model.config
        x = rng.integers(0, 256, (3, c.max_seq_len, *c.image_shape)).astype(np.uint8)
        arrays = dict(frames=x, counts=rng.integers(0, 3, (3, c.max_seq_len)), sequence_counts=np.array([2, 0, 1]))
        out = api.infer_sequences(run, x, num_particles=2, key=4)
    else:
        x = rng.integers(0, 256, (5, *run.model.config.canvas_shape)).astype(np.uint8)
        arrays = dict(images=x, counts=rng.integers(0, 3, 5))
        out = api.infer_images(run, x, num_particles=2, key=4)
    path = str(tmp_path / "held_out.npz")
    np.savez(path, **arrays)
    result = ce.score_run(run, ce.load_external(path, task), particles=2, seed=4)
    label = "visible_count" if task == "sqair" else "count"
    assert result[label]["accuracy"] == pytest.approx(np.mean(out["counts"] == arrays["counts"]))
    assert result[label]["too_high"] == int((out["counts"] > arrays["counts"]).sum())
    if task == "sqair":
        held = out["present_counts"] == arrays["sequence_counts"][:, None]
        assert result["sequence_label"]["accuracy"] == pytest.approx(held.mean())
        assert result["sequence_label"]["frame1"] == pytest.approx(held[:, 0].mean())
        departed = arrays["counts"] < arrays["sequence_counts"][:, None]
        kinds = result["visible_count_by_frame_kind"]
        assert kinds["a digit wholly outside"]["frames"] == departed.sum()
        first_two = ce.score_run(run, ce.load_external(path, task, num=2), particles=2, seed=4)
        assert first_two["sequence_label"]["frames"] == 2 * x.shape[1]
        assert first_two["sequence_label"]["by_frame"] == [round(float(a), 5) for a in held[:2].mean(0)]
    if task == "air":  # the command line, once (its compile is the slow part)
        cmd = [
            sys.executable,
            "-m",
            "experiments.count_external",
            f"--workdir={request.getfixturevalue('air_trained')[0]}",
            f"--data={path}",
            "--particles=2",
            "--seed=4",
            f"--out={tmp_path / 'out.json'}",
        ]
        subprocess.run(cmd, check=True, capture_output=True, cwd=os.path.dirname(os.path.dirname(__file__)))
        with open(tmp_path / "out.json") as f:
            assert json.load(f)["count"] == result["count"]
