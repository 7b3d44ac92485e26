"""AIR trained frame-wise on SQAIR's moving multi-MNIST (the MLP-AIR row of thesis Table 5.4.1): data, evaluation in
SQAIR's units, and the report (synthetic blob digits: no download)."""

import json

import jax
import numpy as np
import pytest

from experiments import air_frames_report
from ocr_jax.configs import air_multi_mnist, sqair_mnist
from ocr_jax.data.moving_mnist import frames_as_images
from ocr_jax.evaluation import air as air_eval
from ocr_jax.tasks import air as air_task
from ocr_jax.tasks import sqair as sqair_task
from ocr_jax.training.train import train_and_evaluate


def moving_quick_config(num_steps=4):
    config = air_multi_mnist.get_config("moving+quick")
    config.task_config.data.update(num_train=16, num_test=6, num_frames=3)
    config.task_config.eval.update(
        num_images=18,
        batch_size=9,
        log_marginal_images=6,
        log_marginal_particles=8,
        log_marginal_chunk=4,
        periodic_images=18,
        sequence_particles=3,
        addition_steps=20,
        addition_train_sequences=5,
    )
    config.num_steps = num_steps
    config.eval_every = num_steps
    config.checkpoint.every = num_steps
    config.progress_bar = False
    return config


def test_moving_variant_reads_sqair_frames():
    """AIR's moving data are SQAIR's sequences (same seeds: train data_seed, test data_seed + 1), frame by frame."""
    data_cfg = moving_quick_config().task_config.data
    sq = sqair_mnist.get_config("quick").task_config
    sq.update(dict(data="blobs", digit_size=28, canvas_size=50, num_frames=3, max_digits=2, data_seed=data_cfg.seed))
    for split, num, seed in (
        ("train", data_cfg.num_train, sq.data_seed),
        ("test", data_cfg.num_test, sq.data_seed + 1),
    ):
        seqs = air_task.load_moving_sequences(data_cfg, split)
        np.testing.assert_array_equal(seqs["frames"], sqair_task.load_sequences(sq, split, num, seed)["frames"])
        images = air_task.load_multi_mnist(data_cfg, split)
        assert images["images"].shape == (num * 3, 50, 50)
        np.testing.assert_array_equal(images["images"][3 * 2 + 1], seqs["frames"][2, 1])  # sequence-major
        np.testing.assert_array_equal(images["counts"], seqs["counts"].ravel())


def test_moving_variant_is_the_thesis_mlp_air_an_mlp_image_encoder_and_otherwise_the_default():
    moving, default = air_multi_mnist.get_config("moving"), air_multi_mnist.get_config(None)
    assert moving.task_config.model.image_encoder == "mlp" and default.task_config.model.image_encoder == "raw"
    moving.task_config.model.image_encoder = "raw"
    assert moving.task_config.model.to_dict() == default.task_config.model.to_dict()
    assert moving.task_config.estimator == default.task_config.estimator and moving.num_steps == default.num_steps


def test_frames_as_images_rejects_bad_shapes():
    with pytest.raises(ValueError, match="frames"):
        frames_as_images({"frames": np.zeros((2, 5, 5), np.uint8), "counts": np.zeros((2,), np.int32)})
    with pytest.raises(ValueError, match="counts"):
        frames_as_images({"frames": np.zeros((2, 3, 5, 5), np.uint8), "counts": np.zeros((2, 4), np.int32)})


@pytest.fixture(scope="module")
def untrained():
    config = moving_quick_config()
    task = air_task.AIRTask(config.task_config)
    seqs = air_task.load_moving_sequences(config.task_config.data, "test")
    params = task.init(jax.random.key(0), {"images": seqs["frames"][0]})[0]
    return task, params, seqs


def test_sequence_evaluation_sums_frames(untrained):
    task, params, seqs = untrained
    n, T = seqs["frames"].shape[:2]
    key = jax.random.key(3)
    r = air_eval.evaluate_air_on_sequences(task, params, 0, seqs, key=key, num_particles=3, log_marginal_sequences=2)
    # Recompute per frame with the same batches and keys: the sequence terms are the sums of the frame terms.
    images = seqs["frames"].reshape(-1, 50, 50)
    bs = task.config.eval.batch_size
    outs = [
        jax.device_get(
            air_eval.infer_frames(task, params, images[s : s + bs], jax.random.fold_in(key, i), 0, num_particles=3)
        )
        for i, s in enumerate(range(0, len(images), bs))
    ]
    log_w = np.concatenate([o["log_weight"] for o in outs]).reshape(n, T, 3)
    log_lik = np.concatenate([o["log_likelihood"] for o in outs]).reshape(n, T, 3)
    z_pres = np.concatenate([o["z_pres"] for o in outs]).reshape(n, T, 3, -1)
    best = np.argmax(log_w, -1)
    counts = np.take_along_axis(z_pres.sum(-1), best[..., None], -1)[..., 0]
    assert r["elbo"] == pytest.approx(log_w.mean(-1).sum(1).mean(), rel=1e-5)
    assert r["log_likelihood"] == pytest.approx(log_lik.mean(-1).sum(1).mean(), rel=1e-5)
    assert r["kl"] == pytest.approx(r["log_likelihood"] - r["elbo"], rel=1e-5)
    iwae = np.log(np.mean(np.exp(log_w - log_w.max(-1, keepdims=True)), -1)) + log_w.max(-1)
    assert r["iwae"] == pytest.approx(iwae.sum(1).mean(), rel=1e-5) and r["iwae"] >= r["elbo"]
    assert r["count_accuracy"] == pytest.approx(np.mean(counts == seqs["counts"]))
    assert np.asarray(r["confusion"]).sum() == n * T
    assert np.isfinite(r["log_marginal"]) and r["log_marginal_sequences"] == 2
    assert r["tracking"]["num_sequences"] == n and r["addition"] is None
    with pytest.raises(ValueError, match="frames"):
        air_eval.evaluate_air_on_sequences(task, params, 0, {**seqs, "frames": seqs["frames"][:, :, :40]}, key=key)


# Experiment-level (the report end to end, ~30 s): bash scripts/test.sh -m slow
@pytest.mark.slow
def test_air_frames_report_trains_and_writes_the_table(tmp_path):
    config = moving_quick_config()
    train_and_evaluate(config, str(tmp_path))
    sqair = {
        "step": 7,
        "log_marginal": 1.5,
        "log_likelihood": 2.0,
        "kl": 0.5,
        "count_accuracy": 0.25,
        "addition": {"test_accuracy": 0.125},
    }
    sq_path = tmp_path / "sqair" / "results.json"
    sq_path.parent.mkdir()
    sq_path.write_text(json.dumps(sqair))
    assert air_frames_report.sqair_name(str(sq_path)) == "SQAIR"  # no config.json beside it
    (sq_path.parent / "config.json").write_text(json.dumps({"task_config": {"model": {"arch": "conv"}}}))
    results = air_frames_report.report(config, str(tmp_path), str(sq_path))
    saved = json.load(open(tmp_path / "results.json"))
    assert saved["step"] == 4 and saved["num_sequences"] == 6 and saved["num_frames"] == 3
    assert 0.0 <= saved["addition"]["test_accuracy"] <= 1.0 and saved["addition"]["num_train_sequences"] == 5
    table = (tmp_path / "table.md").read_text()
    assert table == results["table"]
    lines = table.splitlines()
    assert len(lines) == 2 + 2 + len(air_frames_report.PAPER_ROWS)
    assert "| CONV-SQAIR (sqair, step 7) | 1.5 | 2.0 | 0.5 | 0.2500 | 0.1250 |" in lines
    assert f"{saved['count_accuracy']:.4f}" in lines[2]
    assert (tmp_path / "reconstructions.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="moving"):
        air_frames_report.report(air_multi_mnist.get_config("quick"), str(tmp_path))


def test_eval_curves_read_sorted_steps_and_tabulate(tmp_path):
    from experiments import eval_curves

    for step, acc in ((1000, 0.5), (200, 0.25), (30, 0.125)):
        (tmp_path / f"eval_step{step}.json").write_text(json.dumps({"count_accuracy": acc, "step": step}))
    (tmp_path / "eval_step5.json").write_text(json.dumps({"elbo": 1.0}))  # another metric only
    curve = eval_curves.read_eval_curve(str(tmp_path), "count_accuracy")
    assert curve == [(30, 0.125), (200, 0.25), (1000, 0.5)]  # numeric, not lexical, order
    table = eval_curves.markdown_curves({"a": curve, "b": [(200, 0.75)]}, "count_accuracy").splitlines()
    assert table[2:] == ["| 30 | 0.125 |  |", "| 200 | 0.25 | 0.75 |", "| 1000 | 0.5 |  |"]
    fig = eval_curves.plot_curves({"a": curve}, "count_accuracy")
    assert len(fig.axes[0].lines) == 1
    with pytest.raises(FileNotFoundError, match="eval_step"):
        eval_curves.read_eval_curve(str(tmp_path / "missing"), "count_accuracy")
